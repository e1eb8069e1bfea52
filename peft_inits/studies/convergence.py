"""The convergence study: tasks × methods × learning-rate grid × seeds, resumable, with CIs and verdicts.

Protocol (per task, per method): train at each rate of a grid around the method's registered default (×⅓, ×1, ×3,
×10) with the selection seeds; pick the rate with the best *validation* metric at the end of the budget (the test
split is never read for this); when the pick sits on the grid's edge, try one more rate beyond it (recorded as
"widened"); then train every seed at the picked rate and report the test metric as mean ± 95 % CI, the paired
difference to the reference method (same seed → same data order, head init and adapter init seed), steps to 95 % of
the reference's mean best validation metric, and the area under the validation curve. Every method gets the same
budget (steps × batch) and the same head learning rate; only the adapter's rate is tuned.

Every run is a normal run directory `<out>/<task>/<variant>/lr<rate>-seed<s>`; a finished one is reused, so a killed
study continues where it stopped. Writes `study.json` (every run; a task run again replaces its
own entries, other tasks' are kept), `<task>.md` (table and verdicts) and
`<task>_curves.png` (validation curves, seed mean with its 95 % band).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..training.rundir import RunDir, environment, read_records
from ..training.settings import AdapterSettings, as_dict, is_adapter_method
from . import protocol
from .tasks import StudyTask
from .variants import Variant, build_variants


@dataclass
class StudySettings:
    """What to run: methods (each at its registry defaults), extra variants in `compare` sweep syntax
    (`loldu.r=8` → a row "loldu r=8"), seeds and the grid."""

    methods: Sequence[str]
    extra: Sequence[str] = ()
    seeds: int = 5
    selection_seeds: int = 1
    factors: Sequence[float] = protocol.GRID_FACTORS
    max_widen: int = 2
    reference: str = "lora"
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if not is_adapter_method(m)]
        if bad:
            raise ValueError(f"the study tunes adapter learning rates; {bad} are not adapter methods")
        if self.seeds < 1 or self.selection_seeds < 1 or self.selection_seeds > self.seeds:
            raise ValueError(
                f"need 1 <= selection seeds ({self.selection_seeds}) <= seeds ({self.seeds})"
            )
        if self.reference not in self.methods:
            raise ValueError(f"the reference method {self.reference!r} is not among {list(self.methods)}")

    def variants(self) -> list[Variant]:
        rows = build_variants(list(self.methods), AdapterSettings())
        for text in self.extra:
            method = text.partition(".")[0]
            if method not in self.methods:
                raise ValueError(f"extra variant {text!r}: {method!r} is not among the methods {list(self.methods)}")
            rows += build_variants([method], AdapterSettings(), sweeps=[text])
        labels = [v.label for v in rows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two variants share a label: {labels}")
        return rows


@dataclass
class Cell:
    """One run: what it was and what it gave."""

    task: str
    variant: str
    method: str
    lr: float
    seed: int
    phase: str  # "grid", "widen" or "seeds"
    path: str
    summary: dict[str, Any] = field(repr=False)
    validation: float
    test: float
    reused: bool
    wall_s: float


class Runner:
    """Runs cells through a task, counting fresh runs and estimating the time left from them."""

    def __init__(self, out: Path, total: int, progress: bool) -> None:
        self.out = out
        self.cells: list[Cell] = []
        self.executed = 0
        self.fresh: dict[str, list[float]] = {}  # task → wall times of the runs trained (not reused) in this call
        self.bar = tqdm(total=total, desc="study", unit="run", disable=not progress, dynamic_ncols=True)

    def grow(self, extra: int) -> None:
        self.bar.total += extra
        self.bar.refresh()

    def cell_dir(self, task: StudyTask, variant: Variant, lr: float, seed: int) -> Path:
        return self.out / task.name / variant.slug / f"lr{lr:g}-seed{seed}"

    def run(self, task: StudyTask, variant: Variant, lr: float, seed: int, phase: str) -> Cell:
        for cell in self.cells:  # the same run asked twice (e.g. seed 0 of the grid and of the seeds): once
            if (cell.task, cell.variant, cell.lr, cell.seed) == (task.name, variant.label, lr, seed):
                return cell
        path = self.cell_dir(task, variant, lr, seed)
        reused = (path / "summary.json").is_file()
        started = time.perf_counter()
        summary = task.run(variant, lr, seed, path)
        wall = time.perf_counter() - started
        if not reused:
            self.executed += 1
            self.fresh.setdefault(task.name, []).append(wall)
        cell = Cell(task.name, variant.label, variant.adapter.method, lr, seed, phase, str(path), summary,
                    task.validation(summary), task.test(summary), reused, wall)  # fmt: skip
        self.cells.append(cell)
        self.bar.update(1)
        times = self.fresh.get(task.name) or [t for ts in self.fresh.values() for t in ts]
        if times:  # at this task's pace (runs of different tasks differ by 10×); reused runs cost nothing
            left = (self.bar.total - self.bar.n) * statistics.fmean(times) / 60
            self.bar.set_postfix_str(f"{task.name} {variant.label} lr {lr:g} seed {seed}; left ≈ {left:.0f} min")
        return cell

    def close(self) -> None:
        self.bar.close()


def _select(
    runner: Runner, task: StudyTask, variant: Variant, settings: StudySettings
) -> tuple[float, dict[str, Any]]:
    """Grid, validation-only pick, widening on an edge; returns the rate and the record of how it was chosen."""
    default = task.default_lr(variant)
    grid = protocol.lr_grid(default, settings.factors)
    seeds = range(settings.selection_seeds)
    scores: dict[float, list[float]] = {}
    for lr in grid:
        scores[lr] = [runner.run(task, variant, lr, s, "grid").validation for s in seeds]
    widened: list[float] = []
    best = protocol.select_lr(scores, task.val_greater_is_better)
    while len(widened) < settings.max_widen:
        beyond = protocol.widen(sorted(scores), best)
        if beyond is None or beyond in scores:
            break
        runner.grow(len(seeds))
        scores[beyond] = [runner.run(task, variant, beyond, s, "widen").validation for s in seeds]
        widened.append(beyond)
        best = protocol.select_lr(scores, task.val_greater_is_better)
    edge = protocol.widen(sorted(scores), best) is not None
    record = {
        "default_lr": default,
        "grid": grid,
        "widened": widened,
        "validation": {f"{lr:g}": statistics.fmean(v) for lr, v in sorted(scores.items())},
        "selected_lr": best,
        "on_edge": edge,
        "selection_seeds": list(seeds),
    }
    return best, record


def planned_runs(settings: StudySettings, tasks: int, variants: int) -> int:
    """Runs before any widening: the grid with the selection seeds plus the remaining seeds."""
    grid = len(settings.factors) * settings.selection_seeds
    return tasks * variants * (grid + settings.seeds - settings.selection_seeds)


def run_study(settings: StudySettings, tasks: Sequence[StudyTask], out: str | Path) -> dict[str, Any]:
    """Run (or resume) the study and write study.json, a table and a plot per task; returns what study.json holds."""
    from .report import summarise_task, write_task_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = settings.variants()
    started = time.perf_counter()
    runner = Runner(out, planned_runs(settings, len(tasks), len(variants)), settings.progress)
    results: dict[str, Any] = {}
    try:
        for task in tasks:
            selection = {v.label: _select(runner, task, v, settings) for v in variants}
            per_seed: dict[str, list[Cell]] = {v.label: [] for v in variants}
            for seed in range(settings.seeds):  # seed-major: a study stopped early still has every method at n seeds
                for variant in variants:
                    lr = selection[variant.label][0]
                    per_seed[variant.label].append(runner.run(task, variant, lr, seed, "seeds"))
            records = {
                label: {c.seed: read_records(Path(c.path) / "metrics.jsonl") for c in cells}
                for label, cells in per_seed.items()
            }
            results[task.name] = summarise_task(
                task, variants, {k: v[1] for k, v in selection.items()}, per_seed, records, settings.reference
            )
            results[task.name]["protocol"] = {
                "factors": list(settings.factors), "max_widen": settings.max_widen, "seeds": settings.seeds,
                "selection_seeds": settings.selection_seeds, "reference": settings.reference,
            }  # fmt: skip
            write_task_files(out, task, results[task.name], records)
    finally:
        runner.close()
    done = {t.name for t in tasks}
    earlier = _earlier(out / "study.json", done)
    payload = {
        "settings": {**as_dict(settings), "variants": [v.label for v in variants]},
        "tasks": {**earlier.get("tasks", {}), **{t.name: _task_record(t) for t in tasks}},
        "results": {**earlier.get("results", {}), **results},
        "runs": [*earlier.get("runs", []), *(_cell_record(c) for c in runner.cells)],
        "executed_runs": runner.executed,
        "reused_runs": sum(c.reused for c in runner.cells),
        "wall_time_s": time.perf_counter() - started,
        "environment": environment(),
    }
    RunDir(out).write_json("study.json", payload)
    return payload


def _earlier(path: Path, replaced: set[str]) -> dict[str, Any]:
    """What an earlier study.json holds about the tasks not run now (a study may run its tasks in several calls)."""
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {
        "tasks": {k: v for k, v in saved.get("tasks", {}).items() if k not in replaced},
        "results": {k: v for k, v in saved.get("results", {}).items() if k not in replaced},
        "runs": [r for r in saved.get("runs", []) if r.get("task") not in replaced],
    }


def _task_record(task: StudyTask) -> dict[str, Any]:
    budget = {k: v for k, v in as_dict(task.budget).items() if k not in ("lr", "seed", "progress")}
    return {"description": task.description, "budget": budget, "val_metric": task.val_metric,
            "test_metric": task.test_metric, "notes": task.notes}  # fmt: skip


def _cell_record(cell: Cell) -> dict[str, Any]:
    record = {k: v for k, v in dataclasses.asdict(cell).items() if k != "summary"}
    keep = ("adapter_params", "trainable_params", "weights_bytes", "median_step_time_s", "peak_mem_mb", "train_time_s")
    record.update({k: cell.summary.get(k) for k in keep})
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


Builder = Callable[..., StudyTask]


def build_tasks(names: Sequence[str], builders: Mapping[str, Builder], **kwargs: Any) -> list[StudyTask]:
    """Tasks by name (the data of each is loaded once)."""
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(builders)}")
    return [builders[name](**kwargs) for name in names]
