"""DreamBooth-style metrics on known cases, the glyph-world judge, and the CLIP / DINO code path with tiny configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_clip_and_dino

from peft_inits.diffusion import metrics
from peft_inits.diffusion.metrics import ClipDinoScorer, JudgeScorer, score
from peft_inits.glyph.judge import Judge, JudgeSettings, attribute_classes, load_judge, save_judge, train_judge
from peft_inits.glyph.world import Scene, World, render, to_pil


def _scene_images(scene: Scene, count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [to_pil(render(scene, rng)) for _ in range(count)]


RED_K = Scene("K", "serif", "bold", "red", "brick")
BLUE_X = Scene("X", "monospace", "regular", "blue", "stripes")


def test_similarities_and_diversity_on_known_cases():
    torch.manual_seed(0)
    scorer = JudgeScorer(Judge())  # untrained: the maths do not depend on what the features mean
    one = _scene_images(RED_K, 1) * 4  # four copies of one image
    varied, other = _scene_images(RED_K, 6, seed=1), _scene_images(BLUE_X, 6, seed=2)
    same = score(scorer, one, subject_references=one, style_references=one)
    assert same["subject_fidelity"] == pytest.approx(1.0, abs=1e-9)
    assert same["style_fidelity"] == pytest.approx(1.0, abs=1e-9)
    assert same["gram_distance"] == pytest.approx(0.0, abs=1e-9)
    assert same["diversity"] == pytest.approx(0.0, abs=1e-9)
    own = score(scorer, varied, subject_references=varied, style_references=varied)
    cross = score(scorer, varied, subject_references=other, style_references=other)
    assert cross["subject_fidelity"] < own["subject_fidelity"] < 1.0
    assert cross["style_fidelity"] < own["style_fidelity"] and cross["gram_distance"] > own["gram_distance"] == 0
    assert 0 < own["diversity"] < 1


def test_metric_maths_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.mean_cosine(a, a) == pytest.approx(0.5)  # (1 + 0 + 0 + 1) / 4
    assert metrics.mean_cosine(a, a, exclude_diagonal=True) == pytest.approx(0.0)
    assert metrics.diversity(a) == pytest.approx(1.0)
    grams = torch.stack([torch.eye(2), 3 * torch.eye(2)])
    assert metrics.gram_distance(grams, torch.eye(2)[None]) == pytest.approx(1.0)  # mean 2·I vs I
    with pytest.raises(ValueError, match="non-empty"):
        metrics.mean_cosine(a[:0], a)
    with pytest.raises(ValueError, match="at least two"):
        metrics.diversity(a[:1])


@pytest.fixture(scope="module")
def judge():
    """A judge trained for seconds: enough to tell colours apart (they are linear in the pooled features)."""
    model, report = train_judge(JudgeSettings(images=1_200, steps=200, batch_size=32, lr=3e-3))
    assert report["validation_accuracy"]["colour"] > 0.8, report
    return model


def test_prompt_fidelity_is_high_for_the_prompted_colour_and_low_for_another(judge):
    scorer = JudgeScorer(judge)
    images = _scene_images(RED_K, 8)
    right = score(scorer, images, prompts=[{"colour": "red"}] * 8)["prompt_fidelity"]
    wrong = score(scorer, images, prompts=[{"colour": "blue"}] * 8)["prompt_fidelity"]
    assert right > 0.6 and wrong < 0.1
    accuracy = scorer.accuracy(images + _scene_images(BLUE_X, 8), [{"colour": "red"}] * 8 + [{"colour": "blue"}] * 8)
    assert accuracy["colour"] > 0.9


def test_judge_round_trip_and_errors(judge, tmp_path):
    save_judge(judge, {"note": "test"}, tmp_path / "j")
    loaded, meta = load_judge(tmp_path / "j")
    pixels = torch.zeros(2, 3, 32, 32)
    assert torch.equal(loaded(pixels)["colour"], judge(pixels)["colour"]) and meta["note"] == "test"
    assert meta["classes"]["background"][-3:] == ["rings", "waves", "grid"]
    assert set(attribute_classes()["subject"]) >= {"A", "X", "♣", "§"}
    with pytest.raises(FileNotFoundError, match="holds no judge"):
        load_judge(tmp_path)
    scorer = JudgeScorer(judge)
    images = _scene_images(RED_K, 2)
    with pytest.raises(ValueError, match="knows no colour 'mauve'"):
        scorer.prompt_scores(images, [{"colour": "mauve"}] * 2)
    with pytest.raises(ValueError, match="knows no attribute 'size'"):
        scorer.prompt_scores(images, [{"size": "big"}] * 2)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        score(scorer, images, prompts=[{"colour": "red"}])


@pytest.fixture(scope="module")
def clip_and_dino(tmp_path_factory):
    """A width-16 CLIP (byte-level tokenizer) and a width-16 DINOv2, saved as local checkpoints with processors."""
    return save_tiny_clip_and_dino(tmp_path_factory.mktemp("scorers"), dino_layers=2)


def test_clip_and_dino_scorers_from_local_paths(clip_and_dino):
    scorer = ClipDinoScorer(clip=str(clip_and_dino / "clip"), dino=str(clip_and_dino / "dino"))
    one = _scene_images(RED_K, 1) * 3
    varied = _scene_images(BLUE_X, 3, seed=4)
    same = score(scorer, one, subject_references=one, style_references=one, prompts=["a red letter k"] * 3)
    assert same["subject_fidelity"] == pytest.approx(1.0, abs=1e-6) and same["diversity"] == pytest.approx(0, abs=1e-6)
    assert same["style_fidelity"] == pytest.approx(1.0, abs=1e-6) and -1 <= same["prompt_fidelity"] <= 1
    cross = score(scorer, varied, subject_references=one)
    assert cross["subject_fidelity"] < 1.0 - 1e-6
    assert scorer.features(one).shape == (3, 16) and scorer.clip_image(one).shape == (3, 8)
    clip_only = ClipDinoScorer(clip=str(clip_and_dino / "clip"))
    assert clip_only.features(one).shape == (3, 8)
    with pytest.raises(ValueError, match="need a DINO path"):
        clip_only.grams(one)
    with pytest.raises(FileNotFoundError, match=r"--dino .* is not a local transformers checkpoint"):
        ClipDinoScorer(dino=str(clip_and_dino / "missing"))
    with pytest.raises(ValueError, match="needs a CLIP path"):
        ClipDinoScorer()


def test_world_images_score_as_their_own_subject():
    """Scenes of the same subject/typeface are closer to each other than to another subject, even untrained."""
    torch.manual_seed(0)
    scorer = JudgeScorer(Judge())
    a, _ = World(subjects=("K",), families=("serif",), backgrounds=("plain",), colours=("red",)).images(6)
    b, _ = World(subjects=("X",), families=("monospace",), backgrounds=("stripes",), colours=("blue",)).images(6)
    features_a, features_b = scorer.features(list(a)), scorer.features(list(b))
    assert metrics.subject_fidelity(features_a, features_a) > metrics.subject_fidelity(features_a, features_b)


def _folder(path, images) -> str:
    path.mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(path / f"{index}.png")
    return str(path)


def test_score_command_with_clip_dino_and_with_the_judge(clip_and_dino, judge, tmp_path):
    import json

    from peft_inits.cli import sd as runner

    generated = _folder(tmp_path / "gen", _scene_images(RED_K, 1) * 3)
    references = _folder(tmp_path / "ref", _scene_images(RED_K, 1) * 2)
    args = ["score", "--images", generated, "--subject-references", references, "--style-references", references]
    models = ["--clip", str(clip_and_dino / "clip"), "--dino", str(clip_and_dino / "dino")]
    result = runner.main(
        runner.parse_args([*args, *models, "--prompt", "a red letter k", "--output", str(tmp_path / "s.json")])
    )
    assert set(result) == {"diversity", "subject_fidelity", "style_fidelity", "gram_distance", "prompt_fidelity"}
    assert result["subject_fidelity"] == pytest.approx(1.0, abs=1e-6)  # copies of one render on both sides
    assert json.loads((tmp_path / "s.json").read_text()) == result
    save_judge(judge, {}, tmp_path / "judge")
    judged = runner.main(runner.parse_args([*args, "--judge", str(tmp_path / "judge"), "--attributes", "colour=red"]))
    wrong = runner.main(runner.parse_args([*args, "--judge", str(tmp_path / "judge"), "--attributes", "colour=blue"]))
    assert judged["prompt_fidelity"] > 0.6 > 0.1 > wrong["prompt_fidelity"]
    with pytest.raises(ValueError, match="name=value pairs"):
        runner.main(runner.parse_args([*args, "--judge", str(tmp_path / "judge"), "--attributes", "red"]))
    with pytest.raises(ValueError, match="--prompt is scored by CLIP"):
        runner.main(runner.parse_args([*args, "--judge", str(tmp_path / "judge"), "--prompt", "a red k"]))
