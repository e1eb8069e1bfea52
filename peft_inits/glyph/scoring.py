"""Which scorer an SD command uses, and one call that scores a set of samples with it (see .metrics).

CLIP / DINO when `--clip` / `--dino` are given; else the glyph world's judge (a saved one with `--judge DIR`, or the
cached default for the shipped model, trained once into the cache); else no scorer, said in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..diffusion.metrics import ClipDinoScorer, JudgeScorer
from ..diffusion.metrics import score as compute
from .concepts import Prompt, worded_attributes
from .world import SIZE


def make_scorer(
    *,
    clip: str | None = None,
    dino: str | None = None,
    judge: str | Path | None = None,
    cache_dir: str | Path | None = None,
    glyph_model: bool = False,
    progress: bool = False,
) -> tuple[Any, str]:
    """(scorer or None, a one-line note saying which)."""
    if clip or dino:
        return ClipDinoScorer(clip=clip, dino=dino), f"scored with CLIP {clip} / DINO {dino}"
    from .judge import cached_judge, load_judge

    if judge:
        return JudgeScorer(load_judge(judge)[0]), f"scored with the judge in {judge}"
    if glyph_model:
        cache = cache_dir or "runs/cache"
        return JudgeScorer(cached_judge(cache, progress=progress)), f"scored with the glyph judge cached in {cache}"
    return None, "not scored: no judge for this model (pass --judge DIR, or --clip/--dino PATH)"


def for_judge(images: Sequence[Any]) -> list:
    """The judge sees images at the world's size (the tiny pipeline samples at 64²)."""
    from PIL import Image

    return [im if im.size == (SIZE, SIZE) else im.resize((SIZE, SIZE), Image.BICUBIC) for im in images]


def score_samples(
    scorer: Any,
    images: Sequence[Any],
    prompts: Sequence[Prompt | str] | None = None,
    *,
    subject_references: Sequence[Any] | None = None,
    style_references: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Diversity, subject / style fidelity against the references given, prompt fidelity when the prompts say what
    they ask for (judge: the attributes named in words; CLIP: the text), and, with the judge, its top-1 accuracy on
    every attribute of a glyph prompt (`accuracy_<attribute>`, learned ones included)."""
    judged = isinstance(scorer, JudgeScorer)
    prepare = for_judge if judged else list
    references = {
        "subject_references": prepare(subject_references) if subject_references is not None else None,
        "style_references": prepare(style_references) if style_references is not None else None,
    }
    images = prepare(images)
    asked = None
    if prompts is not None:
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        asked = [_asked(p) for p in prompts] if judged else [p.text if isinstance(p, Prompt) else p for p in prompts]
        if judged and any(a is None for a in asked):
            asked = None  # a free-text prompt the judge cannot read: no prompt fidelity
    result = compute(scorer, images, prompts=asked, **references)
    if judged and prompts is not None and all(isinstance(p, Prompt) for p in prompts):
        known = scorer.judge.classes
        targets = [{a: v for a, v in p.attributes.items() if v in known.get(a, ())} for p in prompts]
        result.update({f"accuracy_{a}": v for a, v in scorer.accuracy(images, targets).items()})
    return result


def _asked(prompt: Prompt | str) -> dict[str, str] | None:
    if isinstance(prompt, Prompt):
        return prompt.prompted
    return worded_attributes(prompt)


def sample_scorer(
    *,
    clip: str | None = None,
    dino: str | None = None,
    judge: str | Path | None = None,
    cache_dir: str | Path | None = None,
    glyph_model: bool = False,
    progress: bool = False,
):
    """What `diffusion.train.train_adapter` scores its final samples with; the scores carry `make_scorer`'s note,
    which is all they hold when no scorer exists for this model."""
    scorer, note = make_scorer(
        clip=clip, dino=dino, judge=judge, cache_dir=cache_dir, glyph_model=glyph_model, progress=progress
    )

    def score(images: list, prompts: list, references: list) -> dict[str, Any]:
        if scorer is None:
            return {"note": note}
        found = score_samples(scorer, images, prompts, subject_references=references, style_references=references)
        return {"note": note, **found}

    return score
