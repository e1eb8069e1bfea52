"""The statistics of a convergence study, pure and testable: learning-rate grids, validation-only selection,
mean ± 95 % confidence intervals (Student t), paired differences, convergence measures and plain-word verdicts.

No scipy: the t quantile comes from the regularised incomplete beta function (a continued fraction) by bisection.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GRID_FACTORS: tuple[float, ...] = (1 / 3, 1.0, 3.0, 10.0)
WIDEN_FACTOR = 3.0
LEVEL = 0.95


# ------------------------------------------------------------------------------------------------ Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (bisection on `t_cdf`, to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


# ------------------------------------------------------------------------------------------------ estimates


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with the half-width of its two-sided confidence interval (inf for n < 2)."""

    mean: float
    half_width: float
    n: int
    sd: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "half_width": self.half_width, "n": self.n, "sd": self.sd}


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean ± t_{(1+level)/2, n-1} · sd / √n of `values` (the seeds of one cell)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci needs at least one value")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"mean_ci got a NaN among {values}")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, math.inf, n, math.nan)
    sd = statistics.stdev(values)
    return Estimate(mean, t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n, sd)


def paired_difference(
    method: Mapping[int, float], reference: Mapping[int, float], level: float = LEVEL
) -> Estimate:
    """Mean ± CI of method − reference over the seeds both have (same seed: same data order and head init)."""
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        raise ValueError(f"no common seed between {sorted(method)} and {sorted(reference)}")
    return mean_ci([method[s] - reference[s] for s in seeds], level)


# ------------------------------------------------------------------------------------------------ learning rates


def lr_grid(default: float, factors: Sequence[float] = GRID_FACTORS) -> list[float]:
    """The learning rates tried around a method's registered default, ascending."""
    if default <= 0:
        raise ValueError(f"a learning-rate grid needs a positive default, got {default}")
    return sorted({_round(default * f) for f in factors})


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def select_lr(validation: Mapping[float, Sequence[float]], greater_is_better: bool = True) -> float:
    """The learning rate whose mean validation metric is best (ties: the smaller rate). Only validation is read."""
    if not validation:
        raise ValueError("select_lr needs at least one learning rate")
    sign = 1.0 if greater_is_better else -1.0
    return min(validation, key=lambda lr: (-sign * statistics.fmean(validation[lr]), lr))


def widen(grid: Sequence[float], best: float, factor: float = WIDEN_FACTOR) -> float | None:
    """The next rate to try when `best` sits on an edge of `grid` (None when it is inside)."""
    ordered = sorted(grid)
    if len(ordered) < 2:
        return None
    if best == ordered[0]:
        return _round(best / factor)
    if best == ordered[-1]:
        return _round(best * factor)
    return None


# ------------------------------------------------------------------------------------------------ convergence


def eval_curve(records: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[int, float]]:
    """(step, value) of a run's validation records."""
    return [(int(r["step"]), float(r[metric])) for r in records if r.get("type") == "eval" and metric in r]


def steps_to_threshold(
    records: Sequence[Mapping[str, Any]], metric: str, threshold: float, greater_is_better: bool = True
) -> int | None:
    """First step whose validation metric reaches `threshold` (None: never)."""
    for step, value in eval_curve(records, metric):
        if (value >= threshold) if greater_is_better else (value <= threshold):
            return step
    return None


def curve_area(records: Sequence[Mapping[str, Any]], metric: str) -> float:
    """Area under the validation curve (trapezoids) divided by its step span: the metric's mean over training."""
    curve = eval_curve(records, metric)
    if len(curve) < 2:
        raise ValueError(f"the area under the curve needs two validation records of {metric!r}, got {len(curve)}")
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in itertools.pairwise(curve))
    return area / (curve[-1][0] - curve[0][0])


# ------------------------------------------------------------------------------------------------ words


def _number(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "−") if value != 0 else f"{0:.{digits}f}"


def verdict(
    method: str,
    reference: str,
    task: str,
    difference: Estimate,
    *,
    scale: float = 100.0,
    unit: str = "points",
    greater_is_better: bool = True,
    digits: int = 1,
) -> str:
    """"SVFit vs LoRA on text: −0.4 ± 0.9 points (no difference shown)", or "(LoRA better)"/"(SVFit better)"."""
    mean, half = difference.mean * scale, difference.half_width * scale
    shown = "± ∞" if math.isinf(half) else f"± {half:.{digits}f}"
    if not difference.excludes_zero():
        word = "no difference shown"
    else:
        method_wins = (difference.mean > 0) == greater_is_better
        word = f"{method if method_wins else reference} better"
    return f"{method} vs {reference} on {task}: {_number(mean, digits)} {shown} {unit} ({word}; {difference.n} seeds)"
