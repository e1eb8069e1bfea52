"""Registration of our configs with Hugging Face PEFT's config, tuner and prefix mappings, keyed by the `PeftType`
members `peft_types` adds. `registration.register_method` calls this for every method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import mapping

from .peft_types import add_peft_type, remove_peft_type
from .registry import methods
from .tuner import AdapterModel

if TYPE_CHECKING:
    from .config import AdapterConfig


def register_config(config_cls: type[AdapterConfig]) -> None:
    """Make `get_peft_model`, `PeftModel.from_pretrained`, transformers' `load_adapter` and diffusers'
    `add_adapter` know one config class."""
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


def register_with_peft() -> None:
    """Register every method of the registry again (e.g. after another library reset PEFT's mappings)."""
    for method in methods():
        register_config(method.config)
