"""`compare --seeds N`: every row trained with N seeds (training seed and adapter init seed move together), and the
table's two extra columns: the seed count and the test metric's mean ± 95 % CI (Student t, `protocol.mean_ci`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..training.settings import AdapterSettings, TrainSettings
from . import protocol
from .variants import Variant

SEED_COLUMNS = [("seeds", "seeds"), ("test_ci", "test ± 95% CI")]

RunOne = Callable[[Path, AdapterSettings, TrainSettings], dict[str, Any]]


def check_seeds(seeds: int | None) -> None:
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"--seeds must be an integer >= 1, got {seeds!r}")


def seed_plan(
    train: TrainSettings, adapter: AdapterSettings, seeds: int
) -> list[tuple[int, TrainSettings, AdapterSettings]]:
    """(offset, training settings, adapter settings) of each seed: offset 0 is the row's own run."""
    check_seeds(seeds)
    plan = []
    for k in range(seeds):
        seeded_train = dataclasses.replace(train, seed=train.seed + k)
        plan.append((k, seeded_train, dataclasses.replace(adapter, init_seed=adapter.init_seed + k)))
    return plan


def seed_dir(out: Path, variant: Variant, offset: int) -> Path:
    """The row's own folder for offset 0 (what `compare` writes without --seeds), `<row>-seed+K` beside it after."""
    return out / variant.slug if offset == 0 else out / f"{variant.slug}-seed+{offset}"


def run_seeds(
    variants: Sequence[Variant],
    first: Mapping[str, dict[str, Any]],
    train_for: Callable[[Variant], TrainSettings],
    seeds: int,
    out: Path,
    run_one: RunOne,
) -> dict[str, list[dict[str, Any]]]:
    """Summaries of every seed of every row (`first`: the rows' own runs, already done)."""
    result: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        result[variant.label] = [first[variant.label]]
        for offset, train, adapter in seed_plan(train_for(variant), variant.adapter, seeds)[1:]:
            result[variant.label].append(run_one(seed_dir(out, variant, offset), adapter, train))
    return result


def seed_cells(by_seed: Mapping[str, Sequence[dict[str, Any]]], metric: str) -> dict[str, dict[str, str]]:
    """The two extra table cells of each row."""
    cells = {}
    for label, summaries in by_seed.items():
        values = [s["test"][metric] for s in summaries if (s.get("test") or {}).get(metric) is not None]
        if not values:
            cells[label] = {"seeds": str(len(summaries)), "test_ci": "-"}
            continue
        estimate = protocol.mean_ci(values)
        half = "∞" if estimate.n < 2 else f"{estimate.half_width:.4f}"
        cells[label] = {"seeds": str(len(summaries)), "test_ci": f"{estimate.mean:.4f} ± {half}"}
    return cells
