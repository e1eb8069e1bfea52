"""Exact LoRA export: PEFT's own LoRA and diffusers' kohya loader reproduce the adapted model."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from model_cases import CASE_BY_NAME
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.export import export_kohya, export_peft_lora, kohya_key, lora_pairs
from peft_inits.registry import methods

CONFIGS = {method.name: method.config for method in methods()}


def _perturb(model) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("case_name", ["mlp", "roberta", "unet"])
def test_peft_lora_export_reproduces_the_adapted_model(case_name, method, tmp_path):
    case = CASE_BY_NAME[case_name]
    blocks = {"blocks": {"upper": 2, "out2": 1}} if case_name == "unet" else {}
    model = get_peft_model(case.build(), CONFIGS[method](r=2, **{**case.select, **blocks}))
    _perturb(model)
    adapted = case.run(model, torch.float32)
    export_peft_lora(model, tmp_path)
    loaded = PeftModel.from_pretrained(case.build(), tmp_path)
    assert type(loaded.peft_config["default"]).__name__ == "LoraConfig"
    assert _rel(case.run(loaded, torch.float32), adapted) < 1e-5


@pytest.mark.parametrize("method", list(CONFIGS))
def test_kohya_export_loads_in_diffusers_and_reproduces_the_unet(method, tmp_path):
    case = CASE_BY_NAME["unet"]
    model = get_peft_model(case.build(), CONFIGS[method](r=2, blocks=["upper", "mid"], module_kinds=["attn", "resnet"]))
    _perturb(model)
    adapted = case.run(model, torch.float32)
    path = export_kohya(model, tmp_path / "lora.safetensors")
    keys = load_file(path)
    stem = kohya_key("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert stem == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= set(keys)
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    unet = case.build()
    StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=unet)
    assert _rel(case.run(unet, torch.float32), adapted) < 1e-5


def test_pairs_are_exact_and_carry_per_block_ranks():
    case = CASE_BY_NAME["unet"]
    model = get_peft_model(case.build(), SVFitConfig(r=4, blocks={"in0": 1, "out3": 3}))
    _perturb(model)
    pairs = {p.name: p for p in lora_pairs(model)}
    assert {p.rank for p in pairs.values()} == {1, 3}
    for name, module in model.base_model.model.named_modules():
        if name in pairs:
            delta = module.get_delta_weight("default").reshape(pairs[name].B.shape[0], -1)
            product = pairs[name].B.flatten(1) @ pairs[name].A.flatten(1)
            assert _rel(product, delta) < 1e-6


def test_export_without_adapter_or_with_dilated_conv_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        lora_pairs(get_peft_model(CASE_BY_NAME["mlp"].build(), LoRAConfig(r=2, target_modules=["fc1"])), "other")
    dilated = get_peft_model(CASE_BY_NAME["conv"].build(), LoLDUConfig(r=2, target_modules=["conv2"]))
    with pytest.raises(ValueError, match="dilated convs have no standard LoRA form"):
        export_kohya(dilated, tmp_path / "x.safetensors")


def test_kohya_file_loads_through_pipeline_load_lora_weights(tmp_path):
    from peft_inits.diffusion.tiny import tiny_pipeline

    case = CASE_BY_NAME["unet"]
    model = get_peft_model(tiny_pipeline().unet, SVFitConfig(r=2, blocks=["upper"], module_kinds=["attn", "resnet"]))
    _perturb(model)
    adapted = case.run(model, torch.float32)
    path = export_kohya(model, tmp_path / "lora.safetensors")
    pipe = tiny_pipeline()
    pipe.load_lora_weights(str(path))
    assert _rel(case.run(pipe.unet, torch.float32), adapted) < 1e-5
