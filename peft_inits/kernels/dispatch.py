"""Which implementation computes an adapter delta: Triton on CUDA tensors when it imports, torch otherwise.

Backends:

- ``"auto"`` (default): Triton for CUDA tensors with r ≤ 128 in fp32/bf16/fp16 when `triton` imports and the
  kernels passed their self-check on that device and dtype (`selfcheck`: once, on first use), else torch.
- ``"triton"``: the Triton kernels, unchecked; an error where they cannot run (no triton, CPU tensors without
  ``TRITON_INTERPRET=1``, r > 128, another dtype).
- ``"torch"``: the same fused autograd Function computed with torch matmuls.
- ``"reference"``: `functional.linear_delta` under plain autograd (unfused; what benchmarks call "factored").

$PEFT_INITS_KERNELS (``auto``, ``triton``, ``torch`` or ``reference``) sets the default for a process; `use_backend`
switches it for a block of code (benchmarks, debugging); an explicit ``backend=`` wins over both.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor

from peft_inits import functional as Fn

from .autograd import DeltaOps, FusedAdapterDelta
from .selfcheck import triton_passes
from .torch_ops import TorchOps

BACKENDS = ("auto", "triton", "torch", "reference")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_TRITON_RANK = 128
BACKEND_ENV = "PEFT_INITS_KERNELS"

_default_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("peft_inits_kernel_backend", default=None)
_TORCH_OPS = TorchOps()


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether the `triton` package can be imported (without importing it; looked up once per process)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. a blocked `sys.modules["triton"] = None`
        return False


def triton_module() -> ModuleType:
    """The Triton kernels module, imported on first use so CPU-only runs never load triton."""
    if not triton_available():
        raise ImportError("backend 'triton' needs the triton package: pip install 'peft-inits[triton]'")
    from . import triton_ops

    return triton_ops


def _check_backend(backend: str, where: str = "kernel backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown {where} {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Make `backend` the default of `adapter_delta` inside the block (e.g. ``"reference"`` to benchmark)."""
    token = _default_backend.set(_check_backend(backend))
    try:
        yield
    finally:
        _default_backend.reset(token)


def default_backend() -> str:
    """The backend `adapter_delta` uses when none is passed: `use_backend`'s, else $PEFT_INITS_KERNELS, else auto."""
    chosen = _default_backend.get()
    if chosen is not None:
        return chosen
    return _check_backend(os.environ.get(BACKEND_ENV) or "auto", f"${BACKEND_ENV}")


def resolve_backend(backend: str, x: Tensor, rank: int) -> str:
    """The concrete backend ("triton", "torch" or "reference") that `backend` means for this input."""
    backend = _check_backend(backend)
    if backend != "auto":
        return backend
    if triton_fits(x, rank) and triton_available() and triton_passes(x.device, x.dtype, _triton_ops):
        return "triton"
    return "torch"


def triton_fits(x: Tensor, rank: int) -> bool:
    """Whether `auto` would consider the Triton kernels for this input (CUDA, a dtype and rank they take)."""
    return x.is_cuda and x.dtype in TRITON_DTYPES and rank <= MAX_TRITON_RANK and x.numel() > 0


def _triton_ops() -> DeltaOps:
    return triton_module().TritonOps()


def _check_inputs(x: Tensor, down: Tensor, gain: Tensor | None, up: Tensor) -> None:
    r, n = down.shape
    if x.shape[-1] != n or up.ndim != 2 or up.shape[1] != r or (gain is not None and gain.shape != (r,)):
        raise ValueError(
            f"adapter shapes do not fit: x {tuple(x.shape)}, down {tuple(down.shape)} (r×n), "
            f"gain {None if gain is None else tuple(gain.shape)} (r), up {tuple(up.shape)} (m×r)"
        )
    dtypes = {t.dtype for t in (x, down, up, gain) if t is not None}
    if len(dtypes) != 1:
        raise ValueError(f"x, down, gain and up must share one dtype, got {sorted(map(str, dtypes))}")


def _ops_for(backend: str, x: Tensor, rank: int) -> DeltaOps:
    if backend == "torch":
        return _TORCH_OPS
    if x.dtype not in TRITON_DTYPES:
        raise ValueError(f"the Triton kernels take fp32, bf16 or fp16 inputs, not {x.dtype}")
    if rank > MAX_TRITON_RANK:
        raise ValueError(f"the Triton kernels support r ≤ {MAX_TRITON_RANK}, got r={rank}; use backend='torch'")
    return _triton_ops()


def adapter_delta(
    x: Tensor,
    down: Tensor,
    gain: Tensor | None,
    up: Tensor,
    scale: float,
    backend: str | None = None,
    ops: DeltaOps | None = None,
) -> Tensor:
    """Δy = scale · ((x Rᵀ) ⊙ g) Cᵀ for token-major x (..., n), as `functional.linear_delta`, fused.

    `down` R is r × n, `gain` g is r (None: all ones, LoRA), `up` C is m × r. `ops` forces one implementation
    object (tests pass a `TritonOps` with small tiles); otherwise `backend` (default: `default_backend()`) decides.
    """
    _check_inputs(x, down, gain, up)
    rank = down.shape[0]
    if ops is None:
        chosen = resolve_backend(backend or default_backend(), x, rank)
        if chosen == "reference":
            return Fn.linear_delta(x, down, gain, up, scale)
        ops = _ops_for(chosen, x, rank)
    lead = x.shape[:-1]
    tokens = x.reshape(-1, x.shape[-1])
    if tokens.shape[0] == 0:
        ops = _TORCH_OPS  # nothing to launch a kernel over
    delta = FusedAdapterDelta.apply(tokens.contiguous(), down.contiguous(), gain, up.contiguous(), float(scale), ops)
    return delta.reshape(*lead, up.shape[0])
