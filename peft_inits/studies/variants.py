"""The rows of a comparison: methods, per-method overrides (`loldu.z_init=uniform`) and sweeps (`loldu.r=1,8,full`).

Syntax: `[METHOD.]KEY=VALUE` for an override and `[METHOD.]KEY=V1,V2,...` for a sweep; without `METHOD.` it applies
to every adapter method of the comparison that has KEY (not to `full`/`head`). KEY is an `AdapterSettings` field,
`lr`, or an option of a registered method (`loldu.pivoting=partial,rook,complete`, `svd_niter=1,4`); each value is
read by its field's own parser, as its flag reads it (`flags.parse_value`).
Inside one value, `+` joins list items: `--sweep loldu.blocks=0-1,2-3,0-1+4-5` gives three rows.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..training.fields import is_list_field, parse_value
from ..training.options import check_applicable, option_owners, option_settings, options_for
from ..training.settings import AdapterSettings, TrainSettings, check_method, is_adapter_method

_SETTING_KEYS = {f.name for f in dataclasses.fields(AdapterSettings)} - {"method", "options", "family"} | {"lr"}


def valid_keys() -> list[str]:
    """Settings and every registered method's options (derived from the registry, so new methods' options work)."""
    return sorted(_SETTING_KEYS | set(option_owners()))


@dataclass
class Variant:
    """One row of a comparison."""

    label: str
    adapter: AdapterSettings
    lr: float | None = None  # None: the method default
    swept: bool = False

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "_").replace("=", "").replace("+", "-").replace(",", "-")


def _convert(key: str, text: str) -> Any:
    """One value, read by its field's parser; list items are joined with '+' (',' separates a sweep's values)."""
    settings = TrainSettings if key == "lr" else AdapterSettings if key in _SETTING_KEYS else option_settings()
    return parse_value(settings, key, text.replace("+", ",") if is_list_field(settings, key) else text)


def parse_assignment(text: str, methods: Sequence[str], *, many: bool) -> tuple[list[str], str, list[Any]]:
    """'loldu.r=1,8' → (['loldu'], 'r', [1, 8]). Unscoped keys target every adapter method in `methods`."""
    if "=" not in text:
        raise ValueError(f"expected [METHOD.]KEY=VALUE, got {text!r}")
    left, right = text.split("=", 1)
    scope, _, key = left.strip().rpartition(".")
    key = key.replace("-", "_")
    owners = option_owners()
    if key not in _SETTING_KEYS and key not in owners:
        raise ValueError(f"unknown setting {key!r} in {text!r}; valid: {', '.join(valid_keys())}")
    if scope:
        check_method(scope)
        if scope not in methods:
            raise ValueError(f"{text!r} names method {scope!r}, which is not among the compared ones {list(methods)}")
        if key in owners and scope not in owners[key]:
            raise ValueError(f"{text!r}: {scope} has no option {key!r} (it belongs to {', '.join(owners[key])})")
        targets = [scope]
    elif key in owners:
        targets = [m for m in methods if m in owners[key]]
        if not targets:
            raise ValueError(f"{text!r}: no compared method has option {key!r} ({', '.join(owners[key])} do)")
    else:
        targets = [m for m in methods if is_adapter_method(m)]
    values = [_convert(key, v) for v in (right.split(",") if many else [right])]
    if not values:
        raise ValueError(f"no value in {text!r}")
    return targets, key, values


def _show(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def build_variants(
    methods: Sequence[str],
    base: AdapterSettings,
    overrides: Sequence[str] = (),
    sweeps: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> list[Variant]:
    """Expand methods × sweeps into rows; every method keeps its defaults unless overridden.

    `options` (method options from flags, e.g. {"svd": "randomized"}) go to every compared method that has them.
    """
    for method in methods:
        check_method(method)
    options = dict(options or {})
    check_applicable(options, [m for m in methods if is_adapter_method(m)])
    if len(set(methods)) != len(methods):
        raise ValueError(f"a method is listed twice in {list(methods)}")
    fixed: dict[str, dict[str, Any]] = {m: options_for(m, options) if is_adapter_method(m) else {} for m in methods}
    for text in overrides:
        targets, key, values = parse_assignment(text, methods, many=False)
        for method in targets:
            fixed[method][key] = values[0]
    swept: dict[str, list[tuple[str, list[Any]]]] = {m: [] for m in methods}
    for text in sweeps:
        targets, key, values = parse_assignment(text, methods, many=True)
        for method in targets:
            swept[method].append((key, values))
    rows = []
    owners = option_owners()
    for method in methods:
        axes = swept[method]
        combos = itertools.product(*[[(key, v) for v in values] for key, values in axes]) if axes else [()]
        for combo in combos:
            settings = {**fixed[method], **dict(combo)}
            lr = settings.pop("lr", None)
            method_options = {k: settings.pop(k) for k in list(settings) if k in owners and k not in _SETTING_KEYS}
            adapter = dataclasses.replace(base, method=method, options=method_options, **settings)
            label = method + "".join(f" {key}={_show(value)}" for key, value in combo)
            rows.append(Variant(label, adapter, lr, swept=bool(combo)))
    return rows
