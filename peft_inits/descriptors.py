"""Adapters as descriptors: turn a trained adapter's weights alone into one vector (arXiv 2412.12048's question).

Three descriptors, one interface (`DESCRIPTORS[name](records, base) -> array N × d`):

- `factors`: the paper's baseline, flattened A and B of every layer, concatenated, then PCA over the collection.
  Not well defined for LoRA: (B·G)(G⁻¹·A) is the same adapter with other factors.
- `delta`: factorisation-invariant. Per layer, the singular values of ΔW = B·A and the k × k projection
  U_kᵀ ΔW V_k onto the base weight's top-k singular vectors, computed from the r-dimensional factors without forming ΔW.
- `gains`: methods that train a gain (SVFit, LoLDU): the trained gain relative to its initial value, as each method's
  `relative_gain` hook defines it ((s − σ_r)/σ_r, (σz − σ₀z_ref)/(σ₀z_ref)), tied to fixed bases of the frozen
  weight, so canonical by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import functional as Fn
from .blocks import select_blocks
from .export import lora_pairs


@dataclass
class AdapterRecord:
    """What the descriptors read from one adapter: exact low-rank factors of ΔW per module, and gains if any."""

    path: str
    method: str
    pairs: dict[str, tuple[Tensor, Tensor]]  # module → (A: r × n, B: m × r) with B·A = ΔW (conv kernels flattened)
    gains: dict[str, Tensor] = field(default_factory=dict)  # module → relative gain change (SVFit / LoLDU)
    label: str | None = None


def record_from_model(model: nn.Module, path: str = "", label: str | None = None, adapter_name: str = "default"):
    """Read an `AdapterRecord` from a model holding a peft_inits adapter; gains come from each method's
    `relative_gain` hook (methods without a trained gain, e.g. LoRA, contribute none)."""
    pairs = {p.name: (p.A.flatten(1), p.B.flatten(1)) for p in lora_pairs(model, adapter_name)}
    gains: dict[str, Tensor] = {}
    methods = set()
    for name, module in model.named_modules():
        adapters = getattr(module, "pi_adapters", None)
        if adapters is None or adapter_name not in adapters:
            continue
        adapter = adapters[adapter_name]
        methods.add(adapter.method)
        key = name.removeprefix("base_model.model.")
        with torch.no_grad():
            gain = adapter.relative_gain()
        if gain is not None:
            gains[key] = gain
    method = methods.pop() if len(methods) == 1 else "mixed"
    return AdapterRecord(path=path, method=method, pairs=pairs, gains=gains, label=label)


def record_from_peft_lora(directory: str | Path, label: str | None = None) -> AdapterRecord:
    """Read a plain PEFT LoRA directory (`lora_A`/`lora_B` + `LoraConfig`), scaling folded into B, no model needed."""
    from .checkpoint import load_tensors

    directory = Path(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_tensors(directory / "adapter_model.safetensors")
    pairs = {}
    for key, A in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
        B = tensors[key.replace(".lora_A.", ".lora_B.")]
        r = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        scale = alpha / (r**0.5 if config.get("use_rslora") else r)
        pairs[name] = (A.flatten(1).float(), B.flatten(1).float() * scale)
    if not pairs:
        raise ValueError(f"{directory} holds no lora_A/lora_B weights")
    return AdapterRecord(path=str(directory), method="peft-lora", pairs=pairs, label=label)


def _pattern_value(patterns: dict, name: str, default: float) -> float:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the full name or a dotted suffix, as a regex."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key.strip('^$')})$", name):
            return value
    return default


# ------------------------------------------------------------------------------------------------ layer selection


def select_modules(records: Sequence[AdapterRecord], base: nn.Module | None, module_kinds: Iterable[str] | None):
    """Modules every record adapts, in a fixed order, optionally only those of some kinds (e.g. ['attn'])."""
    common = set.intersection(*(set(r.pairs) for r in records)) if records else set()
    if not common:
        raise ValueError("the adapters share no adapted module; descriptors need a common set of layers")
    names = sorted(common)
    if module_kinds is None:
        return names
    if base is None:
        raise ValueError("selecting layers by kind needs the base model")
    targets = select_blocks(base, target_modules=names, module_kinds=list(module_kinds))
    return [t.name for t in targets]


# ------------------------------------------------------------------------------------------------ descriptors


def factors_descriptor(
    records: Sequence[AdapterRecord], base: nn.Module | None = None, *, module_kinds=None, components: int = 16
) -> np.ndarray:
    """Baseline: concatenated flattened (A, B) of every selected layer, reduced by PCA over the collection."""
    names = select_modules(records, base, module_kinds)
    rows = np.stack([np.concatenate([_flat(r.pairs[n]) for n in names]) for r in records])
    return _pca(rows, components)


def _flat(pair: tuple[Tensor, Tensor]) -> np.ndarray:
    A, B = pair
    return np.concatenate([A.detach().cpu().numpy().ravel(), B.detach().cpu().numpy().ravel()])


def _pca(rows: np.ndarray, components: int) -> np.ndarray:
    centred = rows - rows.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(components, len(s))
    return u[:, :k] * s[:k]


def delta_spectrum(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of ΔW = B·A from its factors in O((m+n)r²): returns (U: m × r, S: r, V: n × r) with ΔW = U diag(S) Vᵀ."""
    Qb, Rb = torch.linalg.qr(B.double())
    Qa, Ra = torch.linalg.qr(A.double().T)
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T)
    return Qb @ Uc, S, Qa @ Vch.T


class BaseBases:
    """Top-k singular vectors of each base weight, computed once per base model and module."""

    def __init__(self, base: nn.Module, k: int = 8) -> None:
        self.modules = dict(base.named_modules())
        self.k = k
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def __call__(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in self._cache:
            module = self.modules.get(name)
            weight = getattr(module, "weight", None)
            if weight is None:
                raise ValueError(f"base model has no weight for adapted module {name!r}: a different base model?")
            W = Fn.weight_matrix(getattr(module, "base_layer", module).weight).double()
            k = min(self.k, *W.shape)
            f = Fn.svd_top_r(W, k, dtype=torch.float64)
            self._cache[name] = (f.U, f.Vh.T)
        return self._cache[name]


def delta_descriptor(
    records: Sequence[AdapterRecord], base: nn.Module, *, module_kinds=None, k: int = 8, normalise: str = "layer"
) -> np.ndarray:
    """Invariant descriptor: per layer, σ(ΔW) and vec(U_kᵀ ΔW V_k) on the base weight's singular bases.

    `normalise="layer"` scales each layer's block to unit norm (style = direction, not strength); "none" keeps it.
    A record whose shapes do not match the base weights is refused.
    """
    bases = BaseBases(base, k)
    names = select_modules(records, base, module_kinds)
    out = []
    for record in records:
        blocks = []
        for name in names:
            A, B = (t.double() for t in record.pairs[name])
            U, V = bases(name)
            if U.shape[0] != B.shape[0] or V.shape[0] != A.shape[1]:
                raise ValueError(f"{record.path}: {name} is {B.shape[0]}×{A.shape[1]} but the base weight differs")
            _, S, _ = delta_spectrum(A, B)
            projection = (U.T @ B) @ (A @ V)
            block = torch.cat([S, projection.flatten()])
            if normalise == "layer":
                block = block / block.norm().clamp_min(1e-12)
            blocks.append(block)
        out.append(torch.cat(blocks).numpy())
    return np.stack(out)


def gains_descriptor(records: Sequence[AdapterRecord], base: nn.Module | None = None, *, module_kinds=None):
    """SVFit/LoLDU gain vectors relative to their inits, concatenated over the selected layers."""
    missing = [r.path for r in records if not r.gains]
    if missing:
        raise ValueError(
            f"the gains descriptor needs adapters that train a gain (e.g. SVFit, LoLDU); these have none: {missing[:3]}"
        )
    names = select_modules(records, base, module_kinds)
    return np.stack([torch.cat([r.gains[n] for n in names]).numpy() for r in records])


Descriptor = Callable[..., np.ndarray]
DESCRIPTORS: dict[str, Descriptor] = {
    "factors": factors_descriptor,
    "delta": delta_descriptor,
    "gains": gains_descriptor,
}
