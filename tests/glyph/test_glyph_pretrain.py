"""Pretraining the glyph-world text-to-image model on a seconds-long schedule: the recorded loss curve, exact resume,
the saved folder through the SD runner's `--model`, and SD block names on its U-Net."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from runner_helpers import Crash

from peft_inits import SVFitConfig
from peft_inits.cli import sd as runner
from peft_inits.glyph.pretrain import PretrainSettings, pretrain
from peft_inits.training.rundir import read_records, without_timing
from peft_inits.training.sampler import StepSampler

TINY = PretrainSettings(
    images=48,
    validation_images=8,
    vae_steps=4,
    unet_steps=4,
    batch_size=4,
    vae_batch_size=4,
    save_every=2,
    eval_every=2,
)
# Training losses of TINY, recorded from this code (torch 2.13 CPU, 1 thread). The full-size models train here, so a
# change to the world, the models, the schedules or the losses shows up as a different curve.
RECORDED = {
    "vae": [0.27040237188339233, 0.4292699098587036, 0.251537024974823, 0.2501639425754547],
    "unet": [1.130029559135437, 0.9033459424972534, 0.8463413715362549, 0.812255322933197],
}


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_records(run / "metrics.jsonl", "train")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i") / "run"
    summary = pretrain(root, TINY, progress=False)
    return root, summary


def test_first_steps_reproduce_the_recorded_loss_curve(straight):
    root, summary = straight
    for stage in ("vae", "unet"):
        assert _losses(root / stage) == pytest.approx(RECORDED[stage], rel=1e-4, abs=1e-6), stage
    assert summary["unet"]["total_params"] == 7_118_852 and summary["vae"]["total_params"] == 954_567
    assert summary["unique_captions"] == 48 and summary["latent_scale"] > 0
    assert (root / "unet" / "samples" / "step-000002.png").is_file()


def test_resume_reproduces_the_uninterrupted_run(straight, tmp_path, monkeypatch):
    """Killed during the U-Net stage (its step 3, after the step-2 checkpoint), then resumed."""
    root, _ = straight
    original, calls = StepSampler.indices, {"n": 0}

    def indices(self, index):
        calls["n"] += index == 3
        if calls["n"] == 2:  # the VAE's step 3 passes, the U-Net's dies
            raise Crash("killed")
        return original(self, index)

    killed = tmp_path / "run"
    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(StepSampler, "indices", indices)
        pretrain(killed, TINY, progress=False)
    assert (killed / "vae" / "summary.json").is_file() and not (killed / "unet" / "summary.json").is_file()
    summary = pretrain(killed, TINY, resume=True, progress=False)
    assert json.loads((killed / "unet" / "summary.json").read_text())["resumed_from"] == 2
    for stage in ("vae", "unet"):
        assert without_timing(read_records(killed / stage / "metrics.jsonl")) == without_timing(
            read_records(root / stage / "metrics.jsonl")
        ), stage
    assert summary["latent_scale"] == pytest.approx(
        json.loads((root / "pretrain_summary.json").read_text())["latent_scale"]
    )
    assert (killed / "model" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        root / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_resume_refuses_other_settings(straight):
    root, _ = straight
    with pytest.raises(ValueError, match=r"cannot resume .*vae.*other settings"):
        pretrain(root, PretrainSettings(**{**TINY.__dict__, "vae_lr": 1e-3}), resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        pretrain(root, TINY, progress=False)


def test_saved_folder_loads_through_the_runner_and_samples(straight, tmp_path):
    root, _ = straight
    model = str(root / "model")
    pipe = runner.load_pipeline(model)
    assert type(pipe.text_encoder).__name__ == "BertModel" and pipe.tokenizer.model_max_length == 20
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 8
    assert json.loads((root / "model" / "scheduler" / "scheduler_config.json").read_text())["use_karras_sigmas"]
    grid = runner.main(
        runner.parse_args(
            [
                "sample",
                "--model",
                model,
                "--prompts",
                "a red serif letter a on a brick wall,a blue sans letter k on grass",
                "--seeds",
                "0,1",
                "--sample-steps",
                "3",
                "--output",
                str(tmp_path / "grid.png"),
            ]
        )
    )
    with Image.open(grid) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] == 2 * 32 and pixels.shape[1] >= 2 * 32 and pixels.std() > 0
    summary = runner.main(
        runner.parse_args(
            [
                "train",
                "--model",
                model,
                "--output-dir",
                str(tmp_path / "adapter"),
                "--method",
                "loldu",
                "--blocks",
                "upper",
                "--steps",
                "2",
                "--batch-size",
                "1",
                "--eval-every",
                "2",
                "--seeds",
                "0",
                "--sample-steps",
                "2",
                "--no-progress",
            ]
        )
    )
    assert summary["steps"] == 2 and summary["trainable_params"] > 0


def test_sd_block_names_resolve_on_the_pretrained_unet(straight):
    pipe = runner.load_pipeline(str(straight[0] / "model"))
    names = dict(pipe.unet.named_modules())
    expected = {"upper": ("down_blocks.0.", "up_blocks.3."), "middle": ("down_blocks.1.", "up_blocks.2."),
                "lower": ("down_blocks.2.", "up_blocks.1."), "mid": ("mid_block.",)}  # fmt: skip
    for group, prefixes in expected.items():
        targets = SVFitConfig(r=4, blocks=[group], module_kinds=["attn"]).resolve(pipe.unet)
        assert targets and all(t.name.startswith(prefixes) and t.name in names for t in targets), group
        # every attention projection of those blocks, and nothing else
        wanted = [n for n in names if n.startswith(prefixes) and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")]
        assert {t.name for t in targets} >= set(wanted), group
    # in0 has one transformer (attn1 + attn2, 4 projections each); out3 has two: 8 + 16
    assert len(SVFitConfig(r=4, blocks=["upper"], module_kinds=["attn"]).resolve(pipe.unet)) == 24


def test_quality_report_on_the_saved_model(straight, tmp_path):
    from peft_inits.glyph.judge import ATTRIBUTES, JudgeSettings, train_judge
    from peft_inits.glyph.quality import measure, prompt_scenes

    judge, _ = train_judge(JudgeSettings(images=300, steps=5, batch_size=16))
    pipe = runner.load_pipeline(str(straight[0] / "model"))
    report = measure(pipe, judge=judge, prompts=3, seeds=(0,), steps=2, output_dir=tmp_path)
    for name in ("samples", "renders", "vae_round_trip"):
        assert set(report[name]) == set(ATTRIBUTES) and all(0 <= v <= 1 for v in report[name].values()), name
    assert 0 <= report["samples_prompt_fidelity"] <= 1
    assert json.loads((tmp_path / "quality.json").read_text())["samples"] == report["samples"]
    with Image.open(tmp_path / "quality_samples.png") as grid:
        assert grid.height == 3 * 64
    assert [s.caption() for s in prompt_scenes(3)] == [s.caption() for s in prompt_scenes(3)]
    args = runner.parse_args(["quality", "--model", "m", "--num-prompts", "4", "--seeds", "0,1,2"])
    assert (args.num_prompts, args.seeds, args.guidance) == (4, [0, 1, 2], 4.0)


def test_pack_and_unpack_keep_the_model(straight, tmp_path):
    import torch

    from peft_inits.glyph.assets import loss_curves, pack, unpack

    packed = pack(straight[0] / "model", tmp_path / "packed", {"note": "tiny"})
    size = sum(p.stat().st_size for p in packed.rglob("*") if p.is_file())
    assert not (packed / "text_encoder").exists() and size < 20 * 2**20
    model = unpack(packed, tmp_path / "model")
    assert unpack(packed, tmp_path / "model") == model  # idempotent
    original, loaded = runner.load_pipeline(str(straight[0] / "model")), runner.load_pipeline(str(model))
    assert loaded.unet.dtype == torch.float32
    latents, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 20, 384)
    with torch.no_grad():
        a = original.unet(latents, t, encoder_hidden_states=context).sample
        b = loaded.unet(latents, t, encoder_hidden_states=context).sample
    assert torch.allclose(a, b, atol=2e-2) and not torch.equal(a, b)  # float16 storage, float32 compute
    assert loaded.vae.config.scaling_factor == original.vae.config.scaling_factor
    curves = loss_curves(straight[0])
    assert curves["vae"]["loss"] == pytest.approx(RECORDED["vae"], rel=1e-5)
    assert curves["unet"]["loss"] == pytest.approx(RECORDED["unet"], rel=1e-5)
    assert list(curves["unet"]["val_loss"]) == ["0", "2", "4"]
    with pytest.raises(FileNotFoundError, match=r"not a finished `sd\.py pretrain` run"):
        loss_curves(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a packed glyph-world model"):
        unpack(tmp_path, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="missing"):
        pack(tmp_path, tmp_path / "y")


def test_a_longer_unet_stage_reuses_the_finished_vae(straight, tmp_path):
    import shutil

    root, _ = straight
    shutil.copytree(root / "vae", tmp_path / "run" / "vae")
    longer = PretrainSettings(**{**TINY.__dict__, "unet_steps": 5})
    summary = pretrain(tmp_path / "run", longer, resume=True, progress=False)
    assert summary["unet"]["steps"] == 5
    assert _losses(tmp_path / "run" / "vae") == _losses(root / "vae")  # not retrained
    # the first three steps see the same learning rates (warm-up 1 step, then 1.0) as the 4-step schedule
    assert _losses(tmp_path / "run" / "unet")[:3] == pytest.approx(RECORDED["unet"][:3], rel=1e-4)
