"""Our methods as real `PeftType` members — the one place that extends PEFT's enum.

peft 0.21 keeps `PeftType` a closed `str` enum and `register_peft_method` refuses other names, yet transformers
(`PreTrainedModel.load_adapter`) and PEFT's own model cards read `config.peft_type.value`. So each method becomes a
real member, added at import time (CPython 3.10–3.13 keep members in `_member_map_`, `_value2member_map_` and
`_member_names_`, which is all `PeftType[...]`, `PeftType(...)`, iteration and attribute access read).
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

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
