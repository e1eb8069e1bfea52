"""Population training: a batched adapter equals the same adapter trained alone, and exports as a normal adapter."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import PeftModel
from torch import nn

from peft_inits.checkpoint import load_adapter
from peft_inits.layers import adapter_layers
from peft_inits.population import Population, per_adapter_mean
from peft_inits.registry import get_method, method_names
from peft_inits.training.optim import build_optimizer
from peft_inits.training.prepare import prepare
from peft_inits.training.settings import AdapterSettings, TrainSettings

K, PER_ADAPTER, STEPS, LR = 3, 2, 4, 2e-2
# fp32 batched vs alone differ only by summation order (bmm over a stack vs one matmul); after 4 AdamW steps the
# trained tensors agree to ~1e-6 relative; 2e-5 leaves room without hiding a wrong gradient (those differ by ~1e-2).
RTOL, ATOL = 2e-5, 2e-6


class Net(nn.Module):
    """A conv (LoCon path) then two linear layers: both adapter layer kinds, 3 adapter layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 16 pixels, 8)
        return self.fc2(torch.tanh(self.fc1(h)))


def _wrapped(method: str) -> nn.Module:
    settings = AdapterSettings(method=method, r=3, alpha=6.0, target_modules=["conv", "fc1", "fc2"], head_modules=[])
    prepared = prepare(Net(), settings)
    # Start away from zero ΔW so every factor's gradient is non-trivial from step 1 (LoRA's A would get none).
    model = prepared.model
    for layer in adapter_layers(model, "default").values():
        adapter = layer.pi_adapters["default"]
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad(), contextlib.suppress(NotImplementedError):
            adapter.init_random(generator)
    return prepared


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, K, PER_ADAPTER, 3, 4, 4, generator=generator)
    y = torch.randn(STEPS, K, PER_ADAPTER, 16, 6, generator=generator)
    return x, y


def _trained_alone(method: str, k: int, x, y) -> dict[str, torch.Tensor]:
    """The reference: one adapter, the project's optimizer (`training.optim`), torch's clip_grad_norm_."""
    prepared = _wrapped(method)
    model = prepared.model
    optimizer = build_optimizer(prepared, TrainSettings(lr=LR, weight_decay=0.05, head_lr=0.0))
    for step in range(STEPS):
        loss = ((model(x[step, k]) - y[step, k]) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prepared.adapter_params, 0.05)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return _trained_tensors(model)


def _trained_tensors(model) -> dict[str, torch.Tensor]:
    return {
        f"{layer_name}.{n}": p.detach().clone()
        for layer_name, layer in adapter_layers(model, "default").items()
        for n, p in layer.pi_adapters["default"].named_parameters()
        if p.requires_grad
    }


def _trained_together(method: str, x, y) -> tuple[Population, nn.Module]:
    prepared = _wrapped(method)
    population = Population(prepared.model, K)
    optimizer = population.optimizer(LR, weight_decay=0.05)
    index = torch.arange(K).repeat_interleave(PER_ADAPTER)
    for step in range(STEPS):
        with population.batch(index):
            out = prepared.model(x[step].reshape(K * PER_ADAPTER, 3, 4, 4))
        per_sample = ((out - y[step].reshape(K * PER_ADAPTER, 16, 6)) ** 2).flatten(1).mean(1)
        per_adapter_mean(per_sample, index, K).sum().backward()
        population.clip_grad_norms(0.05)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return population, prepared.model


@pytest.mark.parametrize("method", method_names())
def test_a_batched_adapter_equals_the_same_adapter_trained_alone(method):
    x, y = _data()
    population, _ = _trained_together(method, x, y)
    moved = False
    for k in range(K):
        alone = _trained_alone(method, k, x, y)
        together = {f"{m.name}.{n}": p[k].detach() for m in population.members for n, p in m.stacked.items()}
        assert set(together) <= set(alone)
        for name, value in together.items():
            torch.testing.assert_close(value, alone[name], rtol=RTOL, atol=ATOL, msg=f"{method} adapter {k} {name}")
        start = _trained_tensors(_wrapped(method).model)
        moved |= any(not torch.allclose(together[n], start[n]) for n in together)
    assert moved, "training changed nothing: the comparison would be vacuous"
    # adapters trained on different data end up different
    first = population.parameters()[0]
    assert not torch.allclose(first[0], first[1])


def test_loss_outputs_match_a_single_adapter_per_sample():
    """Forward equivalence, including the gathered LoRA path: sample b's output is adapter index[b]'s alone."""
    prepared = _wrapped("lora")
    population = Population(prepared.model, K)
    with torch.no_grad():
        for p in population.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    index = torch.tensor([2, 0, 1, 2, 0])
    with torch.no_grad(), population.batch(index):
        batched = prepared.model(x)
    population.detach()
    for b, k in enumerate(index.tolist()):
        population.load_member(k)
        with torch.no_grad():
            torch.testing.assert_close(batched[b], prepared.model(x[b : b + 1])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["svfit", "loldu", "lora"])
def test_export_loads_and_equals_the_population_slice(tmp_path, method):
    x, y = _data()
    population, model = _trained_together(method, x, y)
    probe = x[0, 0]
    index = torch.full((probe.shape[0],), 1)
    with torch.no_grad(), population.batch(index):
        expected = model(probe)
    directory = population.save(1, tmp_path / "adapter1")
    assert (directory / "adapter_config.json").is_file() and (directory / "adapter_model.safetensors").is_file()

    loaded = load_adapter(Net(), directory)
    assert isinstance(loaded, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe), expected, rtol=1e-5, atol=1e-6)
    plain = PeftModel.from_pretrained(Net(), str(directory))
    with torch.no_grad():
        torch.testing.assert_close(plain(probe), expected, rtol=1e-5, atol=1e-6)
    # the file carries the base fingerprint: another base model is refused (LoRA keeps its weights, not W's factors)
    if get_method(method).weights.__name__ != "LoRAWeights":
        other = Net()
        with torch.no_grad():
            other.fc1.weight.mul_(1.5)
        with pytest.raises(ValueError, match=r"different base weight|differs"):
            load_adapter(other, directory)


def test_errors_are_clear():
    prepared = _wrapped("svfit")
    with pytest.raises(ValueError, match="no adapter named"):
        Population(Net(), 2)
    with pytest.raises(ValueError, match="population size"):
        Population(prepared.model, 0)
    population = Population(prepared.model, 2)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"population\.batch"):
        prepared.model(x)
    with pytest.raises(ValueError, match="must lie in"), population.batch(torch.tensor([0, 2])):
        pass
    with pytest.raises(ValueError, match="adapter indices"), population.batch(torch.tensor([0, 1, 1])):
        prepared.model(x)
    with pytest.raises(IndexError):
        population.save(5, "unused")
    population.detach()
    assert prepared.model(x).shape == (2, 16, 6)  # the model's own adapter works again
    assert any(p.requires_grad for p in prepared.model.parameters())
