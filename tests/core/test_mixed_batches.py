"""Mixed-adapter batches (PEFT's `adapter_names`): sample b through adapter names[b], for every method, on Linear and
Conv2d layers, through `PeftModel.forward`, `generate`, `modules_to_save` copies and a diffusers U-Net; SVFit/LoLDU
adapters of one base share their factors (one down- and one up-projection for the whole group); an adapter bank
serves saved adapters from one stacked table per layer."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from model_cases import MLP, ConvNet
from peft import get_peft_model

from peft_inits import AdapterLayer, SVFitConfig, mixed_batch
from peft_inits.checkpoint import load_adapter, save_adapter
from peft_inits.population import Population
from peft_inits.registry import methods

CONFIGS = {method.name: method.config for method in methods()}
SHARING = {"svfit", "loldu"}  # frozen factors from W alone: adapters of one base share them
ORDER = ["a", "b", "c", "__base__", "b", "a"]
CASES = {  # a model, its input batch of len(ORDER), the targets
    "linear": (MLP, lambda: torch.randn(6, 13, generator=torch.Generator().manual_seed(1)), ["fc1", "fc2"]),
    "conv": (ConvNet, lambda: torch.randn(6, 3, 9, 9, generator=torch.Generator().manual_seed(1)), ["conv1", "conv2"]),
}


def _three_adapters(method: str, build, targets, **extra):
    torch.manual_seed(0)
    model = get_peft_model(build(), CONFIGS[method](r=2, target_modules=targets, init_weights=False, **extra), "a")
    for k, name in enumerate(("b", "c"), start=1):
        model.add_adapter(name, CONFIGS[method](r=2, target_modules=targets, init_weights=False, seed=k, **extra))
    return model.eval()


def _one_by_one(model, x, names):
    """Each sample alone through its adapter (the reference PEFT's own LoRA is exact against)."""
    rows = []
    with torch.no_grad():
        for b, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    rows.append(model(x[b : b + 1]))
            else:
                model.set_adapter(name)
                rows.append(model(x[b : b + 1]))
    return torch.cat(rows)


@pytest.fixture
def shared_calls(monkeypatch):
    """How many times the shared-factor path ran, and for how many adapters each time."""
    calls = []
    original = AdapterLayer.shared_factor_delta

    def spy(self, x, names, which):
        calls.append(len(names))
        return original(self, x, names, which)

    monkeypatch.setattr(AdapterLayer, "shared_factor_delta", spy)
    return calls


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", list(CONFIGS))
def test_each_sample_gets_its_own_adapter(method, case, shared_calls):
    build, inputs, targets = CASES[case]
    model, x = _three_adapters(method, build, targets), inputs()
    with torch.no_grad():
        mixed = model(x, adapter_names=ORDER)
    want = _one_by_one(model, x, ORDER)
    assert (mixed - want).abs().max() <= 1e-6 * want.abs().max()
    assert len({tuple(row.tolist()) for row in want}) >= 4, "the adapters must differ for the test to mean anything"
    # one shared projection per layer for the three adapters of SVFit/LoLDU; per-adapter paths for the others
    assert shared_calls == ([3] * len(targets) if method in SHARING else [])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method", ["lora", "svfit", "loldu"])
def test_mixed_batches_on_a_half_precision_base(method, dtype):
    model = _three_adapters(method, MLP, ["fc1", "fc2"]).to(dtype)  # base and adapters in half precision
    x = CASES["linear"][1]().to(dtype)
    with torch.no_grad():
        mixed = model(x, adapter_names=ORDER).float()
    want = _one_by_one(model, x, ORDER).float()
    assert (mixed - want).abs().max() <= 8 * torch.finfo(dtype).eps * want.abs().max()


@pytest.mark.parametrize("method", sorted(SHARING))
def test_adapters_on_other_factors_are_not_shared(method, shared_calls):
    model = _three_adapters(method, MLP, ["fc1", "fc2"])
    model.add_adapter("wide", CONFIGS[method](r=3, target_modules=["fc1", "fc2"], init_weights=False))
    model.eval()
    x = CASES["linear"][1]()
    names = ["a", "wide", "b", "wide", "__base__", "c"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
    assert torch.allclose(mixed, _one_by_one(model, x, names), atol=1e-6)
    assert shared_calls == [3, 3]  # a, b, c share; "wide" (rank 3) runs on its own


def test_factor_keys_follow_the_base_and_the_options():
    def key(base_seed: int, **config):
        torch.manual_seed(base_seed)
        model = get_peft_model(MLP(), SVFitConfig(target_modules=["fc1"], **{"r": 2, **config}))
        return model.base_model.model.fc1.adapter("default").factor_key()

    assert key(0) == key(0) and key(0) != key(1) and key(0) != key(0, r=3)
    assert key(0, embed_factors=True) is None  # factors from a file are never assumed shared
    for method in ("lora", "pissa", "milora"):  # factors that train
        model = get_peft_model(MLP(), CONFIGS[method](r=2, target_modules=["fc1"]))
        assert model.base_model.model.fc1.adapter("default").factor_key() is None


def test_generate_with_a_mixed_batch_equals_each_prompt_alone():
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_models.tiny_llama(), CONFIGS["svfit"](r=4, target_modules=["q_proj", "v_proj"], init_weights=False), "a"
    )
    model.add_adapter("b", CONFIGS["svfit"](r=4, target_modules=["q_proj", "v_proj"], init_weights=False, seed=3))
    model.eval()
    prompts = torch.randint(0, 100, (3, 5), generator=torch.Generator().manual_seed(2))
    names = ["b", "__base__", "a"]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    mixed = model.generate(input_ids=prompts, adapter_names=names, **kwargs)
    for b, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                alone = model.generate(input_ids=prompts[b : b + 1], **kwargs)
        else:
            model.set_adapter(name)
            alone = model.generate(input_ids=prompts[b : b + 1], **kwargs)
        length = alone.shape[1]  # a sample alone stops at its EOS; in the batch it is padded from there on
        assert torch.equal(mixed[b : b + 1, :length], alone) and (mixed[b, length:] == 0).all()


def test_modules_to_save_copies_follow_the_names():
    torch.manual_seed(0)
    config = dict(r=2, target_modules=["fc1"], modules_to_save=["fc2"], init_weights=False)
    model = get_peft_model(MLP(), CONFIGS["loldu"](**config), "a")
    model.add_adapter("b", CONFIGS["loldu"](**config, seed=1))
    with torch.no_grad():
        for name, shift in (("a", 0.3), ("b", -0.5)):
            model.base_model.model.fc2.modules_to_save[name].bias.add_(shift)
    model.eval()
    x, names = CASES["linear"][1](), ["a", "b", "__base__", "b", "a", "a"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
    assert torch.allclose(mixed, _one_by_one(model, x, names), atol=1e-6)


def test_a_diffusers_unet_serves_a_mixed_batch():
    unet = tiny_models.tiny_unet()
    for k, name in enumerate(("a", "b")):
        unet.add_adapter(CONFIGS["svfit"](r=2, target_modules=["to_q", "to_v"], init_weights=False, seed=k), name)
    g = torch.Generator().manual_seed(1)
    sample, context = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 16, generator=g)
    names = ["b", "a", "__base__"]
    with torch.no_grad(), mixed_batch(unet, names):
        mixed = unet(sample, 10, encoder_hidden_states=context).sample
    with torch.no_grad():
        for b, name in enumerate(names):
            if name == "__base__":
                unet.disable_adapters()
            else:
                unet.enable_adapters()
                unet.set_adapter(name)
            alone = unet(sample[b : b + 1], 10, encoder_hidden_states=context[b : b + 1]).sample
            assert torch.allclose(mixed[b : b + 1], alone, atol=1e-5)


def test_bad_adapter_names_are_refused_with_clear_errors():
    model = _three_adapters("svfit", MLP, ["fc1", "fc2"])
    x = CASES["linear"][1]()
    with pytest.raises(ValueError, match=r"does not hold: 'd'.*holds 'a', 'b', 'c'"):
        model(x, adapter_names=["a", "b", "c", "d", "a", "a"])
    with pytest.raises(ValueError, match="6 inputs"):
        model(x, adapter_names=["a", "b"])
    with pytest.raises(TypeError, match="one per sample"):
        model(x, adapter_names="a")
    model.train()
    with pytest.raises(ValueError, match=r"model\.eval"):
        model(x, adapter_names=ORDER)
    model.eval()
    model.merge_adapter(["a"])
    with pytest.raises(ValueError, match="unmerge"):
        model(x, adapter_names=ORDER)
    model.unmerge_adapter()
    with torch.no_grad():
        assert torch.allclose(model(x, adapter_names=ORDER), _one_by_one(model, x, ORDER), atol=1e-6)


# ------------------------------------------------------------------------------------------------------ adapter bank


def _saved_members(method: str, folder, count: int, base_seed: int = 0, **extra) -> list:
    """`count` trained-looking adapters of one method on MLP(seed base_seed), saved as adapter directories."""
    directories = []
    for k in range(count):
        torch.manual_seed(base_seed)
        model = get_peft_model(MLP(), CONFIGS[method](r=2, target_modules=["fc1", "fc2"], **extra))
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.2 * torch.randn(param.shape, generator=torch.Generator().manual_seed(k)))
        directories.append(save_adapter(model, folder / f"{method}-{base_seed}-{k}"))
    return directories


@pytest.mark.parametrize("method", ["svfit", "loldu", "lora"])
def test_a_bank_serves_each_sample_its_saved_adapter(method, tmp_path):
    directories = _saved_members(method, tmp_path, 3)
    torch.manual_seed(0)
    model = get_peft_model(MLP(), CONFIGS[method](r=2, target_modules=["fc1", "fc2"])).eval()
    bank = Population.from_adapters(model, tmp_path, progress=False)  # the collection folder
    assert bank.names == [d.name for d in directories]
    x, index = CASES["linear"][1](), [2, 0, -1, 1, 2, 0]
    with torch.no_grad(), bank.batch(index):
        got = model(x)
    with torch.no_grad(), bank.batch_names([directories[k].name if k >= 0 else "__base__" for k in index]):
        assert torch.equal(model(x), got)
    rows = []
    for b, k in enumerate(index):
        torch.manual_seed(0)
        alone = MLP().eval() if k < 0 else load_adapter(MLP(), directories[k]).eval()
        with torch.no_grad():
            rows.append(alone(x[b : b + 1]))
    want = torch.cat(rows)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()


def test_a_bank_refuses_a_member_of_another_base_naming_it(tmp_path):
    directories = _saved_members("svfit", tmp_path, 2) + _saved_members("svfit", tmp_path, 1, base_seed=5)
    torch.manual_seed(0)
    model = get_peft_model(MLP(), CONFIGS["svfit"](r=2, target_modules=["fc1", "fc2"])).eval()
    x = CASES["linear"][1]()
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ValueError, match=rf"adapter {directories[2]}: .*different base weight"):
        Population.from_adapters(model, directories, progress=False)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # the half-built bank took its hooks out again


def test_a_bank_refuses_a_member_whose_reference_gain_differs(tmp_path):
    """LoLDU z_init="uniform" draws z₀ (and z_ref) from the seed: such members cannot share one template."""
    directories = _saved_members("loldu", tmp_path, 1, z_init="uniform", seed=0)
    directories += _saved_members("loldu", tmp_path / "other", 1, z_init="uniform", seed=1)
    torch.manual_seed(0)
    model = get_peft_model(MLP(), CONFIGS["loldu"](r=2, target_modules=["fc1", "fc2"], z_init="uniform")).eval()
    with pytest.raises(ValueError, match=rf"adapter {directories[1]}: .*its z_ref differs"):
        Population.from_adapters(model, directories, progress=False)
