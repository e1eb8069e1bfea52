"""The descriptor study end to end at CI size: styles render, adapters train, every descriptor is scored."""

from __future__ import annotations

import json

import pytest
import torch

from peft_inits.cli import descriptor_study as command
from peft_inits.studies import descriptor_study as study


@pytest.mark.parametrize("style", study.STYLE_NAMES)
def test_styles_change_the_digits_and_stay_in_range(style):
    pixels = study.digits.adapt_corpus().splits["train"].pixels[:16]
    styled = study.stylise(pixels, style, seed=0)
    assert styled.shape == pixels.shape and torch.isfinite(styled).all()
    assert styled.min() >= -1.0 - 1e-5 and styled.max() <= 1.0 + 1e-5
    assert (styled - pixels).abs().mean() > 0.05
    assert torch.equal(styled, study.stylise(pixels, style, seed=0)), "a style is reproducible for a seed"


def test_tiny_study_scores_every_descriptor(tmp_path, capsys):
    args = command.parse_args(
        [
            "--styles",
            "rotate,invert",
            "--seeds",
            "2",
            "--steps",
            "4",
            "--methods",
            "svfit",
            "--train-size",
            "40",
            "--output-dir",
            str(tmp_path),
        ]
    )
    rows = command.main(args)
    assert [r["descriptor"] for r in rows] == ["factors", "delta", "gains", "image features"]
    for row in rows:
        assert -1.0 <= row["ari"] <= 1.0 and 0.0 <= row["nmi"] <= 1.0 and 0.0 <= row["p@1"] <= 1.0
    assert rows[-1]["ari"] == 1.0, "rotation and inversion are obvious in image space"
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert (tmp_path / "map-svfit-delta.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "svfit" / "invert-1" / "weights" / "meta.json").read_text())
    assert meta == {"label": "invert", "seed": 1}
    assert "| svfit | gains |" in capsys.readouterr().out


def test_study_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        command.parse_args(["--styles", "rotate,sepia"])
    assert "unknown style(s) ['sepia']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.parse_args(["--seeds", "1"])
