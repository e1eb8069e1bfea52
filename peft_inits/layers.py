"""One tuner layer for every adapter method, wrapping `nn.Linear` or `nn.Conv2d` (LoCon form).

Enable/disable, merge/unmerge (safe and unsafe), several named adapters and device moves are implemented once here;
the per-method differences live in `adapters.py` and the maths in `functional.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import Tensor, nn

from . import functional as Fn
from .adapters import AdapterSpec, AdapterWeights, build_adapter
from .kernels import adapter_delta
from .kernels.cost import PathChoice, choose_path, env_path
from .kernels.merged import merged_linear

logger = logging.getLogger(__name__)


def check_supported(module: nn.Module, name: str = "module") -> None:
    """Raise a clear error for modules the adapters cannot wrap exactly."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise TypeError(f"{name}: grouped/depthwise Conv2d (groups={module.groups}) is not supported")
        if module.padding_mode != "zeros":
            raise TypeError(f"{name}: Conv2d padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
        return
    if isinstance(module, nn.Linear):
        return
    raise TypeError(
        f"{name}: {type(module).__name__} is not supported; adapters wrap nn.Linear and nn.Conv2d (groups=1) only"
    )


class AdapterLayer(nn.Module, BaseTunerLayer):
    """A frozen base layer plus named adapters of any registered method: y = base(x) + Σ_active scale·C(g ⊙ R x)."""

    adapter_layer_names = ("pi_adapters",)
    # "auto" (cost model, or $PEFT_INITS_ADAPTER_PATH when set), "factored" or "merged"; see kernels/cost.py
    adapter_path: str = "auto"
    # merged path: keep W + ΔW (m × n) for dx, or form it again in backward (r·m·n more work, less memory)
    merged_saves_weight: bool = True
    last_path: PathChoice | None = None

    def __init__(self, base_layer: nn.Module, adapter_name: str, spec: AdapterSpec) -> None:
        super().__init__()
        check_supported(base_layer)
        self.base_layer = base_layer
        self.pi_adapters = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.adapter_weights: dict[str, float] = {}  # output multipliers set by composition (default 1)
        self._active_adapter = adapter_name
        # PEFT's tuner layers expose the wrapped layer's sizes (a Conv2d's channels, as PEFT's LoRA Conv2d does)
        self.in_features: int = getattr(base_layer, "in_features", getattr(base_layer, "in_channels", 0))
        self.out_features: int = getattr(base_layer, "out_features", getattr(base_layer, "out_channels", 0))
        self.update_layer(adapter_name, spec)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.get_base_layer(), nn.Conv2d)

    def update_layer(self, adapter_name: str, spec: AdapterSpec) -> None:
        """Add (or replace) adapter `adapter_name`, built from the current base weight."""
        weight = self.get_base_layer().weight
        self.pi_adapters[adapter_name] = build_adapter(weight, spec)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Put one adapter on the base layer's device, keeping its own dtype (fp32 unless the user casts it).

        Adapters whose parameters are still on the meta device (PEFT's `low_cpu_mem_usage=True`: the checkpoint is
        assigned into them afterwards) are left where they are; PEFT calls this again once they hold real values.
        """
        adapter = self.pi_adapters[adapter_name] if adapter_name in self.pi_adapters else None  # noqa: SIM401 (no .get)
        if adapter is None or any(p.is_meta for p in adapter.parameters()):
            return
        target = device if device is not None else self.get_base_layer().weight.device
        if target.type != "meta":
            self.pi_adapters[adapter_name] = adapter.to(target)

    def cast_adapter(self, adapter_name: str, dtype: torch.dtype) -> None:
        """Cast one adapter's floating tensors to `dtype` (a meta adapter only records the dtype)."""
        if dtype.is_floating_point:
            self.pi_adapters[adapter_name] = self.pi_adapters[adapter_name].to(dtype=dtype)

    def adapter(self, adapter_name: str) -> AdapterWeights:
        """One adapter, ready to use: rebuilt from the base weight if it was made while that was on the meta
        device, and checked against the base weight (see `AdapterWeights.check_before_use`)."""
        adapter = self.pi_adapters[adapter_name]
        if adapter.pending:
            self.pi_adapters[adapter_name] = adapter.materialize(self.get_base_layer().weight)
            self._move_adapter_to_device_of_base_layer(adapter_name)
            adapter = self.pi_adapters[adapter_name]
        adapter.check_before_use()
        return adapter

    def set_adapter_weight(self, adapter_name: str, weight: float) -> None:
        """Scale one adapter's delta by `weight` (1 = as trained) without touching its trained state."""
        if adapter_name not in self.pi_adapters:
            raise ValueError(f"this layer holds no adapter {adapter_name!r}")
        if self.merged:
            raise ValueError("unmerge before changing an adapter's weight")
        self.adapter_weights[adapter_name] = float(weight)

    def effective_scale(self, adapter_name: str) -> float:
        """The adapter's own scale times its composition weight."""
        return self.pi_adapters[adapter_name].scale * self.adapter_weights.get(adapter_name, 1.0)

    # ------------------------------------------------------------------------------------------------ maths

    def delta_forward(self, x: Tensor, adapter_name: str) -> Tensor:
        """Δy of one adapter for input x, computed in the adapter's dtype (fp32 by default)."""
        adapter = self.adapter(adapter_name)
        down, gain, up = adapter.factors()
        x = x.to(down.dtype)
        if not self.is_conv:  # fused down→gain→up (Triton on CUDA, torch elsewhere); same maths as Fn.linear_delta
            return adapter_delta(x, down, gain, up, self.effective_scale(adapter_name))
        conv = self.get_base_layer()
        return Fn.conv2d_delta(
            x,
            down,
            gain,
            up,
            self.effective_scale(adapter_name),
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
        )

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """ΔW of one adapter, shaped like the base weight, in the adapter's dtype."""
        down, gain, up = self.adapter(adapter_name).factors()
        delta = Fn.delta_weight(down, gain, up, self.effective_scale(adapter_name))
        return delta.reshape(self.get_base_layer().weight.shape)

    # ------------------------------------------------------------------------------------------------ merging

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ΔW of the given (default: active) adapters into the base weight; sums are formed in fp32."""
        weight = self.get_base_layer().weight
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.pi_adapters:
                continue
            merged = weight.data.float() + self.get_delta_weight(name).detach().float()
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"merging adapter {name!r} would put inf/NaN into the base weight; nothing merged")
            weight.data.copy_(merged.to(weight.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged ΔW again, newest first."""
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            restored = weight.data.float() - self.get_delta_weight(name).detach().float()
            weight.data.copy_(restored.to(weight.dtype))

    # ------------------------------------------------------------------------------------------------ forward

    def choose_path(self, x: Tensor, adapter_name: str) -> PathChoice | None:
        """The cost model's path for this call (from T, r, m, n), or None where only the factored path applies.

        The merged path needs a Linear with one active adapter whose gain alone trains (SVFit/LoLDU), a frozen base
        layer without hooks and no autocast; `adapter_path` / $PEFT_INITS_ADAPTER_PATH force a path.
        """
        base = self.get_base_layer()
        down, gain, up = self.pi_adapters[adapter_name].factors()
        frozen = not any(t is not None and t.requires_grad for t in (base.weight, base.bias, down, up))
        hooked = base._forward_hooks or base._forward_pre_hooks
        if self.is_conv or gain is None or not frozen or hooked or torch.is_autocast_enabled():
            return None
        forced = self.adapter_path if self.adapter_path != "auto" else env_path()
        m, n = base.weight.shape
        tokens = x.numel() // n if x.shape[-1] == n else 0
        # Costed as a training step whatever the grad mode, so that train and eval calls of the same shapes take
        # the same path and give bit-identical outputs.
        return choose_path(tokens, down.shape[0], m, n, need_dx=True, need_dgain=True, forced=forced)

    def _record(self, choice: PathChoice) -> None:
        if self.last_path is None or (choice.path, choice.gain_gradient) != (
            self.last_path.path,
            self.last_path.gain_gradient,
        ):
            logger.debug("%s: adapter path %s", type(self.get_base_layer()).__name__, choice.describe())
        self.last_path = choice

    def forward(self, x: Tensor, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Tensor:
        if adapter_names is not None:
            return self.mixed_forward(x, adapter_names, *args, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        names = [name for name in self.active_adapters if name in self.pi_adapters]
        if len(names) == 1 and not args and not kwargs:
            adapter = self.adapter(names[0])  # materialised and checked before any path reads it
            choice = self.choose_path(x, names[0])
            if choice is not None:
                self._record(choice)
                if choice.path == "merged":
                    base = self.get_base_layer()
                    down, gain, up = adapter.factors()
                    scale = self.effective_scale(names[0])
                    return merged_linear(x, base.weight, base.bias, down, gain, up, scale, choice.gain_gradient)
        out = self.base_layer(x, *args, **kwargs)
        for name in names:
            # in place: the base output is fresh and its backward (Linear/Conv) does not read it; saves a T×m tensor
            out = out.add_(self.delta_forward(x, name).to(out.dtype))
        return out

    # ------------------------------------------------------------------------------------------------ mixed batches

    def mixed_forward(self, x: Tensor, adapter_names: Sequence[str], *args: Any, **kwargs: Any) -> Tensor:
        """Sample b through adapter `adapter_names[b]` (PEFT's mixed batch; "__base__" or an adapter this layer does
        not hold: none). Adapters with equal `factor_key`s share one down- and one up-projection, their gains gathered
        per sample; each other adapter runs on its own samples, as PEFT's LoRA does."""
        if len(adapter_names) != len(x):
            raise ValueError(
                f"adapter_names has {len(adapter_names)} names for a batch of {len(x)} inputs; give one per sample"
            )
        if self.merged:
            raise ValueError("cannot pass adapter_names while adapters are merged; call unmerge_adapter() first")
        out = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return out
        groups: dict[Hashable, list[str]] = {}
        for name in dict.fromkeys(adapter_names):
            if name in self.pi_adapters:
                key = self.adapter(name).factor_key()
                groups.setdefault((name,) if key is None else key, []).append(name)
        for names in groups.values():
            position = {name: k for k, name in enumerate(names)}
            rows = [b for b, name in enumerate(adapter_names) if name in position]
            whole = len(rows) == len(x)
            index = torch.tensor(rows, device=x.device)
            inputs = x if whole else x.index_select(0, index)
            if len(names) == 1:
                delta = self.delta_forward(inputs, names[0])
            else:
                which = torch.tensor([position[adapter_names[b]] for b in rows], device=x.device)
                delta = self.shared_factor_delta(inputs, names, which)
            delta = delta.to(out.dtype)
            out = out.add_(delta) if whole else out.index_add_(0, index, delta)
        return out

    def shared_factor_delta(self, x: Tensor, names: Sequence[str], which: Tensor) -> Tensor:
        """Δy for sample b through adapter names[which[b]], all of which share their down and up factors."""
        adapters = [self.adapter(name) for name in names]
        down, _, up = adapters[0].factors()
        gains = torch.stack([a.factors()[1] * self.effective_scale(n) for a, n in zip(adapters, names, strict=True)])
        gains = gains.index_select(0, which)
        x = x.to(down.dtype)
        if not self.is_conv:
            return Fn.linear_delta(x, down, gains, up, 1.0)
        conv = self.get_base_layer()
        geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        return Fn.conv2d_delta(x, down, gains, up, 1.0, kernel_size=conv.kernel_size, **geometry)

    def extra_repr(self) -> str:
        last = "none yet" if self.last_path is None else self.last_path.describe()
        return f"adapter_path={self.adapter_path}, last call: {last}"

    def __repr__(self) -> str:
        return "pi." + super().__repr__()


def adapter_layers(model: nn.Module, adapter_name: str) -> dict[str, AdapterLayer]:
    """The layers of `model` that hold adapter `adapter_name`, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer) and adapter_name in m.pi_adapters}
