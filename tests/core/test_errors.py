"""Bad input gets a clear error and never a silently wrong model."""

from __future__ import annotations

import json

import pytest
import torch
from model_cases import MLP
from peft import PeftModel, get_peft_model
from tiny_models import tiny_unet
from torch import nn

from peft_inits import AdapterLayer, LoLDUConfig, LoRAConfig, MiLoRAConfig, PiSSAConfig, SVFitConfig
from peft_inits.checkpoint import load_adapter, read_config, save_adapter

X = torch.randn(4, 13, generator=torch.Generator().manual_seed(0))


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def _saved(tmp_path, config=None):
    model = get_peft_model(_mlp(), config or SVFitConfig(r=3, target_modules=["fc1", "fc2"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.mul_(1.5)
    return model, save_adapter(model, tmp_path / "adapter")


@pytest.mark.parametrize("config_cls", [SVFitConfig, LoLDUConfig, PiSSAConfig, MiLoRAConfig])
def test_rank_larger_than_matrix(config_cls):
    base = _mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=r"rank r=8 is too large for fc2 \(7×24\): .* at most min\(m, n\) = 7"):
        get_peft_model(base, config_cls(r=8, target_modules=["fc1", "fc2"]))
    assert not any("pi_adapters" in name for name, _ in base.named_modules())  # checked before injection
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_lora_rank_may_exceed_the_matrix_rank():
    """LoRA is well defined at r > min(m, n) (PEFT allows it); only decompositions are bounded by the matrix."""
    model = get_peft_model(_mlp(), LoRAConfig(r=30, target_modules=["fc2"]))
    assert model.get_nb_trainable_parameters()[0] == 30 * (7 + 24)


@pytest.mark.parametrize("r", [0, -1, 2.5])
def test_rank_below_one(r):
    with pytest.raises(ValueError, match="r must be an int ≥ 1"):
        SVFitConfig(r=r)


def test_unknown_block_lists_valid_names():
    with pytest.raises(ValueError, match=r"(?s)unknown block 'in9'.*in0.*upper"):
        get_peft_model(tiny_unet(), SVFitConfig(r=2, blocks=["in9"]))


def test_unknown_family():
    with pytest.raises(ValueError, match=r"(?s)unknown.*famil.*sd-unet"):
        get_peft_model(_mlp(), SVFitConfig(r=2, target_modules=["fc1"], family="resnet50"))


def test_target_that_matches_nothing_shows_candidates():
    with pytest.raises(ValueError, match=r"(?s)no module selected.*q_proj.*modules: fc1, fc2"):
        get_peft_model(_mlp(), LoRAConfig(r=2, target_modules=["q_proj"]))


class _Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.transposed = nn.ConvTranspose2d(4, 4, 3)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("grouped", "grouped/depthwise Conv2d"),
        ("reflect", "padding_mode='reflect'"),
        ("transposed", r"not supported: transposed \(ConvTranspose2d\)"),
    ],
)
def test_unsupported_convs(name, message):
    with pytest.raises((TypeError, ValueError), match=message):
        get_peft_model(_Convs(), LoLDUConfig(r=2, target_modules=[name]))


def test_non_finite_weights_are_refused():
    base = _mlp()
    with torch.no_grad():
        base.fc1.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite values"):
        get_peft_model(base, SVFitConfig(r=2, target_modules=["fc1"]))


def test_zero_pivots_give_finite_identity_adapter():
    base = _mlp()
    with torch.no_grad():
        base.fc1.weight[:, 2:] = 0.0  # rank ≤ 2, so LDU pivots 3.. are zero
    y = base(X)
    model = get_peft_model(base, LoLDUConfig(r=6, target_modules=["fc1"]))
    adapter = model.base_model.model.fc1.adapter("default")
    assert all(torch.isfinite(t).all() for t in adapter.factors() if t is not None)
    assert torch.equal(model(X), y)


def test_adapter_for_another_base_model_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ValueError, match="trained on a different base weight"):
        PeftModel.from_pretrained(_mlp(seed=1), path)
    with pytest.raises(ValueError, match="trained on a different base weight"):
        load_adapter(_mlp(seed=1), path)


def test_rank_mismatch_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["r"] = 2
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="checkpoint has rank 3 but this model's adapter has rank 2"):
        load_adapter(_mlp(), path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_or_truncated_file(tmp_path, damage):
    _, path = _saved(tmp_path)
    weights = path / "adapter_model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00\x01not a safetensors file" * 10)
    else:
        weights.unlink()
    base = _mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises((ValueError, FileNotFoundError), match=r"corrupt or truncated|does not exist"):
        load_adapter(base, path)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())


def test_config_from_a_newer_release_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["spectral_dropout"] = 0.1
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown fields \['spectral_dropout'\].*newer peft_inits"):
        read_config(path)
    with pytest.raises(ValueError, match="newer peft_inits"):
        PeftModel.from_pretrained(_mlp(), path)
    config.pop("spectral_dropout")
    config["format_version"] = 99
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 99"):
        read_config(path)


def test_foreign_config_type_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="holds a 'LORA' adapter"):
        read_config(tmp_path)


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "message"),
    [
        (LoLDUConfig, {"z_init": "xavier"}, "z_init must be one of lu, uniform, .*, got 'xavier'"),
        (SVFitConfig, {"svd": "lanczos"}, "svd must be one of exact, randomized, got 'lanczos'"),
        (LoLDUConfig, {"pivoting": "total"}, "pivoting must be one of partial, rook, complete"),
        (SVFitConfig, {"svd_niter": 1.5}, "svd_niter must be int"),
        (SVFitConfig, {"energy_threshold": 1.5}, r"energy_threshold must be in \(0, 1\]"),
        (PiSSAConfig, {"svd_oversample": -1}, "must be >= 0"),
        (LoLDUConfig, {"ldu_method": "qr"}, "ldu_method must be"),
        (SVFitConfig, {"decompose_dtype": "float16"}, "decompose_dtype must be one of"),
    ],
)
def test_bad_method_options(config_cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_cls(r=2, **kwargs)


def test_atomic_save_leaves_no_temp_files_and_replaces_whole(tmp_path):
    model, path = _saved(tmp_path)
    save_adapter(model, path)
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "8"])
def test_non_finite_or_non_numeric_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        SVFitConfig(r=2, alpha=alpha)


def test_a_saved_config_with_nan_alpha_is_refused(tmp_path):
    model = get_peft_model(_mlp(), LoRAConfig(r=2, target_modules=["fc1"]))
    path = save_adapter(model, tmp_path / "a")
    config = json.loads((path / "adapter_config.json").read_text())
    config["alpha"] = float("nan")
    (path / "adapter_config.json").write_text(json.dumps(config))
    base = _mlp()
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        PeftModel.from_pretrained(base, path)
    assert not any("pi_adapters" in name for name, _ in base.named_modules())
