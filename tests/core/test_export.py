"""Exact LoRA export: PEFT's own LoRA and diffusers' kohya loader reproduce the adapted model."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from model_cases import CASE_BY_NAME
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.export import export_diffusers_lora, export_kohya, export_peft_lora, kohya_key, lora_pairs
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


def _per_block_unet(method: str):
    """A tiny-pipeline U-Net with per-block ranks 1/2/4 on attention Linears and resnet convs (LoCon)."""
    from peft_inits.diffusion.tiny import tiny_pipeline

    config = CONFIGS[method](r=4, blocks={"in0": 1, "mid": 2, "out3": 4}, module_kinds=["attn", "resnet"])
    model = get_peft_model(tiny_pipeline().unet, config)
    _perturb(model)
    ranks = {p.rank for p in lora_pairs(model)}
    assert ranks in ({1, 2, 4}, {2, 4, 8}), ranks  # PiSSA's delta BA − B₀A₀ has rank 2r
    assert any(p.A.dim() == 4 and p.A.shape[-1] == 3 for p in lora_pairs(model)), "3×3 resnet convs (LoCon) included"
    return model


def _export(model, layout: str, tmp_path):
    if layout == "kohya":
        return str(export_kohya(model, tmp_path / "lora.safetensors"))
    export_diffusers_lora(model, tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
@pytest.mark.parametrize("method", ["svfit", "loldu", "pissa"])
def test_per_block_rank_exports_load_exactly_fuse_and_weigh_in_diffusers(method, layout, tmp_path):
    from peft_inits.diffusion.tiny import tiny_pipeline

    case = CASE_BY_NAME["unet"]
    model = _per_block_unet(method)
    adapted = case.run(model, torch.float32)
    pipe = tiny_pipeline()
    base = case.run(pipe.unet, torch.float32)
    pipe.load_lora_weights(_export(model, layout, tmp_path), adapter_name="ours")
    assert _rel(case.run(pipe.unet, torch.float32), adapted) < 1e-5
    pipe.set_adapters(["ours"], adapter_weights=[0.3])
    for module in model.modules():  # our own composition weight: every ΔW times 0.3
        if hasattr(module, "set_adapter_weight"):
            module.set_adapter_weight("default", 0.3)
    weighted = case.run(model, torch.float32)
    assert _rel(weighted, base) > 1e-3
    assert _rel(case.run(pipe.unet, torch.float32), weighted) < 1e-5
    pipe.set_adapters(["ours"], adapter_weights=[1.0])
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # fused weights stay, adapter layers go
    assert _rel(case.run(pipe.unet, torch.float32), adapted) < 1e-5


def test_kohya_alphas_are_one_value_and_a1111_scaling_restores_every_delta(tmp_path):
    model = _per_block_unet("svfit")
    path = export_kohya(model, tmp_path / "lora.safetensors")
    tensors = load_file(path)
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {4.0}
    layers = {
        kohya_key(name.removeprefix("base_model.model.")): module
        for name, module in model.named_modules()
        if hasattr(module, "pi_adapters")
    }
    for stem, layer in layers.items():
        down, up = tensors[f"{stem}.lora_down.weight"].flatten(1), tensors[f"{stem}.lora_up.weight"].flatten(1)
        scale = float(tensors[f"{stem}.alpha"]) / down.shape[0]  # what kohya/A1111/ComfyUI apply per module
        delta = layer.get_delta_weight("default").detach().flatten(1)
        assert _rel(scale * up @ down, delta) < 1e-6


def test_peft_layout_says_how_to_load_it_and_diffusers_loads_nothing_from_it(tmp_path):
    from peft_inits.diffusion.tiny import tiny_pipeline

    case = CASE_BY_NAME["unet"]
    model = _per_block_unet("svfit")
    export_peft_lora(model, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and "export_diffusers_lora" in readme
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert f.metadata()["peft_inits_layout"] == "peft"
    pipe = tiny_pipeline()
    base = case.run(pipe.unet, torch.float32)
    pipe.load_lora_weights(str(tmp_path))  # what the README warns about: diffusers finds no `unet.` keys
    assert torch.equal(case.run(pipe.unet, torch.float32), base)
    loaded = PeftModel.from_pretrained(tiny_pipeline().unet, tmp_path)
    assert _rel(case.run(loaded, torch.float32), case.run(model, torch.float32)) < 1e-5
