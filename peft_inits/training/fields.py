"""Settings dataclass fields that know how users write them: help, flag name, choices and a text parser per field.

A field's `metadata` may hold `help`, `flag` (the flag's name when it is not the field's, e.g. `--steps` for
`unet_steps`), `choices`, and `parse` (text → value, raising ValueError with a message, for types not listed here).
Types: bool (`--x` / `--no-x`, or true/false as text), int, float, str, `X | None` ('none' is None), and
`tuple[X, ...]` / `list[X]` written comma-separated (`--seeds 0,1,2`). The command line (`cli.flags`), config files
and `compare`'s sweeps all read values through `field_parser`, so a setting is declared once, in its dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Union


def setting(default: Any, help: str | None = None, **metadata: Any) -> Any:
    """A dataclass field whose flag's help (and `flag`, `choices` or `parse`) lives in its metadata."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def csv_list(text: str) -> list[str]:
    """'q,v' → ['q', 'v'] (items stripped, empty ones dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_value(settings: type, name: str, text: str) -> Any:
    """One field's value from text, as its flag reads it, plus the checks argparse does for a flag (`choices`) and
    the word form of a switch (true/false, yes/no, 1/0). A ValueError names the field."""
    field = find_field(settings, name)
    try:
        value = field_parser(settings, field)[1](text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {text!r}")
    return value


def is_list_field(settings: type, name: str) -> bool:
    """Whether a field holds several items (`list[X]`, `tuple[X, ...]`; `compare` sweeps join them with '+')."""
    hint = _hints(settings)[name]
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    return any(typing.get_origin(a) in (list, tuple) for a in args)


def find_field(settings: type, name: str) -> dataclasses.Field:
    for field in dataclasses.fields(settings):
        if field.name == name:
            return field
    raise ValueError(f"{settings.__name__} has no field {name!r}")


def settable_fields(settings: type, skipped: set[str], wanted: set[str] | None) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(settings) if f.init and f.name not in skipped]
    if wanted is None:
        return fields
    unknown = wanted - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{settings.__name__} has no field(s) {sorted(unknown)}")
    return [f for f in fields if f.name in wanted]


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def field_parser(settings: type, field: dataclasses.Field) -> tuple[Any, Callable[[str], Any]]:
    """(metavar, or bool for a switch; text → value, raising ValueError) of one field; 'none' is None where the
    type allows None."""
    hint = _hints(settings)[field.name]
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):  # X | None
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(kinds) < len(typing.get_args(hint))
        hint = kinds[0] if len(kinds) == 1 else hint
    custom = field.metadata.get("parse")
    if custom is not None:
        metavar, parse = field.name.upper(), custom
    elif hint is bool:
        return bool, parse_bool
    elif hint in (int, float, str):
        metavar, parse = hint.__name__.upper(), functools.partial(_parse_kind, hint)
    elif typing.get_origin(hint) in (tuple, list) and typing.get_args(hint)[0] in (int, float, str):
        item, container = typing.get_args(hint)[0], typing.get_origin(hint)
        metavar, parse = f"{item.__name__.upper()},…", functools.partial(_comma_items, item, container)
    else:
        raise TypeError(f"{settings.__name__}.{field.name}: no flag for type {hint!r}; give it metadata['parse']")
    return metavar, functools.partial(_none_or, parse) if optional else parse


def _none_or(parse: Callable[[str], Any], text: str) -> Any:
    return None if text.strip().lower() == "none" else parse(text)


def _parse_kind(kind: type, text: str) -> Any:
    try:
        return kind(text.strip())
    except ValueError as exc:
        raise ValueError(f"cannot read {text!r} as {kind.__name__} ({exc})") from exc


def parse_bool(text: str) -> bool:
    """A switch's value written as a word: true/false, yes/no, 1/0."""
    word = text.strip().lower()
    if word not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"cannot read {text!r} as bool (takes true or false)")
    return word in ("true", "1", "yes")


def _comma_items(kind: type, container: type, text: str) -> tuple[Any, ...] | list[Any]:
    try:
        return container(kind(item) for item in csv_list(text))
    except ValueError as exc:
        raise ValueError(f"expected comma-separated {kind.__name__} values, got {text!r}") from exc


@functools.cache
def _hints(settings: type) -> dict[str, Any]:
    return typing.get_type_hints(settings)
