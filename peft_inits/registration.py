"""`register_method`: a method declared once becomes a registry entry, a PEFT config class and a PEFT registration.

The registry itself (`registry.py`) only stores declarations; what derives from a declaration — the config class
(`config.make_config_class`) and PEFT's mappings (`peft_bridge`) — sits above it, and this module, above both, ties
them together. Method files (built-in or a user's) call `register_method` here.
"""

from __future__ import annotations

import dataclasses
import re

from .adapters import AdapterWeights
from .config import make_config_class
from .peft_bridge import register_config, unregister_config
from .registry import TASK_FAMILIES, Method, MethodOptions, add_method, method_names, methods, remove_method

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method to the registry, build its PEFT config class and register it with PEFT. Returns the method.

    Works for methods defined outside this package: after this call `get_peft_model`, `PeftModel.from_pretrained`,
    the runners' `--method` and `compare --methods` know it.
    """
    if not _NAME.fullmatch(method.name):
        raise ValueError(f"method name {method.name!r} must be lower-case letters, digits and _")
    if method.name in method_names() and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered (pass replace=True to redefine it)")
    clash = next((m for m in methods() if m.peft_type == method.peft_type and m.name != method.name), None)
    if clash is not None:
        raise ValueError(f"peft_type {method.peft_type!r} is already used by method {clash.name!r}")
    if not (dataclasses.is_dataclass(method.options) and issubclass(method.options, MethodOptions)):
        raise TypeError(f"{method.name}: options must be a MethodOptions dataclass")
    if not issubclass(method.weights, AdapterWeights):
        raise TypeError(f"{method.name}: weights must subclass peft_inits.adapters.AdapterWeights")
    unknown = sorted(set(method.defaults) - set(TASK_FAMILIES))
    if unknown:
        raise ValueError(f"{method.name}: unknown runner families {unknown}; known: {', '.join(TASK_FAMILIES)}")
    method.options()  # the defaults themselves must validate
    method.weights.method = method.name
    method.config = make_config_class(method)
    add_method(method, replace=replace)
    register_config(method.config)
    return method


def unregister_method(name: str) -> Method:
    """Remove a method (e.g. one a test or notebook registered) from the registry and from PEFT's mappings."""
    method = remove_method(name)
    unregister_config(method.config)
    return method
