"""Scoring adapters on held-out glyph subjects: the sampler, the two fidelity scores, retrieval, paired differences.

Shared by the hypernetwork's held-out evaluation and its head-start measurement (issue 22), so both render the same
prompts with the same seeds and score them the same way:

    sampler = HeldoutSampler(pipe, ["plain", "brick"], image_seeds=(0, 1))
    images = sampler(adapter_dir)                        # images[prompt][seed]; None = the base model
    scores = SubjectScorer(judge, subject, references, resolution).score(images)   # {"judge": …, "shape": …}
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.composition import Placement, apply_placements, load_named_adapter
from ..diffusion.metrics import JudgeScorer, subject_fidelity
from ..diffusion.sampling import generate_batched
from ..glyph.shape_fidelity import REFERENCE_SEED, plain_references, shape_fidelity
from ..glyph.world import BACKGROUNDS
from .dataset import Subject
from .hypernetwork_run import HypernetworkRun

SCORES = ("judge", "shape")


class HeldoutSampler:
    """`generation-eval`'s images for one adapter: every prompt × image seed in one batched pipeline call (each
    image its own seeded generator), DPM++ 2M Karras. The first background must be plain: the shape score reads it."""

    def __init__(
        self,
        pipe,
        backgrounds: Sequence[str] = ("plain", "brick"),
        image_seeds: Sequence[int] = (0, 1),
        steps: int = 25,
        guidance: float = 4.0,
    ) -> None:
        if not backgrounds or backgrounds[0] != "plain":
            raise ValueError("the first background must be plain: the shape score reads its samples")
        self.pipe = pipe
        self.prompts = [f"a sks glyph on {BACKGROUNDS[b]}" for b in backgrounds]
        self.image_seeds = list(image_seeds)
        self.steps = steps
        self.guidance = guidance

    def __call__(self, adapter: str | Path | None) -> list[list]:
        """images[prompt][seed] with `adapter` (a saved adapter directory) on the base, or the base alone."""
        pipe = self.pipe
        if adapter is not None:
            load_named_adapter(pipe.unet, adapter, "row")
            apply_placements(pipe.unet, [Placement("row")])
        else:
            apply_placements(pipe.unet, [])
        try:
            return generate_batched(pipe, self.prompts, self.image_seeds, steps=self.steps, guidance=self.guidance)
        finally:
            if adapter is not None:
                pipe.unet.delete_adapters("row")


class SubjectScorer:
    """Both subject-fidelity scores of one subject: the judge's (pairwise cosine of judge features of every sample
    vs the references, as `generation-eval`) and glyph shape (the plain prompt's samples vs 8 plain renders of the
    subject, no learned features)."""

    def __init__(self, judge: JudgeScorer, subject: Subject, references: Sequence, resolution: int) -> None:
        self.judge = judge
        self.reference_features = judge.features(list(references))
        self.shape_references = list(plain_references(subject, 8, resolution, REFERENCE_SEED))

    def score(self, images: list[list]) -> dict[str, float]:
        flat = [image for row in images for image in row]
        return {
            "judge": subject_fidelity(self.judge.features(flat), self.reference_features),
            "shape": shape_fidelity(images[0], self.shape_references),
        }


class Retrieval:
    """The nearest training subject by reference features: cosine per feature source over the hypernetwork's
    normalised features, summed, among `names` (its training subjects that have an adapter in the bank)."""

    def __init__(self, run: HypernetworkRun, names: Sequence[str]) -> None:
        self.net = run.net
        subjects = run.meta["train_subjects"]
        rows = [subjects.index(s) for s in names]
        self.names = list(names)
        self.keys = self._normalised({k: v[rows] for k, v in run.train_conditions().items()})

    def _normalised(self, conditions: dict[str, Tensor]) -> Tensor:
        x = self.net.normalised({k: v.float() for k, v in conditions.items()})
        widths = [self.net.state_dict()[f"mean_{i}"].numel() for i in range(len(self.net.sources))]
        return torch.cat([F.normalize(part, dim=1) for part in x.split(widths, dim=1)], dim=1)

    def nearest(self, condition: dict[str, Tensor]) -> str:
        """The nearest name to one subject's raw condition (name → (1, D))."""
        return self.names[int((self.keys @ self._normalised(condition).T).squeeze(1).argmax())]


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of the per-subject differences a − b, its s.e.m., and on how many subjects a wins."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    sem = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
    return {"mean": statistics.fmean(differences), "sem": sem, "wins": sum(d > 0 for d in differences),
            "n": len(differences)}  # fmt: skip


def mean_sem(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sem": statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1
            else 0.0}  # fmt: skip
