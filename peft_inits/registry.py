"""The method registry: every adapter method is declared once, as a `Method`, in a module of its own.

A method is its name, its PEFT type, its config class — an explicit `peft.PeftConfig` dataclass whose fields beyond
`AdapterConfig`'s shared ones are the method's options (each field's metadata carries its help text and, where it
has one, its `choices`) — and a weights class (down/gain/up factors, the closed-form trainable count, the descriptor
hook). Everything else — the options dataclass, the PEFT registration, CLI flags, settings, sweep keys, export and
descriptors — is derived, so adding a method means adding one file (`register_method` is
`peft_inits.register_method`, defined in `registration.py` above the config and PEFT layers):

    @dataclass
    class MyConfig(AdapterConfig):
        # a docstring: one line, what trains and the source

        knob: float = field(default=0.5, metadata={"help": "what it does"})

    MY_METHOD = register_method(Method("mine", "MINE", MyConfig, MyWeights))

Runner defaults (learning rate and rank per task family) are the application's: `peft_inits.training.defaults`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .adapters import AdapterWeights
    from .config import AdapterConfig

Rank = Union[int, str]  # an int >= 1, or "full" = the largest rank every targeted matrix allows


@dataclass(frozen=True)
class MethodOptions:
    """Base of a method's options, a frozen (hashable) copy of its config's option fields that `register_method`
    derives; types and `metadata={"choices": (...)}` are validated, `check` is the config's `check_options`."""

    def __post_init__(self) -> None:
        kinds = _option_kinds(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, *kinds[f.name])
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Cross-field validation of a method (override in the method's options)."""


@functools.cache
def _option_kinds(options: type[MethodOptions]) -> dict[str, tuple[type, bool]]:
    """Each option field's `option_kind`, resolved once per class (type hints are slow to evaluate)."""
    hints = typing.get_type_hints(options)
    return {f.name: option_kind(hints[f.name]) for f in dataclasses.fields(options)}


def option_kind(hint: Any) -> tuple[type, bool]:
    """(bool | int | float | str, whether None is allowed) of an option field's type hint; other types are refused
    because every option must be reachable as a flag, a config-file value and a sweep value."""
    args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"method options must be bool, int, float or str (optionally None), got {hint!r}")
    return kinds[0], type(None) in args


def _check_type(name: str, value: Any, kind: type, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) != (kind is bool):
        ok = False
    elif kind is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{name} must be {kind.__name__}{' or None' if optional else ''}, got {value!r}")


@dataclass
class Method:
    """One adapter method, declared once. `options` is derived from `config` by `register_method`."""

    name: str  # "svfit": the key users type (--method svfit, blocks={...: {"method": "svfit"}})
    peft_type: str  # "SVFIT": the peft_type saved in adapter_config.json
    config: type[AdapterConfig]  # SVFitConfig: the explicit peft.PeftConfig dataclass of the method file
    weights: type[AdapterWeights]
    rank_bounded: bool = True  # r ≤ min(m, n) (a decomposition of W); LoRA is not bounded
    options: type[MethodOptions] = field(init=False, repr=False)

    @property
    def config_name(self) -> str:
        return self.config.__name__

    def option_fields(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.options)

    def make_options(self, values: Mapping[str, Any] | MethodOptions | None = None) -> MethodOptions:
        """The options instance from a mapping (unknown keys are an error naming the valid ones)."""
        if isinstance(values, self.options):
            return values
        values = dict(values or {})
        known = {f.name for f in self.option_fields()}
        unknown = sorted(set(values) - known)
        if unknown:
            valid = ", ".join(sorted(known)) or "(none)"
            raise ValueError(f"{self.name} has no option(s) {unknown}; its options: {valid}")
        return self.options(**values)

    def max_rank(self, m: int, n: int) -> int | None:
        """The largest rank this method allows on an m × n matrix (None: unbounded)."""
        return min(m, n) if self.rank_bounded else None

    def check_rank(self, r: int, m: int, n: int, where: str = "weight") -> None:
        """The one rank check: an int ≥ 1, and ≤ min(m, n) for methods that decompose W."""
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"{where}: rank must be an int >= 1, got {r!r}")
        limit = self.max_rank(m, n)
        if limit is not None and r > limit:
            raise ValueError(
                f"rank r={r} is too large for {where} ({m}×{n}): {self.name} keeps at most min(m, n) = {limit} "
                "components; pass a smaller r (runners: --r full picks the largest valid rank)"
            )


_METHODS: dict[str, Method] = {}


def add_method(method: Method, replace: bool = False) -> None:
    """Store a validated method (`registration.register_method` validates it and builds what derives from it)."""
    if method.name in _METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered (pass replace=True to redefine it)")
    _METHODS[method.name] = method


def remove_method(name: str) -> Method:
    """Take a method out of the store and return it."""
    method = get_method(name)
    del _METHODS[name]
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`, or a ValueError listing the valid names."""
    if name not in _METHODS:
        raise ValueError(f"unknown adapter method {name!r}; valid methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (the built-ins first)."""
    return tuple(_METHODS)


def methods() -> tuple[Method, ...]:
    return tuple(_METHODS.values())


def method_of_peft_type(peft_type: Any) -> Method | None:
    key = getattr(peft_type, "value", peft_type)
    return next((m for m in _METHODS.values() if m.peft_type == key), None)
