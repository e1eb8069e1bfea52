"""Fused adapter kernels, imported as `peft_inits.kernels` (never as a top-level `kernels`, see DESIGN.md §4).

`adapter_delta` computes the shared down → gain → up delta of every adapter with a fused autograd Function: Triton
kernels on CUDA tensors, the same Function in torch elsewhere. Both are tested against
`peft_inits.functional.linear_delta`.
"""

# With a checkout's root on sys.path (`python -m pytest` puts the working directory there) this folder is also
# visible as a top-level `kernels`, the name of a PyPI package that transformers finds and imports while it loads.
# Under any name but `peft_inits.kernels` it therefore stays empty: transformers then sees a versionless package
# it ignores, instead of a circular import of peft_inits in the middle of importing peft.
if __name__ == "peft_inits.kernels":
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
