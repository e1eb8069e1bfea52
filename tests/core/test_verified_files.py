"""Verified files: every safetensors file written here carries a checksum of its tensors that loading checks, so
damaged but well-formed files are refused with an error naming the file, before any model is touched; files without
a checksum (PEFT's own) still load; damaged checkpoints and configs get clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from model_cases import MLP
from peft import get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from peft_inits import AdapterLayer, SVFitConfig
from peft_inits.checkpoint import (
    CHECKSUM_KEY,
    load_adapter,
    load_tensors,
    read_config,
    save_adapter,
    save_tensors,
    tensor_checksum,
)
from peft_inits.training import state

WEIGHTS = "adapter_model.safetensors"


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def _saved(tmp_path):
    model = get_peft_model(_mlp(), SVFitConfig(r=3, target_modules=["fc1", "fc2"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.mul_(1.5)
    return model, save_adapter(model, tmp_path / "adapter")


def _header(path) -> tuple[int, dict]:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return size, json.loads(data[8 : 8 + size])


def _refused_untouched(path, match, error=ValueError):
    """load_adapter refuses `path` with `match` and leaves the base model exactly as it was."""
    base = _mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(error, match=match):
        load_adapter(base, path)
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())


def test_saved_files_carry_the_checksum_of_their_tensors(tmp_path):
    model, path = _saved(tmp_path)
    _, header = _header(path / WEIGHTS)
    tensors = get_peft_model_state_dict(model)
    assert header["__metadata__"][CHECKSUM_KEY] == tensor_checksum(tensors)
    assert len(header["__metadata__"][CHECKSUM_KEY]) == 64
    renamed = {f"x.{k}": v for k, v in tensors.items()}
    assert tensor_checksum(renamed) != tensor_checksum(tensors)  # names are covered, not just bytes


def test_a_flipped_byte_in_a_trained_gain_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    size, header = _header(path / WEIGHTS)
    name = "base_model.model.fc2.pi_adapters.s"  # a trained SVFit gain
    start, _ = header[name]["data_offsets"]
    data = bytearray((path / WEIGHTS).read_bytes())
    data[8 + size + start + 3] ^= 0x40  # an exponent bit of the first float32: a well-formed, wrong value
    (path / WEIGHTS).write_bytes(bytes(data))
    _refused_untouched(path, rf"{WEIGHTS} is damaged: its tensors do not match the checksum")


def test_a_header_dtype_changed_from_f32_to_i32_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    data = (path / WEIGHTS).read_bytes()
    assert b'"F32"' in data
    (path / WEIGHTS).write_bytes(data.replace(b'"F32"', b'"I32"', 1))  # same length: still parses
    assert torch.int32 in {t.dtype for t in load_file(str(path / WEIGHTS)).values()}  # well-formed, wrong
    _refused_untouched(path, "do not match the checksum")


def test_a_truncated_file_is_refused_naming_it(tmp_path):
    _, path = _saved(tmp_path)
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[:-5])
    _refused_untouched(path, rf"file .*{WEIGHTS} is corrupt or truncated")


def test_a_missing_weights_file_is_refused_naming_it(tmp_path):
    _, path = _saved(tmp_path)
    (path / WEIGHTS).unlink()
    _refused_untouched(path, rf"adapter file .*{WEIGHTS} does not exist", FileNotFoundError)


def test_a_missing_adapter_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adapter directory .*nowhere does not exist"):
        load_adapter(_mlp(), tmp_path / "nowhere")


def test_non_finite_trained_values_are_refused_on_load_and_on_save(tmp_path):
    model, path = _saved(tmp_path)
    tensors = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    name = "base_model.model.fc1.pi_adapters.s"
    tensors[name][0] = float("nan")
    save_tensors(tensors, path / WEIGHTS, metadata={"format": "pt"})  # a valid checksum over a NaN
    _refused_untouched(path, rf"{WEIGHTS} holds non-finite values \(NaN/inf\) in .*{name} \(1\)")

    good, target = _saved(tmp_path / "good")
    before = (target / WEIGHTS).read_bytes()
    with torch.no_grad():
        next(p for n, p in good.named_parameters() if "pi_adapters" in n)[1] = float("inf")
    with pytest.raises(ValueError, match=r"holds non-finite values in .* not saved"):
        save_adapter(good, target)
    assert (target / WEIGHTS).read_bytes() == before


def test_files_without_a_checksum_still_load(tmp_path):
    """PEFT's own `save_pretrained` (and peft_inits before checksums) write no checksum: read unverified."""
    model, _ = _saved(tmp_path)
    model.save_pretrained(tmp_path / "peft")
    _, header = _header(tmp_path / "peft" / WEIGHTS)
    assert CHECKSUM_KEY not in header.get("__metadata__", {})
    loaded = load_adapter(_mlp(), tmp_path / "peft")
    x = torch.randn(3, 13)
    assert torch.equal(loaded(x), model(x))


def test_checksum_verification_covers_plain_tensor_files(tmp_path):
    save_tensors({"a": torch.arange(6.0), "b": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "t.safetensors")
    assert set(load_tensors(tmp_path / "t.safetensors")) == {"a", "b"}
    data = bytearray((tmp_path / "t.safetensors").read_bytes())
    data[-1] ^= 0x01
    (tmp_path / "t.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"t\.safetensors is damaged"):
        load_tensors(tmp_path / "t.safetensors")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", r"must hold a JSON object \(adapter config\), not a JSON list"),
        ('"SVFIT"', r"must hold a JSON object \(adapter config\), not a JSON str"),
        ("{not json", "is not a readable adapter config"),
        ('{"r": 3}', "has no string 'peft_type' field"),
    ],
)
def test_a_config_that_is_not_a_json_object_is_refused(tmp_path, content, message):
    _, path = _saved(tmp_path)
    (path / "adapter_config.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_config(path)
    _refused_untouched(path, message)


def test_a_string_format_version_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["format_version"] = "2"
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"adapter_config\.json: format_version must be an integer, not '2'"):
        read_config(path)


@pytest.mark.parametrize("name", [WEIGHTS, "adapter_config.json"])
def test_a_symlink_leading_outside_the_adapter_directory_is_refused(tmp_path, name):
    _, path = _saved(tmp_path)
    outside = tmp_path / f"elsewhere-{name}"
    os.rename(path / name, outside)
    (path / name).symlink_to(outside)
    _refused_untouched(path, rf"{name} is a symlink to .*elsewhere-.*outside the adapter directory")


def test_a_symlink_inside_the_adapter_directory_is_followed(tmp_path):
    model, path = _saved(tmp_path)
    os.rename(path / WEIGHTS, path / "v1.safetensors")
    (path / WEIGHTS).symlink_to("v1.safetensors")
    x = torch.randn(3, 13)
    assert torch.equal(load_adapter(_mlp(), path)(x), model(x))


# ------------------------------------------------------------------------------------------ training checkpoints


def _checkpoint(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return state.save(tmp_path, step=2, model_state=model.state_dict(), optimizer=optimizer, scheduler=scheduler,
                      scaler=None, metrics_bytes=0, elapsed_s=0.0)  # fmt: skip


def test_a_corrupt_rng_file_is_refused_naming_it(tmp_path):
    path = _checkpoint(tmp_path)
    (path / "rng-0.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match=r"file .*step-00000002/rng-0\.safetensors is corrupt or truncated"):
        state.load(path)


def test_an_rng_file_without_the_generator_states_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    save_file({"x": torch.zeros(1)}, str(path / "rng-0.safetensors"))
    with pytest.raises(ValueError, match=r"rng-0\.safetensors lacks the generator states \['numpy', 'python'"):
        state.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: "}{ not json", r"state\.json is not a readable checkpoint state"),
        (lambda s: "[1]", r"state\.json must hold a JSON object \(checkpoint state\), not a JSON list"),
        (lambda s: json.dumps({k: v for k, v in s.items() if k != "optimizer"}), r"lacks \['optimizer'\]"),
        (lambda s: json.dumps({**s, "step": "2"}), r"'step' has the wrong type \(str\)"),
        (lambda s: json.dumps({**s, "optimizer": {"param_groups": []}}), "lacks its 'param_groups' list or 'scalars'"),
    ],
)
def test_a_damaged_state_json_is_refused_naming_it(tmp_path, edit, message):
    path = _checkpoint(tmp_path)
    saved = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(edit(saved))
    with pytest.raises(ValueError, match=rf"checkpoint file .*step-00000002/state\.json.*{message}|{message}"):
        state.load(path)


def test_a_latest_pointer_with_garbage_is_refused(tmp_path):
    _checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("../../etc")
    message = r"latest should name a checkpoint like 'step-00000040' but holds '\.\./\.\./etc'"
    with pytest.raises(ValueError, match=message):
        state.latest(tmp_path)


def test_a_damaged_checkpoint_tensor_file_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    data = bytearray((path / "optimizer.safetensors").read_bytes())
    data[-2] ^= 0x20
    (path / "optimizer.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer\.safetensors is damaged"):
        state.load(path)


def test_checksums_of_oddly_strided_tensors_round_trip(tmp_path):
    rows = torch.randn(5, 33)
    odd = {"one": rows[:1, 3], "column": rows[:, :1].t(), "scalar": torch.tensor(2.0), "empty": torch.empty(0, 3)}
    assert odd["one"].is_contiguous() and odd["one"].stride() == (33,)  # what a 1-row slice gives
    save_tensors(odd, tmp_path / "odd.safetensors")
    loaded = load_tensors(tmp_path / "odd.safetensors")
    assert tensor_checksum(loaded) == tensor_checksum(odd)
    assert all(torch.equal(loaded[k], v) for k, v in odd.items())
