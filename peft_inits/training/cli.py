"""Command-line options shared by every runner, and config-file defaults (`--config run.toml`; flags win)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from .configfile import read_config_file
from .flags import add_settings_flags, settings_from_args
from .options import add_option_flags, check_applicable, options_from_args
from .settings import AdapterSettings, TrainSettings, all_methods, check_method, parse_rank


def csv_list(text: str) -> list[str]:
    """'q,v' → ['q', 'v']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def blocks_arg(text: str) -> list[str] | dict[str, Any]:
    """'0-2,5' → ['0-2', '5']; a JSON object gives per-block ranks, e.g. '{"0-2": 8, "5": 0}'."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"--blocks is not valid JSON: {exc}") from exc
        return dict(value)
    return csv_list(text)


def _rank_arg(text: str) -> int | str:
    try:
        return parse_rank(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _method_arg(text: str) -> str:
    try:
        return check_method(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def methods_list(text: str) -> list[str]:
    """'lora,svfit' → ['lora', 'svfit'], each checked."""
    return [_method_arg(item) for item in csv_list(text)]


def add_adapter_args(
    parser: argparse.ArgumentParser,
    *,
    single_method: bool = True,
    methods: Sequence[str] | None = None,
    head: bool = True,
    kinds_help: str = "e.g. q,v (default) or attn,ff",
) -> None:
    """Adapter flags; every method option of the registry gets its flag (`--svd-niter`, `--pivoting`, ...)."""
    group = parser.add_argument_group("adapter")
    if single_method:
        choices = list(methods or all_methods())
        group.add_argument(
            "--method", type=_method_arg, default=choices[0], help=f"one of {', '.join(choices)} (default: %(default)s)"
        )
        group.add_argument("--r", type=_rank_arg, default=None, help="rank (int) or 'full'; default per method")
        group.add_argument("--alpha", type=float, default=None, help="scale numerator, scale = alpha / r")
    group.add_argument("--target-modules", type=csv_list, default=None, help="module-name suffixes (PEFT semantics)")
    group.add_argument("--module-kinds", type=csv_list, default=None, help=kinds_help)
    group.add_argument("--blocks", type=blocks_arg, default=None, help="e.g. 0-2,5 or JSON {'0-2': 8, '5': 0}")
    group.add_argument("--exclude-modules", type=csv_list, default=None)
    if head:
        group.add_argument("--head-modules", type=csv_list, default=None, help="trained head (default: detected)")
    group.add_argument("--init-seed", type=int, default=0, help="seed of random inits (LoRA A, randomized SVD, z)")
    group.add_argument("--decompose-dtype", choices=("float32", "float64"), default="float32")
    group.add_argument(
        "--embed-factors", action=argparse.BooleanOptionalAction, default=False, help="save frozen factors in the file"
    )
    add_option_flags(parser.add_argument_group("method options (each applies to the methods named in its help)"))


def add_train_args(
    parser: argparse.ArgumentParser, defaults: TrainSettings | None = None, *, head: bool = True
) -> None:
    """The `TrainSettings` flags (`--progress` comes with the run flags; `--head-lr` only where there is a head)."""
    skip = ("progress",) if head else ("progress", "head_lr")
    add_settings_flags(parser.add_argument_group("training"), TrainSettings, defaults=defaults, skip=skip)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--config", default=None, help="TOML/YAML file of option defaults (flags win)")
    group.add_argument("--output-dir", default=None, help="run directory (default: runs/<runner>-<method>-<time>)")
    group.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run in --output-dir")
    group.add_argument("--cache-dir", default=None, help="dataset splits and pretrained checkpoints cache")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bars")


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`, taking defaults from `--config FILE` when given; unknown keys in the file are an error."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = read_config_file(known.config)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
        dests = {action.dest for action in parser._actions} - {"help", "config"}
        unknown = sorted(set(values) - dests)
        if unknown:
            parser.error(f"unknown option(s) {unknown} in {known.config}; valid: {', '.join(sorted(dests))}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def adapter_settings(args: argparse.Namespace, **override: Any) -> AdapterSettings:
    """AdapterSettings from parsed options (`override` wins); a method option the method lacks is an error."""
    method = override.get("method", getattr(args, "method", "lora"))
    options = override.pop("options", None)
    if options is None:
        options = options_from_args(args)
        check_applicable(options, [method])
    fields = {
        "method": getattr(args, "method", "lora"),
        "r": getattr(args, "r", None),
        "alpha": getattr(args, "alpha", None),
        "target_modules": args.target_modules,
        "module_kinds": args.module_kinds,
        "blocks": args.blocks,
        "exclude_modules": args.exclude_modules,
        "head_modules": getattr(args, "head_modules", None),
        "init_seed": args.init_seed,
        "decompose_dtype": args.decompose_dtype,
        "embed_factors": args.embed_factors,
        "options": options,
    }
    fields.update(override)
    return AdapterSettings(**fields)


def train_settings(args: argparse.Namespace, **override: Any) -> TrainSettings:
    """TrainSettings from parsed options (`override` wins); without a `--head-lr` flag there is no head to train."""
    if not hasattr(args, "head_lr"):
        override.setdefault("head_lr", 0.0)
    return settings_from_args(TrainSettings, args, **override)


def run_script(
    main: Callable[[argparse.Namespace], Any],
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    argv: Sequence[str] | None = None,
) -> None:
    """Entry point of the `experiments/` scripts: bad input (ValueError, FileNotFoundError) ends the program with its
    message instead of a traceback; set PEFT_INITS_TRACEBACK=1 to see the traceback."""
    args = parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("PEFT_INITS_TRACEBACK"):
            raise
        raise SystemExit(f"error: {exc}") from exc
