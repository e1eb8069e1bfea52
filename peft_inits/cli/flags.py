"""Settings dataclasses as command-line flags: one flag per field, its type, default and help taken from the field
(`training.fields` says how fields declare them), and the dataclass built back from the parsed namespace."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ..training.fields import field_default, field_parser, settable_fields

Settings = TypeVar("Settings")


def _flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    *,
    defaults: Any = None,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of the dataclass `settings` (defaults from `defaults`, an instance, if given; `helps`
    replaces a field's help for this parser)."""
    skipped, wanted, helps = set(skip), None if only is None else set(only), dict(helps or {})
    for field in settable_fields(settings, skipped, wanted):
        default = getattr(defaults, field.name) if defaults is not None else field_default(field)
        help_text = helps.get(field.name, field.metadata.get("help"))
        kind, parse = field_parser(settings, field)
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
            type=flag_type(parse),
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


def flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` as an argparse `type`: its ValueError message becomes the flag's error message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert
