"""Fused adapter kernels.

`adapter_delta` computes the shared down → gain → up delta of every adapter with a fused autograd Function: Triton
kernels on CUDA tensors, the same Function in torch elsewhere. Both are tested against
`peft_inits.functional.linear_delta`.
"""

from .autograd import FusedAdapterDelta
from .dispatch import (
    BACKENDS,
    MAX_TRITON_RANK,
    adapter_delta,
    default_backend,
    resolve_backend,
    triton_available,
    use_backend,
)
from .torch_ops import TorchOps

__all__ = [
    "BACKENDS",
    "MAX_TRITON_RANK",
    "FusedAdapterDelta",
    "TorchOps",
    "adapter_delta",
    "default_backend",
    "resolve_backend",
    "triton_available",
    "use_backend",
]
