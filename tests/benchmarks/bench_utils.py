"""What the benchmarks time: one Linear with each adapter path, training-step closures, memory probes.

Adapter paths of one layer (the names the report uses):

- ``frozen``: the base `nn.Linear`, weights frozen (the 1.00 of every ratio).
- ``peft_lora``: PEFT's own `LoraConfig` LoRA layer.
- ``lora``, ``svfit``, ``loldu`` with a path suffix: ``_auto`` = our `AdapterLayer` as users get it (the cost
  model of `peft_inits.kernels.cost` picks factored or merged per call); ``_fused`` = forced factored path through
  `peft_inits.kernels.adapter_delta` (Triton on CUDA, the fused torch Function on CPU); ``_factored`` = forced
  factored path on the unfused reference maths (`functional.linear_delta` under plain autograd); ``_onegemm`` =
  forced merged path (`kernels.merged`: one GEMM with W + ΔW, custom backward); ``_merged`` = ΔW rebuilt and added
  to W under plain autograd on every step, as the official LoLDU code does.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from peft_inits import AdapterLayer, AdapterSpec
from peft_inits.kernels import use_backend

ADAPTER_METHODS = ("lora", "svfit", "loldu")
LAYER_VARIANTS = (
    "frozen",
    "peft_lora",
    "lora_fused",
    "lora_factored",
    "svfit_factored",
    "svfit_fused",
    "svfit_onegemm",
    "svfit_auto",
    "svfit_merged",
    "loldu_factored",
    "loldu_fused",
    "loldu_onegemm",
    "loldu_auto",
    "loldu_merged",
)


@dataclass(frozen=True)
class LayerShape:
    """One benchmarked projection: `n` inputs → `m` outputs over `tokens` token rows."""

    name: str
    n: int
    m: int
    tokens: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.m}x{self.n} T={self.tokens}"


class MergedEveryStep(nn.Module):
    """y = x (W + ΔW)ᵀ + b with ΔW = scale·C diag(g) R rebuilt on every call (the official LoLDU code's forward)."""

    def __init__(self, layer: AdapterLayer, adapter_name: str = "default") -> None:
        super().__init__()
        self.layer = layer
        self.adapter_name = adapter_name

    def forward(self, x: Tensor) -> Tensor:
        base = self.layer.get_base_layer()
        weight = base.weight + self.layer.get_delta_weight(self.adapter_name).to(base.weight.dtype)
        return F.linear(x, weight, base.bias)


class OnPath(nn.Module):
    """Runs a module with `use_backend(backend)` in force and every AdapterLayer in it on `path`.

    ``backend="reference"`` with ``path="factored"`` is the unfused factored maths; layers are shared between
    variants, so the path is set for the duration of each call only.
    """

    def __init__(self, module: nn.Module, backend: str = "auto", path: str = "auto") -> None:
        super().__init__()
        self.module = module
        self.backend = backend
        self.path = path

    def forward(self, *args, **kwargs):
        layers = [m for m in self.module.modules() if isinstance(m, AdapterLayer)]
        previous = [layer.adapter_path for layer in layers]
        for layer in layers:
            layer.adapter_path = self.path
        try:
            with use_backend(self.backend):
                return self.module(*args, **kwargs)
        finally:
            for layer, path in zip(layers, previous, strict=True):
                layer.adapter_path = path


class _Holder(nn.Module):
    """A parent for PEFT to inject into."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _perturb_trainables(module: nn.Module, seed: int = 0) -> None:
    """Move adapter parameters off their identity init so no path can shortcut on zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=g).to(p))


def adapter_spec(method: str, r: int) -> AdapterSpec:
    """Benchmark specs: alpha = r (scale 1); SVFit factors from a randomized SVD (init time is measured elsewhere)."""
    if method == "svfit":
        return AdapterSpec(method="svfit", r=r, options={"svd": "randomized", "svd_niter": 1})
    return AdapterSpec(method=method, r=r)


def build_layer_variants(
    shape: LayerShape, r: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[str, nn.Module]:
    """Every variant of one projection, sharing one frozen base Linear (so only one m × n weight is in memory)."""
    torch.manual_seed(0)
    base = nn.Linear(shape.n, shape.m, device=device, dtype=dtype)
    base.requires_grad_(False)
    variants: dict[str, nn.Module] = {"frozen": base}

    peft_model = get_peft_model(_Holder(base), LoraConfig(r=r, lora_alpha=r, target_modules=["layer"]))
    variants["peft_lora"] = peft_model.base_model.model.layer

    for method in ADAPTER_METHODS:
        layer = AdapterLayer(base, "default", adapter_spec(method, r)).to(device)
        _perturb_trainables(layer)
        variants[f"{method}_auto"] = layer
        variants[f"{method}_fused"] = OnPath(layer, "auto", "factored")
        variants[f"{method}_factored"] = OnPath(layer, "reference", "factored")
        if method != "lora":
            variants[f"{method}_onegemm"] = OnPath(layer, "auto", "merged")
            variants[f"{method}_merged"] = MergedEveryStep(layer)
    _perturb_trainables(variants["peft_lora"])
    return {name: variants[name] for name in LAYER_VARIANTS}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def forward_step(module: nn.Module, x: Tensor, device: torch.device) -> Callable[[], None]:
    """Inference forward (no autograd graph)."""

    def step() -> None:
        with torch.no_grad():
            module(x)
        synchronize(device)

    return step


def train_step(module: nn.Module, x: Tensor, grad_out: Tensor, device: torch.device) -> Callable[[], None]:
    """Forward + backward with an upstream gradient; x needs a gradient as it would inside a network."""
    params = trainable_parameters(module)
    x = x.detach().requires_grad_(True)

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(grad_out)
        synchronize(device)

    return step


# ------------------------------------------------------------------------------------------------------ memory


def saved_activation_bytes(step: Callable[[], object], exclude: list[Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward during `step`, not counting `exclude` (weights,
    buffers, the input: memory that exists anyway). Deterministic, unlike allocator-level peaks on CPU."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        match = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(match.group(1)) * 1024 if match else 0


def _release_free_heap() -> None:
    """Hand glibc's free lists back to the OS so the next step's allocations show up in the resident set."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_step_memory(
    step: Callable[[], None], device: torch.device, grads_of: list[Tensor] = ()
) -> dict[str, int | None]:
    """Peak memory one call of `step` adds on top of what is allocated before it (with the `.grad` of `grads_of`
    dropped first, so gradients count as the step's memory, as they do in a training loop that zeroes to None).

    CUDA: `torch.cuda.max_memory_allocated` (exact). CPU: the resident-set high-water mark (VmHWM, reset through
    /proc/self/clear_refs) minus the resident set before the step; tracemalloc cannot be used because torch's CPU
    allocator bypasses Python's. The RSS figure includes allocator slack and is only comparable within one run.
    """
    for t in grads_of:
        t.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "method": "cuda_max_allocated"}
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return {"peak_bytes": None, "method": "unavailable"}
    before = _rss_bytes()
    step()
    return {"peak_bytes": max(_peak_rss_bytes() - before, 0), "method": "rss_high_water_mark"}


def interleaved_minima(steps: dict[str, Callable[[], None]], budget_s: float, min_rounds: int = 5) -> dict[str, float]:
    """Best time (s) of each step, measured round-robin so all steps see the same machine load.

    On a shared machine the load drifts over minutes; ratios of round-robin minima taken seconds apart are far
    steadier than ratios of separately benchmarked tests. Rounds continue until `budget_s` is spent.
    """
    best = dict.fromkeys(steps, float("inf"))
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < budget_s:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def roberta_base() -> nn.Module:
    """A RoBERTa-base-sized classifier (125M parameters) with random weights, built from its config."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        num_labels=2,
    )
    return RobertaForSequenceClassification(config)


def minilm_shaped() -> nn.Module:
    """A BERT classifier shaped like all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, MLP 1536), random weights."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        num_labels=3,
    )
    return BertForSequenceClassification(config)
