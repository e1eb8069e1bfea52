"""Block selection: family vocabularies, the PEFT matcher, per-block ranks and the errors users see."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tiny_models import sd15_unet_meta, timm_like_vit, tiny_llama, tiny_roberta, tiny_unet, tiny_vit
from torch import nn

from peft_inits import method_names
from peft_inits.blocks import (
    KOHYA_BLOCK_IDS,
    LBW17_BLOCK_IDS,
    SD_UNET_BLOCKS,
    Target,
    block_names,
    detect_family,
    kohya_block_id,
    lbw_blocks,
    matches,
    module_kinds_of,
    select_blocks,
)

torch.set_num_threads(1)

ROBERTA_QV = [
    "roberta.encoder.layer.0.attention.self.query",
    "roberta.encoder.layer.0.attention.self.value",
    "roberta.encoder.layer.1.attention.self.query",
    "roberta.encoder.layer.1.attention.self.value",
]
VIT_QV = [
    "vit.layers.0.attention.q_proj",
    "vit.layers.0.attention.v_proj",
    "vit.layers.1.attention.q_proj",
    "vit.layers.1.attention.v_proj",
]
LLAMA_QV = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
]
# Sub-blocks per coarse SD block pair, for the Block-wise LoRA groups.
GROUP_PREFIXES = {
    "upper": ("down_blocks.0.", "up_blocks.3."),
    "middle": ("down_blocks.1.", "up_blocks.2."),
    "lower": ("down_blocks.2.", "up_blocks.1."),
}


@pytest.fixture(scope="module")
def sd15() -> UNet2DConditionModel:
    return sd15_unet_meta()


@pytest.fixture(scope="module")
def roberta() -> nn.Module:
    return tiny_roberta()


def names(targets: list[Target]) -> list[str]:
    return [target.name for target in targets]


def adaptable_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]


# ---------------------------------------------------------------------------------------------------------------------
# The matcher


def test_matches_follows_peft_target_modules_semantics() -> None:
    assert matches(["q_proj"], "a.q_proj")
    assert not matches(["q_proj"], "a.xq_proj")
    assert matches(["q_proj"], "q_proj")
    assert matches(["a.q_proj"], "a.q_proj")  # full name
    assert matches(["b.q_proj"], "a.b.q_proj")  # multi-part dotted suffix
    assert not matches(["b.q_proj"], "a.xb.q_proj")
    assert matches(r".*\.q_proj", "a.q_proj")
    assert not matches("q_proj", "a.q_proj")  # a str is a regex on the whole name
    assert not matches("a", "ab")
    assert not matches(None, "a.q_proj")
    assert not matches([], "a.q_proj")


# ---------------------------------------------------------------------------------------------------------------------
# SD-1.5 real layout (meta device)


def test_sd15_module_counts(sd15: UNet2DConditionModel) -> None:
    modules = dict(sd15.named_modules())
    assert sum(isinstance(module, nn.Linear) for module in modules.values()) == 184
    assert sum(isinstance(module, nn.Conv2d) for module in modules.values()) == 98
    assert detect_family(sd15) == "sd-unet"


def test_sd15_default_is_the_128_attention_linears(sd15: UNet2DConditionModel) -> None:
    targets = select_blocks(sd15, method="lora", r=4)
    assert len(targets) == 128
    modules = dict(sd15.named_modules())
    assert all(isinstance(modules[target.name], nn.Linear) for target in targets)
    assert Counter(target.kind for target in targets) == {"q": 32, "k": 32, "v": 32, "o": 32}
    transformer_blocks = {re.sub(r"\.attn[12]\..*$", "", target.name) for target in targets}
    assert len(transformer_blocks) == 16
    assert Counter(target.block for target in targets) == {
        "in0": 16,
        "in1": 16,
        "in2": 16,
        "mid": 8,
        "out1": 24,
        "out2": 24,
        "out3": 24,
    }
    assert {(target.method, target.rank, target.alpha) for target in targets} == {("lora", 4, 4.0)}
    assert names(targets) == [name for name in adaptable_names(sd15) if name in set(names(targets))]  # model order
    assert targets[0] == Target(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "in0", "q", "lora", 4, 4.0
    )


@pytest.mark.parametrize(
    ("group", "attention_count", "module_count"), [("upper", 40, 79), ("middle", 40, 81), ("lower", 40, 81)]
)
def test_sd15_blockwise_groups(sd15: UNet2DConditionModel, group: str, attention_count: int, module_count: int) -> None:
    down_prefix, up_prefix = GROUP_PREFIXES[group]
    attention = select_blocks(sd15, method="lora", r=4, blocks=[group])
    assert len(attention) == attention_count
    assert sum(name.startswith(down_prefix) for name in names(attention)) == 16
    assert sum(name.startswith(up_prefix) for name in names(attention)) == 24
    everything = select_blocks(sd15, method="lora", r=4, blocks=[group], target_modules=".*")
    expected = [name for name in adaptable_names(sd15) if name.startswith((down_prefix, up_prefix))]
    assert names(everything) == expected
    assert len(everything) == module_count


def test_sd15_upper_exact_names(sd15: UNet2DConditionModel) -> None:
    selected = names(select_blocks(sd15, method="lora", r=4, blocks=["upper"]))
    assert "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0" in selected
    assert "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q" in selected
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" not in selected
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.to_q" not in selected
    assert selected[-1] == "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"


def test_sd15_rank_per_block_and_rank_zero(sd15: UNet2DConditionModel) -> None:
    targets = select_blocks(sd15, method="lora", r=8, blocks={"in0": 4, "out3": 0})
    assert len(targets) == 16
    assert {(target.block, target.rank, target.alpha) for target in targets} == {("in0", 4, 4.0)}
    with pytest.raises(ValueError, match="no module selected"):
        select_blocks(sd15, method="lora", r=8, blocks={"upper": 0})


@pytest.mark.parametrize("blocks", [{"upper": 8, "in0": 2}, {"in0": 2, "upper": 8}])
def test_sd15_block_beats_group_whatever_the_order(sd15: UNet2DConditionModel, blocks: dict[str, int]) -> None:
    targets = select_blocks(sd15, method="lora", r=16, blocks=blocks)
    assert Counter((target.block, target.rank) for target in targets) == {("in0", 2): 16, ("out3", 8): 24}


def test_sd15_later_group_wins_among_groups(sd15: UNet2DConditionModel) -> None:
    targets = select_blocks(sd15, method="lora", r=16, blocks={"down": 2, "upper": 8})
    ranks = Counter((target.block, target.rank) for target in targets)
    assert ranks == {("in0", 8): 16, ("in1", 2): 16, ("in2", 2): 16, ("out3", 8): 24}


def test_sd15_per_block_overrides(sd15: UNet2DConditionModel) -> None:
    targets = select_blocks(
        sd15, method="lora", r=8, alpha=16, blocks={"all": 8, "mid": {"r": 2, "alpha": 1.0, "method": "svfit"}}
    )
    assert len(targets) == 128
    settings = Counter((target.method, target.rank, target.alpha) for target in targets)
    assert settings == {("lora", 8, 16.0): 120, ("svfit", 2, 1.0): 8}
    overridden = [target for target in targets if target.method == "svfit"]
    assert {target.block for target in overridden} == {"mid"}


def test_sd15_module_kinds(sd15: UNet2DConditionModel) -> None:
    cross = select_blocks(sd15, method="lora", r=4, module_kinds=["attn2"])
    assert len(cross) == 64
    assert all(".attn2." in name for name in names(cross))
    assert Counter(target.kind for target in cross) == {"q": 16, "k": 16, "v": 16, "o": 16}
    assert names(select_blocks(sd15, method="lora", r=4, module_kinds=["cross_attn"])) == names(cross)
    self_attention = select_blocks(sd15, method="lora", r=4, module_kinds=["self_attn"])
    assert len(self_attention) == 64 and all(".attn1." in name for name in names(self_attention))
    assert len(select_blocks(sd15, method="lora", r=4, module_kinds=["attn2.k"])) == 16

    resnet = select_blocks(sd15, method="loldu", r=4, module_kinds=["resnet"])
    modules = dict(sd15.named_modules())
    assert len(resnet) == 44  # 22 ResnetBlock2D × conv1/conv2
    assert all(isinstance(modules[name], nn.Conv2d) for name in names(resnet))
    assert all(re.search(r"\.resnets\.\d+\.conv[12]$", name) for name in names(resnet))
    assert Counter(target.kind for target in resnet) == {"conv1": 22, "conv2": 22}

    feed_forward = select_blocks(sd15, method="lora", r=4, module_kinds=["ff", "proj", "time_emb"])
    assert Counter(target.kind for target in feed_forward) == {
        "ff_in": 16,
        "ff_out": 16,
        "proj_in": 16,
        "proj_out": 16,
        "time_emb": 22,
    }


def test_sd15_kohya_sub_blocks(sd15: UNet2DConditionModel) -> None:
    default = select_blocks(sd15, method="lora", r=4)
    assert Counter(kohya_block_id(name) for name in names(default)) == {block: 8 for block in LBW17_BLOCK_IDS[1:]}
    targets = select_blocks(sd15, method="lora", r=4, blocks={"in0": 4, "IN02": 0})
    assert {name.split(".transformer_blocks")[0] for name in names(targets)} == {"down_blocks.0.attentions.0"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("conv_in", "IN00"),
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "IN01"),
        ("down_blocks.0.resnets.1.conv1", "IN02"),
        ("down_blocks.0.downsamplers.0.conv", "IN03"),
        ("down_blocks.3.resnets.1.conv2", "IN11"),
        ("mid_block.resnets.1.conv1", "MID"),
        ("up_blocks.0.resnets.0.conv1", "OUT00"),
        ("up_blocks.0.upsamplers.0.conv", "OUT02"),
        ("up_blocks.3.attentions.2.proj_out", "OUT11"),
        ("conv_out", None),
        ("time_embedding.linear_1", None),
    ],
)
def test_kohya_block_id(name: str, expected: str | None) -> None:
    assert kohya_block_id(name) == expected


def test_lbw_vector(sd15: UNet2DConditionModel) -> None:
    weights = [0.0] * 17
    weights[LBW17_BLOCK_IDS.index("MID")] = 1.0
    weights[LBW17_BLOCK_IDS.index("OUT03")] = 0.5
    plan = lbw_blocks(weights, r=4)
    assert plan["MID"] == {"r": 4, "alpha": 4.0} and plan["IN01"] == {"r": 0, "alpha": 0.0}
    targets = select_blocks(sd15, method="lora", r=4, blocks=plan)
    assert Counter((kohya_block_id(target.name), target.alpha) for target in targets) == {
        ("MID", 4.0): 8,
        ("OUT03", 2.0): 8,
    }
    assert set(lbw_blocks([1.0] * 26, r=2)) == set(KOHYA_BLOCK_IDS)
    with pytest.raises(ValueError, match="17, 25 or 26"):
        lbw_blocks([1.0] * 12, r=4)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models of every family


def test_roberta_default_query_value(roberta: nn.Module) -> None:
    assert detect_family(roberta) == "bert"
    targets = select_blocks(roberta, method="svfit", r=2)
    assert names(targets) == ROBERTA_QV
    assert [(target.block, target.kind) for target in targets] == [
        ("layer0", "q"),
        ("layer0", "v"),
        ("layer1", "q"),
        ("layer1", "v"),
    ]
    assert names(select_blocks(roberta, method="lora", r=2, target_modules=["query", "value"])) == ROBERTA_QV


def test_roberta_output_dense_kinds(roberta: nn.Module) -> None:
    assert names(select_blocks(roberta, method="lora", r=2, module_kinds=["ff_out"])) == [
        "roberta.encoder.layer.0.output.dense",
        "roberta.encoder.layer.1.output.dense",
    ]
    assert names(select_blocks(roberta, method="lora", r=2, module_kinds=["o"])) == [
        "roberta.encoder.layer.0.attention.output.dense",
        "roberta.encoder.layer.1.attention.output.dense",
    ]
    assert names(select_blocks(roberta, method="lora", r=2, module_kinds=["head"])) == [
        "classifier.dense",
        "classifier.out_proj",
    ]


@pytest.mark.parametrize("layer", [1, "1", "layer1"])
def test_index_block_spellings(roberta: nn.Module, layer: int | str) -> None:
    assert names(select_blocks(roberta, method="lora", r=2, blocks=[layer])) == ROBERTA_QV[2:]


def test_index_ranges_and_rank_zero_block(roberta: nn.Module) -> None:
    targets = select_blocks(roberta, method="lora", r=2, blocks={"0-1": 4, "layer1": 2})
    assert [(target.block, target.rank) for target in targets] == [
        ("layer0", 4),
        ("layer0", 4),
        ("layer1", 2),
        ("layer1", 2),
    ]
    targets = select_blocks(roberta, method="lora", r=2, blocks={"all": 3, 0: 0})
    assert names(targets) == ROBERTA_QV[2:] and {target.rank for target in targets} == {3}


def test_vit_transformers_default(roberta: nn.Module) -> None:
    model = tiny_vit()
    assert detect_family(model) == "vit"
    targets = select_blocks(model, method="loldu", r=2)
    assert names(targets) == VIT_QV
    assert [target.kind for target in targets] == ["q", "v", "q", "v"]


def test_vit_timm_fused_qkv() -> None:
    model = timm_like_vit()
    assert detect_family(model) == "vit"
    targets = select_blocks(model, method="lora", r=2)
    assert targets == [
        Target("blocks.0.attn.qkv", "layer0", "qkv", "lora", 2, 2.0),
        Target("blocks.1.attn.qkv", "layer1", "qkv", "lora", 2, 2.0),
    ]
    assert names(select_blocks(model, method="lora", r=2, module_kinds=["o", "ff"], blocks=["layer1"])) == [
        "blocks.1.attn.proj",
        "blocks.1.mlp.fc1",
        "blocks.1.mlp.fc2",
    ]
    assert names(select_blocks(model, method="lora", r=2, module_kinds=["patch_embed", "head"])) == [
        "patch_embed.proj",
        "head",
    ]


def test_llama_default_and_mlp() -> None:
    model = tiny_llama()
    assert detect_family(model) == "llama"
    assert names(select_blocks(model, method="lora", r=2)) == LLAMA_QV
    mlp = select_blocks(model, method="lora", r=2, module_kinds=["ff"], blocks=["layer0"])
    assert [(target.name, target.kind) for target in mlp] == [
        ("model.layers.0.mlp.gate_proj", "ff_gate"),
        ("model.layers.0.mlp.up_proj", "ff_in"),
        ("model.layers.0.mlp.down_proj", "ff_out"),
    ]


def test_tiny_unet_default() -> None:
    model = tiny_unet()
    assert detect_family(model) == "sd-unet"
    targets = select_blocks(model, method="lora", r=2)
    assert len(targets) == 80  # 10 transformer blocks (in0-2: 1 each, mid: 1, out1-3: 2 each) × 8
    assert Counter(target.block for target in targets) == {
        "in0": 8,
        "in1": 8,
        "in2": 8,
        "mid": 8,
        "out1": 16,
        "out2": 16,
        "out3": 16,
    }


def test_vae_and_plain_modules_are_generic() -> None:
    vae = AutoencoderKL(
        block_out_channels=(8,),
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    assert detect_family(vae) == "generic"
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert detect_family(plain) == "generic"
    assert select_blocks(plain, method="lora", r=1, target_modules=["2"]) == [Target("2", None, None, "lora", 1, 1.0)]
    assert names(select_blocks(plain, method="lora", r=1, target_modules=r"\d")) == ["0", "2"]


def test_family_can_be_forced(roberta: nn.Module) -> None:
    assert names(select_blocks(roberta, method="lora", r=2, family="roberta")) == ROBERTA_QV
    targets = select_blocks(roberta, method="lora", r=2, family="generic", target_modules=["query"])
    assert {(target.block, target.kind) for target in targets} == {(None, None)}


def test_target_exclude_and_one_shot_iterables(roberta: nn.Module) -> None:
    targets = select_blocks(
        roberta,
        method="lora",
        r=2,
        target_modules=(suffix for suffix in ["query", "value"]),
        exclude_modules=(name for name in ["roberta.encoder.layer.0.attention.self.value"]),
    )
    assert names(targets) == [ROBERTA_QV[0], *ROBERTA_QV[2:]]
    both = select_blocks(roberta, method="lora", r=2, target_modules=r".*layer\.1\..*", module_kinds=["v", "ff_in"])
    assert names(both) == ["roberta.encoder.layer.1.attention.self.value", "roberta.encoder.layer.1.intermediate.dense"]


class _WrappedLinear(nn.Module):
    """The layout of a PEFT tuner layer: the original module under ``base_layer`` plus adapter sub-modules."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, 2, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(2, base.out_features, bias=False)})


def test_wrapped_layers_count_once_and_their_insides_never() -> None:
    model = tiny_roberta()
    attention = model.roberta.encoder.layer[0].attention.self
    attention.query = _WrappedLinear(attention.query)
    targets = select_blocks(model, method="lora", r=2)
    assert names(targets) == ROBERTA_QV
    everything = names(select_blocks(model, method="lora", r=2, target_modules=".*"))
    assert not any("base_layer" in name or "lora_" in name for name in everything)
    assert len(everything) == 14


# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary helpers and errors


def test_block_names_and_kinds() -> None:
    sd = block_names("sd-unet")
    assert sd["blocks"] == list(SD_UNET_BLOCKS)
    assert {"upper", "middle", "lower", "down", "up", "all"} <= set(sd["groups"])
    assert block_names("bert", num_layers=2)["blocks"] == ["layer0", "layer1"]
    assert "qkv" in module_kinds_of("vit") and "attn2" in module_kinds_of("sd-unet")
    with pytest.raises(ValueError, match="valid families"):
        block_names("resnet")


def test_unknown_block_lists_valid_names(sd15: UNet2DConditionModel, roberta: nn.Module) -> None:
    with pytest.raises(ValueError, match="unknown block 'in9'") as error:
        select_blocks(sd15, method="lora", r=4, blocks=["in9"])
    assert "in0" in str(error.value) and "upper" in str(error.value) and "out3" in str(error.value)
    with pytest.raises(ValueError, match="valid blocks: layer0, layer1"):
        select_blocks(roberta, method="lora", r=4, blocks=["layer7"])
    with pytest.raises(ValueError, match="unknown block '0-5'"):
        select_blocks(roberta, method="lora", r=4, blocks={"0-5": 2})
    with pytest.raises(ValueError, match="no block vocabulary"):
        select_blocks(nn.Linear(2, 2), method="lora", r=1, target_modules=".*", blocks=["in0"])


def test_argument_errors(roberta: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown model family 'resnet'.*sd-unet, vit, bert, llama, generic"):
        select_blocks(roberta, method="lora", r=2, family="resnet")
    with pytest.raises(ValueError, match=r"unknown module kind.*'attn3'.*valid kinds:.*attn2"):
        select_blocks(tiny_unet(), method="lora", r=2, module_kinds=["attn3"])
    with pytest.raises(ValueError, match="unknown method 'dora'; valid methods: " + ", ".join(method_names())):
        select_blocks(roberta, method="dora", r=2)
    with pytest.raises(ValueError, match="unknown method 'dora' for block 'layer0'"):
        select_blocks(roberta, method="lora", r=2, blocks={"layer0": {"method": "dora"}})
    with pytest.raises(ValueError, match=r"rank r must be an integer >= 1, got 0"):
        select_blocks(roberta, method="lora", r=0)
    with pytest.raises(ValueError, match=r"rank r for block 'layer0' must be an integer >= 0, got -1"):
        select_blocks(roberta, method="lora", r=2, blocks={"layer0": -1})
    with pytest.raises(ValueError, match=r"unknown override key\(s\) \['rank'\] for block 'layer0'"):
        select_blocks(roberta, method="lora", r=2, blocks={"layer0": {"rank": 4}})
    with pytest.raises(ValueError, match="has no default targets: pass target_modules"):
        select_blocks(nn.Sequential(nn.Linear(2, 2)), method="lora", r=1)


def test_nothing_selected_shows_candidates(roberta: nn.Module) -> None:
    with pytest.raises(ValueError, match="no module selected") as error:
        select_blocks(roberta, method="lora", r=2, target_modules=["q_proj"])
    message = str(error.value)
    assert "target_modules=['q_proj']" in message
    assert "roberta.encoder.layer.0.attention.self.query" in message and "(14 in total)" in message
    with pytest.raises(ValueError, match="no module selected"):
        select_blocks(roberta, method="lora", r=2, blocks={"all": 0})


def test_selection_does_not_touch_the_model() -> None:
    model = tiny_unet()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    module_names = [name for name, _ in model.named_modules()]
    select_blocks(model, method="svfit", r=2, target_modules=".*", blocks={"upper": 2, "in0": {"method": "loldu"}})
    assert [name for name, _ in model.named_modules()] == module_names
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_tiny_models_run() -> None:
    with torch.no_grad():
        sample = tiny_unet()(torch.randn(1, 4, 8, 8), 3, encoder_hidden_states=torch.randn(1, 5, 16)).sample
        assert sample.shape == (1, 4, 8, 8)
        assert tiny_roberta()(input_ids=torch.tensor([[0, 5, 6, 2]])).logits.shape == (1, 2)
        assert tiny_vit()(pixel_values=torch.randn(1, 3, 16, 16)).logits.shape == (1, 3)
        assert timm_like_vit()(torch.randn(2, 3, 16, 16)).shape == (2, 3)
        assert tiny_llama()(input_ids=torch.tensor([[1, 5, 6]])).logits.shape == (1, 3, 100)
