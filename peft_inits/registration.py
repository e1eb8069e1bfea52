"""`register_method`: a method declared once becomes a registry entry, its options and a PEFT registration.

The registry itself (`registry.py`) only stores declarations; what derives from a declaration — the options dataclass
(`config.options_class`, from the config's own fields) and PEFT's mappings (`peft_bridge`) — sits above it, and this
module, above both, ties them together. Method files (built-in or a user's) call `register_method` here.
"""

from __future__ import annotations

import re

from .adapters import AdapterWeights
from .config import options_class
from .peft_bridge import register_config, unregister_config
from .registry import Method, add_method, method_names, methods, remove_method

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method to the registry, derive its options from its config class and register it with PEFT. Returns
    the method.

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
    owner = vars(method.config).get("method") if isinstance(method.config, type) else None
    if owner not in (None, method.name):
        raise ValueError(f"{method.config.__name__} is already the config of method {owner!r}")
    if not (isinstance(method.weights, type) and issubclass(method.weights, AdapterWeights)):
        raise TypeError(f"{method.name}: weights must subclass peft_inits.adapters.AdapterWeights")
    method.options = options_class(method.config)
    method.options()  # the defaults themselves must validate
    method.config.method = method.name
    method.config.peft_type_name = method.peft_type
    method.weights.method = method.name
    add_method(method, replace=replace)
    register_config(method.config)
    return method


def unregister_method(name: str) -> Method:
    """Remove a method (e.g. one a test or notebook registered) from the registry and from PEFT's mappings."""
    method = remove_method(name)
    unregister_config(method.config)
    return method
