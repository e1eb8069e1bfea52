"""Settings dataclasses as command-line flags: one flag per field, its type, default and help taken from the field.

A field's `metadata` may hold `help`, `flag` (the flag's name when it is not the field's, e.g. `--steps` for
`unet_steps`), `choices`, and `parse` (text → value, for types not listed here). Types: bool (`--x` / `--no-x`),
int, float, str, `X | None`, and `tuple[X, ...]` written comma-separated (`--seeds 0,1,2`). `settings_from_args`
builds the dataclass back from the parsed namespace, so a setting is declared once, in its dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, Union

Settings = TypeVar("Settings")


def setting(default: Any, help: str | None = None, **metadata: Any) -> Any:
    """A dataclass field whose flag's help (and `flag`, `choices` or `parse`) lives in its metadata."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    *,
    defaults: Any = None,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> None:
    """Add one flag per field of the dataclass `settings` (defaults from `defaults`, an instance, if given)."""
    skipped, wanted = set(skip), None if only is None else set(only)
    for field in _fields(settings, skipped, wanted):
        default = getattr(defaults, field.name) if defaults is not None else _default(field)
        help_text = field.metadata.get("help")
        kind, parse = _parser(settings, field)
        if kind is bool:
            parser.add_argument(
                _flag_name(field),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue
        parser.add_argument(
            _flag_name(field),
            dest=field.name,
            type=parse,
            default=default,
            choices=field.metadata.get("choices"),
            metavar=None if field.metadata.get("choices") else kind,
            help=help_text,
        )


def settings_from_args(settings: type[Settings], args: argparse.Namespace, **override: Any) -> Settings:
    """The dataclass from the flags `add_settings_flags` added (fields without a flag keep their default;
    `override` wins)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings) if hasattr(args, f.name)}
    values.update(override)
    return settings(**values)


def _fields(settings: type, skipped: set[str], wanted: set[str] | None) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(settings) if f.init and f.name not in skipped]
    if wanted is None:
        return fields
    unknown = wanted - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{settings.__name__} has no field(s) {sorted(unknown)}")
    return [f for f in fields if f.name in wanted]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _parser(settings: type, field: dataclasses.Field) -> tuple[Any, Callable[[str], Any]]:
    """(metavar, or bool for a switch; text → value) of one field."""
    hint = _hints(settings)[field.name]
    if typing.get_origin(hint) in (Union, types.UnionType):  # X | None
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else hint
    custom = field.metadata.get("parse")
    if custom is not None:
        return field.name.upper(), custom
    if hint is bool:
        return bool, bool
    if hint in (int, float, str):
        return hint.__name__.upper(), hint
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] in (int, float, str):
        item = typing.get_args(hint)[0]
        return f"{item.__name__.upper()},…", functools.partial(_comma_tuple, item)
    raise TypeError(f"{settings.__name__}.{field.name}: no flag for type {hint!r}; give it metadata['parse']")


def _comma_tuple(kind: type, text: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from exc


@functools.cache
def _hints(settings: type) -> dict[str, Any]:
    return typing.get_type_hints(settings)
