"""Glyph-shape fidelity: a subject-fidelity score that uses no learned features (issue 22's second score).

The judge's features condition the hypernetwork and the generator and key retrieval, so a score from the same judge
can be gamed by anything that matches the features (colour above all). This one looks only at the glyph's *shape*:

1. Foreground mask. On a plain-background image (the world's `plain` background: one colour plus a linear ramp) the
   background is a plane in colour space; it is fitted by least squares on the image's 1-pixel border, and a pixel is
   foreground (glyph fill or outline) when its colour is farther than `threshold` from the plane.
2. Pose normalisation. The world jitters position, size and rotation (±20°); each mask is resampled into a canonical
   frame: its centroid at the centre and its RMS radius at `RADIUS` of the half-width (translation and scale removed;
   rotation is left to step 3).
3. Score. Intersection over union of the normalised masks (soft: Σ min / Σ max); a sample scores the best IoU over
   the subject's references (any reference pose near the sample's counts), and a set of samples scores their mean.

Identical images score 1; colour does not enter (a glyph recoloured scores as itself). References are renders of
the subject on the plain background (`plain_references`), as the world draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

THRESHOLD = 60.0  # colour distance (0-255 RGB) from the background plane that counts as glyph
RADIUS = 0.45  # the canonical RMS radius, in half-widths
CANONICAL = 32  # px of the canonical frame


def _array(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image.astype(np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def foreground(image: Any, threshold: float = THRESHOLD) -> np.ndarray:
    """(H, W) bool: pixels off the background plane fitted on the border (plain-background images)."""
    pixels = _array(image)
    height, width = pixels.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    border = np.zeros((height, width), dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    design = np.stack([np.ones_like(xx), xx, yy], axis=-1)
    coefficients, *_ = np.linalg.lstsq(design[border], pixels[border], rcond=None)
    plane = design @ coefficients
    return np.linalg.norm(pixels - plane, axis=-1) > threshold


def canonical(mask: np.ndarray, size: int = CANONICAL) -> torch.Tensor:
    """The mask resampled with its centroid at the centre and its RMS radius at RADIUS half-widths (size × size);
    an empty mask stays empty."""
    height, width = mask.shape
    weights = torch.from_numpy(mask.astype(np.float32))
    total = float(weights.sum())
    if total == 0:
        return torch.zeros(size, size)
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, height) * (height - 1) / height,  # pixel centres in align_corners=False units
        torch.linspace(-1, 1, width) * (width - 1) / width,
        indexing="ij",
    )
    cy, cx = float((weights * yy).sum()) / total, float((weights * xx).sum()) / total
    radius = max(float((weights * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total) ** 0.5, 1e-3)
    scale = radius / RADIUS
    theta = torch.tensor([[[scale, 0.0, cx], [0.0, scale, cy]]])
    grid = F.affine_grid(theta, (1, 1, size, size), align_corners=False)
    return F.grid_sample(weights[None, None], grid, mode="bilinear", align_corners=False)[0, 0]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Soft intersection over union of two masks in [0, 1] (two empty masks: 0, nothing to compare)."""
    union = float(torch.maximum(a, b).sum())
    return float(torch.minimum(a, b).sum()) / union if union > 0 else 0.0


def shape_fidelity(samples: Sequence[Any], references: Sequence[Any], threshold: float = THRESHOLD) -> float:
    """Mean over samples of the best canonical-mask IoU with any reference (1: a reference's shape exactly)."""
    if not samples or not references:
        raise ValueError("shape fidelity needs at least one sample and one reference image")
    frames = [canonical(foreground(r, threshold)) for r in references]
    scores = [max(iou(canonical(foreground(s, threshold)), f) for f in frames) for s in samples]
    return float(np.mean(scores))


REFERENCE_SEED = 778  # the plain renders a sample is scored against: a stream no training or reference image uses


def plain_references(subject: Any, count: int, size: int, seed: int) -> np.ndarray:
    """`count` renders of a glyph subject (`generation.dataset.Subject`: glyph, family, variant, colour) on the plain
    background, with the world's jitter (`seed`: a stream no training image uses)."""
    from .world import World

    world = World(subjects=(subject.glyph,), families=(subject.family,), variants=(subject.variant,),
                  colours=(subject.colour,), backgrounds=("plain",), size=size, seed=seed)  # fmt: skip
    return world.images(count)[0]
