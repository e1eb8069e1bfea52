"""MiLoRA (Wang et al. 2024, arXiv 2406.09044): PiSSA's construction on the *minor* r singular triplets of W.

The principal subspace, which holds the pretrained knowledge, is left alone and the adapter starts in the
least-used directions: B₀ = U_m √(Σ_m / scale), A₀ = √(Σ_m / scale) V_mᵀ over the r smallest singular values,
delta scale·(BA − B₀A₀). The smallest values need the full (exact) SVD; a randomized one finds only the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import functional as Fn
from ..adapters import AdapterSpec
from ..config import AdapterConfig
from ..registration import register_method
from ..registry import Method
from .pissa import PiSSAWeights


@dataclass
class MiLoRAConfig(AdapterConfig):
    """MiLoRA (arXiv 2406.09044): LoRA started from the minor r singular triplets; delta BA − B₀A₀. No options
    beyond the shared ones: its SVD is always exact."""


class MiLoRAWeights(PiSSAWeights):
    """PiSSA's factors over the r smallest singular triplets."""

    @staticmethod
    def triplets(weight: Tensor, spec: AdapterSpec) -> Fn.SVDFactors:
        W = Fn.working_copy(weight, spec.dtype)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        r = spec.r
        return Fn.SVDFactors(U[:, -r:].contiguous(), S[-r:].contiguous(), Vh[-r:].contiguous())


MILORA = register_method(Method(name="milora", peft_type="PI_MILORA", config=MiLoRAConfig, weights=MiLoRAWeights))
