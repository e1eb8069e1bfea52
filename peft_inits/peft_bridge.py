"""Registration of our configs with Hugging Face PEFT — the one place that touches PEFT's registries.

peft 0.21 keeps `PeftType` a closed `str` enum and `register_peft_method` refuses other names, yet transformers
(`PreTrainedModel.load_adapter`) and PEFT's own model cards read `config.peft_type.value`. So each method becomes a
real `PeftType` member, added at import time (`add_peft_type`; CPython 3.10–3.13 keep members in `_member_map_`,
`_value2member_map_` and `_member_names_`, which is all `PeftType[...]`, `PeftType(...)`, iteration and attribute
access read), and that member keys PEFT's config/tuner/prefix mappings. `register_method` calls this for every method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import mapping
from peft.utils.peft_types import PeftType

if TYPE_CHECKING:
    from .config import AdapterConfig

_ADDED: set[str] = set()  # members this module added (only those may be removed again)


def add_peft_type(value: str) -> PeftType:
    """The `PeftType` member named and valued `value`, added to the enum if PEFT does not have it."""
    if value in PeftType._value2member_map_:
        return PeftType(value)
    if value in PeftType._member_map_ or hasattr(PeftType, value):
        raise ValueError(f"PeftType already has a member named {value!r} with another value")
    member = str.__new__(PeftType, value)
    member._name_ = value
    member._value_ = value
    member.__objclass__ = PeftType
    member.__init__(value)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)
    type.__setattr__(PeftType, value, member)  # attribute access (PeftType.SVFIT) on every supported CPython
    _ADDED.add(value)
    return member


def remove_peft_type(value: str) -> None:
    """Undo `add_peft_type` for a member this module added (PEFT's own members are never removed)."""
    if value not in _ADDED:
        return
    _ADDED.discard(value)
    PeftType._member_map_.pop(value, None)
    PeftType._value2member_map_.pop(value, None)
    if value in PeftType._member_names_:
        PeftType._member_names_.remove(value)
    if value in PeftType.__dict__:
        type.__delattr__(PeftType, value)


def register_config(config_cls: type[AdapterConfig]) -> None:
    """Make `get_peft_model`, `PeftModel.from_pretrained`, transformers' `load_adapter` and diffusers'
    `add_adapter` know one config class."""
    from .tuner import AdapterModel

    key = add_peft_type(config_cls.peft_type_name)
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[key] = config_cls
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[key] = AdapterModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[key] = AdapterModel.prefix


def unregister_config(config_cls: type[AdapterConfig]) -> None:
    """Undo `register_config`."""
    key = config_cls.peft_type_name
    for table in (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, mapping.PEFT_TYPE_TO_TUNER_MAPPING):
        table.pop(key, None)
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING.pop(key, None)
    remove_peft_type(key)


def peft_type_of(config_cls: type[AdapterConfig]) -> PeftType:
    """The `PeftType` member a registered config class saves as its `peft_type`."""
    return add_peft_type(config_cls.peft_type_name)


def register_with_peft() -> None:
    """Register every method of the registry again (e.g. after another library reset PEFT's mappings)."""
    from .registry import methods

    for method in methods():
        register_config(method.config)
