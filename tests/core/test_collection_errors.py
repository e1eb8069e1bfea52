"""Collection indexing reports and skips every unreadable adapter (never crashes on one), and never lets one adapter
carry another's values."""

from __future__ import annotations

import json
import os

import pytest
import torch
from model_cases import MLP
from peft import get_peft_model

from peft_inits import SVFitConfig
from peft_inits.checkpoint import load_tensors, save_adapter, save_tensors
from peft_inits.collection import adapter_dirs, index_collection
from peft_inits.descriptors import record_from_model
from peft_inits.export import export_peft_lora

CONFIG = SVFitConfig(r=3, target_modules=["fc1", "fc2"])
WEIGHTS = "adapter_model.safetensors"


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def _adapter(scale: float):
    model = get_peft_model(_mlp(), CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.mul_(scale)
    return model


def _edit_config(path, change):
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(change(config))


def test_every_damaged_adapter_is_reported_and_skipped(tmp_path):
    good = {name: _adapter(scale) for name, scale in (("good1", 1.5), ("good2", 0.5))}
    for name, model in good.items():
        save_adapter(model, tmp_path / name)
    export_peft_lora(good["good1"], tmp_path / "good_lora")
    damaged = {
        "list_config": ("config", lambda c: "[1, 2]", "not a JSON list"),
        "string_config": ("config", lambda c: '"SVFIT"', "not a JSON str"),
        "string_version": ("config", lambda c: json.dumps({**c, "format_version": "2"}), "must be an integer, not '2'"),
        "truncated": ("weights", lambda data: data[: len(data) // 2], "corrupt or truncated"),
        "flipped": ("weights", lambda data: data[:-1] + bytes([data[-1] ^ 0x40]), "is damaged"),
        "missing_weights": ("weights", None, "does not exist"),
    }
    for name, (part, change, _) in damaged.items():
        path = save_adapter(_adapter(2.0), tmp_path / name)
        if part == "config":
            _edit_config(path, change)
        elif change is None:
            (path / WEIGHTS).unlink()
        else:
            (path / WEIGHTS).write_bytes(change((path / WEIGHTS).read_bytes()))
    # a file that lacks one module's gain: indexed after good1, it would silently carry good1's fc2 gain
    lacking = save_adapter(_adapter(3.0), tmp_path / "good1_lacking_gain")
    tensors = load_tensors(lacking / WEIGHTS)
    tensors.pop("base_model.model.fc2.pi_adapters.s")
    save_tensors(tensors, lacking / WEIGHTS, metadata={"format": "pt"})
    # weights that are a symlink to a file outside the adapter directory
    linked = save_adapter(_adapter(2.5), tmp_path / "symlinked")
    os.rename(linked / WEIGHTS, tmp_path.parent / f"{tmp_path.name}-outside.safetensors")
    (linked / WEIGHTS).symlink_to(tmp_path.parent / f"{tmp_path.name}-outside.safetensors")

    collection = index_collection(tmp_path, _mlp(), progress=False)
    assert sorted(r.path for r in collection.records) == sorted(
        [str(tmp_path / "good1"), str(tmp_path / "good2"), str(tmp_path / "good_lora")]
    )
    failures = {os.path.basename(k): v for k, v in collection.failures.items()}
    assert set(failures) == {*damaged, "good1_lacking_gain", "symlinked"}
    for name, (_, _, message) in damaged.items():
        assert message in failures[name], (name, failures[name])
        assert str(tmp_path / name) in failures[name]  # the error names the file
    assert "missing ['base_model.model.fc2.pi_adapters.s']" in failures["good1_lacking_gain"]
    assert "outside the adapter directory" in failures["symlinked"]
    # the good records hold their own values, not a neighbour's
    for name, model in good.items():
        record = next(r for r in collection.records if r.path == str(tmp_path / name))
        for module, (A, B) in record_from_model(model).pairs.items():
            assert torch.allclose(record.pairs[module][1] @ record.pairs[module][0], B @ A)


def test_leftovers_of_interrupted_saves_are_not_indexed_and_a_set_aside_version_is_restored(tmp_path):
    save_adapter(_adapter(1.5), tmp_path / "a")
    save_adapter(_adapter(0.5), tmp_path / "b")
    save_adapter(_adapter(0.7), tmp_path / "staging")
    os.rename(tmp_path / "staging", tmp_path / ".a.tmp-k3j4")  # a complete but never swapped-in new version of a
    os.rename(tmp_path / "b", tmp_path / ".b.old-0a1b2c3d")  # b's save was killed between its two renames
    with pytest.warns(UserWarning, match=r"b: a save was interrupted while swapping versions; restored"):
        assert adapter_dirs(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert (tmp_path / "b" / WEIGHTS).is_file()
