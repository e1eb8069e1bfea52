"""PEFT's own conventions that its test matrix relies on (tests/peft_matrix runs that matrix itself):
`init_weights`, `in_features`/`out_features`, `low_cpu_mem_usage` loading, `autocast_adapter_dtype`, real
`PeftType` members."""

from __future__ import annotations

import json

import pytest
import torch
from model_cases import MLP
from peft import PeftModel, get_peft_model
from peft.utils.peft_types import PeftType
from torch import nn

from peft_inits import AdapterLayer, SVFitConfig
from peft_inits.registry import methods

X = torch.randn(6, 13, generator=torch.Generator().manual_seed(0))
METHODS = [m.name for m in methods()]


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def _config(method: str, **kwargs):
    config_cls = next(m.config for m in methods() if m.name == method)
    return config_cls(r=3, target_modules=["fc1", "fc2"], **kwargs)


def _max_delta(model) -> float:
    return max(
        float(m.get_delta_weight(name).detach().abs().max())
        for m in model.modules()
        if isinstance(m, AdapterLayer)
        for name in m.pi_adapters
    )


@pytest.mark.parametrize("method", METHODS)
def test_init_weights_true_is_the_identity_and_false_is_not(method):
    base_out = _mlp()(X)
    identity = get_peft_model(_mlp(), _config(method))
    assert _max_delta(identity) == 0.0
    assert torch.allclose(identity(X), base_out, atol=1e-6)
    random = get_peft_model(_mlp(), _config(method, init_weights=False))
    assert _max_delta(random) > 1e-3
    assert (random(X) - base_out).abs().max() > 1e-4
    again = get_peft_model(_mlp(), _config(method, init_weights=False))
    assert torch.equal(random(X), again(X)), "the random init is seeded by the config's seed"


@pytest.mark.parametrize("method", METHODS)
def test_random_init_round_trips_and_low_cpu_mem_usage_loads_the_same(method, tmp_path):
    model = get_peft_model(_mlp(), _config(method, init_weights=False))
    expected = model(X).detach()
    model.save_pretrained(tmp_path)
    for low_cpu in (False, True):
        loaded = PeftModel.from_pretrained(_mlp(), tmp_path, low_cpu_mem_usage=low_cpu)
        assert {p.device.type for p in loaded.parameters()} == {"cpu"}
        assert torch.allclose(loaded(X), expected, atol=1e-6)
        loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=low_cpu)
        assert {p.device.type for p in loaded.parameters()} == {"cpu"}


@pytest.mark.parametrize("method", [m.name for m in methods() if m.rank_bounded])
def test_low_cpu_mem_usage_still_refuses_another_base_model(method, tmp_path):
    get_peft_model(_mlp(), _config(method, init_weights=False)).save_pretrained(tmp_path)
    other = _mlp()
    with torch.no_grad():
        other.fc1.weight.mul_(1.5)
    with pytest.raises(ValueError, match="different base weight"):
        PeftModel.from_pretrained(other, tmp_path, low_cpu_mem_usage=True)


def test_layers_expose_in_and_out_features():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 5))
    peft_model = get_peft_model(model, SVFitConfig(r=2, target_modules=["0", "2"]))
    layers = [m for m in peft_model.modules() if isinstance(m, AdapterLayer)]
    assert [(m.in_features, m.out_features) for m in layers] == [(3, 8), (8, 5)]


@pytest.mark.parametrize("method", METHODS)
def test_autocast_adapter_dtype(method):
    half = _mlp().to(torch.bfloat16)
    kept = get_peft_model(half, _config(method))
    assert {p.dtype for n, p in kept.named_parameters() if "pi_" in n} == {torch.float32}
    cast = get_peft_model(_mlp().to(torch.bfloat16), _config(method), autocast_adapter_dtype=False)
    layer = cast.base_model.model.fc1
    tensors = dict(layer.pi_adapters["default"].named_parameters()) | dict(layer.pi_adapters["default"].named_buffers())
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    assert cast(X.to(torch.bfloat16)).dtype == torch.bfloat16
    if "fingerprint" in tensors:
        assert tensors["fingerprint"].dtype == torch.int64, "the fingerprint's bit pattern is never cast"


@pytest.mark.parametrize("method", METHODS)
def test_peft_type_is_a_real_peft_type_member(method, tmp_path):
    info = next(m for m in methods() if m.name == method)
    config = _config(method)
    assert isinstance(config.peft_type, PeftType) and config.peft_type.value == info.peft_type
    assert PeftType(info.peft_type) is config.peft_type is getattr(PeftType, info.peft_type)
    assert config.peft_type in list(PeftType)
    get_peft_model(_mlp(), config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == info.peft_type
    assert PeftModel.from_pretrained(_mlp(), tmp_path).peft_config["default"].peft_type is config.peft_type


def test_init_weights_must_be_a_bool():
    with pytest.raises(ValueError, match="init_weights must be True or False"):
        _config("svfit", init_weights="gaussian")


def _materialize_base(peft_model, source: nn.Module) -> None:
    """Load real base weights into a model that was initialised on the meta device (as accelerate's loaders do)."""
    for name, module in source.named_children():
        wrapped = getattr(peft_model.base_model.model, name)
        target = wrapped.get_base_layer() if isinstance(wrapped, AdapterLayer) else wrapped
        target.load_state_dict(module.state_dict(), assign=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("low_cpu", [False, True])
def test_meta_base_model_loads_the_adapter_once_its_weights_materialise(method, low_cpu, tmp_path):
    trained = get_peft_model(_mlp(), _config(method, init_weights=False))
    expected = trained(X).detach()
    trained.save_pretrained(tmp_path)
    with torch.device("meta"):
        empty = MLP()
    loaded = PeftModel.from_pretrained(empty, tmp_path, low_cpu_mem_usage=low_cpu)
    with pytest.raises(ValueError, match="still on the meta device; load the base model's weights"):
        loaded.base_model.model.fc1.get_delta_weight("default")
    _materialize_base(loaded, _mlp())
    assert torch.allclose(loaded(X), expected, atol=1e-6)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}


@pytest.mark.parametrize("method", [m.name for m in methods() if m.rank_bounded])
def test_meta_base_model_still_refuses_an_adapter_of_another_base(method, tmp_path):
    get_peft_model(_mlp(), _config(method, init_weights=False)).save_pretrained(tmp_path)
    with torch.device("meta"):
        empty = MLP()
    loaded = PeftModel.from_pretrained(empty, tmp_path)
    other = _mlp()
    with torch.no_grad():
        other.fc2.weight.mul_(1.5)
    _materialize_base(loaded, other)
    with pytest.raises(ValueError, match="different base weight"):
        loaded(X)


def test_meta_base_model_trains_from_the_real_init():
    with torch.device("meta"):
        empty = MLP()
    model = get_peft_model(empty, _config("svfit"))
    _materialize_base(model, _mlp())
    assert torch.allclose(model(X), _mlp()(X), atol=1e-6), "identity at step 0 once the weights are real"
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 6
