"""peft_inits: PEFT adapters initialised from the pretrained weight itself (LoRA, SVFit, LoLDU, PiSSA, MiLoRA, ...)."""

from .adapters import AdapterSpec, AdapterWeights, DecomposedWeights, trainable_count
from .config import AdapterConfig
from .layers import AdapterLayer
from .methods.loldu import LoLDUConfig
from .methods.lora import LoRAConfig
from .methods.milora import MiLoRAConfig
from .methods.pissa import PiSSAConfig
from .methods.svfit import SVFitConfig
from .mixed import mixed_batch
from .peft_bridge import register_with_peft
from .registration import register_method
from .registry import Method, MethodOptions, get_method, method_names
from .tuner import AdapterModel

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "AdapterModel",
    "AdapterSpec",
    "AdapterWeights",
    "DecomposedWeights",
    "LoLDUConfig",
    "LoRAConfig",
    "Method",
    "MethodOptions",
    "MiLoRAConfig",
    "PiSSAConfig",
    "SVFitConfig",
    "__version__",
    "get_method",
    "method_names",
    "mixed_batch",
    "register_method",
    "register_with_peft",
    "trainable_count",
]
