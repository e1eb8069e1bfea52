"""peft_inits: PEFT adapters initialised from the pretrained weight itself (LoRA, SVFit, LoLDU)."""

from .adapters import METHODS, AdapterSpec, trainable_count
from .config import LoLDUConfig, LoRAConfig, SVFitConfig
from .layers import AdapterLayer
from .peft_bridge import register_with_peft
from .tuner import AdapterModel

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AdapterLayer",
    "AdapterModel",
    "AdapterSpec",
    "LoLDUConfig",
    "LoRAConfig",
    "SVFitConfig",
    "__version__",
    "register_with_peft",
    "trainable_count",
]
