"""The shipped glyph-world model: small, complete, loads through `--model` and samples; its record is consistent."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from peft_inits.cli import sd as runner
from peft_inits.glyph.assets import GLYPH_T2I, unpack


def test_shipped_model_is_small_and_its_record_is_consistent():
    size = sum(p.stat().st_size for p in GLYPH_T2I.rglob("*") if p.is_file())
    assert size < 20 * 2**20
    record = json.loads((GLYPH_T2I / "packed.json").read_text())
    curves = json.loads((GLYPH_T2I / "loss_curves.json").read_text())
    settings = record["pretrain"]["settings"]
    assert len(curves["vae"]["loss"]) == settings["vae_steps"] == 1500
    assert len(curves["unet"]["loss"]) == settings["unet_steps"] == 3500
    final = record["pretrain"]["unet"]["final"]["val_loss"]
    assert curves["unet"]["val_loss"]["3500"] == round(final, 6) < curves["unet"]["val_loss"]["0"] / 5
    quality = record["quality"]
    assert set(quality["samples"]) == {"subject", "family", "variant", "colour", "background"}


def test_shipped_model_loads_through_model_and_samples(tmp_path):
    model = unpack(GLYPH_T2I, tmp_path / "glyph-t2i")
    grid = runner.main(
        runner.parse_args(
            [
                "sample",
                "--model",
                str(model),
                "--prompts",
                "a red serif letter a on a brick wall",
                "--seeds",
                "0",
                "--sample-steps",
                "8",
                "--output",
                str(tmp_path / "g.png"),
            ]
        )
    )
    with Image.open(grid) as image:
        pixels = np.asarray(image.convert("RGB")).astype(float)
    assert pixels.shape[0] == 32
    sample = pixels[:, -32:]
    # the prompted colour: the reddest pixels are clearly red (R well above G and B)
    redness = sample[..., 0] - sample[..., 1:].max(-1)
    assert np.percentile(redness, 95) > 60
