"""Vanilla LoRA (Hu et al. 2021) with PEFT's default init: A kaiming-uniform(a=√5), B = 0, scale = alpha / r."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..adapters import AdapterSpec, AdapterWeights, set_random
from ..config import AdapterConfig
from ..registration import register_method
from ..registry import Method, MethodOptions


@dataclass
class LoRAConfig(AdapterConfig):
    """Vanilla LoRA (Hu et al. 2021): A kaiming-uniform, B = 0, trains r·(m+n) values per matrix; no options beyond
    the shared ones (r, alpha, seed)."""


class LoRAWeights(AdapterWeights):
    """Trainable A (down, r × n) and B (up, m × r); no gain. Any r ≥ 1 is valid, also above min(m, n)."""

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        m, n = Fn.weight_matrix(weight).shape
        super().__init__(spec.r, spec.scale)
        generator = torch.Generator().manual_seed(spec.seed)
        bound = 1.0 / math.sqrt(n)  # kaiming_uniform_(a=√5) on an r×n matrix reduces to U(±1/√n)
        A = torch.empty(spec.r, n).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(A.to(weight.device))
        self.lora_B = nn.Parameter(torch.zeros(m, spec.r, device=weight.device))

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.lora_A, None, self.lora_B

    def init_random(self, generator: torch.Generator) -> None:
        """B ~ U(±1/√r) (a Linear's default init, as PEFT's `init_lora_weights=False`), so ΔW ≠ 0."""
        bound = 1.0 / math.sqrt(self.r)
        set_random(self.lora_B, torch.empty(self.lora_B.shape).uniform_(-bound, bound, generator=generator))

    @classmethod
    def trainable_count(cls, options: MethodOptions, r: int, m: int, n: int) -> int:
        return r * (m + n)


LORA = register_method(
    Method(name="lora", peft_type="PI_LORA", config=LoRAConfig, weights=LoRAWeights, rank_bounded=False)
)
