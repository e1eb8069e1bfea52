"""Parity of the fused adapter path (Triton kernels and the torch fallback) with `functional.linear_delta`.

Without CUDA the Triton kernels run under Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set here before
the kernels module is imported). Every buffer a kernel writes is pre-filled with NaN, so an element a kernel forgets
to write shows up as a NaN. References are autograd through the reference maths in float64 on the same (rounded)
inputs; tolerances are per dtype. GPU-only checks are marked `gpu` and skip without CUDA.
"""

from __future__ import annotations

import importlib
import os
import warnings
import zlib
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from peft_inits import AdapterLayer, AdapterSpec
from peft_inits import functional as Fn
from peft_inits.kernels import (
    FusedAdapterDelta,
    TorchOps,
    adapter_delta,
    default_backend,
    dispatch,
    resolve_backend,
    selfcheck,
    use_backend,
)
from peft_inits.kernels.cost import ADAPTER_PATH_ENV, choose_path
from peft_inits.kernels.dispatch import BACKEND_ENV
from peft_inits.kernels.merged import GAIN_GRADIENTS, merged_linear

CUDA = torch.cuda.is_available()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# max |error| / max |reference|, per dtype: unit roundoff of the dtype times a small factor for the r/n/m-long sums
TOLERANCE = {torch.float32: 1e-5, torch.float16: 6e-3, torch.bfloat16: 4e-2, torch.float64: 1e-12}


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def triton_ops():
    """The Triton kernels module, interpreted on CPU when there is no GPU.

    TRITON_INTERPRET is read when kernels are decorated (at import) and again when an interpreted kernel calls a
    jitted helper, so it stays set while this module's tests run and is restored afterwards.
    """
    pytest.importorskip("triton")
    previous = os.environ.get("TRITON_INTERPRET")
    if not CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module("peft_inits.kernels.triton_ops")
        if not CUDA and not module.INTERPRETED:
            pytest.skip("triton kernels were imported without TRITON_INTERPRET=1 and there is no GPU")
        yield module
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def poisoned_ops(module, **config):
    """TritonOps whose output buffers start as NaN, with small tiles so that every mask and grid split is used."""

    class PoisonedTritonOps(module.TritonOps):
        def _empty(self, shape, dtype, device):
            return torch.full(shape, float("nan"), dtype=dtype, device=device)

    return PoisonedTritonOps(module.LaunchConfig(**config))


SMALL_TILES = {"block_t": 16, "block_k": 16, "block_mn": 16, "block_p": 16, "groups": 2, "splits": 2}


# ------------------------------------------------------------------------------------------------------ problems


@dataclass
class Problem:
    """One adapter delta: which tensors train decides which gradients the backward must produce."""

    x: torch.Tensor
    down: torch.Tensor
    gain: torch.Tensor | None
    up: torch.Tensor
    scale: float
    grad_out: torch.Tensor

    def inputs(self) -> list[torch.Tensor | None]:
        return [self.x, self.down, self.gain, self.up]

    def fresh(self, dtype: torch.dtype | None = None, device: str | None = None) -> Problem:
        """Detached copies (optionally cast), keeping each tensor's requires_grad."""

        def copy(t):
            if t is None:
                return None
            return t.detach().to(dtype=dtype or t.dtype, device=device or t.device).requires_grad_(t.requires_grad)

        return Problem(*(copy(t) for t in self.inputs()), self.scale, copy(self.grad_out))


def make_problem(
    tokens: int,
    n: int,
    m: int,
    r: int,
    kind: str,
    dtype: torch.dtype,
    seed: int,
    device: str = "cpu",
    scale: float = 0.75,
) -> Problem:
    """Fresh random inputs, O(1) outputs. kind: svfit (gain trains), lora (R, C train, no gain), frozen (only x)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype)

    x = rand(tokens, n).requires_grad_(True)
    down = rand(r, n, std=n**-0.5).requires_grad_(kind == "lora")
    up = rand(m, r, std=r**-0.5).requires_grad_(kind == "lora")
    gain = None if kind == "lora" else (rand(r) + 1.0).requires_grad_(kind == "svfit")
    return Problem(x, down, gain, up, scale, rand(tokens, m))


def stable_seed(*parts: object) -> int:
    """A seed per test case that does not change between runs (str hashing is randomised per process)."""
    return zlib.crc32(repr(parts).encode()) % 10_000


def run(problem: Problem, fn) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Output and input gradients of fn(x, down, gain, up, scale) for the problem's upstream gradient."""
    out = fn(problem.x, problem.down, problem.gain, problem.up, problem.scale)
    out.backward(problem.grad_out)
    return out.detach(), [None if t is None or t.grad is None else t.grad for t in problem.inputs()]


def reference(problem: Problem) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Autograd through `functional.linear_delta` in float64 on the same inputs."""
    return run(problem.fresh(torch.float64), Fn.linear_delta)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def assert_matches_reference(problem: Problem, fn, dtype: torch.dtype) -> None:
    out, grads = run(problem, fn)
    want_out, want_grads = reference(problem)
    names = ("dx", "ddown", "dgain", "dup")
    assert out.dtype == dtype and out.shape == want_out.shape
    assert torch.isfinite(out).all(), "unwritten (NaN) output elements"
    assert rel_err(out, want_out) < TOLERANCE[dtype], f"forward error {rel_err(out, want_out):.2e}"
    for name, grad, want, tensor in zip(names, grads, want_grads, problem.inputs(), strict=True):
        if tensor is None or not tensor.requires_grad:
            assert grad is None, f"{name} should not be computed"
            continue
        assert grad is not None and grad.dtype == tensor.dtype and grad.shape == tensor.shape, name
        assert torch.isfinite(grad).all(), f"unwritten (NaN) elements in {name}"
        assert rel_err(grad, want) < TOLERANCE[dtype], f"{name} error {rel_err(grad, want):.2e}"


SHAPES = [  # tokens, n, m, r: odd sizes, ranks that pad (5 → 16, 17 → 32), r = 1 and the largest r = 128
    (37, 45, 29, 5),
    (1, 7, 3, 1),
    (19, 33, 50, 17),
    (23, 130, 35, 128),
]
KINDS = ["svfit", "lora", "frozen"]


# ------------------------------------------------------------------------------------------------------ triton


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_triton_matches_reference(triton_ops, dtype, shape, kind):
    device = "cuda" if CUDA else "cpu"
    problem = make_problem(*shape, kind=kind, dtype=dtype, seed=stable_seed(shape, kind), device=device)
    ops = poisoned_ops(triton_ops, **SMALL_TILES)
    assert_matches_reference(problem, lambda *a: adapter_delta(*a, ops=ops), dtype)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_triton_default_tiles_match_reference(triton_ops, dtype):
    """The launch configuration chosen from the problem (64-wide tiles, one split) on multi-tile shapes."""
    device = "cuda" if CUDA else "cpu"
    for kind in ("svfit", "lora"):
        problem = make_problem(131, 70, 150, 8, kind=kind, dtype=dtype, seed=7, device=device)
        assert_matches_reference(problem, lambda *a: adapter_delta(*a, ops=poisoned_ops(triton_ops)), dtype)


def test_triton_backend_through_dispatcher_and_leading_dims(triton_ops):
    device = "cuda" if CUDA else "cpu"
    problem = make_problem(2 * 3 * 5, 24, 18, 4, kind="svfit", dtype=torch.float32, seed=3, device=device)
    x = problem.x.detach().reshape(2, 3, 5, 24)
    got = adapter_delta(x, problem.down, problem.gain, problem.up, 0.5, backend="triton")
    want = Fn.linear_delta(x.double(), problem.down.double(), problem.gain.double(), problem.up.double(), 0.5)
    assert got.shape == (2, 3, 5, 18)
    assert rel_err(got, want) < TOLERANCE[torch.float32]


def test_triton_and_torch_paths_agree(triton_ops):
    """Results must not depend on which path ran: both are within fp32 roundoff of each other."""
    device = "cuda" if CUDA else "cpu"
    problem = make_problem(45, 60, 33, 12, kind="svfit", dtype=torch.float32, seed=11, device=device)
    ops = poisoned_ops(triton_ops, **SMALL_TILES)
    out_triton, grads_triton = run(problem.fresh(), lambda *a: adapter_delta(*a, ops=ops))
    out_torch, grads_torch = run(problem.fresh(), lambda *a: adapter_delta(*a, backend="torch"))
    assert rel_err(out_triton, out_torch) < 2e-6
    for a, b in zip(grads_triton, grads_torch, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel_err(a, b) < 2e-6


def test_triton_is_deterministic(triton_ops):
    device = "cuda" if CUDA else "cpu"
    problem = make_problem(40, 30, 20, 6, kind="lora", dtype=torch.float32, seed=5, device=device)
    ops = poisoned_ops(triton_ops, **SMALL_TILES)
    first = run(problem.fresh(), lambda *a: adapter_delta(*a, ops=ops))
    second = run(problem.fresh(), lambda *a: adapter_delta(*a, ops=ops))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True) if a is not None)


def test_triton_rejects_what_it_cannot_run(triton_ops):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="r ≤ 128"):
        adapter_delta(x, torch.randn(129, 8), None, torch.randn(5, 129), 1.0, backend="triton")
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        adapter_delta(x.double(), torch.randn(2, 8).double(), None, torch.randn(5, 2).double(), 1.0, backend="triton")


# ------------------------------------------------------------------------------------------------------ torch fallback


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_torch_fallback_matches_reference(dtype, shape, kind):
    problem = make_problem(*shape, kind=kind, dtype=dtype, seed=stable_seed(shape, kind, "torch"))
    assert_matches_reference(problem, lambda *a: adapter_delta(*a, backend="torch"), dtype)


def test_torch_fallback_forward_is_bit_identical_to_reference_at_scale_one():
    problem = make_problem(33, 40, 27, 6, kind="svfit", dtype=torch.float32, seed=2, scale=1.0)
    fused = adapter_delta(problem.x, problem.down, problem.gain, problem.up, 1.0, backend="torch")
    assert torch.equal(fused, Fn.linear_delta(problem.x, problem.down, problem.gain, problem.up, 1.0))


@pytest.mark.parametrize("kind", KINDS)
def test_torch_fallback_passes_gradcheck(kind):
    problem = make_problem(6, 5, 4, 3, kind=kind, dtype=torch.float64, seed=9)
    inputs = [t for t in problem.inputs() if t is not None]

    def fn(*tensors):
        x, down, *rest = tensors
        gain, up = (None, rest[0]) if problem.gain is None else rest
        return FusedAdapterDelta.apply(x, down, gain, up, problem.scale, TorchOps())

    assert torch.autograd.gradcheck(fn, inputs)


def test_zero_tokens():
    x = torch.empty(0, 3, 8)
    out = adapter_delta(x, torch.randn(2, 8), torch.randn(2), torch.randn(5, 2), 1.0)
    assert out.shape == (0, 3, 5)


# ------------------------------------------------------------------------------------------------------ backward work


class SpyOps(TorchOps):
    """Records which backward pieces ran and with which flags."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def backward_input(self, *args, **flags):
        self.calls.append(("backward_input", flags))
        return super().backward_input(*args, **flags)

    def factor_grads(self, *args, **flags):
        self.calls.append(("factor_grads", flags))
        return super().factor_grads(*args, **flags)


def saved_shapes(problem: Problem, ops) -> list[tuple[int, ...]]:
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = adapter_delta(problem.x, problem.down, problem.gain, problem.up, problem.scale, ops=ops)
    out.backward(problem.grad_out)
    return shapes


def test_frozen_factors_save_h_not_x_and_skip_factor_gemms():
    problem = make_problem(11, 13, 7, 3, kind="svfit", dtype=torch.float32, seed=4)
    spy = SpyOps()
    shapes = saved_shapes(problem, spy)
    assert (11, 3) in shapes, "h = x Rᵀ must be saved"
    assert (11, 13) not in shapes, "x must not be saved when R and C are frozen"
    assert [name for name, _ in spy.calls] == ["backward_input"], "dR/dC GEMMs must be skipped"
    assert spy.calls[0][1] == {"need_dx": True, "need_dgain": True, "need_dh": False}


def test_lora_saves_x_and_computes_factor_grads():
    problem = make_problem(11, 13, 7, 3, kind="lora", dtype=torch.float32, seed=4)
    spy = SpyOps()
    shapes = saved_shapes(problem, spy)
    assert (11, 13) in shapes
    assert spy.calls[1] == ("factor_grads", {"need_ddown": True, "need_dup": True})


def test_input_without_grad_skips_dx():
    problem = make_problem(11, 13, 7, 3, kind="svfit", dtype=torch.float32, seed=4)
    problem.x.requires_grad_(False)
    spy = SpyOps()
    out = adapter_delta(problem.x, problem.down, problem.gain, problem.up, problem.scale, ops=spy)
    out.backward(problem.grad_out)
    assert spy.calls == [("backward_input", {"need_dx": False, "need_dgain": True, "need_dh": False})]


# ------------------------------------------------------------------------------------------------------ dispatch


def test_dispatch_choices():
    x = torch.randn(3, 8)
    assert default_backend() == "auto"
    assert resolve_backend("auto", x, 8) == "torch"  # CPU tensors never go to Triton by default
    with use_backend("reference"):
        assert default_backend() == "reference"
        assert resolve_backend(default_backend(), x, 8) == "reference"
    assert default_backend() == "auto"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        adapter_delta(x, torch.randn(2, 8), None, torch.randn(5, 2), 1.0, backend="cuda")
    with pytest.raises(ValueError, match="share one dtype"):
        adapter_delta(x, torch.randn(2, 8).double(), None, torch.randn(5, 2), 1.0)
    with pytest.raises(ValueError, match="shapes do not fit"):
        adapter_delta(x, torch.randn(2, 9), None, torch.randn(5, 2), 1.0)


def test_backend_env_variable_sets_the_default(monkeypatch):
    x = torch.randn(3, 8)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert default_backend() == "torch"
    with use_backend("reference"):  # code that chooses wins over the environment
        assert default_backend() == "reference"
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert resolve_backend(default_backend(), x, 8) == "triton"  # forced: no self-check, errors are the user's
    monkeypatch.setenv(BACKEND_ENV, "gpu")
    with pytest.raises(ValueError, match=r"unknown \$PEFT_INITS_KERNELS 'gpu'"):
        default_backend()


# ------------------------------------------------------------------------------------------------------ self-check


class BrokenOps(TorchOps):
    """Stands in for Triton kernels that fail to compile, or compile to wrong numbers."""

    name = "triton"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def forward(self, x, down, gain_scale, up):
        if self.mode == "compile":
            raise RuntimeError("PassManager::run failed\n(a long MLIR dump)")
        return super().forward(x, down, gain_scale, up)

    def backward_input(self, grad_out, h, down, gain_scale, up, **need):
        dx, dgain, dh = super().backward_input(grad_out, h, down, gain_scale, up, **need)
        return dx, dgain * 1.5, dh  # a wrong reduction: far outside every dtype's tolerance


@pytest.fixture
def fresh_verdicts():
    selfcheck.forget_verdicts()
    yield
    selfcheck.forget_verdicts()


@pytest.mark.parametrize(("mode", "problem"), [("compile", "RuntimeError: PassManager"), ("numerics", "dgain differs")])
def test_a_failing_triton_self_check_warns_once_and_falls_back_to_torch(mode, problem, monkeypatch, fresh_verdicts):
    """What a GPU user sees when the kernels cannot compile or are wrong there: one warning, then torch."""
    monkeypatch.setattr(dispatch, "triton_fits", lambda x, rank: True)  # let CPU tensors stand in for CUDA ones
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "_triton_ops", lambda: BrokenOps(mode))
    x = torch.randn(5, 12)
    down, gain, up = torch.randn(3, 12), torch.randn(3), torch.randn(7, 3)
    with pytest.warns(RuntimeWarning, match=rf"self-check on cpu in float32 \({problem}.*using the torch"):
        assert resolve_backend("auto", x, 3) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per (device, dtype)
        got = adapter_delta(x, down, gain, up, 0.5)
    assert torch.allclose(got, Fn.linear_delta(x, down, gain, up, 0.5), atol=1e-6)
    with pytest.warns(RuntimeWarning, match="in bfloat16"):  # another dtype is checked on its own
        resolve_backend("auto", x.bfloat16(), 3)


def test_working_kernels_pass_the_self_check(triton_ops, fresh_verdicts):
    device = "cuda" if CUDA else "cpu"  # interpreted on the CPU
    for dtype in DTYPES.values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert selfcheck.triton_passes(torch.device(device), dtype, triton_ops.TritonOps)


@pytest.mark.parametrize("method", ["lora", "svfit", "loldu"])
def test_adapter_layer_uses_the_fused_path(method):
    """The Linear branch of AdapterLayer goes through `adapter_delta`; every backend gives the reference delta."""
    torch.manual_seed(0)
    layer = AdapterLayer(nn.Linear(24, 18), "default", AdapterSpec(method=method, r=4, alpha=6.0))
    with torch.no_grad():
        for p in layer.pi_adapters.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 24)
    spy = SpyOps()
    import peft_inits.kernels.dispatch as dispatch

    original = dispatch._TORCH_OPS
    dispatch._TORCH_OPS = spy
    try:
        layer(x.requires_grad_()).sum().backward()
    finally:
        dispatch._TORCH_OPS = original
    assert spy.calls, "the layer did not use the fused path"
    down, gain, up = layer.adapter("default").factors()
    want = Fn.linear_delta(x.detach(), down, gain, up, layer.adapter("default").scale)
    for backend in ("auto", "torch", "reference"):
        with use_backend(backend):
            assert rel_err(layer.delta_forward(x.detach(), "default"), want) < 1e-6


def test_adapter_layer_with_triton_backend(triton_ops):
    torch.manual_seed(1)
    device = "cuda" if CUDA else "cpu"
    layer = AdapterLayer(nn.Linear(40, 30), "default", AdapterSpec(method="loldu", r=5)).to(device)
    with torch.no_grad():
        layer.adapter("default").z.add_(torch.randn(5, device=device))
    x = torch.randn(3, 7, 40, device=device, requires_grad=True)
    results = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            layer.zero_grad()
            x.grad = None
            out = layer(x)
            out.square().sum().backward()
            results[backend] = (out.detach(), x.grad.clone(), layer.adapter("default").z.grad.clone())
    for got, want in zip(results["triton"], results["reference"], strict=True):
        assert rel_err(got, want) < TOLERANCE[torch.float32]


# ------------------------------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("r", [1, 8, 64, 128])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_gpu_compiled_kernels_at_model_shapes(triton_ops, dtype, r):
    """Compiled kernels (tensor-core dots for bf16/fp16) at a RoBERTa-like and a LLaMA-like shape."""
    for tokens, n, m in ((4099, 768, 768), (1031, 4096, 11008)):
        for kind in ("svfit", "lora"):
            problem = make_problem(tokens, n, m, r, kind=kind, dtype=dtype, seed=r, device="cuda")
            assert_matches_reference(problem, lambda *a: adapter_delta(*a, ops=poisoned_ops(triton_ops)), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_auto_backend_picks_triton(triton_ops):
    x = torch.randn(4, 8, device="cuda")
    assert resolve_backend("auto", x, 8) == "triton"
    assert resolve_backend("auto", x, 129) == "torch"
    assert resolve_backend("auto", x.double(), 8) == "torch"


# ------------------------------------------------------------------------------------------------------ merged path


def _merged_problem(
    dtype: torch.dtype, x_grad: bool, seed: int = 0, tokens: int = 21, n: int = 30, m: int = 26, r: int = 9
):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(m, n, generator=g) / n**0.5).to(dtype)
    bias = torch.randn(m, generator=g).to(dtype)
    problem = make_problem(tokens, n, m, r, "svfit", torch.float32, seed)
    x = problem.x.detach().to(dtype).requires_grad_(x_grad)
    return weight, bias, x, problem


def _factored(x, weight, bias, down, gain, up, scale):
    """The layer's factored path: base linear plus the delta in the adapter's dtype (autograd reference maths)."""
    out = torch.nn.functional.linear(x, weight, bias)
    return out + Fn.linear_delta(x.to(down.dtype), down, gain, up, scale).to(out.dtype)


@pytest.mark.parametrize("save_merged", [True, False])
@pytest.mark.parametrize("gain_gradient", GAIN_GRADIENTS)
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_merged_path_equals_factored_path(dtype, x_grad, gain_gradient, save_merged):
    weight, bias, x, p = _merged_problem(dtype, x_grad, seed=stable_seed(dtype, x_grad, gain_gradient))
    if dtype == torch.float64:
        p = p.fresh(torch.float64)
    grad_out = p.grad_out.to(dtype)
    results = []
    for fn in (_factored, lambda *a: merged_linear(*a, gain_gradient=gain_gradient, save_merged=save_merged)):
        xi = x.detach().clone().requires_grad_(x_grad)
        gain = p.gain.detach().clone().requires_grad_(True)
        out = fn(xi.reshape(3, 7, -1), weight, bias, p.down.detach(), gain, p.up.detach(), 0.75)
        out.backward(grad_out.reshape(3, 7, -1))
        results.append((out.detach(), xi.grad, gain.grad))
    (want, want_dx, want_dg), (got, dx, dg) = results
    tol = TOLERANCE[dtype] if dtype != torch.bfloat16 else 2e-2
    assert got.dtype == dtype and got.shape == want.shape
    assert rel_err(got, want) < tol
    assert dg.dtype == p.gain.dtype and rel_err(dg, want_dg) < tol
    assert (dx is None) == (not x_grad)
    if x_grad:
        assert dx.dtype == dtype and rel_err(dx, want_dx) < tol


def test_merged_path_refuses_trainable_factors():
    weight, bias, x, p = _merged_problem(torch.float32, True)
    with pytest.raises(ValueError, match="trains only the gain, but down requires grad"):
        merged_linear(x, weight, bias, p.down.detach().requires_grad_(), p.gain, p.up, 1.0)
    with pytest.raises(ValueError, match="unknown gain gradient"):
        merged_linear(x, weight, bias, p.down, p.gain, p.up, 1.0, gain_gradient="diag")


def test_cost_model_switches_where_the_arithmetic_says():
    # High rank, many tokens: forming ΔW (r·m·n) is cheaper than 2·T·r·(m + n) through the factors.
    high = choose_path(1024, 768, 768, 768, need_dx=True, need_dgain=True)
    assert high.path == "merged" and high.merged < high.factored
    # Few tokens (T < m·n / (m + n)): the factors win whatever the rank.
    assert choose_path(64, 768, 768, 768, need_dx=True, need_dgain=True).path == "factored"
    assert choose_path(128, 768, 3072, 768, need_dx=True, need_dgain=True).path == "factored"
    # Small r, short sequences: the memory cost of writing W′ keeps the factored path.
    assert choose_path(256, 8, 768, 768, need_dx=True, need_dgain=True).path == "factored"
    # Full rank, T ≫ n: the gain gradient through dyᵀx (T·m·n + r·m·n) beats the projections (2·T·r·n).
    assert choose_path(4096, 384, 384, 384, need_dx=True, need_dgain=True).gain_gradient == "weight_grad"
    assert choose_path(1024, 64, 768, 768, need_dx=True, need_dgain=True).gain_gradient == "projections"
    forced = choose_path(64, 768, 768, 768, need_dx=True, need_dgain=True, forced="merged")
    assert forced.path == "merged" and forced.forced and "forced" in forced.describe()
    with pytest.raises(ValueError, match="adapter path must be one of auto, factored, merged"):
        choose_path(8, 8, 8, 8, need_dx=True, need_dgain=True, forced="fused")


def _trained_layer(method: str, r: int, n: int = 40, m: int = 32) -> AdapterLayer:
    torch.manual_seed(3)
    layer = AdapterLayer(nn.Linear(n, m), "default", AdapterSpec(method=method, r=r, alpha=2.0 * r))
    layer.get_base_layer().requires_grad_(False)
    with torch.no_grad():
        for p in layer.pi_adapters.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("method", ["svfit", "loldu"])
def test_adapter_layer_paths_agree_and_the_choice_is_visible(method, monkeypatch):
    layer = _trained_layer(method, r=32)
    x = torch.randn(4, 300, 40)
    results = {}
    for path in ("factored", "merged"):
        layer.adapter_path = path
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        out = layer(xi)
        out.square().sum().backward()
        assert layer.last_path.path == path and layer.last_path.forced
        assert f"last call: {path} (forced" in repr(layer)
        results[path] = (out.detach(), xi.grad, [p.grad.clone() for p in layer.pi_adapters.parameters()])
    (out_f, dx_f, g_f), (out_m, dx_m, g_m) = results["factored"], results["merged"]
    assert rel_err(out_m, out_f) < 1e-5 and rel_err(dx_m, dx_f) < 1e-5
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(g_m, g_f, strict=True))
    layer.adapter_path = "auto"
    layer(x.requires_grad_())  # 1,200 tokens at full rank of a 32 × 40 weight: the model merges
    assert layer.last_path.path == "merged" and not layer.last_path.forced
    assert "adapter_path=auto, last call: merged (cost model" in repr(layer)
    monkeypatch.setenv(ADAPTER_PATH_ENV, "factored")
    layer(x)
    assert layer.last_path.path == "factored" and layer.last_path.forced
    monkeypatch.setenv(ADAPTER_PATH_ENV, "sideways")
    with pytest.raises(ValueError, match=r"\$PEFT_INITS_ADAPTER_PATH must be one of"):
        layer(x)


def test_lora_and_multi_adapter_calls_stay_factored():
    layer = _trained_layer("lora", r=32)
    layer.adapter_path = "merged"
    layer(torch.randn(1200, 40))
    assert layer.last_path is None  # trainable factors: the merged path does not apply
    svfit = _trained_layer("svfit", r=32)
    svfit.update_layer("second", AdapterSpec(method="svfit", r=4))
    svfit.set_adapter(["default", "second"])
    svfit.adapter_path = "merged"
    x = torch.randn(1200, 40)
    out = svfit(x)
    want = svfit.get_base_layer()(x) + svfit.delta_forward(x, "default") + svfit.delta_forward(x, "second")
    assert svfit.last_path is None and torch.allclose(out, want, atol=1e-5)


def test_merged_path_without_saved_weight_keeps_only_the_projections():
    weight, bias, x, p = _merged_problem(torch.float32, True, tokens=64, n=40, m=48, r=6)
    gain = p.gain.detach().clone().requires_grad_()
    sizes = {}
    for save in (True, False):
        stored = []

        def pack(t, stored=stored):
            stored.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            merged_linear(x, weight, bias, p.down, gain, p.up, 1.0, save_merged=save)
        sizes[save] = sum(t.numel() for t in stored if t is not None and t.data_ptr() != weight.data_ptr())
    assert sizes[True] - sizes[False] == 48 * 40 - 6  # W′ saved, or instead only a reference to the r gains
