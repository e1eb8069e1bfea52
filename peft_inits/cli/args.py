"""Command-line options shared by every runner, and config-file defaults (`--config run.toml`; flags win)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..blocks import parse_blocks
from ..training.fields import csv_list, parse_bool
from ..training.options import check_applicable, option_owners, option_settings
from ..training.settings import AdapterSettings, TrainSettings, all_methods, check_method
from .configfile import read_config_file
from .flags import add_settings_flags, flag_type, settings_from_args

blocks_arg = flag_type(parse_blocks)  # an argparse type for runners' own --blocks flags, as AdapterSettings reads it


def methods_list(text: str) -> list[str]:
    """'lora,svfit' → ['lora', 'svfit'], each checked."""
    return [flag_type(check_method)(item) for item in csv_list(text)]


def add_adapter_args(
    parser: argparse.ArgumentParser,
    *,
    single_method: bool = True,
    methods: Sequence[str] | None = None,
    head: bool = True,
    kinds_help: str = "e.g. q,v (default) or attn,ff",
) -> None:
    """The `AdapterSettings` flags, and one flag per method option of the registry (`--svd-niter`, `--pivoting`,
    ...). `single_method=False` (compare): no --method/--r/--alpha; `head=False`: no --head-modules."""
    skip = {"options", "family"} | (set() if single_method else {"method", "r", "alpha"})
    skip |= set() if head else {"head_modules"}
    choices = list(methods or all_methods())
    helps = {"method": f"one of {', '.join(choices)} (default: %(default)s)", "module_kinds": kinds_help}
    defaults = AdapterSettings(method=choices[0])
    add_settings_flags(parser.add_argument_group("adapter"), AdapterSettings, defaults=defaults, skip=skip, helps=helps)
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
        actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            parser.error(f"unknown option(s) {unknown} in {known.config}; valid: {', '.join(sorted(actions))}")
        try:
            parser.set_defaults(**{key: _from_file(actions[key], value) for key, value in values.items()})
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{known.config}: {exc}")
    return parser.parse_args(argv)


def _from_file(action: argparse.Action, value: Any) -> Any:
    """A config-file value read as its flag reads text (lists comma-joined, tables as JSON), so a value means the
    same in a file as on the command line."""
    if value is None or (action.type is None and not isinstance(action, argparse.BooleanOptionalAction)):
        return value
    if isinstance(action, argparse.BooleanOptionalAction):
        return parse_bool(value) if isinstance(value, str) else value
    if isinstance(value, dict):
        text = json.dumps(value)
    elif isinstance(value, (list, tuple)):
        text = ",".join(map(str, value))
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        parsed = action.type(text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"{action.dest}: {exc}") from exc
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(f"{action.dest} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return parsed


def adapter_settings(args: argparse.Namespace, **override: Any) -> AdapterSettings:
    """AdapterSettings from parsed options (`override` wins); a method option the method lacks is an error."""
    method = override.get("method", getattr(args, "method", "lora"))
    options = override.pop("options", None)
    if options is None:
        options = options_from_args(args)
        check_applicable(options, [method])
    return settings_from_args(AdapterSettings, args, options=options, **override)


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


def add_option_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per option; the default None means "the method's own default"."""
    add_settings_flags(group, option_settings())


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The method options set on the command line or in a config file (unset ones are left to the methods)."""
    return {name: getattr(args, name) for name in option_owners() if getattr(args, name, None) is not None}
