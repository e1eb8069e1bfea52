"""Nothing half-loaded: after every refused injection or load the model's module tree and state dict are exactly what
they were; damaged-but-well-formed files are refused; LoRA files carry the base fingerprint; half-precision copies
of the base are accepted."""

from __future__ import annotations

import copy

import pytest
import torch
from model_cases import MLP
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from peft_inits import LoLDUConfig, LoRAConfig, MiLoRAConfig, PiSSAConfig, SVFitConfig
from peft_inits.adapters import allow_other_base
from peft_inits.checkpoint import load_adapter, save_adapter

X = torch.randn(5, 13, generator=torch.Generator().manual_seed(0))
CONFIGS = [LoRAConfig, SVFitConfig, LoLDUConfig, PiSSAConfig, MiLoRAConfig]
WEIGHTS = "adapter_model.safetensors"


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def _snapshot(model: torch.nn.Module) -> tuple[list[tuple[str, str]], dict[str, torch.Tensor]]:
    tree = [(name, type(module).__name__) for name, module in model.named_modules()]
    return tree, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: torch.nn.Module, before) -> None:
    tree, state = _snapshot(model)
    assert tree == before[0], "the module tree changed"
    assert state.keys() == before[1].keys()
    for key, value in state.items():
        torch.testing.assert_close(value, before[1][key], rtol=0, atol=0, equal_nan=True)


def _trained(config_cls, tmp_path, **kwargs):
    model = get_peft_model(_mlp(), config_cls(r=3, target_modules=["fc1", "fc2"], **kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.add_(0.1 * torch.randn_like(p) + 0.05)
    return model, save_adapter(model, tmp_path / "adapter")


def _rewrite(path, edit) -> None:
    """Change the weights file and re-save it without a checksum (as PEFT's own save would), so only the
    content checks can catch the damage."""
    tensors = load_file(str(path / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})


def _foreign_fc2(seed: int = 7) -> MLP:
    base = _mlp()
    base.fc2 = _mlp(seed).fc2
    return base


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_adapter_for_another_base_leaves_the_model_untouched(config_cls, tmp_path):
    _, path = _trained(config_cls, tmp_path)
    target = _foreign_fc2()  # fc1 matches, fc2 does not: fc1 must not stay injected
    before = _snapshot(target)
    reference = target(X)
    with pytest.raises(ValueError, match=r"fc2 .*different base weight"):
        PeftModel.from_pretrained(target, path)
    _assert_unchanged(target, before)
    assert torch.equal(target(X), reference)
    with pytest.raises(ValueError, match="different base weight"):
        load_adapter(target, path)
    _assert_unchanged(target, before)


def test_lora_onto_another_base_is_refused_unless_asked_for(tmp_path):
    model, path = _trained(LoRAConfig, tmp_path)
    other = _mlp(seed=3)
    with pytest.raises(ValueError, match="different base weight"):
        load_adapter(other, path)
    with allow_other_base():
        moved = load_adapter(_mlp(seed=3), path)
    A = moved.base_model.model.fc1.adapter("default").lora_A
    assert torch.equal(A, model.base_model.model.fc1.adapter("default").lora_A)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t, k: t.__setitem__(k, t[k].to(torch.int32)), "stored as torch.int32 but must be torch.float32"),
        (lambda t, k: t.__setitem__(k, torch.full_like(t[k], float("nan"))), "non-finite values"),
        (lambda t, k: t.pop(k), "lacks"),
        (
            lambda t, k: t.__setitem__(k.replace("fc2", "fc3"), t[k].clone()),
            "modules this model's config does not adapt",
        ),
    ],
    ids=["int32-header", "nan-gain", "missing-gain", "extra-module"],
)
@pytest.mark.parametrize("config_cls", [LoRAConfig, SVFitConfig, LoLDUConfig], ids=lambda c: c.__name__)
def test_damaged_files_are_refused_and_nothing_changes(config_cls, edit, message, tmp_path):
    _, path = _trained(config_cls, tmp_path)
    key = next(k for k in load_file(str(path / WEIGHTS)) if "fc2" in k and k.endswith((".s", ".z", ".lora_B")))
    _rewrite(path, lambda tensors: edit(tensors, key))
    target = _mlp()
    before = _snapshot(target)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(target, path)
    _assert_unchanged(target, before)


def test_rank_mismatch_is_refused_before_anything_loads(tmp_path):
    _, path = _trained(SVFitConfig, tmp_path)
    model = get_peft_model(_mlp(), SVFitConfig(r=2, target_modules=["fc1", "fc2"]))
    own = save_adapter(model, tmp_path / "own")
    set_peft_model_state_dict(model, load_file(str(own / WEIGHTS)))  # the adapter now holds loaded weights
    state = load_file(str(path / WEIGHTS))
    before = _snapshot(model)
    with pytest.raises(ValueError, match="rank 3 but this model's adapter has rank 2"):
        set_peft_model_state_dict(model, state)
    _assert_unchanged(model, before)  # an adapter that held loaded weights is kept as it was


def test_a_refused_load_removes_an_adapter_that_never_held_loaded_weights(tmp_path):
    _, path = _trained(SVFitConfig, tmp_path)
    model = get_peft_model(_foreign_fc2(), SVFitConfig(r=3, target_modules=["fc1", "fc2"]), adapter_name="other")
    before = _snapshot(model)
    with pytest.raises(ValueError, match="different base weight"):
        model.load_adapter(str(path), adapter_name="new")  # PEFT injects "new", then loads it
    _assert_unchanged(model, before)
    assert list(model.peft_config) == ["other"]


def test_non_finite_base_weight_in_a_later_layer_leaves_earlier_layers_unwrapped():
    base = _mlp()
    with torch.no_grad():
        base.fc2.weight[0, 0] = float("nan")
    before = _snapshot(base)
    with pytest.raises(ValueError, match="non-finite"):
        get_peft_model(base, SVFitConfig(r=2, target_modules=["fc1", "fc2"]))
    _assert_unchanged(base, before)


@pytest.mark.parametrize("config_cls", [SVFitConfig, LoLDUConfig, LoRAConfig], ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_copy_of_the_base_is_accepted(config_cls, dtype, tmp_path):
    model, path = _trained(config_cls, tmp_path)
    loaded = load_adapter(_mlp().to(dtype), path)
    got = loaded(X.to(dtype)).float()
    assert torch.allclose(got, model(X), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("config_cls", [SVFitConfig, LoLDUConfig, PiSSAConfig], ids=lambda c: c.__name__)
def test_resaved_after_a_dtype_cast_still_loads_onto_the_fp32_base(config_cls, tmp_path):
    model, path = _trained(config_cls, tmp_path)
    loaded = load_adapter(_mlp(), path)
    loaded.to(torch.bfloat16)
    again = save_adapter(loaded, tmp_path / "again")
    reloaded = load_adapter(_mlp(), again)
    assert torch.allclose(reloaded(X), model(X), atol=0.05, rtol=0.05)


def test_loldu_follows_the_saved_pivot_order_on_a_rounded_base(tmp_path):
    """A tie broken differently on a bf16 copy would change LU's pivots; the saved order is followed instead."""
    base = _mlp()
    with torch.no_grad():  # two candidates within bf16 rounding of each other for the first pivot of fc2
        base.fc2.weight[:, 0] = torch.linspace(-0.5, 0.5, 7)
        base.fc2.weight[3, 0] = 0.7
        base.fc2.weight[5, 0] = 0.7001
    model = get_peft_model(copy.deepcopy(base), LoLDUConfig(r=3, target_modules=["fc2"]))
    with torch.no_grad():
        model.base_model.model.fc2.adapter("default").z.mul_(1.2)
    path = save_adapter(model, tmp_path / "a")
    saved_rows = model.base_model.model.fc2.adapter("default").pivot_rows.tolist()
    rounded = copy.deepcopy(base).to(torch.bfloat16)
    fresh = get_peft_model(copy.deepcopy(rounded), LoLDUConfig(r=3, target_modules=["fc2"]))
    assert fresh.base_model.model.fc2.adapter("default").pivot_rows.tolist() != saved_rows  # the tie flipped
    loaded = load_adapter(rounded, path)
    assert loaded.base_model.model.fc2.adapter("default").pivot_rows.tolist() == saved_rows
    assert torch.allclose(loaded(X.to(torch.bfloat16)).float(), model(X), atol=0.05)
