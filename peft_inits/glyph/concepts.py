"""Glyph-world concepts for adapters: `--data glyph:subject=♣` or `glyph:background=rings`.

A concept fixes one attribute of the world (the subject or the background) to one value; everything else varies.
Its training images are renders of that world, each captioned with the learned value replaced by a rare token
("a red serif sks glyph on a brick wall", "a blue sans letter k on a sks wall"), so the adapter binds the token to
the concept and nothing else: every other attribute is named in the caption and varies from image to image.

Prior preservation uses renders of the *training* world, not samples of the base model: image j is the same scene
as instance j with the learned attribute replaced by a training value, captioned in the base wording ("a red serif
letter k on a brick wall"). The base model was pretrained on exactly these renders, so the prior term is its own
pretraining loss on the attributes the concept shares, which is what DreamBooth's self-generated class images stand
in for on a model whose training data is unknown; renders are also exact (its samples name the glyph 87 % of the
time) and cost nothing to make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .world import (
    BACKGROUNDS,
    COLOURS,
    FAMILIES,
    HELD_OUT_BACKGROUNDS,
    HELD_OUT_COLOURS,
    HELD_OUT_FONTS,
    HELD_OUT_SUBJECTS,
    SIZE,
    SUBJECTS,
    VARIANTS,
    Scene,
    World,
    render,
)

GLYPH_PREFIX = "glyph:"
LEARNABLE = {
    "subject": tuple(SUBJECTS) + HELD_OUT_SUBJECTS,
    "background": tuple(BACKGROUNDS) + tuple(HELD_OUT_BACKGROUNDS),
}
PROMPT_SEED = 555  # scenes of sample prompts: never a training seed
REFERENCE_SEED = 777  # renders that metrics compare samples with


def is_glyph(data: str | None) -> bool:
    return bool(data) and data.startswith(GLYPH_PREFIX)


@dataclass(frozen=True)
class GlyphConcept:
    """One attribute of the glyph world fixed to one value, learned under a rare token."""

    attribute: str
    value: str
    token: str = "sks"

    @classmethod
    def parse(cls, spec: str, token: str = "sks") -> GlyphConcept:
        """'glyph:subject=♣' → GlyphConcept('subject', '♣', token); errors name the accepted values."""
        if not is_glyph(spec):
            raise ValueError(f"--data {spec!r} is not a glyph-world concept (glyph:subject=… or glyph:background=…)")
        body = spec[len(GLYPH_PREFIX) :]
        attribute, sep, value = body.partition("=")
        if not sep or attribute not in LEARNABLE:
            raise ValueError(f"--data {spec!r}: write glyph:subject=VALUE or glyph:background=VALUE")
        if value not in LEARNABLE[attribute]:
            raise ValueError(f"--data {spec!r}: unknown {attribute} {value!r}; known: {' '.join(LEARNABLE[attribute])}")
        if not token or not token.isalnum():
            raise ValueError(f"the rare token must be one alphanumeric word, got {token!r}")
        return cls(attribute, value, token)

    @property
    def spec(self) -> str:
        return f"{GLYPH_PREFIX}{self.attribute}={self.value}"

    @property
    def word(self) -> str:
        """What replaces the learned value in captions: 'sks glyph' or 'a sks wall'."""
        return f"{self.token} glyph" if self.attribute == "subject" else f"a {self.token} wall"

    def caption_words(self) -> dict[str, str]:
        return {"subject_word" if self.attribute == "subject" else "style_word": self.word}

    def world(self, seed: int = 0, size: int = SIZE, **fixed: Sequence[str]) -> World:
        """The world with this concept's attribute fixed (and any other `fixed` choices, e.g. backgrounds=(…,))."""
        choices = {"subjects" if self.attribute == "subject" else "backgrounds": (self.value,), **fixed}
        return World(seed=seed, size=size, **choices)

    def instance(self, count: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, list[str], list[Scene]]:
        """`count` renders of the concept's world and their token captions."""
        images, scenes = self.world(seed, size).images(count)
        return images, [s.caption(**self.caption_words()) for s in scenes], scenes

    def prior(self, scenes: Sequence[Scene], size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, list[str]]:
        """Class images: each scene with the learned attribute set to a training value, and its base caption."""
        pool = [v for v in (SUBJECTS if self.attribute == "subject" else tuple(BACKGROUNDS)) if v != self.value]
        images, captions = [], []
        for index, scene in enumerate(scenes):
            rng = np.random.default_rng([seed, index, 1])
            swapped = replace(scene, **{self.attribute: pool[int(rng.integers(len(pool)))]})
            images.append(render(swapped, rng, size))
            captions.append(swapped.caption())
        return np.stack(images), captions

    def references(self, count: int, size: int = SIZE) -> np.ndarray:
        """Fresh renders of the concept (a seed no training or prompt set uses), for fidelity metrics."""
        return self.world(REFERENCE_SEED, size).images(count)[0]


def scene_attributes(scene: Scene) -> dict[str, str]:
    return {"subject": scene.subject, "family": scene.family, "variant": scene.variant, "colour": scene.colour,
            "background": scene.background}  # fmt: skip


@dataclass(frozen=True)
class Prompt:
    """A sample prompt and what it asks for: every attribute, and which of them the adapters learned."""

    text: str
    attributes: dict[str, str]
    learned: tuple[str, ...]

    @property
    def prompted(self) -> dict[str, str]:
        """The attributes the prompt names in words (prompt fidelity: the CLIP-T role)."""
        return {a: v for a, v in self.attributes.items() if a not in self.learned}


def concept_prompts(concepts: Sequence[GlyphConcept], count: int, seed: int = PROMPT_SEED) -> list[Prompt]:
    """`count` prompts that ask for all `concepts` at once (e.g. 'a red serif sks glyph on a zwx wall')."""
    if len({c.attribute for c in concepts}) != len(concepts):
        raise ValueError("concepts to combine must fix different attributes (one subject, one background)")
    if len({c.token for c in concepts}) != len(concepts):
        raise ValueError(f"concepts to combine need different tokens, got {[c.token for c in concepts]}")
    fixed = {("subjects" if c.attribute == "subject" else "backgrounds"): (c.value,) for c in concepts}
    scenes = World(seed=seed, **fixed).images(count)[1]
    words = {k: v for c in concepts for k, v in c.caption_words().items()}
    learned = tuple(c.attribute for c in concepts)
    return [Prompt(s.caption(**words), scene_attributes(s), learned) for s in scenes]


_COLOURS = {*COLOURS, *HELD_OUT_COLOURS}
_FAMILIES = {*FAMILIES, *HELD_OUT_FONTS}
_VARIANT_WORDS = {"bold", "italic"}


def worded_attributes(caption: str) -> dict[str, str] | None:
    """Colour, variant and typeface named by a glyph-world caption ('a red bold serif …'), or None if it is not one."""
    words = caption.split()
    if len(words) < 4 or words[0] not in ("a", "an") or words[1] not in _COLOURS:
        return None
    variant_words = []
    index = 2
    while index < len(words) and words[index] in _VARIANT_WORDS:
        variant_words.append(words[index])
        index += 1
    if index >= len(words) or words[index] not in _FAMILIES:
        return None
    variant = " ".join(variant_words) or "regular"
    if variant not in VARIANTS:
        return None
    return {"colour": words[1], "variant": variant, "family": words[index]}
