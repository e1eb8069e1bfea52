"""Method options as runner settings, derived from the registry: one settings field per option name.

Two methods may share an option name (SVFit and PiSSA both have `svd`): they share one field and so one flag
(`--svd`), which applies to every method that has the option. `option_settings()` is a dataclass of those fields
(default None: the method's own default), so its flags, config-file keys and `compare` sweep values come from the
one settings→flags mechanism (`flags.add_settings_flags`, `flags.parse_value`) like every other setting.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from ..registry import get_method, methods, option_kind
from .fields import setting


def option_owners() -> dict[str, tuple[str, ...]]:
    """Every option name of every registered method → the methods that have it, in registration order."""
    owners: dict[str, tuple[str, ...]] = {}
    for method in methods():
        for f in method.option_fields():
            owners[f.name] = (*owners.get(f.name, ()), method.name)
    return owners


def option_settings() -> type:
    """The dataclass with one field per option name of the registered methods (rebuilt when the registry changes)."""
    return _option_settings(tuple((m.name, m.options) for m in methods()))


@functools.cache
def _option_settings(registry: tuple[tuple[str, type], ...]) -> type:
    merged: dict[str, dict[str, Any]] = {}  # name → kind, optional, choices, help, methods
    for method, options in registry:
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            kind, optional = option_kind(hints[f.name])
            choices = tuple(f.metadata.get("choices") or ())
            known = merged.get(f.name)
            if known is None:
                merged[f.name] = dict(kind=kind, optional=optional, choices=choices, help=f.metadata.get("help", ""))
                merged[f.name]["methods"] = (method,)
                continue
            if known["kind"] is not kind:
                raise TypeError(
                    f"option {f.name!r} is {known['kind'].__name__} in {known['methods']} but {kind.__name__} "
                    f"in {method}; shared option names must share a type"
                )
            known["methods"] += (method,)
            known["optional"] |= optional
            extra = tuple(c for c in choices if c not in known["choices"])
            known["choices"] = known["choices"] + extra if choices and known["choices"] else ()  # () = free text
    fields = []
    for name, spec in merged.items():
        help_text = f"{', '.join(spec['methods'])}: {spec['help']}"
        if spec["kind"] is not bool:
            help_text += " (default: the method's, see its config)"
        metadata = {"choices": spec["choices"]} if spec["choices"] else {}
        kind = spec["kind"] | None if spec["optional"] else spec["kind"]
        fields.append((name, kind, setting(None, help_text, **metadata)))
    return dataclasses.make_dataclass("MethodOptionSettings", fields, frozen=True)


def options_for(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `options` that `method` has."""
    own = {f.name for f in get_method(method).option_fields()}
    return {k: v for k, v in options.items() if k in own}


def check_applicable(options: Mapping[str, Any], compared: Iterable[str]) -> None:
    """Refuse an option that none of the `compared` methods has (a typo or a wrong method, never silently ignored)."""
    owners = option_owners()
    names = list(compared)
    for name in options:
        if not set(owners[name]) & set(names):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is an option of {', '.join(owners[name])}, not of {', '.join(names)}")
