"""The Triton kernels check themselves on first use per (device, dtype) before `auto` hands them real work.

A small adapter delta (forward, and backward into x, the gain and both factors) runs through the Triton kernels and
through the torch implementation of the same Function; a compile error, a launch error or a result outside the
dtype's tolerance warns once, naming the device, and that (device, dtype) is served by torch from then on. Nothing
is checked when a backend is forced (`PEFT_INITS_KERNELS=triton`, `use_backend`, `backend=`).
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .autograd import DeltaOps, FusedAdapterDelta
from .torch_ops import TorchOps

# Relative error ‖got − want‖ / ‖want‖ accepted per dtype: the kernels accumulate in fp32, the torch path in the
# input dtype, so half-precision results differ by rounding of the r-wide and m-wide sums (the parity tests' bounds,
# tests/core/test_kernels.py, with a margin).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}
SHAPE = {"tokens": 67, "n": 96, "m": 80, "r": 8}  # odd sizes: every mask of a tile is exercised

_verdicts: dict[tuple[str, torch.dtype], bool] = {}
_lock = threading.Lock()


def triton_passes(device: torch.device, dtype: torch.dtype, make_ops: Callable[[], DeltaOps]) -> bool:
    """Whether the Triton kernels from `make_ops` agree with torch on `device` in `dtype` (checked once, cached)."""
    key = (str(device), dtype)
    with _lock:
        if key not in _verdicts:
            problem = _problem(device, dtype, make_ops)
            if problem is not None:
                warnings.warn(
                    f"peft_inits: the Triton adapter kernels failed their self-check on {_describe(device)} in "
                    f"{str(dtype).removeprefix('torch.')} ({problem}); using the torch implementation there. "
                    "PEFT_INITS_KERNELS=triton forces them anyway, =torch skips the check.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            _verdicts[key] = problem is None
        return _verdicts[key]


def forget_verdicts() -> None:
    """Check again on next use (tests; a process whose driver or triton changed)."""
    with _lock:
        _verdicts.clear()


def _problem(device: torch.device, dtype: torch.dtype, make_ops: Callable[[], DeltaOps]) -> str | None:
    """None when the kernels match the torch Function; otherwise what went wrong, in one line."""
    inputs = _inputs(device, dtype)
    want = _run(TorchOps(), *inputs)
    try:
        got = _run(make_ops(), *inputs)
    except Exception as error:  # a compile or launch failure of any kind falls back, that is the point
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first_line[:200]}"
    for name, a, b in zip(("output", "dx", "dR", "dgain", "dC"), got, want, strict=True):
        error = _relative_error(a, b)
        if not error <= TOLERANCE[dtype]:  # also catches NaN
            return f"{name} differs from torch by {error:.2g} relative, above {TOLERANCE[dtype]:g}"
    return None


def _inputs(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    tokens, n, m, r = SHAPE["tokens"], SHAPE["n"], SHAPE["m"], SHAPE["r"]
    x = torch.randn(tokens, n, generator=g)
    down = torch.randn(r, n, generator=g) / n**0.5
    gain = torch.randn(r, generator=g)
    up = torch.randn(m, r, generator=g) / r**0.5
    grad = torch.randn(tokens, m, generator=g)
    return tuple(t.to(device=device, dtype=dtype) for t in (x, down, gain, up, grad))


def _run(ops: DeltaOps, x: Tensor, down: Tensor, gain: Tensor, up: Tensor, grad: Tensor) -> tuple[Tensor, ...]:
    """Output and the gradients of x, R, g, C (every backward kernel runs), as float32 on the CPU."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, down, gain, up)]
    out = FusedAdapterDelta.apply(*leaves, 0.5, ops)
    out.backward(grad)
    return tuple(t.detach().float().cpu() for t in (out, *(leaf.grad for leaf in leaves)))


def _relative_error(got: Tensor, want: Tensor) -> float:
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30))


@functools.lru_cache(maxsize=8)
def _describe(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
