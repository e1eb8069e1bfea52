"""ViT runner: the digits protocol with every method, transformers and timm-named ViTs on an image folder (timm's
fused qkv), exact resume, and clear errors. The digits ViT is shrunk and pretrained briefly here (`quick_digits`)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from runner_helpers import Crash, crash_at, load_script
from tiny_models import timm_like_vit

from peft_inits.cli import vit
from peft_inits.training.rundir import read_records, without_timing
from peft_inits.training.settings import all_methods

METHODS = list(all_methods())

pytest_plugins = ("runner_fixtures",)


def _args(out, cache, *extra):
    return ["--output-dir", str(out), "--cache-dir", str(cache), "--batch-size", "16", "--eval-every", "2",
            "--no-progress", *extra]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_digits_protocol_each_method(method, quick_digits, cache, tmp_path):
    out = tmp_path / method
    summary = vit.main(vit.parse_args(_args(out, cache, "--method", method, "--steps", "3")))
    records = read_records(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3]
    assert records[-1]["type"] == "test"
    assert summary["info"]["model"].startswith("tiny ViT pretrained on digits 0-4")
    assert summary["info"]["data"]["sizes"] == {"train": 537, "validation": 180, "test": 179}
    if method in ("svfit", "loldu"):
        assert summary["adapter_params"] == 2 * 2 * 32  # query+value of 2 layers, r = full = 32
    pretrain = next(cache.glob("vit-digits/*/pretrain.json"))
    assert json.loads(pretrain.read_text())["held_out_accuracy_0_4"] > 0.5


@pytest.mark.parametrize("method", ["lora", "svfit", "loldu"])
def test_vit_loss_decreases(method, quick_digits, cache, tmp_path):
    out = tmp_path / "run"
    vit.main(vit.parse_args(_args(out, cache, "--method", method, "--lr", "3e-2", "--head-lr", "1e-2", "--steps",
                                  "40", "--eval-every", "20", "--train-size", "64", "--warmup", "0")))  # fmt: skip
    losses = [r["loss"] for r in read_records(out / "metrics.jsonl", "train")]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    evals = read_records(out / "metrics.jsonl", "eval")
    assert evals[-1]["accuracy"] > evals[0]["accuracy"]


def test_vit_resume_reproduces_the_uninterrupted_run(quick_digits, cache, tmp_path, monkeypatch):
    common = ("--method", "svfit", "--steps", "6", "--save-every", "2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    vit.main(vit.parse_args(_args(straight, cache, *common)))
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 4)  # only this patch is undone afterwards, not quick_digits'
        vit.main(vit.parse_args(_args(killed, cache, *common)))
    assert vit.main(vit.parse_args(_args(killed, cache, *common, "--resume")))["resumed_from"] == 4
    assert without_timing(read_records(killed / "metrics.jsonl")) == without_timing(
        read_records(straight / "metrics.jsonl")
    )


def test_transformers_vit_on_an_image_folder(tiny_vit_dir, image_folder, cache, tmp_path):
    out = tmp_path / "hf"
    summary = vit.main(vit.parse_args(_args(out, cache, "--model", str(tiny_vit_dir), "--data", str(image_folder),
                                            "--method", "lora", "--r", "4", "--steps", "2")))  # fmt: skip
    assert summary["targets"] == 4  # q_proj and v_proj of 2 layers
    assert summary["info"]["data"]["sizes"] == {"train": 24, "validation": 9}
    assert read_records(out / "metrics.jsonl", "eval")


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in `timm` module (real timm needs torchvision here) serving the timm-named tiny ViT."""
    module = types.ModuleType("timm")

    def create_model(name, pretrained=False, num_classes=1000, pretrained_cfg_overlay=None):
        model = timm_like_vit(num_labels=num_classes)
        model.pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        return model

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)


@pytest.mark.parametrize("method", ["loldu", "svfit"])
def test_timm_fused_qkv_gets_one_adapter(method, fake_timm, image_folder, cache, tmp_path):
    out = tmp_path / "timm"
    summary = vit.main(vit.parse_args(_args(out, cache, "--model", "timm:vit_tiny", "--data", str(image_folder),
                                            "--method", method, "--steps", "2")))  # fmt: skip
    config = json.loads((out / "weights" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["head"]
    # query+value select timm's fused qkv (96×32): one adapter per block, full rank = 32
    assert summary["targets"] == 2 and summary["adapter_params"] == 2 * 32


def test_missing_image_folder(cache, tmp_path, tiny_vit_dir):
    with pytest.raises(FileNotFoundError, match=r"data path .*missing does not exist"):
        vit.main(vit.parse_args(_args(tmp_path / "o", cache, "--model", str(tiny_vit_dir), "--data",
                                      str(tmp_path / "missing"))))  # fmt: skip


def test_digits_label_count_mismatch(cache, tmp_path):
    with pytest.raises(ValueError, match="label-count mismatch: --num-labels 10 but the digits protocol adapts to 5"):
        vit.main(vit.parse_args(_args(tmp_path / "o", cache, "--num-labels", "10")))


def test_image_folder_label_count_mismatch(tiny_vit_dir, image_folder, cache, tmp_path):
    args = _args(tmp_path / "o", cache, "--model", str(tiny_vit_dir), "--data", str(image_folder), "--num-labels", "4")
    with pytest.raises(ValueError, match=r"label-count mismatch: --num-labels 4 but .* has 3 classes"):
        vit.main(vit.parse_args(args))


def test_checkpoint_head_size_mismatch_needs_reset_head(tiny_vit_dir, tmp_path, cache):
    folder = tmp_path / "four"
    for label in range(4):
        (folder / f"c{label}").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a 3-label classifier but the data has 4 labels; pass --reset-head"):
        vit.main(vit.parse_args(_args(tmp_path / "o", cache, "--model", str(tiny_vit_dir), "--data", str(folder))))


def test_own_images_need_a_model(image_folder, cache, tmp_path):
    with pytest.raises(ValueError, match="pass --model for your own images"):
        vit.main(vit.parse_args(_args(tmp_path / "o", cache, "--data", str(image_folder))))


def test_rank_too_large_on_vit(quick_digits, cache, tmp_path):
    with pytest.raises(ValueError, match=r"rank r=64 is too large .* at most min\(m, n\) = 32"):
        vit.main(vit.parse_args(_args(tmp_path / "o", cache, "--method", "svfit", "--r", "64")))


def test_vit_script_is_thin():
    script = load_script("vit")
    assert script.main is vit.main and script.parse_args is vit.parse_args


def test_cold_default_says_it_is_pretraining_the_base(quick_digits, tmp_path, capsys):
    from peft_inits.training.vit_models import pretrained_digits_vit

    pretrained_digits_vit(tmp_path / "cold-cache")
    assert "pretraining the tiny base ViT on digits 0-4" in capsys.readouterr().err
