"""Per-layer step time: forward (inference) and forward + backward of one projection, every adapter path.

Shapes: RoBERTa-base / ViT-B (768², ViT-B MLP 3072×768), MiniLM (384², the `compare` setting), SD-1.5 attention
(320/640/1280 wide self-attention, 768-wide cross-attention context) and LLaMA-7B (4096², 11008×4096, 4096×11008);
r ∈ {8, 64, full} on the headline shapes, 8 elsewhere. The `cpu` set keeps
token counts and the grid small enough for one CPU thread; `full` uses training-sized token counts.
"""

from __future__ import annotations

import functools

import pytest
import torch
from bench_utils import (
    LAYER_VARIANTS,
    LayerShape,
    build_layer_variants,
    forward_step,
    interleaved_minima,
    saved_activation_bytes,
)
from bench_utils import train_step as make_train_step
from conftest import bench_device, bench_set

pytestmark = pytest.mark.perf

CPU_GRID = [  # (shape, ranks, modes); 768 and 384 are full rank
    (LayerShape("roberta-base q", 768, 768, 1024), (8, 64, 768), ("forward", "train")),
    (LayerShape("minilm q (compare)", 384, 384, 2048), (8, 64, 384), ("train",)),
    (LayerShape("roberta-base q", 768, 768, 128), (8, 768), ("train",)),
    (LayerShape("vit-b fc1", 768, 3072, 394), (8,), ("train",)),
    (LayerShape("sd15 attn1.q 320", 320, 320, 1024), (8,), ("train",)),
    (LayerShape("sd15 attn2.k 320", 768, 320, 154), (8,), ("train",)),
    (LayerShape("sd15 attn1.q 1280", 1280, 1280, 256), (8,), ("train",)),
    (LayerShape("llama-7b q", 4096, 4096, 64), (8,), ("train",)),
    (LayerShape("llama-7b up", 4096, 11008, 64), (8,), ("train",)),
]
ALL = (1, 8, 64)
HIGH = (8, 64, 768)
BOTH = ("forward", "train")
FULL_GRID = [
    (LayerShape("roberta-base q", 768, 768, 4096), (1, *HIGH), BOTH),
    (LayerShape("minilm q (compare)", 384, 384, 2048), (8, 64, 384), BOTH),
    (LayerShape("vit-b q", 768, 768, 6304), ALL, BOTH),
    (LayerShape("vit-b fc1", 768, 3072, 6304), ALL, BOTH),
    (LayerShape("sd15 attn1.q 320", 320, 320, 8192), ALL, BOTH),
    (LayerShape("sd15 attn1.q 640", 640, 640, 2048), ALL, BOTH),
    (LayerShape("sd15 attn1.q 1280", 1280, 1280, 512), ALL, BOTH),
    (LayerShape("sd15 attn2.k 320", 768, 320, 154), ALL, BOTH),
    (LayerShape("sd15 attn2.k 1280", 768, 1280, 154), ALL, BOTH),
    (LayerShape("llama-7b q", 4096, 4096, 4096), ALL, BOTH),
    (LayerShape("llama-7b up", 4096, 11008, 4096), ALL, BOTH),
    (LayerShape("llama-7b down", 11008, 4096, 4096), ALL, BOTH),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "layer_case" not in metafunc.fixturenames:
        return
    device = bench_device(metafunc.config)
    grid = FULL_GRID if bench_set(metafunc.config) == "full" else CPU_GRID
    dtypes = (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,)
    cases, ids = [], []
    for dtype in dtypes:  # ordered so that every variant of one (shape, r, mode) runs back to back
        for shape, ranks, modes in grid:
            for r in ranks:
                for mode in modes:
                    for variant in LAYER_VARIANTS:
                        cases.append((shape, r, mode, variant, dtype))
                        dt = str(dtype).removeprefix("torch.")
                        ids.append(f"{shape.name.replace(' ', '_')}-T{shape.tokens}-r{r}-{mode}-{variant}-{dt}")
    metafunc.parametrize("layer_case", cases, ids=ids)


@functools.lru_cache(maxsize=1)  # one shape's layers at a time: the LLaMA weights are 180 MB each
def _variants(shape: LayerShape, r: int, device: str, dtype: torch.dtype):
    return build_layer_variants(shape, r, torch.device(device), dtype)


@functools.lru_cache(maxsize=1)
def _inputs(shape: LayerShape, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape.tokens, shape.n, generator=g).to(device=device, dtype=dtype)
    grad_out = torch.randn(shape.tokens, shape.m, generator=g).to(device=device, dtype=dtype)
    return x, grad_out


def _step(module, mode, x, grad_out, device):
    return forward_step(module, x, device) if mode == "forward" else make_train_step(module, x, grad_out, device)


def test_layer_step(benchmark, layer_case, device):
    """pytest-benchmark times the variant; a round-robin against frozen and PEFT LoRA gives load-robust ratios."""
    shape, r, mode, variant, dtype = layer_case
    variants = _variants(shape, r, str(device), dtype)
    x, grad_out = _inputs(shape, str(device), dtype)
    steps = {
        name: _step(variants[name], mode, x, grad_out, device)
        for name in dict.fromkeys(["frozen", "peft_lora", variant])
    }
    for step in steps.values():
        step()
        step()  # warm-up: allocator, lazy initialisation, Triton compilation
    module = variants[variant]
    saved = None
    if mode == "train":
        saved = saved_activation_bytes(steps[variant], [x, *module.parameters(), *module.buffers()])
    budget = 1.0 if device.type == "cpu" else 0.2  # seconds per timing: the full GPU grid has ~1,300 cases
    paired = interleaved_minima(steps, budget_s=budget, min_rounds=3)
    dt = str(dtype).removeprefix("torch.")
    benchmark.group = f"layer | {shape.label} | r={r} | {mode} | {dt}"
    benchmark.extra_info.update(
        kind="layer",
        layer=shape.name,
        n=shape.n,
        m=shape.m,
        tokens=shape.tokens,
        r=r,
        mode=mode,
        variant=variant,
        dtype=dt,
        saved_bytes=saved,
        trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        paired_min_s=paired,
    )
    # its own statistics too: as many rounds as fit in the budget (at least 3)
    rounds = max(3, min(100, int(budget / max(paired[variant], 1e-6))))
    benchmark.pedantic(steps[variant], rounds=rounds, iterations=1, warmup_rounds=0)
