"""Adapter type × model × dtype: identity, counts, delta forms, merging, save/load, training, LoRA export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_cases import CASES, ModelCase
from peft import PeftModel, get_peft_model

from peft_inits import AdapterLayer, trainable_count
from peft_inits import functional as Fn
from peft_inits.registry import methods

CONFIGS = {method.name: method.config for method in methods()}  # every registered method
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RANK = 2


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 3e-2


def _config(method: str, case: ModelCase):
    return CONFIGS[method](r=RANK, **case.select)


def _layers(model) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _perturb(model, seed: int = 0) -> None:
    """Move every trainable adapter tensor away from its init so deltas are non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))


def _base_input_tensor(case: ModelCase, layer: AdapterLayer, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    base = layer.get_base_layer()
    if layer.is_conv:
        return torch.randn(2, base.in_channels, 9, 9, generator=g)
    return torch.randn(3, base.in_features, generator=g)


def _build(case: ModelCase, method: str, dtype: torch.dtype):
    base = case.build().to(dtype)
    reference = case.run(base, dtype)
    model = get_peft_model(base, _config(method, case))
    return model, reference


def _closed_form_count(case: ModelCase, method: str) -> int:
    """Σ over the dry-run targets of each method's closed form (LoRA, PiSSA, MiLoRA r(m+n); SVFit, LoLDU r)."""
    base = case.build()
    config = _config(method, case)
    modules = dict(base.named_modules())
    total = 0
    for target in config.resolve(base):
        m, n = Fn.weight_matrix(modules[target.name].weight).shape
        total += trainable_count(config.spec_for(target), m, n)
    return total


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request):
    return DTYPES[request.param]


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_identity_count_delta_merge_export(case: ModelCase, method: str, dtype: torch.dtype):
    model, reference = _build(case, method, dtype)
    layers = _layers(model)
    assert layers, "nothing was injected"
    if case.has_conv:
        assert any(layer.is_conv for layer in layers.values())

    # identity at step 0: the delta is exactly zero, so the output is bit-identical
    assert torch.equal(case.run(model, dtype), reference)

    # trainable count = closed form
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == _closed_form_count(case, method)

    _perturb(model)
    for layer in layers.values():
        x = _base_input_tensor(case, layer, dtype)
        dW = layer.get_delta_weight("default")
        base = layer.get_base_layer()
        # delta_weight ≡ the layer's delta forward
        if layer.is_conv:
            want = F.conv2d(x, dW, stride=base.stride, padding=base.padding, dilation=base.dilation)
        else:
            want = x @ dW.T
        assert _rel_err(layer.delta_forward(x, "default"), want) < 1e-5
        # the exported LoRA pair reproduces ΔW to fp32 precision
        A, B = Fn.lora_pair(*layer.adapter("default").factors(), layer.adapter("default").scale)
        assert A.shape[0] == B.shape[1] <= 2 * layer.adapter("default").r  # PiSSA/MiLoRA: BA − B₀A₀, rank ≤ 2r
        assert _rel_err(B @ A, Fn.weight_matrix(dW)) < 1e-6

    adapted = case.run(model, dtype)
    assert _rel_err(adapted, reference) > 1e-4, "perturbed adapters should change the output"
    weights_before = {n: lay.get_base_layer().weight.detach().clone() for n, lay in layers.items()}
    with model.disable_adapter():  # disabling gives the base model back exactly
        assert torch.equal(case.run(model, dtype), reference)
    assert torch.equal(case.run(model, dtype), adapted)

    # merge ≡ unmerged forward, unmerge restores the base weights
    model.merge_adapter()
    assert all(lay.merged for lay in layers.values())
    assert _rel_err(case.run(model, dtype), adapted) < _tol(dtype)
    model.unmerge_adapter()
    for n, lay in layers.items():
        assert _rel_err(lay.get_base_layer().weight, weights_before[n]) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert _rel_err(case.run(model, dtype), adapted) < _tol(dtype)


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_train_save_load(case: ModelCase, method: str, dtype: torch.dtype, tmp_path):
    model, reference = _build(case, method, dtype)
    layers = _layers(model)
    base_weights = {n: lay.get_base_layer().weight.detach().clone() for n, lay in layers.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    for step in range(3):
        inputs = case.inputs(model, dtype)
        loss = case.output(model(**inputs)).float().pow(2).mean()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert (p.grad is not None) == ("pi_adapters" in name), name
        optimizer.step()
        optimizer.zero_grad()
    trained = case.run(model, dtype)
    assert _rel_err(trained, reference) > 1e-4, "training should change the output"
    for n, lay in layers.items():
        assert torch.equal(lay.get_base_layer().weight, base_weights[n]), "training must not touch base weights"

    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(case.build().to(dtype), tmp_path)
    assert torch.equal(case.run(loaded, dtype), trained)
    assert not any(p.requires_grad for p in loaded.parameters())
