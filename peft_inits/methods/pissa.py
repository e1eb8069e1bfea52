"""PiSSA (Meng et al. 2024, arXiv 2404.02948): LoRA whose A, B start from the principal r singular triplets of W.

B₀ = U_r √(Σ_r / scale), A₀ = √(Σ_r / scale) V_rᵀ with scale = alpha / r — PEFT's `init_lora_weights="pissa"`. PEFT
overwrites the base weight with the residual W − scale·B₀A₀; here the base stays untouched and the delta is
scale·(BA − B₀A₀), the same function (rank ≤ 2r, so the LoRA export has rank 2r). As a (down, gain, up) triple:
down = [A − A₀; A₀], up = [B, B − B₀], no gain — exactly zero at step 0. B₀, A₀ are recomputed from W on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..adapters import AdapterSpec, DecomposedWeights, set_random
from ..config import AdapterConfig
from ..registration import register_method
from ..registry import Method, MethodOptions


@dataclass
class PiSSAConfig(AdapterConfig):
    """PiSSA (arXiv 2404.02948): LoRA started from the top-r singular triplets; delta BA − B₀A₀."""

    svd: str = field(
        default="exact",
        metadata={
            "help": "SVD of the base weight (randomized = PEFT's pissa_niter_N)",
            "choices": ("exact", "randomized"),
        },
    )
    svd_niter: int = field(default=4, metadata={"help": "power iterations of the randomized SVD"})
    svd_oversample: int = field(default=10, metadata={"help": "extra columns of the randomized SVD"})

    def check_options(self) -> None:
        if self.svd_niter < 0 or self.svd_oversample < 0:
            raise ValueError(f"svd_niter and svd_oversample must be >= 0, got {self.svd_niter}, {self.svd_oversample}")


class PiSSAWeights(DecomposedWeights):
    """Trainable A, B initialised to A₀, B₀ from r singular triplets of W (`triplets` picks which); A₀, B₀ frozen."""

    reference_name = "s0"

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        f = self.triplets(weight, spec)
        super().__init__(spec.r, spec.scale)
        root = (f.S / spec.scale).sqrt()
        A0, B0 = (root[:, None] * f.Vh).float(), (f.U * root).float()
        self.store_factors(weight, A0, B0, spec.embed_factors)
        self.register_buffer("s0", f.S.float())
        self.lora_A = nn.Parameter(A0.clone())
        self.lora_B = nn.Parameter(B0.clone())

    @staticmethod
    def triplets(weight: Tensor, spec: AdapterSpec) -> Fn.SVDFactors:
        """The principal r singular triplets (exact or randomized SVD)."""
        options = spec.options  # PiSSAConfig's option fields (MiLoRA does not come here)
        return Fn.svd_top_r(
            weight,
            spec.r,
            randomized=options.svd == "randomized",
            niter=options.svd_niter,
            oversample=options.svd_oversample,
            seed=spec.seed,
            dtype=spec.dtype,
        )

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        # BA − B₀A₀ = B(A − A₀) + (B − B₀)A₀: both differences are exactly zero at init, so step 0 is bit-exact.
        down = torch.cat([self.lora_A - self.down, self.down])
        return down, None, torch.cat([self.lora_B, self.lora_B - self.up], dim=1)

    def init_random(self, generator: torch.Generator) -> None:
        """A = A₀ + std(A₀)·N(0, 1), B likewise: ΔW = scale·(BA − B₀A₀) ≠ 0; A₀, B₀ and σ stay for verification."""
        for param, ref in ((self.lora_A, self.down), (self.lora_B, self.up)):
            std = float(ref.std().clamp_min(1e-3)) if ref.numel() > 1 else float(ref.abs().max().clamp_min(1e-3))
            set_random(param, ref.cpu() + std * torch.randn(ref.shape, generator=generator))

    @classmethod
    def trainable_count(cls, options: MethodOptions, r: int, m: int, n: int) -> int:
        return r * (m + n)


PISSA = register_method(Method(name="pissa", peft_type="PI_PISSA", config=PiSSAConfig, weights=PiSSAWeights))
