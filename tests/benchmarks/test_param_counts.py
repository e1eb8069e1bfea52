"""Trainable-parameter counts of the published configurations, checked against closed forms.

Cheap (models on the meta device), so these run in the default test run; with `--benchmark-enable` they also put
the counts into the suite's JSON for the results page. LoRA counts are also taken from PEFT's own `LoraConfig` on
the same model; SVFit/LoLDU cannot decompose a meta weight, so their counts come from the dry run
(`config.resolve`) and `trainable_count`, which the adapter test matrix checks against real models.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import sd15_unet_meta
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification, ViTConfig, ViTForImageClassification

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig, trainable_count
from peft_inits import functional as Fn

OURS = {"lora": LoRAConfig, "svfit": SVFitConfig, "loldu": LoLDUConfig}
SD15_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


@functools.cache
def meta_model(name: str) -> nn.Module:
    if name == "sd15-unet":
        return sd15_unet_meta()
    with torch.device("meta"):
        if name == "vit-b":
            return ViTForImageClassification(ViTConfig())  # defaults: ViT-B/16, hidden 768, 12 layers
        return RobertaForSequenceClassification(RobertaConfig())  # defaults: hidden 768, 12 layers


def ours(model_name: str, method: str, r: int, **options) -> int:
    """Σ over the dry-run targets of the closed-form count of one adapter."""
    model = meta_model(model_name)
    config = OURS[method](r=r, **options)
    modules = dict(model.named_modules())
    return sum(
        trainable_count(config.spec_for(t), *Fn.weight_matrix(modules[t.name].weight).shape)
        for t in config.resolve(model)
    )


def peft_lora(model_name: str, r: int, targets: list[str]) -> int:
    """Trainable parameters PEFT itself creates with LoraConfig on the same model (meta tensors: no memory)."""
    model = get_peft_model(copy.deepcopy(meta_model(model_name)), LoraConfig(r=r, target_modules=targets))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def record(benchmark, group: str, compute) -> dict[str, int]:
    benchmark.group = f"counts | {group}"
    counts = benchmark.pedantic(compute, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="counts", config=group, counts=counts)
    return counts


@pytest.mark.parametrize("r", [1, 8, 64, 768])
def test_vit_b_query_value(benchmark, r):
    """ViT-B/16 query + value: 24 matrices of 768², LoLDU/SVFit 24·r, LoRA 24·r·(768 + 768)."""
    counts = record(
        benchmark,
        f"ViT-B query+value r={r}",
        lambda: {
            "loldu": ours("vit-b", "loldu", r),
            "svfit": ours("vit-b", "svfit", r),
            "lora": ours("vit-b", "lora", r),
            "peft_lora": peft_lora("vit-b", r, ["q_proj", "v_proj"]),
        },
    )
    assert counts["loldu"] == counts["svfit"] == 24 * r
    assert counts["lora"] == counts["peft_lora"] == 24 * r * (768 + 768)


def test_roberta_base_query_value_published():
    """The LoLDU paper's RoBERTa-base rows: LoRA r=8 "0.3M" = 294,912; LoLDU r=768 "0.0184M" = 18,432."""
    assert ours("roberta-base", "lora", 8) == peft_lora("roberta-base", 8, ["query", "value"]) == 294_912
    assert ours("roberta-base", "loldu", 768) == ours("roberta-base", "svfit", 768) == 18_432
    assert ours("roberta-base", "loldu", 768, train_sigma=True) == 18_432 + 24  # the paper's r + 1 per matrix


def test_roberta_base_counts_recorded(benchmark):
    counts = record(
        benchmark,
        "RoBERTa-base query+value",
        lambda: {
            "lora r=8": ours("roberta-base", "lora", 8),
            "peft_lora r=8": peft_lora("roberta-base", 8, ["query", "value"]),
            "svfit r=768": ours("roberta-base", "svfit", 768),
            "loldu r=768": ours("roberta-base", "loldu", 768),
            "loldu r=768 + trainable sigma": ours("roberta-base", "loldu", 768, train_sigma=True),
        },
    )
    assert counts["lora r=8"] == 294_912 and counts["loldu r=768"] == 18_432


def sd15_attention_lora_closed_form(r: int) -> tuple[int, int]:
    """(number of attention Linears, LoRA parameters) of SD-1.5's 16 transformer blocks at rank r.

    Per block at width c: attn1 q, k, v, out are c × c; attn2 q and out are c × c, k and v map the 768-wide text
    context to c. Widths: down 320, 320, 640, 640, 1280, 1280; mid 1280; up 1280 ×3, 640 ×3, 320 ×3.
    """
    widths = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    per_block = [6 * (c + c) + 2 * (c + 768) for c in widths]  # six c×c and two c×768 projections
    return 8 * len(widths), r * sum(per_block)


def test_sd15_attention_r32(benchmark):
    r = 32
    linears, lora_closed = sd15_attention_lora_closed_form(r)
    counts = record(
        benchmark,
        "SD-1.5 UNet attention r=32",
        lambda: {
            "lora": ours("sd15-unet", "lora", r),
            "peft_lora": peft_lora("sd15-unet", r, SD15_ATTENTION),
            "svfit": ours("sd15-unet", "svfit", r),
            "loldu": ours("sd15-unet", "loldu", r),
        },
    )
    assert linears == 128 and lora_closed == 6_377_472
    assert counts["lora"] == counts["peft_lora"] == lora_closed
    assert counts["svfit"] == counts["loldu"] == linears * r == 4_096
