"""DreamBooth of one glyph-world concept on a glyph-world (or tiny, or SD) pipeline: what `sd train --data
glyph:...` does, as a library call for studies (the Block-wise ablation, the convergence study).

Pipeline, data, scorer and run directory as the SD command builds them for its `--model`: the shipped glyph model
by default (the judge cached in `cache_dir` scores the final samples), `tiny` for structure checks (no scorer).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..diffusion.models import load_pipeline
from ..diffusion.train import SampleSettings, device_and_dtype, frozen_parts, native_resolution, train_adapter
from ..training.settings import AdapterSettings, TrainSettings
from .concepts import GlyphConcept
from .scoring import sample_scorer
from .shipped import SHIPPED, model_kind, model_path
from .trainset import glyph_training_set


def train_concept_adapter(
    concept: GlyphConcept,
    adapter: AdapterSettings,
    train: TrainSettings,
    output_dir: str | Path,
    *,
    model: str | None = None,
    cache_dir: str | Path | None = None,
    judge: str | Path | None = None,
    sample: SampleSettings | None = None,
    num_images: int = 32,
    num_prompts: int = 4,
    prior_weight: float = 1.0,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or, with `resume`, finish or reuse) one adapter of `concept`; returns the run's summary with the final
    samples' scores. `train.lr` None: the method's rate for this model (`adapter.family`)."""
    kind = model_kind(model)
    pipe = load_pipeline(model_path(model, cache_dir), device_and_dtype("auto")[1] if kind == "sd" else torch.float32)
    frozen = frozen_parts(pipe, train.mixed_precision)
    resolution = native_resolution(pipe)
    data = glyph_training_set(
        concept, frozen, resolution, length=max(train.steps * train.batch_size, 64), seed=train.seed,
        num_images=num_images, num_prompts=num_prompts, prior_weight=prior_weight,
    )  # fmt: skip
    if train.lr is None:  # recorded resolved, as the SD command records it
        train = dataclasses.replace(train, lr=train.lr_for(adapter.method, adapter.family))
    config = {"runner": "sd", "model": model or SHIPPED, "data": concept.spec, "resolution": resolution}
    return train_adapter(
        pipe, frozen, data, adapter, train, sample or SampleSettings(), output_dir, config=config,
        prior_weight=prior_weight, resume=resume, overwrite=overwrite,
        scorer=lambda: sample_scorer(judge=judge, cache_dir=cache_dir, glyph_model=kind == "glyph"),
    )  # fmt: skip
