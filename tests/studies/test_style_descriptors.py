"""`sd.py descriptors` (style adapters of a text-to-image model, clustered by their weights) in seconds on the tiny
pipeline: the collection, every descriptor and both image baselines, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peft_inits.checkpoint import load_tensors
from peft_inits.cli import sd as runner
from peft_inits.generation.dataset import read_dataset
from peft_inits.glyph.judge import JudgeSettings, save_judge, train_judge
from peft_inits.studies.style_descriptors import style_concepts


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("descriptors")
    torch.manual_seed(0)
    judge, report = train_judge(JudgeSettings(images=128, steps=4, batch_size=16))
    judge_dir = save_judge(judge, report, root / "judge")
    argv = ["descriptors", "--model", "tiny", "--methods", "svfit,lora", "--styles", "brick,rings", "--seeds", "2",
            "--steps", "2", "--images", "4", "--generated", "1", "--sample-steps", "2", "--judge", str(judge_dir),
            "--output-dir", str(root / "out"), "--no-progress"]  # fmt: skip
    rows = runner.main(runner.parse_args(argv))
    return root / "out", rows


def test_every_descriptor_and_baseline_is_scored(study):
    out, rows = study
    got = {(r["method"], r["descriptor"]) for r in rows}
    baselines = {"training-image features", "generated-image features"}
    assert got == {("svfit", d) for d in ("factors", "delta", "gains", *baselines)} | {
        ("lora", d) for d in ("factors", "delta", *baselines)
    }
    for row in rows:
        assert -1.0 <= row["ari"] <= 1.0 and 0.0 <= row["nmi"] <= 1.0 and 0.0 <= row["p@1"] <= 1.0
    assert json.loads((out / "results.json").read_text()) == rows
    assert (out / "results.md").read_text().count("\n") == len(rows) + 2
    assert (out / "map-svfit-gains.png").is_file()


def test_collection_holds_one_trained_adapter_per_style_and_seed(study):
    out, _ = study
    dataset = read_dataset(out / "svfit")
    assert sorted((e.subject, e.subject_id) for e in dataset.adapters) == [
        ("brick", "b000"), ("brick", "b001"), ("rings", "b100"), ("rings", "b101")
    ]  # fmt: skip
    gains = [load_tensors(out / "svfit" / e.adapter / "adapter_model.safetensors") for e in dataset.adapters]
    keys = [k for k in gains[0] if k.endswith(".s")]
    assert keys
    # four different trainings: no two adapters have the same gains
    flat = [torch.cat([g[k].flatten() for k in keys]) for g in gains]
    assert min(float((a - b).abs().max()) for i, a in enumerate(flat) for b in flat[i + 1 :]) > 0


def test_each_seed_renders_its_own_images_and_captions_name_the_token():
    a, b = style_concepts(["rings"], 2)
    (xa, ca), (xb, cb) = a.images(3, 32, "train"), b.images(3, 32, "train")
    assert not np.array_equal(xa, xb)
    assert all(c.endswith("on a sks wall") and "rings" not in c for c in ca + cb)
    with pytest.raises(ValueError, match="unknown background 'velvet'"):
        style_concepts(["velvet"], 2)
