"""Composition of an identity and a style adapter on the tiny SD U-Net, block-wise, applied or merged."""

from __future__ import annotations

import pytest
import torch
from model_cases import CASE_BY_NAME
from peft import get_peft_model

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.checkpoint import save_adapter
from peft_inits.diffusion.composition import (
    ABLATION_ROWS,
    Placement,
    ablation,
    adapter_layers,
    apply_placements,
    layers_in_blocks,
    load_named_adapter,
    merge_placements,
)

CASE = CASE_BY_NAME["unet"]


def _trained(config, seed: int, path):
    model = get_peft_model(CASE.build(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))
    return save_adapter(model, path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    identity = _trained(SVFitConfig(r=2, module_kinds=["attn", "resnet"]), 0, root / "identity")
    style = _trained(LoLDUConfig(r=2, module_kinds=["attn"]), 1, root / "style")
    return identity, style


def _unet_with(adapters):
    unet = CASE.build()
    load_named_adapter(unet, adapters[0], "identity")
    load_named_adapter(unet, adapters[1], "style")
    return unet


def _expected(placements, adapters) -> torch.Tensor:
    """Reference: the base U-Net with each adapter's ΔW added only to its chosen layers' weights."""
    unet = _unet_with(adapters)
    reference = CASE.build()
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for placement in placements:
            layers = adapter_layers(unet, placement.name)
            chosen = set(layers) if placement.blocks is None else layers_in_blocks(unet, layers, placement.blocks)
            for name in chosen:
                delta = layers[name].get_delta_weight(placement.name) * placement.weight
                modules[name].weight.add_(delta)
    return CASE.run(reference, torch.float32)


def test_ablation_rows_match_weight_space_reference(adapters):
    unet = _unet_with(adapters)
    outputs = []
    for label, placements in zip(ABLATION_ROWS, ablation("identity", "style"), strict=True):
        apply_placements(unet, placements)
        got = CASE.run(unet, torch.float32)
        want = _expected(placements, adapters)
        assert float((got - want).norm() / want.norm()) < 1e-5, label
        outputs.append(got)
    assert len({round(float(o.sum()), 5) for o in outputs}) == len(outputs), "every row should differ"


def test_upper_group_keeps_style_only_in_in0_and_out3(adapters):
    unet = _unet_with(adapters)
    chosen = layers_in_blocks(unet, adapter_layers(unet, "style"), ["upper"])
    assert chosen and all(n.startswith(("down_blocks.0.", "up_blocks.3.")) for n in chosen)
    apply_placements(unet, [Placement("style", ("upper",))])
    active = {n for n, m in adapter_layers(unet, "style").items() if "style" in m.active_adapters}
    assert active == chosen


def test_merged_composition_equals_applied_and_weights_scale(adapters):
    unet = _unet_with(adapters)
    placements = [Placement("identity", None, 0.5), Placement("style", ("upper", "mid"), 1.5)]
    apply_placements(unet, placements)
    applied = CASE.run(unet, torch.float32)
    assert float((applied - _expected(placements, adapters)).norm() / applied.norm()) < 1e-5
    merge_placements(unet)
    assert float((CASE.run(unet, torch.float32) - applied).norm() / applied.norm()) < 1e-5
    apply_placements(unet, [])
    assert float((CASE.run(unet, torch.float32) - CASE.run(CASE.build(), torch.float32)).abs().max()) < 1e-5


def test_adapter_for_another_unet_or_unknown_name_is_refused(adapters, tmp_path):
    torch.manual_seed(3)
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel.from_config(CASE.build().config)
    with pytest.raises(ValueError, match="different base weight"):
        load_named_adapter(other, adapters[0], "identity")
    unet = _unet_with(adapters)
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        apply_placements(unet, [Placement("nope")])
    lora = _trained(LoRAConfig(r=2, blocks=["lower"]), 2, tmp_path / "lora")
    load_named_adapter(unet, lora, "lora")
    apply_placements(unet, [Placement("lora", ("lower",))])
