"""Which adapter path a Linear call takes: factored (x → R → g → C) or merged (one GEMM with W + ΔW).

The cost model counts multiply-adds beyond the frozen layer's own forward (T·m·n) and dx (T·m·n), plus
`MEMORY_WEIGHT` multiply-adds per tensor element an extra pass reads or writes (single-thread CPU, fp32: a big GEMM
runs ~8 multiply-adds in the time one element streams from memory; fitted from the crossover measurements in
BENCHMARKS.md). For T tokens, rank r and an m × n weight:

- factored: T·r·(n + m) forward, T·r·m for dy·C, T·r·n for dx; Δy is written, read and added (3·T·m elements),
  dx through R added to the base dx (3·T·n);
- merged: r·m·n to form W′ (2·m·n elements: W read, W′ written), then the gain gradient the cheaper way:
  projections T·r·(m + n) (+ T·(m + n) elements) or the weight gradient T·m·n + r·m·n (+ 2·m·n).

Ignoring memory, merged wins when T > m·n / (m + n) at any r, gradients included (384 tokens for 768², 614 for
3072 × 768); the memory terms keep small r factored. `ADAPTER_PATH_ENV` (``PEFT_INITS_ADAPTER_PATH``) or a layer's
`adapter_path` attribute forces one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PATHS = ("auto", "factored", "merged")
ADAPTER_PATH_ENV = "PEFT_INITS_ADAPTER_PATH"
MEMORY_WEIGHT = 8.0


@dataclass(frozen=True)
class PathChoice:
    """The chosen path, the gain-gradient mode of the merged path and both estimates (multiply-add equivalents)."""

    path: str
    gain_gradient: str
    factored: float
    merged: float
    forced: bool = False

    def describe(self) -> str:
        how = "forced" if self.forced else "cost model"
        detail = f"merged {self.merged:.3g} vs factored {self.factored:.3g} MAC-eq"
        gradient = f", gain grad via {self.gain_gradient}" if self.path == "merged" else ""
        return f"{self.path} ({how}: {detail}{gradient})"


def factored_cost(tokens: int, r: int, m: int, n: int, *, need_dx: bool, need_dgain: bool) -> float:
    """Extra multiply-add equivalents of the factored path over the frozen layer, forward + backward."""
    k = MEMORY_WEIGHT
    cost = tokens * r * (n + m) + k * 3 * tokens * m
    if need_dx or need_dgain:
        cost += tokens * r * m + k * tokens * m
    if need_dx:
        cost += tokens * r * n + k * 3 * tokens * n
    return float(cost)


def merged_costs(tokens: int, r: int, m: int, n: int, *, need_dgain: bool) -> tuple[float, str]:
    """Extra multiply-add equivalents of the merged path and its cheaper gain-gradient mode."""
    k = MEMORY_WEIGHT
    form = r * m * n + k * 2 * m * n
    if not need_dgain:
        return float(form), "projections"
    projections = tokens * r * (m + n) + k * tokens * (m + n)
    weight_grad = tokens * m * n + r * m * n + k * 2 * m * n
    if weight_grad < projections:
        return float(form + weight_grad), "weight_grad"
    return float(form + projections), "projections"


def check_path(path: str, where: str = "adapter path") -> str:
    if path not in PATHS:
        raise ValueError(f"{where} must be one of {', '.join(PATHS)}, got {path!r}")
    return path


def env_path() -> str:
    """The path forced by PEFT_INITS_ADAPTER_PATH ("auto" when unset)."""
    return check_path(os.environ.get(ADAPTER_PATH_ENV, "auto") or "auto", f"${ADAPTER_PATH_ENV}")


def choose_path(
    tokens: int, r: int, m: int, n: int, *, need_dx: bool, need_dgain: bool, forced: str = "auto"
) -> PathChoice:
    """Factored or merged for one call; `forced` ("factored"/"merged") overrides the model."""
    fact = factored_cost(tokens, r, m, n, need_dx=need_dx, need_dgain=need_dgain)
    merged, gain_gradient = merged_costs(tokens, r, m, n, need_dgain=need_dgain)
    if check_path(forced) != "auto":
        return PathChoice(forced, gain_gradient, fact, merged, forced=True)
    return PathChoice("merged" if merged < fact else "factored", gain_gradient, fact, merged)
