"""The Hugging Face PEFT (and diffusers) API with our configs: the calls users already know must just work."""

from __future__ import annotations

import copy

import pytest
import torch
from model_cases import CASE_BY_NAME, MLP
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from tiny_models import tiny_roberta, tiny_unet

from peft_inits import AdapterLayer, LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.checkpoint import load_adapter, save_adapter

X = torch.randn(6, 13, generator=torch.Generator().manual_seed(0))


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def _train(model, steps: int = 3, lr: float = 5e-2) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        model(X).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_dry_run_resolves_without_touching_the_model():
    base = _mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    targets = SVFitConfig(r=3, target_modules=["fc1", "fc2"], blocks=None).resolve(base)
    assert [(t.name, t.method, t.rank, t.alpha) for t in targets] == [
        ("fc1", "svfit", 3, 3.0),
        ("fc2", "svfit", 3, 3.0),
    ]
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())


def test_add_and_set_adapter_switch_between_named_adapters():
    model = get_peft_model(_mlp(), SVFitConfig(r=4, target_modules=["fc1", "fc2"]))
    _train(model)
    out_a = model(X).detach()
    model.add_adapter("second", SVFitConfig(r=2, target_modules=["fc2"]))
    assert torch.equal(model(X), out_a), "adding an adapter must not change the active one"
    model.set_adapter("second")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2
    assert torch.equal(model(X), _mlp()(X)), "the new adapter starts as the identity"
    _train(model)
    out_b = model(X).detach()
    model.set_adapter("default")
    assert torch.equal(model(X), out_a)
    model.base_model.set_adapter(["default", "second"])
    both = model(X)
    fc2 = model.base_model.model.fc2
    h = torch.tanh(model.base_model.model.fc1(X))
    assert torch.allclose(fc2(h), fc2.base_layer(h) + fc2.delta_forward(h, "default") + fc2.delta_forward(h, "second"))
    assert not torch.allclose(both, out_a) and not torch.allclose(both, out_b)


def test_from_pretrained_is_trainable_and_merge_and_unload(tmp_path):
    model = get_peft_model(_mlp(), LoLDUConfig(r=4, target_modules=["fc1", "fc2"], train_sigma=True))
    assert model.get_nb_trainable_parameters()[0] == 2 * (4 + 1)
    _train(model)
    trained = model(X).detach()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_mlp(), tmp_path, is_trainable=True)
    assert loaded.get_nb_trainable_parameters()[0] == 10
    assert torch.equal(loaded(X), trained)
    _train(loaded, steps=1)
    assert not torch.allclose(loaded(X), trained)
    merged = model.merge_and_unload()
    assert type(merged.fc1) is torch.nn.Linear
    assert torch.allclose(merged(X), trained, atol=1e-6)


def test_sequence_classification_with_modules_to_save(tmp_path):
    case = CASE_BY_NAME["roberta"]
    config = SVFitConfig(r=4, task_type="SEQ_CLS", modules_to_save=["classifier"])
    model = get_peft_model(tiny_roberta(num_labels=3), config)
    inputs = case.inputs(model, torch.float32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable)
    assert all("pi_adapters" in n or "classifier" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 2])
    for _ in range(3):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    logits = model(**inputs).logits.detach()
    model.save_pretrained(tmp_path)
    torch.manual_seed(123)  # a differently initialised head must be replaced by the saved one
    loaded = PeftModel.from_pretrained(tiny_roberta(num_labels=3), tmp_path).eval()
    assert torch.equal(loaded(**inputs).logits, logits)


def test_diffusers_unet_add_adapter_train_and_disable():
    case = CASE_BY_NAME["unet"]
    unet = tiny_unet().eval()
    reference = case.run(unet, torch.float32)
    unet.add_adapter(LoLDUConfig(r=2, blocks={"upper": 2, "mid": 1}))
    assert torch.equal(case.run(unet, torch.float32), reference)
    layers = [m for m in unet.modules() if isinstance(m, AdapterLayer)]
    assert layers and all(m.adapter("default").r in (1, 2) for m in layers)
    params = [p for p in unet.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == sum(m.adapter("default").r for m in layers)
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    for _ in range(2):
        case.output(unet(**case.inputs(unet, torch.float32))).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(case.run(unet, torch.float32), reference)
    unet.disable_adapters()
    assert torch.equal(case.run(unet, torch.float32), reference)
    unet.enable_adapters()
    state = get_peft_model_state_dict(unet)
    assert state and all("pi_adapters" in k for k in state)


@pytest.mark.parametrize("config_cls", [SVFitConfig, LoLDUConfig])
def test_adapter_file_holds_gains_not_factors_unless_embedded(config_cls, tmp_path):
    base = CASE_BY_NAME["roberta"].build()
    sizes = {}
    for embed in (False, True):
        model = get_peft_model(copy.deepcopy(base), config_cls(r=8, embed_factors=embed))
        _perturb_gains(model)
        path = save_adapter(model, tmp_path / str(embed))
        sizes[embed] = (path / "adapter_model.safetensors").stat().st_size
        keys = set(get_peft_model_state_dict(model))
        assert any(k.endswith(".down") for k in keys) == embed
        loaded = load_adapter(copy.deepcopy(base), path)
        inputs = CASE_BY_NAME["roberta"].inputs(loaded, torch.float32)
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert sizes[False] < 6144 < sizes[True] and 2 * sizes[False] < sizes[True], sizes


def test_lora_file_holds_both_factors_and_the_base_fingerprint(tmp_path):
    model = get_peft_model(_mlp(), LoRAConfig(r=4, alpha=8, target_modules=["fc1", "fc2"]))
    state = get_peft_model_state_dict(model)
    assert sorted(state) == sorted(
        f"base_model.model.{n}.pi_adapters.{w}" for n in ("fc1", "fc2") for w in ("fingerprint", "lora_A", "lora_B")
    )
    assert model.base_model.model.fc1.adapter("default").scale == 2.0


def test_safe_merge_refuses_non_finite_result_and_leaves_weight_intact():
    model = get_peft_model(_mlp(), SVFitConfig(r=2, target_modules=["fc1"]))
    layer = model.base_model.model.fc1
    with torch.no_grad():
        layer.adapter("default").s[0] = float("inf")
    before = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="inf/NaN"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before) and not layer.merged


def _perturb_gains(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.mul_(1.1)


def test_composition_weight_applies_on_the_merged_and_the_factored_path():
    model = get_peft_model(_mlp(), SVFitConfig(r=3, target_modules=["fc1"]))
    layer = model.base_model.model.fc1
    with torch.no_grad():
        layer.adapter("default").s.mul_(1.5)
    x = torch.randn(5, 13)
    full = layer(x) - layer.get_base_layer()(x)
    layer.set_adapter_weight("default", 0.5)
    outputs = {}
    for path in ("factored", "merged"):
        layer.adapter_path = path
        outputs[path] = layer(x) - layer.get_base_layer()(x)
    assert torch.allclose(outputs["factored"], 0.5 * full, atol=1e-6)
    assert torch.allclose(outputs["merged"], 0.5 * full, atol=1e-6)


def test_peft_pickle_layout_still_loads_through_peft(tmp_path):
    model = get_peft_model(_mlp(), SVFitConfig(r=2, target_modules=["fc1"]))
    with torch.no_grad():
        model.base_model.model.fc1.adapter("default").s.mul_(1.2)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    x = torch.randn(3, 13)
    assert torch.equal(PeftModel.from_pretrained(_mlp(), tmp_path)(x), model(x))
