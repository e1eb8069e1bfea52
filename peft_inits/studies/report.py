"""What a study's runs say, per task: mean ± CI of the test metric, paired differences to the reference with their
verdicts, convergence (steps to threshold, area under the validation curve) and cost, as a table and a plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..registry import get_method
from ..training.tables import render
from . import protocol
from .tasks import StudyTask
from .variants import Variant

THRESHOLD = 0.95  # steps to reach 95 % of the reference's mean best validation metric (or within 5 %, lower-better)


def display_name(variant: Variant) -> str:
    """'SVFit', 'LoLDU r=8': the method's own spelling (its config class name without 'Config')."""
    name = get_method(variant.adapter.method).config_name.removesuffix("Config")
    return name + variant.label[len(variant.adapter.method) :]


def _best(curve: Sequence[tuple[int, float]], greater: bool) -> float:
    values = [v for _, v in curve]
    return max(values) if greater else min(values)


def _finite(values: Mapping[int, float]) -> dict[int, float]:
    return {k: v for k, v in values.items() if not math.isnan(v)}


def summarise_task(
    task: StudyTask,
    variants: Sequence[Variant],
    selection: Mapping[str, dict[str, Any]],
    per_seed: Mapping[str, Sequence[Any]],
    records: Mapping[str, Mapping[int, list[dict[str, Any]]]],
    reference: str,
) -> dict[str, Any]:
    """Numbers of every variant of one task (JSON-ready) and the verdict of each against the reference."""
    greater = task.val_greater_is_better
    ref_variant = next(v for v in variants if v.label == reference)
    ref_best = [_best(protocol.eval_curve(r, task.val_metric), greater) for r in records[reference].values()]
    ref_mean = statistics.fmean(ref_best)
    threshold = THRESHOLD * ref_mean if greater else ref_mean / THRESHOLD
    ref_tests = _finite({c.seed: c.test for c in per_seed[reference]})
    rows: dict[str, Any] = {}
    verdicts: list[str] = []
    for variant in variants:
        cells = per_seed[variant.label]
        tests = _finite({c.seed: c.test for c in cells})
        runs = records[variant.label]
        steps = [protocol.steps_to_threshold(runs[c.seed], task.val_metric, threshold, greater) for c in cells]
        areas = [protocol.curve_area(runs[c.seed], task.val_metric) for c in cells]
        first = cells[0].summary
        row: dict[str, Any] = {
            "name": display_name(variant),
            "is_reference": variant.label == reference,
            "selection": selection[variant.label],
            "seeds": [c.seed for c in cells],
            "test": {str(k): v for k, v in tests.items()},
            "test_ci": protocol.mean_ci(list(tests.values())).as_dict() if tests else None,
            "validation_ci": protocol.mean_ci([c.validation for c in cells]).as_dict(),
            "auc_ci": protocol.mean_ci(areas).as_dict(),
            "steps_to_threshold": steps,
            "adapter_params": first.get("adapter_params"),
            "trainable_params": first.get("trainable_params"),
            "weights_bytes": first.get("weights_bytes"),
            "median_step_time_s": statistics.median(c.summary.get("median_step_time_s") or math.nan for c in cells),
            "peak_mem_mb": max((c.summary.get("peak_mem_mb") or 0.0) for c in cells),
        }
        if variant.label != reference and tests and ref_tests and set(tests) & set(ref_tests):
            difference = protocol.paired_difference(tests, ref_tests)
            row["paired_difference"] = difference.as_dict()
            row["verdict"] = protocol.verdict(
                row["name"], display_name(ref_variant), task.name, difference, scale=task.scale, unit=task.unit,
                greater_is_better=task.test_greater_is_better,
            )  # fmt: skip
            verdicts.append(row["verdict"])
        rows[variant.label] = row
    return {"threshold": threshold, "reference": reference, "rows": rows, "verdicts": verdicts}


def _ci(estimate: dict[str, Any] | None, scale: float, digits: int = 1) -> str:
    if not estimate:
        return "-"
    half = estimate["half_width"]
    shown = "∞" if math.isinf(half) else f"{half * scale:.{digits}f}"
    return f"{estimate['mean'] * scale:.{digits}f} ± {shown}"


def _steps(steps: Sequence[int | None]) -> str:
    reached = [s for s in steps if s is not None]
    if not reached:
        return "never"
    text = f"{statistics.fmean(reached):.0f}"
    return text if len(reached) == len(steps) else f"{text} ({len(reached)}/{len(steps)})"


COLUMNS = [
    ("name", "method"),
    ("lr", "selected lr (× default)"),
    ("grid", "rates tried (* widened)"),
    ("n", "seeds"),
    ("test", "test ± 95% CI"),
    ("diff", "Δ vs ref ± 95% CI"),
    ("auc", "val AUC ± CI"),
    ("to", "steps to threshold"),
    ("params", "adapter params"),
    ("kib", "file KiB"),
    ("ms", "ms/step"),
    ("mem", "peak MB (process)"),
]


def table(task: StudyTask, summary: Mapping[str, Any], markdown: bool = True) -> str:
    """One row per variant, in the task's units (points for accuracies)."""
    out = []
    scale = task.scale
    for row in summary["rows"].values():
        sel = row["selection"]
        grid = ", ".join(f"{float(lr):.3g}" + ("*" if float(lr) in sel["widened"] else "") for lr in sel["validation"])
        edge = " (edge)" if sel["on_edge"] else ""
        diff = row.get("paired_difference")
        out.append({
            "name": row["name"],
            "lr": f"{sel['selected_lr']:.3g} (×{sel['selected_lr'] / sel['default_lr']:.3g}){edge}",
            "grid": grid,
            "n": len(row["seeds"]),
            "test": _ci(row["test_ci"], scale),
            "diff": "ref" if row["is_reference"] else (_ci(diff, scale) if diff else "-"),
            "auc": _ci(row["auc_ci"], task.val_scale, 1 if task.val_scale != 1 else 4),
            "to": _steps(row["steps_to_threshold"]),
            "params": f"{row['adapter_params']:,}" if row["adapter_params"] is not None else "-",
            "kib": f"{row['weights_bytes'] / 1024:,.1f}" if row["weights_bytes"] else "-",
            "ms": f"{1000 * row['median_step_time_s']:.0f}" if not math.isnan(row["median_step_time_s"]) else "-",
            "mem": f"{row['peak_mem_mb']:,.0f}",
        })  # fmt: skip
    return render(out, COLUMNS, markdown=markdown)


def write_task_files(
    out: Path, task: StudyTask, summary: Mapping[str, Any], records: Mapping[str, Mapping[int, list[dict[str, Any]]]]
) -> tuple[Path, Path]:
    """`<task>.md` (table, verdicts, the protocol's numbers) and `<task>_curves.png`."""
    verdicts = "\n".join(f"- {v}" for v in summary["verdicts"])
    budget = task.budget
    relation = f"{THRESHOLD:.0%} of" if task.val_greater_is_better else f"within {1 / THRESHOLD - 1:.1%} of"
    text = (
        f"## {task.name}: {task.description}\n\n"
        f"Budget (every method): {budget.steps} steps × batch {budget.batch_size}; selection on validation "
        f"{task.val_metric} at the last step; test {task.test_metric} × {task.scale:g} ({task.unit}); steps to "
        f"threshold: first validation record reaching {summary['threshold']:.4g} ({relation} the reference's "
        f"mean best validation {task.val_metric}).\n\n{table(task, summary)}\n\n{verdicts}\n"
    )
    md = out / f"{task.name}.md"
    atomic_write(md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return md, plot_curves(out / f"{task.name}_curves.png", task, summary, records)


def plot_curves(
    path: Path, task: StudyTask, summary: Mapping[str, Any], records: Mapping[str, Mapping[int, list[dict[str, Any]]]]
) -> Path:
    """Validation metric against step: the seed mean of each variant with its 95 % CI as a band."""
    from ..training.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (label, runs) in enumerate(records.items()):
        curves = [protocol.eval_curve(r, task.val_metric) for r in runs.values()]
        steps = sorted({s for curve in curves for s, _ in curve})
        means, lows, highs = [], [], []
        for step in steps:
            values = [v for curve in curves for s, v in curve if s == step]
            estimate = protocol.mean_ci(values)
            half = 0.0 if math.isinf(estimate.half_width) else estimate.half_width
            means.append(estimate.mean)
            lows.append(estimate.mean - half)
            highs.append(estimate.mean + half)
        color = f"C{index % 10}"
        name = summary["rows"][label]["name"]
        ax.plot(steps, means, "o-", ms=3, color=color, label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(steps, lows, highs, color=color, alpha=0.18, lw=0)
    ax.axhline(summary["threshold"], ls="--", color="grey", lw=1, label="threshold")
    title = f"{task.name}: validation at the selected rates, seed mean ± 95% CI"
    ax.set(xlabel="step", ylabel=f"validation {task.val_metric}", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
