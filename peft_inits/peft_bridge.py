"""Registration of our configs with Hugging Face PEFT — the one place that touches PEFT's registries.

peft ≥ 0.21 keeps `PeftType` a closed enum and `register_peft_method` refuses other names, so the three methods are
registered as plain-string keys of PEFT's mappings (a `str`-enum member and a plain string of the same value hash
alike, so PEFT's own lookups by `config.peft_type` find them). Importing `peft_inits` runs this once.
"""

from __future__ import annotations

from peft import mapping

from .config import CONFIG_CLASSES
from .tuner import AdapterModel


def register_with_peft() -> None:
    """Make `get_peft_model`, `PeftModel.from_pretrained` and diffusers' `add_adapter` know our configs."""
    for config_cls in CONFIG_CLASSES:
        key = config_cls.peft_type_name
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[key] = config_cls
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[key] = AdapterModel
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING[key] = AdapterModel.prefix


register_with_peft()
