"""DreamBooth data of a glyph-world concept (`glyph:subject=♣`, `glyph:background=rings`, see .concepts).

Captioned renders of the concept; prior preservation on renders of the training world in the base wording (off with
`prior_weight=0`); sample prompts that ask for the concept in new scenes, so prompt fidelity can be judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..diffusion.images import EMBEDDED_SETS, FixedImages
from ..diffusion.objective import DreamBoothData, Frozen
from ..diffusion.trainset import TrainingSet
from .concepts import GlyphConcept, Prompt, concept_prompts, is_glyph
from .world import to_pil

VALIDATION_SEED = 99  # world seed offset of validation renders


def check_data(data: str) -> None:
    """Refuse a --data that is neither a glyph concept, an embedded set nor a folder before anything is loaded."""
    if is_glyph(data):
        GlyphConcept.parse(data)
        return
    if data not in EMBEDDED_SETS and not Path(data).is_dir():
        raise FileNotFoundError(
            f"--data {data!r} does not exist: pass an embedded set ({', '.join(EMBEDDED_SETS)}), "
            "a glyph-world concept (glyph:subject=♣, glyph:background=rings) or an image folder"
        )


def glyph_training_set(
    concept: GlyphConcept,
    frozen: Frozen,
    resolution: int,
    *,
    length: int,
    seed: int,
    num_images: int = 32,
    prior_weight: float = 1.0,
    num_class_images: int | None = None,
    prompts: Sequence[str] | None = None,
    num_prompts: int = 4,
) -> TrainingSet:
    """`num_images` renders of the concept (and as many prior renders, unless `num_class_images` says otherwise)."""
    images, captions, scenes = concept.instance(num_images, resolution, seed=seed)
    prior = class_captions = None
    if prior_weight > 0:
        count = num_class_images or num_images
        prior_images, class_captions = concept.prior((scenes * count)[:count], resolution, seed=seed)
        prior = FixedImages(prior_images, length)
    data = DreamBoothData(FixedImages(images, length), captions, frozen, prior, class_captions)
    held, held_captions, _ = concept.instance(8, resolution, seed=seed + VALIDATION_SEED)
    validation = DreamBoothData(FixedImages(held), held_captions, frozen)
    sample_prompts: list[Prompt | str] = list(prompts or concept_prompts([concept], num_prompts))
    record = {"concept": concept.spec, "token": concept.token, "prompt": captions[0], "class_prompt": class_captions
              and class_captions[0], "images": num_images}  # fmt: skip
    return TrainingSet(data, validation, [to_pil(a) for a in images], sample_prompts, record)
