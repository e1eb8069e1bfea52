"""Glyph-shape fidelity: identical images score 1, the same glyph in another pose scores above every other glyph,
colour does not enter, and the mask is the glyph's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from peft_inits.generation import dataset as D
from peft_inits.glyph.shape_fidelity import canonical, foreground, iou, plain_references, shape_fidelity


@pytest.fixture(scope="module")
def subjects():
    return D.subjects(6, 0)[0]


def test_identical_images_score_one_and_an_empty_sample_zero(subjects):
    references = list(plain_references(subjects[0], 4, 32, seed=777))
    assert shape_fidelity(references[:2], references) == 1.0
    blank = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert not foreground(blank).any()
    assert shape_fidelity([blank], references) == 0.0
    with pytest.raises(ValueError, match="at least one sample and one reference"):
        shape_fidelity([], references)


def test_same_glyph_in_new_poses_beats_every_other_glyph(subjects):
    references = {s.subject_id: list(plain_references(s, 8, 32, seed=777)) for s in subjects}
    scores = np.array([
        [shape_fidelity(list(plain_references(s, 4, 32, seed=555)), references[t.subject_id]) for t in subjects]
        for s in subjects
    ])  # fmt: skip
    diagonal = np.diag(scores)
    off = scores[~np.eye(len(subjects), dtype=bool)].reshape(len(subjects), -1)
    assert (diagonal > off.max(axis=1)).all()  # each glyph's fresh renders are nearest its own references
    assert diagonal.min() > 0.6 and off.max() < 0.7 and diagonal.mean() - off.mean() > 0.2


def test_colour_does_not_enter(subjects):
    subject = subjects[0]
    references = list(plain_references(subject, 8, 32, seed=777))
    samples = plain_references(subject, 4, 32, seed=555)
    recoloured = plain_references(replace(subject, colour="cyan" if subject.colour != "cyan" else "pink"), 4, 32, 555)
    masks = [foreground(a) for a in samples]
    # nearly the same pixels: only where a fill colour comes close to the background does an edge pixel flip
    assert np.mean([(foreground(b) ^ m).mean() for b, m in zip(recoloured, masks, strict=True)]) < 0.1
    assert shape_fidelity(list(recoloured), references) == pytest.approx(
        shape_fidelity(list(samples), references), abs=0.06
    )


def test_canonical_frame_removes_translation_and_scale():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 6:12] = True
    shifted = np.roll(mask, (9, 12), axis=(0, 1))
    bigger = np.zeros((64, 64), dtype=bool)
    bigger[16:32, 12:24] = True  # the same shape at twice the size
    frame = canonical(mask)
    assert iou(frame, canonical(shifted)) == pytest.approx(1.0, abs=1e-6)
    assert iou(frame, canonical(bigger)) > 0.9
    centre = torch.tensor([(frame.sum(1) * torch.arange(32.0)).sum(), (frame.sum(0) * torch.arange(32.0)).sum()])
    assert torch.allclose(centre / frame.sum(), torch.tensor([15.5, 15.5]), atol=0.3)
