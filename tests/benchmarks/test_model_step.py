"""Model-level training step and its memory: a RoBERTa-base-sized encoder, a MiniLM-shaped BERT at the `compare`
setting (q,v, batch 16×128, r = 8, 64 and full rank 384) — random weights, built from their configs — and the tiny
SD-shaped UNet, every adapter method and path against the frozen model and PEFT LoRA.

The frozen model's step is forward + backward down to grad-requiring inputs (input embeddings / the noisy
latents), so every variant runs the same backward through all layers and differs only in what the adapters add.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from bench_utils import (
    MergedEveryStep,
    OnPath,
    interleaved_minima,
    minilm_shaped,
    peak_step_memory,
    roberta_base,
    saved_activation_bytes,
    synchronize,
)
from conftest import bench_device, bench_set
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_unet
from torch import nn

from peft_inits import AdapterLayer, LoLDUConfig, LoRAConfig, SVFitConfig

pytestmark = pytest.mark.perf

RANK = {"roberta-base": 8, "minilm": 8, "tiny-unet": 4}  # the tiny UNet's narrowest attention is 8 wide
TEXT_MODELS = {"roberta-base": 768, "minilm": 384}  # hidden sizes
TARGETS = {
    "minilm": {"qv": ["query", "value"]},
    "roberta-base": {
        "qv": ["query", "value"],
        "all": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    },
    "tiny-unet": {"attn": ["to_q", "to_k", "to_v", "to_out.0"]},
}
OUR_CONFIGS = {"lora": LoRAConfig, "svfit": SVFitConfig, "loldu": LoLDUConfig}


@dataclass(frozen=True)
class Variant:
    """A model-level configuration: `adapter` None = frozen base, "full" = full fine-tuning."""

    name: str
    adapter: str | None = None
    targets: str | None = None
    path: str = "fused"  # fused (the layer's default: cost model) | factored | merged
    r: int | None = None  # None: RANK[model]


def _variants(model: str) -> list[Variant]:
    if model == "minilm":
        out = [Variant("frozen")]
        out += [Variant(f"{a}_qv", a, "qv") for a in ("peft_lora", "lora", "svfit", "loldu")]
        for adapter in ("svfit", "loldu"):
            out.append(Variant(f"{adapter}_qv_r64", adapter, "qv", r=64))
            out.append(Variant(f"{adapter}_qv_r384", adapter, "qv", r=384))
            out.append(Variant(f"{adapter}_qv_r384_factored", adapter, "qv", "factored", r=384))
        out.append(Variant("loldu_qv_r384_merged", "loldu", "qv", "merged", r=384))
        return out
    if model == "tiny-unet":
        groups = [("attn", ("peft_lora", "lora", "svfit", "loldu"))]
    else:
        groups = [("qv", ("peft_lora", "lora", "svfit", "loldu")), ("all", ("peft_lora", "svfit", "loldu"))]
    out = [Variant("frozen"), Variant("full_ft", "full")]
    for targets, adapters in groups:
        for adapter in adapters:
            out.append(Variant(f"{adapter}_{targets}", adapter, targets))
            if adapter in ("svfit", "loldu") and targets != "all":
                out.append(Variant(f"{adapter}_{targets}_factored", adapter, targets, "factored"))
            if adapter == "loldu" and targets != "all":
                out.append(Variant(f"{adapter}_{targets}_merged", adapter, targets, "merged"))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_case" in metafunc.fixturenames:
        cases = [(model, v) for model in ("roberta-base", "minilm", "tiny-unet") for v in _variants(model)]
        metafunc.parametrize("model_case", cases, ids=[f"{m}-{v.name}" for m, v in cases])


@functools.lru_cache(maxsize=1)
def _base(model: str, device: str) -> nn.Module:
    base = {"roberta-base": roberta_base, "minilm": minilm_shaped}.get(model, tiny_unet)()
    return base.to(device).train().requires_grad_(False)


def _with_merged_every_step(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, MergedEveryStep(module))
    return model


def build_variant(model: str, variant: Variant, device: torch.device) -> nn.Module:
    """A fresh copy of the base model configured as `variant` (adapters moved off their identity init)."""
    net = copy.deepcopy(_base(model, str(device)))
    if variant.adapter is None:
        return net
    if variant.adapter == "full":
        return net.requires_grad_(True)
    r, targets = variant.r or RANK[model], TARGETS[model][variant.targets]
    if variant.adapter == "peft_lora":
        net = get_peft_model(net, LoraConfig(r=r, lora_alpha=r, target_modules=targets))
    else:
        options = {"svd": "randomized"} if variant.adapter == "svfit" else {}
        net = get_peft_model(net, OUR_CONFIGS[variant.adapter](r=r, target_modules=targets, **options))
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    if variant.path == "factored":
        return OnPath(net, "auto", "factored")
    if variant.path == "merged":
        return _with_merged_every_step(net)
    return net


def _inputs(model: str, device: torch.device, full: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    if model in TEXT_MODELS:
        batch, seq = (16, 128) if model == "minilm" else (8, 128) if full else (2, 64)
        embeds = torch.randn(batch, seq, TEXT_MODELS[model], generator=g).to(device).requires_grad_(True)
        return {"inputs_embeds": embeds, "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}
    batch = 8 if full else 2
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=g).to(device).requires_grad_(True),
        "timestep": torch.tensor([10], device=device),
        "encoder_hidden_states": torch.randn(batch, 4, 16, generator=g).to(device),
    }


def make_train_step(model: str, net: nn.Module, inputs: dict[str, Any], device: torch.device) -> Callable[[], None]:
    params = [p for p in net.parameters() if p.requires_grad]
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]

    def step() -> None:
        for t in (*params, *leaves):
            t.grad = None
        out = net(**inputs)
        loss = out.loss if model in TEXT_MODELS else out.sample.float().square().mean()
        loss.backward()
        synchronize(device)

    return step


@functools.lru_cache(maxsize=1)
def _frozen_step(model: str, device: str, full: bool) -> Callable[[], None]:
    """The frozen model's train step, kept for the round-robin timing of every variant of that model."""
    dev = torch.device(device)
    return make_train_step(model, build_variant(model, Variant("frozen"), dev), _inputs(model, dev, full), dev)


def test_model_train_step(benchmark, model_case, request):
    model, variant = model_case
    device = bench_device(request.config)
    full = bench_set(request.config) == "full"
    net = build_variant(model, variant, device)
    inputs = _inputs(model, device, full)
    step = make_train_step(model, net, inputs, device)
    steps = {"frozen": _frozen_step(model, str(device), full), variant.name: step}
    for s in steps.values():
        s()  # warm-up
    exclude = [*net.parameters(), *net.buffers(), *(t for t in inputs.values() if isinstance(t, torch.Tensor))]
    saved = saved_activation_bytes(step, exclude)
    leaves = [*net.parameters(), *(t for t in inputs.values() if isinstance(t, torch.Tensor))]
    peak = peak_step_memory(step, device, grads_of=leaves)
    paired = interleaved_minima(steps, budget_s=3.0 if device.type == "cpu" else 1.0, min_rounds=3)
    benchmark.group = f"model | {model} | train step"
    benchmark.extra_info.update(
        kind="model",
        model=model,
        variant=variant.name,
        targets=variant.targets,
        path=variant.path,
        tokens=int(inputs["inputs_embeds"].shape[0] * inputs["inputs_embeds"].shape[1])
        if model in TEXT_MODELS
        else int(inputs["sample"].shape[0]),
        r=None if variant.adapter in (None, "full") else variant.r or RANK[model],
        trainable=sum(p.numel() for p in net.parameters() if p.requires_grad),
        saved_bytes=saved,
        peak_bytes=peak["peak_bytes"],
        peak_method=peak["method"],
        paired_min_s=paired,
    )
    rounds = 3 if device.type == "cpu" else 20
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0, iterations=1)
