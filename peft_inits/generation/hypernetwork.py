"""An end-to-end hypernetwork: reference features → the values of an adapter's trained tensors, trained through the
frozen model's own loss (HyperLoRA-style, arXiv 2503.16944; issue 22).

What it predicts is what the method's weights class declares trainable — SVFit's `s`, LoLDU's `z`, LoRA's A and B —
read from a `Population` of the model's adapter, so no code names a method. The output is an offset from the
adapter's initial values (the last layer starts at zero: an untrained hypernetwork is the method's standard init).
With an `OutputBasis` (e.g. the principal directions of an adapter data set, for LoRA's many values; see
`hypernetwork_basis`) the MLP outputs k coefficients c instead and the values are init + shift + c @ basis.

Training couples it to the population mechanism: a batch holds K subjects, slot k of the population serves subject k,
and the K predicted value sets replace the population's stacked copies (`Population.substitute`) for one forward of
all their samples, so the loss of every subject back-propagates into the hypernetwork only (the base and the
population's own copies stay frozen).

    slots = Slots.of(population)                     # names, shapes and initial values of the trained tensors
    net = Hypernetwork(dims, slots, stats, HypernetSettings())
    task = hypernetwork_task(population, train_subjects, heldout_subjects, mean_condition)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ..population import Population
from ..training.fields import setting
from ..training.task import Task


@dataclass(frozen=True)
class HypernetSettings:
    """The network and its data (recorded with the run; a resumed run must keep them)."""

    hidden: int = setting(256, "hidden width of the MLP")
    depth: int = setting(1, "hidden layers of the MLP")
    images: int = setting(16, "training renders per subject (its DreamBooth images)")
    references: int = setting(8, "reference renders per subject (the condition)")
    renders: int = setting(4, "of a subject's training renders, how many each step uses")
    output_scale: float = setting(
        1.0, "the MLP's output × this is the offset from init: the method's step size (SVFit 1, LoLDU ≈ 1/30)"
    )

    def __post_init__(self) -> None:
        for name in ("hidden", "depth", "images", "references", "renders"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.output_scale > 0:
            raise ValueError(f"output_scale must be > 0, got {self.output_scale!r}")
        if self.renders > self.images:
            raise ValueError(f"renders ({self.renders}) cannot exceed images ({self.images})")


@dataclass(frozen=True)
class Slots:
    """The population's trained tensors: `Population.named_parameters` names, one copy's shapes, initial values."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    init: Tensor  # (P,) float32, the concatenated initial values

    @classmethod
    def of(cls, population: Population) -> Slots:
        named = list(population.named_parameters())
        init = torch.cat([p[0].detach().float().flatten().cpu() for _, p in named])
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape[1:]) for _, p in named), init)

    @property
    def size(self) -> int:
        return int(self.init.numel())

    def split(self, values: Tensor) -> dict[str, Tensor]:
        """(K, P) → {name: (K, *shape)}, differentiable."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            count = int(torch.Size(shape).numel())
            out[name] = values[:, offset : offset + count].reshape(len(values), *shape)
            offset += count
        return out


@dataclass(frozen=True)
class OutputBasis:
    """A fixed linear output space of the hypernetwork: values = init + shift + coefficients @ basis.

    basis (k, P) and shift (P,) are buffers of the network (saved with its weights, never trained)."""

    basis: Tensor
    shift: Tensor

    def __post_init__(self) -> None:
        if self.basis.ndim != 2 or self.shift.shape != (self.basis.shape[1],):
            raise ValueError(f"an output basis is (k, P) with a shift (P,), got {tuple(self.basis.shape)} and "
                             f"{tuple(self.shift.shape)}")  # fmt: skip
        if not (bool(torch.isfinite(self.basis).all()) and bool(torch.isfinite(self.shift).all())):
            raise ValueError("the output basis or its shift holds inf/NaN")

    @property
    def size(self) -> int:
        return int(self.basis.shape[0])

    def digest(self) -> str:
        """sha256 of the float32 bytes of basis and shift: a run records it and checks it on load and resume."""
        return basis_digest(self.basis, self.shift)


def basis_digest(basis: Tensor, shift: Tensor) -> str:
    """sha256 of the float32 bytes of `basis` then `shift`."""
    digest = hashlib.sha256()
    for tensor in (basis, shift):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Hypernetwork(nn.Module):
    """Normalised features of every source, concatenated → MLP → offsets of the trained values from their init.

    The feature statistics (training subjects' mean and std per dimension) are buffers, saved with the weights; so are
    an output basis and its shift when one is given (the MLP then outputs its k coefficients)."""

    def __init__(
        self,
        dims: Mapping[str, int],
        slots: Slots,
        stats: Mapping[str, tuple[Tensor, Tensor]] | None = None,
        settings: HypernetSettings | None = None,
        basis: OutputBasis | None = None,
    ) -> None:
        super().__init__()
        settings = settings or HypernetSettings()
        self.sources = tuple(dims)
        self.slots = slots
        for index, name in enumerate(self.sources):
            mean, std = (stats or {}).get(name, (torch.zeros(dims[name]), torch.ones(dims[name])))
            self.register_buffer(f"mean_{index}", mean.float().clone())
            self.register_buffer(f"std_{index}", std.float().clone())
        self.register_buffer("init", slots.init.clone())
        outputs = slots.size
        if basis is not None:
            if basis.basis.shape[1] != slots.size:
                raise ValueError(f"the output basis spans {basis.basis.shape[1]} values but the adapter trains "
                                 f"{slots.size}: a basis of another method or configuration")  # fmt: skip
            self.register_buffer("basis", basis.basis.float().clone())
            self.register_buffer("shift", basis.shift.float().clone())
            outputs = basis.size
        self.has_basis = basis is not None
        layers: list[nn.Module] = []
        width = sum(dims.values())
        for _ in range(settings.depth):
            layers += [nn.Linear(width, settings.hidden), nn.SiLU()]
            width = settings.hidden
        last = nn.Linear(width, outputs)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)
        self.scale = settings.output_scale

    def normalised(self, conditions: Mapping[str, Tensor]) -> Tensor:
        missing = [n for n in self.sources if n not in conditions]
        if missing:
            raise ValueError(f"conditions lack the feature source(s) {missing} the hypernetwork was trained with")
        parts = []
        for index, name in enumerate(self.sources):
            mean = getattr(self, f"mean_{index}")
            value = conditions[name].to(mean)
            if value.ndim != 2 or value.shape[1] != mean.shape[0]:
                raise ValueError(
                    f"feature source {name!r} gives shape {tuple(value.shape)}; the hypernetwork was trained on "
                    f"(N, {mean.shape[0]}): a different feature extractor?"
                )
            parts.append((value - mean) / getattr(self, f"std_{index}"))
        return torch.cat(parts, dim=1)

    def forward(self, conditions: Mapping[str, Tensor]) -> Tensor:
        """(B, P): the trained values for each row of raw (unnormalised) `conditions` (name → (B, D))."""
        out = self.scale * self.mlp(self.normalised(conditions))
        if self.has_basis:
            return self.init + self.shift + out @ self.basis
        return self.init + out


def feature_stats(conditions: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per source: mean and std over the training subjects (a constant dimension keeps std 1)."""
    stats = {}
    for name, value in conditions.items():
        value = value.double()
        std = value.std(0) if len(value) > 1 else torch.ones(value.shape[1], dtype=torch.float64)
        stats[name] = (value.mean(0), torch.where(std > 1e-8, std, torch.ones_like(std)))
    return stats


class Subjects(Protocol):
    """Subjects with a condition each and a loss under per-sample adapters (population slot k = row k)."""

    conditions: dict[str, Tensor]  # raw features, name → (N, D)

    def __len__(self) -> int: ...

    def losses(self, population: Population, rows: Tensor, fixed: bool) -> Tensor:
        """Each listed subject's loss, shape (len(rows),), with slot k of `population` serving subject rows[k]; random
        draws from the global RNG, or a fixed draw per subject when `fixed` (validation)."""
        ...


class _Rows:
    """The loop's training set: a batch is a list of subject rows."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        return {"rows": torch.as_tensor(list(indices), dtype=torch.long)}


def subject_losses(model: nn.Module, population: Population, subjects: Subjects, rows: Tensor, fixed: bool,
                   conditions: Mapping[str, Tensor] | None = None) -> Tensor:  # fmt: skip
    """Each subject's loss with its predicted adapter (from `conditions` rows, default the subjects' own)."""
    rows = rows.cpu()
    if len(rows) > population.size:
        raise ValueError(f"{len(rows)} subjects in one batch but the population holds {population.size} slots")
    source = subjects.conditions if conditions is None else conditions
    chosen = {name: value[rows] for name, value in source.items()}
    values = model(chosen)
    if len(rows) < population.size:  # idle slots hold the init; no sample uses them
        pad = model.init.expand(population.size - len(rows), -1)
        values = torch.cat([values, pad.to(values)])
    with population.substitute(model.slots.split(values)):
        return subjects.losses(population, rows, fixed)


def hypernetwork_task(population: Population, train: Subjects, validation: Subjects | None = None) -> Task:
    """The loop's Task: the mean subject loss of a batch of training subjects; validation: the mean loss of the
    held-out subjects on a fixed draw with their own condition (`val_loss`) and with the training mean condition
    (`val_loss_mean_condition`: how much the conditioning carries)."""

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return subject_losses(model, population, train, batch["rows"], fixed=False).mean()

    @torch.no_grad()
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        held = validation or train
        mean = {name: value.mean(0, keepdim=True).expand(len(held), -1) for name, value in train.conditions.items()}
        totals = {"val_loss": 0.0, "val_loss_mean_condition": 0.0}
        for start in range(0, len(held), population.size):
            rows = torch.arange(start, min(start + population.size, len(held)))
            totals["val_loss"] += float(subject_losses(model, population, held, rows, True).sum())
            totals["val_loss_mean_condition"] += float(
                subject_losses(model, population, held, rows, True, conditions=mean).sum()
            )
        return {key: value / len(held) for key, value in totals.items()}

    return Task(train=_Rows(len(train)), loss=loss, evaluate=evaluate, metric="val_loss", greater_is_better=False)
