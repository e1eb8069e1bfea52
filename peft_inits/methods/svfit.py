"""SVFit (Sun et al. 2024, arXiv 2409.05926): frozen top-r singular vectors of W; only the r singular values train.

The paper writes W = W_e + U_r diag(s) V_rᵀ with W_e frozen; adding the delta U_r diag(s − σ_r) V_rᵀ to the
untouched W is the same function and keeps the base model intact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..adapters import AdapterSpec, DecomposedWeights, relative_change, set_random
from ..config import AdapterConfig
from ..registration import register_method
from ..registry import Method, MethodOptions


@dataclass
class SVFitConfig(AdapterConfig):
    """SVFit (arXiv 2409.05926): train only the top-r singular values of each frozen weight (r per matrix)."""

    energy_threshold: Optional[float] = field(
        default=None, metadata={"help": "smallest rank ≤ r whose Σσ² reaches this fraction of ‖W‖²_F (e.g. 0.99)"}
    )
    svd: str = field(default="exact", metadata={"help": "SVD of the base weight", "choices": ("exact", "randomized")})
    svd_niter: int = field(default=2, metadata={"help": "power iterations of the randomized SVD"})
    svd_oversample: int = field(default=10, metadata={"help": "extra columns of the randomized SVD"})

    def check_options(self) -> None:
        if self.energy_threshold is not None and not 0.0 < self.energy_threshold <= 1.0:
            raise ValueError(f"energy_threshold must be in (0, 1], got {self.energy_threshold}")
        if self.svd_niter < 0 or self.svd_oversample < 0:
            raise ValueError(f"svd_niter and svd_oversample must be >= 0, got {self.svd_niter}, {self.svd_oversample}")


class SVFitWeights(DecomposedWeights):
    """down = V_rᵀ, up = U_r (frozen), gain = s − σ_r with s trainable (s₀ = σ_r)."""

    reference_name = "s0"
    shares_factors = True

    def factor_choices(self) -> tuple:
        return (self.spec.seed,) if self.spec.options.svd == "randomized" else ()  # the range finder's seed

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        options = spec.options  # SVFitConfig's option fields
        rank = spec.r
        if options.energy_threshold is not None:
            sigma = torch.linalg.svdvals(Fn.working_copy(weight, spec.dtype))
            rank = min(rank, Fn.energy_rank(sigma, options.energy_threshold))
        f = Fn.svd_top_r(
            weight,
            rank,
            randomized=options.svd == "randomized",
            niter=options.svd_niter,
            oversample=options.svd_oversample,
            seed=spec.seed,
            dtype=spec.dtype,
        )
        super().__init__(rank, spec.scale)
        self.store_factors(weight, f.Vh.float(), f.U.float(), spec.embed_factors)
        self.register_buffer("s0", f.S.float())
        self.s = nn.Parameter(f.S.float().clone())

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.down, Fn.svfit_gain(self.s, self.s0), self.up

    def init_random(self, generator: torch.Generator) -> None:
        """s = σ_r · u with u ~ U(0.5, 1.5): every singular value moves, so ΔW ≠ 0; σ_r and the factors stay."""
        u = torch.empty(self.s.shape).uniform_(0.5, 1.5, generator=generator)
        set_random(self.s, self.s0.cpu() * u)

    @classmethod
    def trainable_count(cls, options: MethodOptions, r: int, m: int, n: int) -> int:
        return r  # an energy threshold may keep fewer: the built adapter's `r` is then the count

    def relative_gain(self) -> Tensor:
        return relative_change(self.s - self.s0, self.s0)


SVFIT = register_method(Method(name="svfit", peft_type="SVFIT", config=SVFitConfig, weights=SVFitWeights))
