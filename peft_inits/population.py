"""Population training: K adapters of one method on one frozen model, trained together in one batched forward.

Every sample of a batch carries an adapter index. Each adapter layer keeps K stacked copies of the *trainable*
parameters of its adapter module; the layer's factors for adapter k are that module's own `factors()` evaluated on
copy k (`torch.func.functional_call`), so any registered method works unchanged. A factor that is the same tensor for
every copy (a frozen buffer such as SVFit's V_rᵀ) is applied once to the whole batch; one that differs (a gain, LoRA's
A and B) is gathered per sample. The frozen base layer runs once for the whole batch, as multi-adapter serving batches
LoRAs.

    population = Population(peft_model, size=16)          # the model holds one adapter ("default") of any method
    optimizer = population.optimizer(lr=5e-3)
    with population.batch(index):                         # index[b] = adapter of sample b
        losses = per_adapter_losses(model(x), index)      # (K,)
    losses.sum().backward()                               # = each adapter's own gradient: the copies never mix
    population.clip_grad_norms(1.0); optimizer.step()
    population.save(k, "adapters/k")                      # a normal adapter directory (PEFT layout, checksummed)
    with population.substitute(values), population.batch(index):   # copies from elsewhere (a hypernetwork's output)
        loss = model(x)                                   # gradients flow into `values`, not into the copies

Optimising the sum of the adapters' mean losses with AdamW (element-wise) and per-adapter gradient clipping gives
each copy exactly the updates it would get trained alone (`tests/core/test_population.py`).

The same mechanism serves saved adapters (an adapter bank): `Population.from_adapters(model, directories)` loads N
adapter directories into the K stacked copies, verified like any load; `batch(index)` or `batch_names(names)` then
picks one per sample (−1 / "__base__": none). For SVFit/LoLDU only the gain is stacked — r numbers per matrix and
adapter — and one down- and one up-projection serve the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .checkpoint import adapter_dirs, save_adapter, verify_adapter_dir
from .layers import AdapterLayer, adapter_layers
from .loading import check_adapter_state
from .mixed import BASE

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: coef = max_norm / (norm + eps), at most 1


class _Factors(nn.Module):
    """`adapter.factors()` as a forward, so `functional_call` can evaluate it on other parameter values."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.adapter.factors()


@dataclass
class _Member:
    """One adapter layer of the population: its K stacked trainable tensors, by the adapter's parameter name."""

    name: str
    layer: AdapterLayer
    factors: _Factors
    stacked: dict[str, nn.Parameter]
    varying: tuple[int, ...] | None = None  # which of (down, gain, up) depend on the trained tensors
    gains: tuple[tuple, Tensor] | None = None  # serving: all K gains, with the versions of the tensors they came from


class Population:
    """K copies of the trainable tensors of adapter `adapter_name` on every layer of `model`, trained in one forward.

    While attached (from construction until `detach`), the model's own adapter is switched off and each adapter layer
    adds the population's per-sample delta to its base output; a forward outside `batch(index)` is an error, so no
    call silently runs the bare base model.
    """

    def __init__(self, model: nn.Module, size: int, adapter_name: str = "default") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"population size must be an int >= 1, got {size!r}")
        layers = adapter_layers(model, adapter_name)
        if not layers:
            raise ValueError(f"the model holds no adapter named {adapter_name!r}; wrap it with get_peft_model first")
        self.model, self.size, self.adapter_name = model, size, adapter_name
        self.names = [str(k) for k in range(size)]  # a bank's: its members' directory names
        self.members: list[_Member] = []
        self._requires_grad: dict[int, bool] = {}
        for name, layer in layers.items():
            adapter = layer.adapter(adapter_name)  # materialised and checked against the base weight
            trainable = {n: p for n, p in adapter.named_parameters() if p.requires_grad}
            if not trainable:
                raise ValueError(f"{name}: adapter {adapter_name!r} has no trainable tensor to copy")
            stacked = {
                n: nn.Parameter(p.detach().unsqueeze(0).repeat(size, *([1] * p.ndim)).clone())
                for n, p in trainable.items()
            }
            self.members.append(_Member(name, layer, _Factors(adapter), stacked))
        self._index: Tensor | None = None
        self._keep: Tensor | None = None
        self._handles = []
        self._attach()

    @classmethod
    def from_adapters(
        cls,
        model: nn.Module,
        directories: str | Path | Sequence[str | Path],
        adapter_name: str = "default",
        progress: bool = True,
    ) -> Population:
        """An adapter bank: the adapters saved in `directories` served from one stacked table per layer, sample b by
        `batch(index)` or `batch_names(names)`; the frozen factors are the model's own adapter's, held once. A folder
        stands for every adapter directory under it (a collection).

        Every member is one method on one base: the model's adapter `adapter_name` is the template. Each file is
        verified as a load is (checksum, finiteness, base fingerprint, each method's reference check) and every
        tensor it holds besides the trained ones must equal the template's (a seed-dependent z_ref, say); a refused
        member names its directory and the bank is not built.
        """
        if isinstance(directories, (str, Path)):  # a collection folder: every adapter directory under it
            directories = adapter_dirs(directories)
        directories = [Path(d) for d in directories]
        if not directories:
            raise ValueError("an adapter bank needs at least one adapter directory")
        bank = cls(model, len(directories), adapter_name)
        try:
            for k, directory in enumerate(tqdm(directories, desc="loading adapters", disable=not progress)):
                bank._load_member(k, directory)
        except BaseException:
            bank.detach()
            raise
        bank.names = [d.name for d in directories]
        return bank

    @torch.no_grad()
    def _load_member(self, k: int, directory: Path) -> None:
        _, saved = verify_adapter_dir(directory)
        infix = f".pi_adapters.{self.adapter_name}."
        state = {key.replace(".pi_adapters.", infix, 1): value for key, value in saved.items()}
        layers = [member.layer.pi_adapters[self.adapter_name] for member in self.members]
        try:
            commits = check_adapter_state(self.model, state)
        except ValueError as error:
            raise ValueError(f"adapter {directory}: {error}") from error
        finally:
            for adapter in layers:  # checked here, never loaded through load_state_dict
                adapter.__dict__.pop("_preverified", None)
        if commits:
            raise ValueError(
                f"adapter {directory}: its factors would differ from the bank's (another pivot order, or another "
                "base accepted on purpose); load it on its own"
            )
        for member, adapter in zip(self.members, layers, strict=True):
            prefix = f"{member.name}{infix}"
            for name, own in adapter.state_dict().items():
                if name in member.stacked:
                    member.stacked[name][k].copy_(state[prefix + name])
                elif name != "fingerprint" and not torch.equal(state[prefix + name].to(own), own):
                    raise ValueError(
                        f"adapter {directory}: {member.name}: its {name} differs from the bank's (other options, seed "
                        "or base precision at training); load it on its own"
                    )

    # ------------------------------------------------------------------------------------------------ parameters

    def parameters(self) -> list[nn.Parameter]:
        return [p for member in self.members for p in member.stacked.values()]

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for member in self.members:
            for name, param in member.stacked.items():
                yield f"{member.name}.{name}", param

    def trainable_per_adapter(self) -> int:
        return sum(p[0].numel() for p in self.parameters())

    def optimizer(self, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
        """AdamW over the stacked tensors with the project's rule (`training.optim`): weight decay on an adapter's
        matrices only, never on its vectors (SVFit s, LoLDU z); judged on one copy's shape, not the stack's."""
        decay = [p for p in self.parameters() if p.ndim - 1 >= 2]
        no_decay = [p for p in self.parameters() if p.ndim - 1 < 2]
        groups = [
            {"params": chosen, "weight_decay": wd, "role": "adapter"}
            for chosen, wd in ((decay, weight_decay), (no_decay, 0.0))
            if chosen
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)

    @torch.no_grad()
    def grad_norms(self) -> Tensor:
        """Each adapter's gradient norm over all its tensors, shape (K,)."""
        total = torch.zeros(self.size, dtype=torch.float64)
        for param in self.parameters():
            if param.grad is not None:
                total += param.grad.reshape(self.size, -1).double().pow(2).sum(1).cpu()
        return total.sqrt()

    @torch.no_grad()
    def clip_grad_norms(self, max_norm: float) -> Tensor:
        """Clip each adapter's gradient to `max_norm` on its own (as `clip_grad_norm_` on that adapter alone would);
        returns the norms before clipping. `max_norm` ≤ 0 only measures."""
        norms = self.grad_norms()
        if max_norm > 0:
            coef = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)
            for param in self.parameters():
                if param.grad is not None:
                    shape = (self.size, *([1] * (param.ndim - 1)))
                    param.grad.mul_(coef.to(param.grad).reshape(shape))
        return norms

    @torch.no_grad()
    def set_member(self, k: int, source: nn.Module | None = None) -> None:
        """Copy the trainable tensors of `source`'s adapter (default: the model's own) into copy k."""
        self._check_index(k)
        layers = adapter_layers(source, self.adapter_name) if source is not None else None
        for member in self.members:
            adapter = (layers[member.name] if layers is not None else member.layer).pi_adapters[self.adapter_name]
            for name, param in member.stacked.items():
                param[k].copy_(adapter.get_parameter(name))

    # ------------------------------------------------------------------------------------------------ export

    @torch.no_grad()
    def load_member(self, k: int) -> None:
        """Copy slice k into the model's own adapter (which then is adapter k, e.g. for `save` or plain use)."""
        self._check_index(k)
        for member in self.members:
            adapter = member.layer.pi_adapters[self.adapter_name]
            for name, param in member.stacked.items():
                adapter.get_parameter(name).copy_(param[k])

    def save(self, k: int, directory: str | Path) -> Path:
        """Write adapter k as a normal adapter directory: PEFT layout, base fingerprint, sha256, written atomically
        (`checkpoint.save_adapter`); it loads with `PeftModel.from_pretrained` like any trained adapter."""
        self.load_member(k)
        return save_adapter(self.model, directory, self.adapter_name)

    # ------------------------------------------------------------------------------------------------ forward

    @contextlib.contextmanager
    def batch(self, index: Tensor | Sequence[int]) -> Iterator[None]:
        """Forwards inside the block use adapter index[b] for sample b (1-D integers, one a sample; −1: no adapter)."""
        index = torch.as_tensor(index)
        if index.ndim != 1 or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"the adapter index must be a 1-D integer tensor, got {tuple(index.shape)} {index.dtype}")
        if index.numel() and (int(index.min()) < -1 or int(index.max()) >= self.size):
            raise ValueError(f"adapter indices must lie in [-1, {self.size}), got {index.min()}..{index.max()}")
        previous = self._index, self._keep
        self._index = index.long()
        self._keep = (index >= 0) if index.numel() and int(index.min()) < 0 else None  # samples with an adapter
        try:
            yield
        finally:
            self._index, self._keep = previous

    @contextlib.contextmanager
    def substitute(self, values: Mapping[str, Tensor]) -> Iterator[None]:
        """Forwards inside the block read the K copies from `values` (`named_parameters` names → (K, *shape)
        tensors, e.g. a hypernetwork's differentiable output) instead of the stacked parameters, which stay as they
        are and get no gradient."""
        own = dict(self.named_parameters())
        if set(values) != set(own):
            missing, extra = sorted(set(own) - set(values)), sorted(set(values) - set(own))
            raise ValueError(f"substitute needs every stacked tensor: missing {missing[:3]}, unknown {extra[:3]}")
        for name, value in values.items():
            if value.shape != own[name].shape:
                raise ValueError(f"{name}: substitute of shape {tuple(value.shape)}, the population holds "
                                 f"{tuple(own[name].shape)}")  # fmt: skip
        saved = [(member, member.stacked) for member in self.members]
        for member in self.members:
            member.stacked = {n: values[f"{member.name}.{n}"] for n in member.stacked}
            member.gains = None  # a cached serving table belongs to the stacked copies
        try:
            yield
        finally:
            for member, stacked in saved:
                member.stacked, member.gains = stacked, None

    def batch_names(self, names: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """`batch` by adapter name (a bank's directory names, `names`; "__base__": no adapter)."""
        position = {name: k for k, name in enumerate(self.names)}
        unknown = sorted(set(names) - set(position) - {BASE})
        if unknown:
            raise ValueError(f"no adapter named {', '.join(map(repr, unknown))} in this bank of {self.size}")
        return self.batch(torch.tensor([position.get(name, -1) for name in names], dtype=torch.long))

    def _attach(self) -> None:
        for member in self.members:
            layer = member.layer
            for param in layer.pi_adapters[self.adapter_name].parameters():
                self._requires_grad[id(param)] = param.requires_grad
            layer.enable_adapters(False)
            self._handles.append(layer.register_forward_hook(self._hook(member)))

    def detach(self) -> None:
        """Remove the hooks and switch the model's own adapter back on (holding whatever was loaded last)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for member in self.members:
            member.layer.enable_adapters(True)
            for param in member.layer.pi_adapters[self.adapter_name].parameters():
                param.requires_grad_(self._requires_grad.get(id(param), param.requires_grad))

    def _hook(self, member: _Member):
        def hook(layer: AdapterLayer, args: tuple, output: Tensor) -> Tensor:
            if self._index is None:
                raise RuntimeError(
                    f"{member.name}: a population forward needs the adapter of each sample: run it inside "
                    "population.batch(index), or detach() the population to use the model's own adapter"
                )
            x = args[0]
            if x.shape[0] != self._index.numel():
                raise ValueError(
                    f"{member.name}: input batch of {x.shape[0]} samples but {self._index.numel()} adapter indices"
                )
            # in place, as the layer's own path: the base output is fresh and Linear/Conv backward does not read it
            return output.add_(self._delta(member, x).to(output.dtype))

        return hook

    def _factors(self, member: _Member) -> tuple[tuple[Tensor | None, bool], ...]:
        """(down, gain, up), each with whether it differs per sample: a factor shared by every copy (a frozen buffer,
        returned as itself) stays one tensor; the others are evaluated on all K copies at once (`vmap` over
        `functional_call`) and gathered per sample."""
        if member.varying is None:
            own = member.factors()
            probe = functional_call(member.factors, {f"adapter.{n}": p[0] for n, p in member.stacked.items()}, ())
            member.varying = tuple(i for i, (a, b) in enumerate(zip(own, probe, strict=True)) if b is not a)

        def varying(params: dict[str, Tensor]) -> tuple[Tensor, ...]:
            out = functional_call(member.factors, {f"adapter.{n}": p for n, p in params.items()}, ())
            return tuple(out[i] for i in member.varying)

        factors: list[tuple[Tensor | None, bool]] = [(f, False) for f in member.factors()]
        index = self._index.clamp(min=0)  # −1 (no adapter) borrows copy 0; `_delta` zeroes those samples
        if member.varying == (1,) and not torch.is_grad_enabled():  # serving a bank: K gains once, then gathers
            tensors = (*member.stacked.values(), *member.factors.adapter.buffers())
            versions = tuple((t.data_ptr(), t._version) for t in tensors)  # any step, load or cast recomputes
            if member.gains is None or member.gains[0] != versions:
                member.gains = (versions, torch.func.vmap(varying)(member.stacked)[0])
            factors[1] = (member.gains[1][index.to(member.gains[1].device)], True)
        elif member.varying:
            gathered = {n: p[index.to(p.device)] for n, p in member.stacked.items()}  # B evaluations, not K
            for position, value in zip(member.varying, torch.func.vmap(varying)(gathered), strict=True):
                factors[position] = (value, True)
        return tuple(factors)

    def _delta(self, member: _Member, x: Tensor) -> Tensor:
        (down, down_each), (gain, gain_each), (up, up_each) = self._factors(member)
        scale = member.layer.effective_scale(self.adapter_name)
        x = x.to(down.dtype)
        if gain is not None and gain_each:
            gain = gain[:, None, :] if not member.layer.is_conv else gain[:, :, None, None]
        elif gain is not None and member.layer.is_conv:
            gain = gain[:, None, None]
        if member.layer.is_conv:
            return self._without_base_rows(_conv_delta(member.layer, x, down, down_each, gain, up, up_each) * scale)
        batch = x.shape[0]
        tokens = x.reshape(batch, -1, x.shape[-1])
        h = torch.bmm(tokens, down.transpose(1, 2)) if down_each else tokens @ down.T
        if gain is not None:
            h = h * gain
        out = torch.bmm(h, up.transpose(1, 2)) if up_each else h @ up.T
        return self._without_base_rows((out * scale).reshape(*x.shape[:-1], out.shape[-1]))

    def _without_base_rows(self, delta: Tensor) -> Tensor:
        """Zero the delta of samples served by no adapter (index −1)."""
        if self._keep is None:
            return delta
        keep = self._keep.to(device=delta.device, dtype=delta.dtype)
        return delta * keep.reshape(-1, *([1] * (delta.ndim - 1)))

    def _check_index(self, k: int) -> None:
        if not 0 <= k < self.size:
            raise IndexError(f"adapter {k} is outside the population of {self.size}")


def _conv_delta(
    layer: AdapterLayer, x: Tensor, down: Tensor, down_each: bool, gain: Tensor | None, up: Tensor, up_each: bool
) -> Tensor:
    """LoCon per sample: R as a conv with the base geometry (grouped by sample when R differs), gain, C as 1×1."""
    conv = layer.get_base_layer()
    geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    r = down.shape[-2]
    if down_each:
        batch, channels = x.shape[:2]
        kernel = down.reshape(batch * r, channels, *conv.kernel_size)
        h = F.conv2d(x.reshape(1, batch * channels, *x.shape[2:]), kernel, groups=batch, **geometry)
        h = h.reshape(batch, r, *h.shape[2:])
    else:
        h = F.conv2d(x, down.reshape(r, -1, *conv.kernel_size), **geometry)
    if gain is not None:
        h = h * gain
    return torch.einsum("brhw,bmr->bmhw", h, up) if up_each else torch.einsum("brhw,mr->bmhw", h, up)


def per_adapter_mean(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Mean of per-sample `values` (B,) over each adapter's samples, shape (K,); an adapter without samples gets 0."""
    index = index.to(values.device)
    sums = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, index, values)
    counts = torch.bincount(index, minlength=size).to(values.dtype).clamp(min=1)
    return sums / counts
