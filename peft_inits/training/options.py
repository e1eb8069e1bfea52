"""Method options as runner settings, derived from the registry: one `OptionSpec` per option name.

Two methods may share an option name (SVFit and PiSSA both have `svd`): they share one flag (`--svd`), which
applies to every method that has the option. CLI flags, config-file keys and `compare` sweep keys all come from here.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..registry import get_method, methods, option_kind


@dataclass(frozen=True)
class OptionSpec:
    """One option name across the methods that have it."""

    name: str
    kind: type  # bool, int, float or str
    optional: bool  # None is a valid value
    choices: tuple[Any, ...] | None
    help: str
    methods: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, text: str) -> Any:
        """Parse one value from text (CLI, sweeps), with an error that names the option."""
        text = text.strip()
        if self.optional and text.lower() == "none":
            return None
        try:
            if self.kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("takes true or false")
                value: Any = text.lower() in ("true", "1", "yes")
            else:
                value = self.kind(text)
        except ValueError as exc:
            raise ValueError(f"{self.name}: cannot read {text!r} as {self.kind.__name__} ({exc})") from exc
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {text!r}")
        return value


def option_specs() -> dict[str, OptionSpec]:
    """Every option of every registered method, by name (shared names merged; their types must agree)."""
    specs: dict[str, OptionSpec] = {}
    for method in methods():
        hints = typing.get_type_hints(method.options)
        for f in method.option_fields():
            kind, optional = option_kind(hints[f.name])
            choices = f.metadata.get("choices")
            known = specs.get(f.name)
            if known is None:
                specs[f.name] = OptionSpec(
                    f.name,
                    kind,
                    optional,
                    tuple(choices) if choices else None,
                    f.metadata.get("help", ""),
                    (method.name,),
                )
                continue
            if known.kind is not kind:
                raise TypeError(
                    f"option {f.name!r} is {known.kind.__name__} in {known.methods} but {kind.__name__} "
                    f"in {method.name}; shared option names must share a type"
                )
            merged = known.choices
            if known.choices is not None and choices:
                merged = known.choices + tuple(c for c in choices if c not in known.choices)
            specs[f.name] = OptionSpec(
                f.name,
                kind,
                known.optional or optional,
                merged if choices else None,
                known.help,
                (*known.methods, method.name),
            )
    return specs


def add_option_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per option; the default None means "the method's own default"."""
    for spec in option_specs().values():
        owners = ", ".join(spec.methods)
        if spec.kind is bool:
            group.add_argument(
                spec.flag, action=argparse.BooleanOptionalAction, default=None, help=f"{owners}: {spec.help}"
            )
            continue
        group.add_argument(
            spec.flag,
            type=spec.convert,
            default=None,
            metavar=spec.kind.__name__.upper()
            if spec.choices is None
            else "{" + ",".join(map(str, spec.choices)) + "}",
            help=f"{owners}: {spec.help} (default: the method's, see its config)",
        )


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The method options set on the command line or in a config file (unset ones are left to the methods)."""
    return {name: getattr(args, name) for name in option_specs() if getattr(args, name, None) is not None}


def options_for(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `options` that `method` has."""
    own = {f.name for f in get_method(method).option_fields()}
    return {k: v for k, v in options.items() if k in own}


def check_applicable(options: Mapping[str, Any], compared: Iterable[str]) -> None:
    """Refuse an option that none of the `compared` methods has (a typo or a wrong method, never silently ignored)."""
    specs = option_specs()
    names = list(compared)
    for name in options:
        if not set(specs[name].methods) & set(names):
            raise ValueError(
                f"{specs[name].flag} is an option of {', '.join(specs[name].methods)}, not of {', '.join(names)}"
            )
