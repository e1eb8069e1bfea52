"""Glyph-world concepts as training data, the shipped model as the default, scores in train/compose, the ablation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from peft_inits.cli import sd as runner
from peft_inits.diffusion.images import FixedImages
from peft_inits.diffusion.metrics import JudgeScorer
from peft_inits.diffusion.objective import DreamBoothData, Frozen
from peft_inits.diffusion.tiny import tiny_pipeline
from peft_inits.glyph.concepts import GlyphConcept, concept_prompts, worded_attributes
from peft_inits.glyph.judge import JudgeSettings, load_judge, save_judge, train_judge
from peft_inits.glyph.shipped import model_kind, shipped_model
from peft_inits.glyph.world import SUBJECTS
from peft_inits.studies.ablation import ABLATION_ROWS, METRICS, AblationSettings, compose_rows, run_ablation

TINY_RUN = (
    *("--model", "tiny", "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--save-every", "2"),
    *("--seeds", "0", "--sample-steps", "2", "--num-images", "4", "--num-prompts", "2", "--no-progress"),
)


def _train(out, *extra: str) -> dict:
    return runner.main(runner.parse_args(["train", "--output-dir", str(out), *TINY_RUN, *extra]))


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A judge trained for seconds: it knows every class, so the scoring code paths run; its numbers mean little."""
    judge, report = train_judge(JudgeSettings(images=256, steps=10, batch_size=16))
    return save_judge(judge, report, tmp_path_factory.mktemp("judge"))


def test_glyph_captions_name_the_token_not_the_learned_value():
    identity = GlyphConcept.parse("glyph:subject=♣")
    images, captions, scenes = identity.instance(12)
    assert images.shape == (12, 32, 32, 3) and len(set(captions)) > 6
    for caption, scene in zip(captions, scenes, strict=True):
        assert "sks glyph" in caption and "♣" not in caption and "symbol" not in caption
        assert scene.subject == "♣" and scene.colour in caption and scene.family in caption
    style = GlyphConcept.parse("glyph:background=rings", token="zwx")
    _, captions, scenes = style.instance(8)
    assert all("on a zwx wall" in c and "rings" not in c for c in captions)
    assert {s.background for s in scenes} == {"rings"} and len({s.subject for s in scenes}) > 2
    # prior preservation: the same scenes with a training glyph, in the base wording
    prior, class_captions = identity.prior(identity.instance(8)[2])
    assert prior.shape == (8, 32, 32, 3)
    assert all("sks" not in c and "letter" in c for c in class_captions)
    with pytest.raises(ValueError, match="unknown subject 'Z'"):
        GlyphConcept.parse("glyph:subject=Z")
    with pytest.raises(ValueError, match="glyph:subject=VALUE"):
        GlyphConcept.parse("glyph:colour=red")


def test_prior_scenes_keep_every_attribute_but_the_learned_one():
    concept = GlyphConcept.parse("glyph:subject=♥")
    _, _, scenes = concept.instance(6)
    _, class_captions = concept.prior(scenes)
    for scene, caption in zip(scenes, class_captions, strict=True):
        words = worded_attributes(caption)
        assert words == {"colour": scene.colour, "variant": scene.variant, "family": scene.family}
        assert any(f"letter {s.lower()} " in caption for s in SUBJECTS)


def test_dreambooth_data_pairs_each_image_with_its_caption():
    pipe = tiny_pipeline()
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(torch.device("cpu"))
    images, captions, _ = GlyphConcept.parse("glyph:subject=♣").instance(3, size=64)
    data = DreamBoothData(FixedImages(images, length=10), captions, frozen)
    batch = data.batch([4, 0, 2])
    expected = frozen.tokens([captions[1], captions[0], captions[2]])
    assert torch.equal(batch["ids"], expected)
    assert torch.equal(batch["pixels"][1], FixedImages(images)[0]) and batch["pixels"].shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="2 instance prompts for 3 instance images"):
        DreamBoothData(FixedImages(images), captions[:2], frozen)


def test_combined_prompts_ask_for_both_concepts():
    identity, style = GlyphConcept.parse("glyph:subject=♣"), GlyphConcept.parse("glyph:background=rings", "zwx")
    prompts = concept_prompts([identity, style], 5)
    assert all("sks glyph" in p.text and "zwx wall" in p.text for p in prompts)
    assert all(set(p.prompted) == {"family", "variant", "colour"} for p in prompts)
    assert {p.attributes["subject"] for p in prompts} == {"♣"}
    with pytest.raises(ValueError, match="different tokens"):
        concept_prompts([identity, GlyphConcept.parse("glyph:background=rings")], 2)


def test_the_shipped_model_is_the_default_and_unpacks_once(tmp_path):
    assert model_kind(None) == "glyph" and model_kind("tiny") == "tiny" and model_kind("/x") == "sd"
    args = runner.parse_args(["train"])
    assert runner.fill_model_defaults(args) == "glyph"
    assert (args.data, args.steps, args.batch_size, args.guidance) == ("glyph:subject=♣", 200, 4, 4.0)
    tiny = runner.parse_args(["train", "--model", "tiny"])
    runner.fill_model_defaults(tiny)
    assert (tiny.data, tiny.steps, tiny.batch_size) == ("subject", 60, 2)
    folder = shipped_model(tmp_path)
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert shipped_model(tmp_path) == folder and (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name], "no temporary folder is left behind"
    pipe = runner.load_pipeline(str(folder))
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32


def test_train_on_a_glyph_concept_scores_its_samples(tmp_path, judge_dir):
    glyph = ("--data", "glyph:subject=♣", "--judge", str(judge_dir))
    summary = _train(tmp_path / "run", *glyph)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["concept"] == "glyph:subject=♣" and "sks glyph" in config["prompt"]
    assert "sks" not in config["class_prompt"] and "letter" in config["class_prompt"]
    scores = summary["scores"]
    for key in ("subject_fidelity", "style_fidelity", "prompt_fidelity", "diversity", "accuracy_subject"):
        assert math.isfinite(scores[key]), key
    assert 0 <= scores["prompt_fidelity"] <= 1 and 0 <= scores["accuracy_colour"] <= 1
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["scores"] == scores
    # a finished run found by --resume is returned as it is (its samples and scores included)
    again = _train(tmp_path / "run", *glyph, "--resume")
    assert again["scores"] == scores


def test_train_without_a_judge_says_so(tmp_path, capsys):
    summary = _train(tmp_path / "run")
    assert summary["scores"] == {"note": summary["scores"]["note"]}
    assert "not scored" in capsys.readouterr().out


def test_compose_rows_merged_equals_applied(tmp_path, judge_dir):
    for data, token in (("glyph:subject=♣", "sks"), ("glyph:background=rings", "zwx")):
        _train(tmp_path / token, "--data", data, "--token", token, "--method", "lora", "--lr", "0.05")
    result = compose_rows(
        tiny_pipeline(), tmp_path / "sks" / "weights", tmp_path / "zwx" / "weights", num_prompts=2, seeds=(0,),
        steps=2, both=True, scorer=JudgeScorer(load_judge(judge_dir)[0]), references=4,
    )  # fmt: skip
    assert len(result.rows) == len(result.merged_rows) == 6 and all(len(r) == 2 for r in result.rows)
    gaps = [row["merged_max_pixel_diff"] for row in result.scores]
    assert max(gaps) <= 3, gaps  # merged ≡ applied up to float rounding (0–255 scale)
    pixels = [np.asarray(r[0], dtype=float) for r in result.rows]
    assert np.abs(pixels[0] - pixels[1]).max() > 3, "ID only and style only must render differently"
    # the command: glyph adapters imply the prompts; per-row scores land next to the grid
    argv = ["compose", "--model", "tiny", "--identity", str(tmp_path / "sks" / "weights"), "--style",
            str(tmp_path / "zwx" / "weights"), "--judge", str(judge_dir), "--num-prompts", "2", "--seeds", "0",
            "--sample-steps", "2", "--output", str(tmp_path / "grid.png")]  # fmt: skip
    runner.main(runner.parse_args(argv))
    report = json.loads((tmp_path / "grid.json").read_text())
    assert len(report["rows"]) == 6 and all("sks glyph" in p and "zwx wall" in p for p in report["prompts"])
    assert all(math.isfinite(row[m]) for row in report["rows"] for m in METRICS)


def test_ablation_table_has_every_row_and_method(tmp_path, judge_dir):
    settings = AblationSettings(methods=("lora", "loldu"), seeds=(0, 1), steps=2, style_steps=2, batch_size=2,
                                images=4, prompts=2, sample_steps=2, references=4)  # fmt: skip
    report = run_ablation(settings, tmp_path / "abl", model="tiny", judge=judge_dir, progress=False)
    summary = report["summary"]
    assert list(summary) == list(ABLATION_ROWS)
    for row in ABLATION_ROWS:
        assert list(summary[row]) == ["lora", "loldu"]
        for method in ("lora", "loldu"):
            for metric in METRICS:
                cell = summary[row][method][metric]
                assert cell["n"] == 2 and math.isfinite(cell["mean"]) and math.isfinite(cell["std"]), (row, method)
            assert summary[row][method]["merged_max_pixel_diff"]["mean"] <= 3
    table = (tmp_path / "abl" / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ID") or line.startswith("| style")]
    assert len(lines) == len(ABLATION_ROWS) * 2
    assert (tmp_path / "abl" / "grid.png").is_file() and set(report["verdict"]) == {"fidelity", "accuracy"}
    assert all(set(v) == {"lora", "loldu"} for v in report["verdict"].values())
    # resumable: a rerun reuses every adapter and every score
    again = run_ablation(settings, tmp_path / "abl", model="tiny", judge=judge_dir, progress=False)
    assert again["summary"] == summary


def test_ablation_runs_on_the_shipped_model(tmp_path, judge_dir):
    """The default path end to end (shipped model unpacked into the cache, glyph data, merged vs applied)."""
    settings = AblationSettings(methods=("lora",), seeds=(0,), steps=2, style_steps=2, batch_size=2, images=4,
                                prompts=2, sample_steps=4, references=8)  # fmt: skip
    report = run_ablation(settings, tmp_path / "abl", cache_dir=tmp_path / "cache", judge=judge_dir, progress=False)
    gaps = [report["summary"][row]["lora"]["merged_max_pixel_diff"]["mean"] for row in ABLATION_ROWS]
    assert max(gaps) <= 3, gaps
    ceiling = report["references"]["renders of the prompts (ceiling)"]
    assert all(math.isfinite(ceiling[m]) for m in METRICS)
    config = json.loads((tmp_path / "abl" / "runs" / "lora-s0-identity" / "config.json").read_text())
    assert config["model"] == "glyph-t2i" and config["resolution"] == 32


def test_verdict_reads_the_paper_pattern():
    """Synthetic means shaped like the paper's finding reproduce; a style adapter that learned nothing gives None."""
    from peft_inits.studies.ablation import verdict

    def cell(value: float) -> dict:
        return {"mean": value, "std": 0.0, "n": 3}

    rows = {
        **{"ID only": (0.9, 0.1), "style only": (0.1, 0.9), "ID + style, all blocks": (0.8, 0.8)},
        **{"ID + style, upper": (0.85, 0.8), "ID + style, middle": (0.8, 0.2), "ID + style, lower": (0.2, 0.2)},
    }
    summary = {r: {"m": {"accuracy_subject": cell(s), "accuracy_background": cell(b)}} for r, (s, b) in rows.items()}
    base = {"accuracy_subject": 0.0, "accuracy_background": 0.0}
    found = verdict(summary, ["m"], base, ("accuracy_subject", "accuracy_background"))["m"]
    assert found["reproduces"] is True and found["subject_bar"] == pytest.approx(0.45)
    summary["style only"]["m"]["accuracy_background"] = cell(0.05)
    found = verdict(summary, ["m"], base, ("accuracy_subject", "accuracy_background"))["m"]
    assert found["reproduces"] is None and found["rows"]["ID + style, upper"]["takes_style"] is None
