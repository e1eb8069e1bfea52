"""transformers' and diffusers' own PEFT integration with our configs: the entry points their docs show."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_cases import CASE_BY_NAME
from peft import AutoPeftModelForSequenceClassification, get_peft_model
from tiny_models import tiny_roberta

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.export import DIFFUSERS_WEIGHT_NAME, export_diffusers_lora
from peft_inits.registry import methods

CONFIGS = {method.name: method.config for method in methods()}
IDS = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(0))


def _trained_roberta(method: str, **kwargs):
    """A random-init adapter, then moved as training would: a fresh injection cannot reproduce it by chance."""
    config = CONFIGS[method](r=2, target_modules=["query", "value"], init_weights=False, **kwargs)
    model = get_peft_model(tiny_roberta(), config).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.01))
    return model


def _load_adapter(model, path) -> None:
    """`PreTrainedModel.load_adapter`, skipped where transformers itself refuses the installed peft (5.23+ want
    peft >= 0.22, which does not exist yet; CI runs these tests with transformers 5.22 and 5.0 as well)."""
    try:
        model.load_adapter(str(path))
    except ValueError as error:
        if "version of PEFT you are using is not compatible" in str(error):
            pytest.skip(f"transformers {transformers.__version__}: {error}")
        raise


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("method", list(CONFIGS))
def test_transformers_load_adapter_reads_our_adapter_dir(method, tmp_path):
    peft_model = _trained_roberta(method)
    expected = _logits(peft_model)
    peft_model.save_pretrained(tmp_path)
    base = tiny_roberta()
    change = float((_logits(base) - expected).abs().max())
    assert change > 1e-6, "the random init must change the logits"
    _load_adapter(base, tmp_path)  # transformers reads peft_config.peft_type.value here
    assert float((_logits(base) - expected).abs().max()) < 1e-3 * change
    assert base.peft_config["default"].peft_type.value == next(m.peft_type for m in methods() if m.name == method)


def test_transformers_load_adapter_refuses_another_base_model(tmp_path):
    _trained_roberta("svfit").save_pretrained(tmp_path)
    other = tiny_roberta()
    with torch.no_grad():
        other.roberta.encoder.layer[0].attention.self.query.weight.mul_(2)
    _load_adapter(other, tmp_path)  # transformers assigns tensors itself: the check runs before first use
    with pytest.raises(ValueError, match="svfit adapter was trained on a different base weight"):
        _logits(other)


@pytest.mark.parametrize("method", ["svfit", "loldu"])
def test_auto_peft_model_for_sequence_classification(method, tmp_path):
    base_dir = tmp_path / "base"
    tiny_roberta().save_pretrained(base_dir)
    peft_model = _trained_roberta(method, task_type="SEQ_CLS")
    with torch.no_grad():  # the head is trained too (PEFT saves it as modules_to_save for SEQ_CLS)
        peft_model.base_model.model.classifier.modules_to_save["default"].out_proj.bias.add_(0.5)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path / "adapter")).eval()
    assert type(loaded.peft_config["default"]) is CONFIGS[method]
    assert torch.allclose(_logits(loaded), _logits(peft_model), atol=1e-7)


def test_trainer_with_gradient_checkpointing_trains_only_the_adapter(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tiny_roberta(), SVFitConfig(r=4, target_modules=["query", "value"]))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(1)
    data = Dataset.from_dict({"input_ids": torch.randint(0, 100, (16, 12), generator=g).tolist(), "labels": [0, 1] * 8})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    assert model.base_model.model.is_gradient_checkpointing
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen_before.items())
    assert all(not torch.equal(after[n], p) for n, p in trained_before.items()), "every singular value moved"


def test_diffusers_add_adapter_and_load_lora_adapter_of_our_export(tmp_path):
    case = CASE_BY_NAME["unet"]
    unet = case.build()
    unet.add_adapter(LoLDUConfig(r=2, blocks=["upper"], module_kinds=["attn", "resnet"], init_weights=False))
    adapted = case.run(unet, torch.float32)
    assert (adapted - case.run(case.build(), torch.float32)).abs().max() > 1e-4
    export_diffusers_lora(unet, tmp_path)
    fresh = case.build()
    # weight_name: diffusers < 0.37 guesses the file name only online (HF_HUB_OFFLINE=1 here and on most servers)
    fresh.load_lora_adapter(
        str(tmp_path), weight_name=DIFFUSERS_WEIGHT_NAME, adapter_name="exported", prefix="unet", use_safetensors=True
    )
    assert torch.allclose(case.run(fresh, torch.float32), adapted, atol=1e-5)
    lora_unet = case.build()
    lora_unet.add_adapter(LoRAConfig(r=2, target_modules=["to_q", "to_v"], init_weights=False), adapter_name="mine")
    assert lora_unet.active_adapters() == ["mine"]
