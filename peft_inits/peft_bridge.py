"""Registration of our configs with Hugging Face PEFT — the one place that touches PEFT's registries.

peft ≥ 0.21 keeps `PeftType` a closed enum and `register_peft_method` refuses other names, so each method is
registered as a plain-string key of PEFT's mappings (a `str`-enum member and a plain string of the same value hash
alike, so PEFT's own lookups by `config.peft_type` find them). `register_method` calls this for every method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import mapping

if TYPE_CHECKING:
    from .config import AdapterConfig


def register_config(config_cls: type[AdapterConfig]) -> None:
    """Make `get_peft_model`, `PeftModel.from_pretrained` and diffusers' `add_adapter` know one config class."""
    from .tuner import AdapterModel

    key = config_cls.peft_type_name
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[key] = config_cls
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[key] = AdapterModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[key] = AdapterModel.prefix


def unregister_config(config_cls: type[AdapterConfig]) -> None:
    """Undo `register_config`."""
    for table in (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, mapping.PEFT_TYPE_TO_TUNER_MAPPING):
        table.pop(config_cls.peft_type_name, None)
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING.pop(config_cls.peft_type_name, None)


def register_with_peft() -> None:
    """Register every method of the registry again (e.g. after another library reset PEFT's mappings)."""
    from .registry import methods

    for method in methods():
        register_config(method.config)
