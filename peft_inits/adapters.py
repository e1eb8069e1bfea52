"""The weights of one adapter on one matrix: LoRA, SVFit or LoLDU, all as (down, gain, up) factors.

Frozen factors are buffers, trainable vectors are parameters. SVFit and LoLDU factors are recomputed from the base
weight when a model is built and are not saved unless `embed_factors` is set; what is saved (the gains, σ_r or D_r and
a fingerprint of the base weight) is enough to refuse an adapter that is loaded onto a different base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as Fn

METHODS = ("lora", "svfit", "loldu")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class AdapterSpec:
    """Everything needed to build one adapter on one matrix (the config resolves one per target module)."""

    method: str
    r: int
    alpha: float | None = None
    seed: int = 0
    embed_factors: bool = False
    decompose_dtype: str = "float32"
    # SVFit
    energy_threshold: float | None = None
    svd: str = "exact"
    svd_niter: int = 2
    svd_oversample: int = 10
    # LoLDU
    z_init: str = "lu"
    train_sigma: bool = False
    ldu_method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown adapter method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.decompose_dtype not in _DTYPES:
            raise ValueError(f"decompose_dtype must be one of {sorted(_DTYPES)}, got {self.decompose_dtype!r}")
        if self.svd not in ("exact", "randomized"):
            raise ValueError(f"svd must be 'exact' or 'randomized', got {self.svd!r}")
        if self.z_init not in Fn.LOLDU_Z_INITS:
            raise ValueError(f"unknown LoLDU z_init {self.z_init!r}; choose one of {', '.join(Fn.LOLDU_Z_INITS)}")
        if self.ldu_method not in ("auto", "truncated", "full"):
            raise ValueError(f"ldu_method must be 'auto', 'truncated' or 'full', got {self.ldu_method!r}")

    @property
    def resolved_alpha(self) -> float:
        return float(self.r if self.alpha is None else self.alpha)


def _fingerprint_bits(weight: Tensor) -> Tensor:
    # Kept as the int64 bit pattern of float64 values so `model.half()` or PEFT's dtype casts cannot round it.
    return Fn.weight_fingerprint(weight).view(torch.int64)


class AdapterWeights(nn.Module):
    """Base of the per-method weights: exposes (down, gain, up, scale) and nothing else to the layers."""

    method: ClassVar[str]
    checks_weight: ClassVar[bool] = False  # True: __init__ refuses non-finite weights itself, in a pass it needs anyway

    def __init__(self, r: int, scale: float) -> None:
        super().__init__()
        self.r = r
        self.scale = scale

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """(down R: r×n, gain g: r or None for all ones, up C: m×r)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method}, r={self.r}, scale={self.scale:g}"


class LoRAWeights(AdapterWeights):
    """Vanilla LoRA: A kaiming-uniform(a=√5), B = 0, scale = alpha / r (PEFT's default init)."""

    method = "lora"

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        m, n = Fn.weight_matrix(weight).shape
        Fn.check_rank(spec.r, m, n)
        super().__init__(spec.r, spec.resolved_alpha / spec.r)
        generator = torch.Generator().manual_seed(spec.seed)
        bound = 1.0 / math.sqrt(n)  # kaiming_uniform_(a=√5) on an r×n matrix reduces to U(±1/√n)
        A = torch.empty(spec.r, n).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(A.to(weight.device))
        self.lora_B = nn.Parameter(torch.zeros(m, spec.r, device=weight.device))

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.lora_A, None, self.lora_B


class _DecomposedWeights(AdapterWeights):
    """Shared storage and load-time verification of the weight-initialised adapters (SVFit, LoLDU)."""

    reference_name: ClassVar[str]  # the saved buffer that must match its recomputed value on load

    def _store_factors(
        self, weight: Tensor, down: Tensor, up: Tensor, embed: bool, fingerprint: Tensor | None = None
    ) -> None:
        self.register_buffer("down", down.contiguous(), persistent=embed)
        self.register_buffer("up", up.contiguous(), persistent=embed)
        bits = _fingerprint_bits(weight) if fingerprint is None else fingerprint.view(torch.int64)
        self.register_buffer("fingerprint", bits)
        self.embed_factors = embed

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        where = prefix.rstrip(".") or self.method
        saved_fp = state_dict.get(prefix + "fingerprint")
        owned = [k for k in state_dict if k.startswith(prefix)]
        if owned and saved_fp is None:
            raise ValueError(f"{where}: adapter checkpoint has no base-weight fingerprint; refusing to load it")
        if saved_fp is not None:
            stored = saved_fp.view(torch.float64) if saved_fp.dtype == torch.int64 else saved_fp.double()
            if stored.shape != (4,) or not Fn.fingerprints_match(stored, self.fingerprint.view(torch.float64)):
                raise ValueError(
                    f"{where}: this {self.method} adapter was trained on a different base weight (fingerprint "
                    f"{stored.tolist()} vs {self.fingerprint.view(torch.float64).tolist()}); load it onto the model "
                    "it was made for"
                )
        saved_ref = state_dict.get(prefix + self.reference_name)
        own_ref = getattr(self, self.reference_name)
        if saved_ref is not None and saved_ref.shape != own_ref.shape:
            raise ValueError(
                f"{where}: checkpoint has rank {saved_ref.shape[0]} but this model's adapter has rank "
                f"{own_ref.shape[0]}; build the model with the checkpoint's config"
            )
        if saved_ref is not None and prefix + "down" not in state_dict:
            tol = 1e-3 * float(own_ref.abs().max().clamp_min(1e-12))
            if not torch.allclose(saved_ref.to(own_ref), own_ref, rtol=1e-3, atol=tol):
                raise ValueError(
                    f"{where}: recomputed {self.reference_name} differs from the saved one; the base weight or the "
                    "decomposition options differ from training (save with embed_factors=True to pin the factors)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


class SVFitWeights(_DecomposedWeights):
    """SVFit: frozen top-r singular vectors; only the r singular values s train (s₀ = σ_r)."""

    method = "svfit"
    reference_name = "s0"

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        dtype = _DTYPES[spec.decompose_dtype]
        m, n = Fn.weight_matrix(weight).shape
        Fn.check_rank(spec.r, m, n)
        rank = spec.r
        if spec.energy_threshold is not None:
            sigma = torch.linalg.svdvals(Fn.working_copy(weight, dtype))
            rank = min(rank, Fn.energy_rank(sigma, spec.energy_threshold))
        f = Fn.svd_top_r(
            weight,
            rank,
            randomized=spec.svd == "randomized",
            niter=spec.svd_niter,
            oversample=spec.svd_oversample,
            seed=spec.seed,
            dtype=dtype,
        )
        super().__init__(rank, spec.resolved_alpha / spec.r)
        self._store_factors(weight, f.Vh.float(), f.U.float(), spec.embed_factors)
        self.register_buffer("s0", f.S.float())
        self.s = nn.Parameter(f.S.float().clone())

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.down, Fn.svfit_gain(self.s, self.s0), self.up


class LoLDUWeights(_DecomposedWeights):
    """LoLDU: frozen P·L_r and U_r of a pivoted LDU; only z (and σ on request) train; σ = alpha / r."""

    method = "loldu"
    reference_name = "D"
    checks_weight = True

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        fp = Fn.checked_fingerprint(weight, "base weight")  # two reads of W, and the finiteness check
        dtype = _DTYPES[spec.decompose_dtype]
        f = Fn.pivoted_ldu(weight, spec.r, method=spec.ldu_method, dtype=dtype, scale=float(fp[0]))
        super().__init__(spec.r, 1.0)
        self._store_factors(weight, f.U.float(), f.up().float(), spec.embed_factors, fingerprint=fp)
        self.register_buffer("D", f.D.float())
        sigma = torch.tensor(spec.resolved_alpha / spec.r)
        self.register_buffer("sigma0", sigma.clone())
        if spec.train_sigma:
            self.sigma = nn.Parameter(sigma.clone())
        else:
            self.register_buffer("sigma", sigma.clone())
        generator = torch.Generator().manual_seed(spec.seed)
        self.z = nn.Parameter(Fn.loldu_z_init(self.D.cpu(), spec.z_init, generator).to(self.D.device))

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.down, Fn.loldu_gain(self.z, self.D, self.sigma, self.sigma0), self.up


ADAPTER_CLASSES: dict[str, type[AdapterWeights]] = {
    cls.method: cls for cls in (LoRAWeights, SVFitWeights, LoLDUWeights)
}


def build_adapter(weight: Tensor, spec: AdapterSpec) -> AdapterWeights:
    """Build the adapter weights for `weight` (kept fp32 whatever the model dtype; decomposed in fp32/fp64)."""
    cls = ADAPTER_CLASSES[spec.method]
    if not cls.checks_weight:
        Fn.check_finite(weight, "base weight")
    return cls(weight, spec)


def trainable_count(spec: AdapterSpec, m: int, n: int) -> int:
    """Closed-form trainable parameters of one adapter: LoRA r(m+n), SVFit r, LoLDU r (+1 with a trainable σ)."""
    if spec.method == "lora":
        return spec.r * (m + n)
    if spec.method == "svfit":
        return spec.r
    return spec.r + int(spec.train_sigma)
