"""A fixed output basis for the hypernetwork from an adapter data set: the principal directions of its training
adapters' trained values (HyperLoRA-style "LoRA through a basis", issue 22).

LoRA trains r·(m + n) values per layer (161,792 on the glyph model at r = 8), too many for an MLP to output
directly; through a basis the MLP outputs k coefficients c and the adapter is init + shift + c @ basis, with

    shift = mean(training adapters) − init        basis = top-k principal directions of the centred adapters

so the untrained network (last layer zero) is the data set's *mean* adapter, not the method's standard init: the
centred directions span deviations from the mean, and without the shift the data set's own adapters would lie
outside init + span(basis). With `basis_whiten` each direction is scaled by its standard deviation over the data
set, so a unit coefficient is one std whatever k is. Only the data set's split "train" is read, never "heldout".

A PCA over LoRA's (A, B) is meaningful only when every adapter has the same gauge (A B = (A G)(G⁻¹ B) for any
invertible G): adapters trained from one init (the data set's `init_seed`, the hypernetwork's `init_seed`) share
theirs, which is checked; `fit_basis` also records how far the adapters moved from that init.

    source = basis_source(BasisSettings(basis_dataset="runs/data/adapters-lora"), method="lora", heldout=ids,
                          init_seed=0)          # cheap checks, before anything heavy loads
    basis, info = fit_basis(source, slots, keys, template, layout, unet, settings)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..checkpoint import verify_adapter_dir
from ..training.fields import setting
from . import dataset as D
from .entries import WRAPPER_PREFIX, load_entries, training_data
from .hypernetwork import OutputBasis, Slots
from .representation import LayerLayout
from .workflow import base_fingerprints, check_base


@dataclass(frozen=True)
class BasisSettings:
    """Where the hypernetwork's output basis comes from (recorded with the run; a resumed run must keep it)."""

    basis_dataset: str | None = setting(
        None, "adapter data set whose training adapters' principal directions span the output (default: no basis)"
    )
    basis_size: int = setting(64, "k: principal directions kept (at most the data set's training adapters − 1)")
    basis_whiten: bool = setting(True, "scale each direction to one std of the data set along it")

    def __post_init__(self) -> None:
        if isinstance(self.basis_size, bool) or not isinstance(self.basis_size, int) or self.basis_size < 1:
            raise ValueError(f"basis_size must be an integer >= 1, got {self.basis_size!r}")


@dataclass
class BasisSource:
    """An adapter data set checked against the run (method, held-out subjects, init seed) and its training entries."""

    dataset: D.AdapterDataset
    entries: list[D.DatasetEntry]
    settings: BasisSettings


def trained_vector(state: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    """An adapter's trained values as one float64 vector, in the slots' order (`keys`: saved keys, no wrapper)."""
    return torch.cat([state[key].double().flatten() for key in keys])


def adapter_vector(directory: str | Path, keys: Sequence[str]) -> Tensor:
    """`trained_vector` of a verified adapter directory (PeftModel.save_pretrained's keys)."""
    _, tensors = verify_adapter_dir(directory)
    return trained_vector({k.removeprefix(WRAPPER_PREFIX): v for k, v in tensors.items()}, keys)


def basis_source(settings: BasisSettings | None, *, method: str, heldout: Sequence[str],
                 init_seed: int) -> BasisSource | None:  # fmt: skip
    """The basis data set, refused when it holds another method's adapters, has no training adapters, was trained
    from another init seed (another gauge) or trained on any of the run's held-out subjects."""
    if settings is None or settings.basis_dataset is None:
        return None
    dataset = training_data(settings.basis_dataset)
    where = f"basis data set {dataset.root}"
    if dataset.method != method:
        raise ValueError(f"{where} holds {dataset.method} adapters; the hypernetwork predicts {method}")
    entries = dataset.entries("train")
    if len(entries) < 2:
        raise ValueError(f"{where} has {len(entries)} training adapter(s); a basis needs at least 2")
    leaked = sorted({e.subject_id for e in entries} & set(heldout))
    if leaked:
        raise ValueError(f"{where} trained on held-out subjects {leaked[:5]}: the basis would leak them; use a data "
                         "set whose training split excludes the run's held-out subjects")  # fmt: skip
    recorded = dataset.settings.get("init_seed")
    if recorded is not None and int(recorded) != init_seed:
        raise ValueError(f"{where} trained its adapters from init seed {recorded}, the hypernetwork's adapter uses "
                         f"{init_seed}: not one gauge; pass --init-seed {recorded}")  # fmt: skip
    if len(entries) - 1 < settings.basis_size:
        raise ValueError(f"basis size {settings.basis_size} needs at least {settings.basis_size + 1} training "
                         f"adapters; {where} has {len(entries)}")  # fmt: skip
    return BasisSource(dataset, entries, settings)


def fit_basis(source: BasisSource, slots: Slots, keys: Sequence[str], template: Mapping[str, Tensor],
              layout: Sequence[LayerLayout], unet: nn.Module) -> tuple[OutputBasis, dict[str, Any]]:  # fmt: skip
    """The output basis of `source`'s training adapters for a run whose adapter has `slots` (saved `keys`,
    `template` at init) on `unet`; refused when an adapter was trained on another base (fingerprints), has other
    tensors or shapes (another configuration) or other frozen factors. Returns the basis and what to record."""
    where = f"basis data set {source.dataset.root}"
    _, states = load_entries(source.dataset, source.entries)
    fingerprints = base_fingerprints(unet, layout, where)
    fingerprint_keys = {layer.key("fingerprint") for layer in layout}
    trained = set(keys)
    for entry, state in zip(source.entries, states, strict=True):
        what = f"{where}: adapter {entry.name}"
        if set(state) != set(template):
            extra, missing = sorted(set(state) - set(template)), sorted(set(template) - set(state))
            raise ValueError(f"{what} has another adapter configuration (extra {extra[:2]}, missing {missing[:2]})")
        for key, shape in zip(keys, slots.shapes, strict=True):
            if tuple(state[key].shape) != shape:
                raise ValueError(f"{what}: {key} is {tuple(state[key].shape)}, the run's adapter trains {shape}")
        check_base(fingerprints, layout, state, what)
        for key in sorted(set(template) - trained - fingerprint_keys):  # frozen factors: the same adapter at init
            if not torch.allclose(state[key].double(), template[key].double(), rtol=1e-5, atol=1e-7):
                raise ValueError(f"{what}: its frozen {key} differs from the run's adapter at init")
    X = torch.stack([trained_vector(state, keys) for state in states])
    settings = source.settings
    mean, basis, std = Fn.principal_basis(X, settings.basis_size, settings.basis_whiten)
    init = slots.init.double()
    output = OutputBasis(basis.float(), (mean - init).float())
    total = float((X - mean).square().sum() / (len(X) - 1))
    moved = (X - init).norm(dim=1) / init.norm().clamp_min(1e-30)
    info = {
        "dataset": str(source.dataset.root),
        "size": settings.basis_size,
        "whiten": settings.basis_whiten,
        "adapters": len(X),
        "subjects": sorted({e.subject_id for e in source.entries}),
        "values": int(X.shape[1]),
        "explained_variance": float(std.square().sum()) / total if total > 0 else 1.0,
        "direction_std": [float(v) for v in std],
        "shift_norm": float((mean - init).norm()),
        "init_norm": float(init.norm()),
        "distance_to_init_relative": {"mean": float(moved.mean()), "max": float(moved.max())},
        "digest": output.digest(),
    }
    return output, info
