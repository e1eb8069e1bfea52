"""The glyph world: captioned images of coloured glyphs in real fonts on textured backgrounds, built offline.

Every image is a glyph (the *subject*) drawn in one of matplotlib's shipped fonts (typeface + variant), in a colour,
jittered in position, scale and rotation, with a contrasting outline, on a background (the *style*): a real texture
from scikit-image (brick, grass, gravel) or a procedural pattern (stripes, checks, dots, noise, plain). Each image has
a caption such as "a red bold serif letter q on a brick wall". Scene i of a world is a pure function of (seed, i), so
a data set is reproducible item by item and in any order.

Some subjects, typefaces, colours and backgrounds never appear in the default (training) world: they are kept for
DreamBooth identity / style adapters and ablations on concepts the pretrained model has never seen. See
docs/glyph_world.md for the design and the split.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 32

# Subjects: uppercase letters with distinct shapes (MiniLM's tokenizer is uncased, so captions say "letter q").
SUBJECTS = tuple("ABCDEFGHKMNPRSTX")
HELD_OUT_SUBJECTS = ("2", "7", "♣", "♥", "Ω", "§", "&", "@")

# Typefaces: file name stems of matplotlib's DejaVu fonts per variant.
VARIANTS = ("regular", "bold", "italic", "bold italic")
FONTS: dict[str, dict[str, str]] = {
    "sans": {
        "regular": "DejaVuSans",
        "bold": "DejaVuSans-Bold",
        "italic": "DejaVuSans-Oblique",
        "bold italic": "DejaVuSans-BoldOblique",
    },
    "serif": {
        "regular": "DejaVuSerif",
        "bold": "DejaVuSerif-Bold",
        "italic": "DejaVuSerif-Italic",
        "bold italic": "DejaVuSerif-BoldItalic",
    },
    "monospace": {
        "regular": "DejaVuSansMono",
        "bold": "DejaVuSansMono-Bold",
        "italic": "DejaVuSansMono-Oblique",
        "bold italic": "DejaVuSansMono-BoldOblique",
    },
}
HELD_OUT_FONTS: dict[str, dict[str, str]] = {
    "roman": {"regular": "cmr10", "italic": "cmti10"},  # Computer Modern
    "stix": {
        "regular": "STIXGeneral",
        "bold": "STIXGeneralBol",
        "italic": "STIXGeneralItalic",
        "bold italic": "STIXGeneralBolIta",
    },
}
FAMILIES = tuple(FONTS)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 215, 40),
    "orange": (250, 140, 30),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
HELD_OUT_COLOURS: dict[str, tuple[int, int, int]] = {"pink": (255, 120, 190), "cyan": (40, 220, 230)}

# Background name → caption phrase.
BACKGROUNDS: dict[str, str] = {
    "brick": "a brick wall",
    "grass": "grass",
    "gravel": "gravel",
    "stripes": "stripes",
    "checks": "a checkerboard",
    "dots": "polka dots",
    "noise": "noise",
    "plain": "a plain background",
}
HELD_OUT_BACKGROUNDS: dict[str, str] = {"rings": "rings", "waves": "waves", "grid": "a grid"}

# Real textures: scikit-image name, the tint the grey texture is multiplied with, the shrink applied before cropping.
_TEXTURES = {
    "brick": ("brick", (1.25, 0.72, 0.55), 4),
    "grass": ("grass", (0.65, 1.15, 0.55), 4),
    "gravel": ("gravel", (1.0, 1.0, 1.0), 4),
}
_MUTED = np.array(
    [
        (200, 200, 200), (110, 110, 110), (150, 120, 90), (90, 120, 150), (120, 150, 100), (170, 150, 120),
        (60, 60, 80), (180, 170, 200), (140, 90, 90), (90, 140, 130), (210, 190, 150), (70, 90, 60),
    ],
    dtype=np.float32,
)  # fmt: skip


@dataclass(frozen=True)
class Scene:
    """What one image shows; `caption()` says it in words."""

    subject: str
    family: str
    variant: str
    colour: str
    background: str

    def caption(self, subject_word: str | None = None, style_word: str | None = None) -> str:
        """'a red bold serif letter q on a brick wall'; `subject_word` / `style_word` replace the glyph / background
        phrase (e.g. a rare DreamBooth token: 'a red bold serif sks glyph on a brick wall')."""
        variant = "" if self.variant == "regular" else f"{self.variant} "
        noun = subject_word or f"{_subject_noun(self.subject)} {self.subject.lower()}"
        where = style_word or _phrase(self.background)
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {variant}{self.family} {noun} on {where}"


def _subject_noun(subject: str) -> str:
    if subject.isascii() and subject.isalpha():
        return "letter"
    return "digit" if subject.isdigit() else "symbol"


def _phrase(background: str) -> str:
    phrases = {**BACKGROUNDS, **HELD_OUT_BACKGROUNDS}
    if background not in phrases:
        raise ValueError(f"unknown background {background!r}; known: {', '.join(phrases)}")
    return phrases[background]


@functools.cache
def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def _font(stem: str, size: int):
    from PIL import ImageFont

    path = _font_dir() / f"{stem}.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"font {path} is missing from this matplotlib installation")
    return ImageFont.truetype(str(path), size)


@functools.cache
def has_glyph(stem: str, character: str) -> bool:
    """Whether font `stem` maps `character` to a real glyph (not the missing-glyph box)."""
    from matplotlib.ft2font import FT2Font

    return FT2Font(str(_font_dir() / f"{stem}.ttf")).get_char_index(ord(character)) != 0


@functools.cache
def _texture(name: str) -> np.ndarray:
    """A grey scikit-image texture, shrunk so a SIZE² crop shows a few bricks / blades / stones, as float [0, 1]."""
    from PIL import Image
    from skimage import data

    source, _, shrink = _TEXTURES[name]
    array = getattr(data, source)()
    image = Image.fromarray(array).convert("L")
    image = image.resize((image.width // shrink, image.height // shrink), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = rng.choice(len(_MUTED), size=2, replace=False)
    return _MUTED[first], _MUTED[second]


def _mix(mask: np.ndarray, one: np.ndarray, two: np.ndarray) -> np.ndarray:
    return mask[..., None] * one + (1.0 - mask[..., None]) * two


def background(name: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A size×size×3 float image in [0, 255] of background `name`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if name in _TEXTURES:
        texture = _texture(name)
        top = int(rng.integers(texture.shape[0] - size + 1))
        left = int(rng.integers(texture.shape[1] - size + 1))
        crop = texture[top : top + size, left : left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        tint = np.array(_TEXTURES[name][1], dtype=np.float32) * rng.uniform(0.85, 1.15)
        return np.clip(crop[..., None] * 255.0 * tint, 0, 255)
    one, two = _two_colours(rng)
    if name == "plain":
        ramp = (np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy) / size
        return np.clip(one + 25.0 * ramp[..., None], 0, 255)
    if name == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 9)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period + rng.random()
        return _mix((phase % 1.0 < 0.5).astype(np.float32), one, two)
    if name == "checks":
        cell = int(rng.integers(4, 9))
        dy, dx = rng.integers(cell, size=2)
        return _mix((((yy + dy) // cell + (xx + dx) // cell) % 2).astype(np.float32), one, two)
    if name == "dots":
        step = rng.uniform(7, 10)
        oy, ox = rng.uniform(0, step, size=2)
        radius = rng.uniform(0.22, 0.32) * step
        dist = np.hypot((yy + oy) % step - step / 2, (xx + ox) % step - step / 2)
        return _mix(np.clip(radius + 0.5 - dist, 0, 1), one, two)
    if name == "noise":
        grey = rng.uniform(0.0, 1.0, size=(size, size)).astype(np.float32)
        return _mix(grey, one, two)
    if name == "rings":
        cy, cx = rng.uniform(0, size, size=2)
        period = rng.uniform(5, 8)
        return _mix(((np.hypot(yy - cy, xx - cx) / period) % 1.0 < 0.5).astype(np.float32), one, two)
    if name == "waves":
        period, amplitude = rng.uniform(6, 10), rng.uniform(2, 4)
        wave = yy + amplitude * np.sin(2 * np.pi * xx / rng.uniform(10, 16) + rng.uniform(0, 2 * np.pi))
        return _mix(((wave / period) % 1.0 < 0.5).astype(np.float32), one, two)
    if name == "grid":
        cell = int(rng.integers(6, 10))
        lines = ((yy + rng.integers(cell)) % cell < 1.5) | ((xx + rng.integers(cell)) % cell < 1.5)
        return _mix(lines.astype(np.float32), one, two)
    raise ValueError(f"unknown background {name!r}; known: {', '.join([*BACKGROUNDS, *HELD_OUT_BACKGROUNDS])}")


def _glyph_masks(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill and outline coverage of the jittered glyph, as size×size floats in [0, 1]."""
    from PIL import Image, ImageDraw

    fonts = {**FONTS, **HELD_OUT_FONTS}
    if scene.family not in fonts:
        raise ValueError(f"unknown typeface {scene.family!r}; known: {', '.join(fonts)}")
    if scene.variant not in fonts[scene.family]:
        choices = ", ".join(fonts[scene.family])
        raise ValueError(f"typeface {scene.family!r} has no {scene.variant!r} variant; it has: {choices}")
    stem = fonts[scene.family][scene.variant]
    if not has_glyph(stem, scene.subject):
        raise ValueError(f"font {stem}.ttf ({scene.family} {scene.variant}) has no glyph for {scene.subject!r}")
    font_size = int(rng.integers(round(0.6 * size), round(0.82 * size) + 1))
    angle = float(rng.uniform(-20, 20))
    shift = rng.integers(-size // 8, size // 8 + 1, size=2)
    canvas = int(size * 1.5)
    font = _font(stem, font_size)
    masks = []
    for stroke in (0, max(1, size // 32)):
        image = Image.new("L", (canvas, canvas), 0)
        ImageDraw.Draw(image).text(
            (canvas / 2, canvas / 2), scene.subject, font=font, fill=255, anchor="mm", stroke_width=stroke,
            stroke_fill=255,
        )  # fmt: skip
        image = image.rotate(angle, resample=Image.BICUBIC, center=(canvas / 2, canvas / 2))
        top, left = (canvas - size) // 2 - int(shift[0]), (canvas - size) // 2 - int(shift[1])
        masks.append(np.asarray(image, dtype=np.float32)[top : top + size, left : left + size] / 255.0)
    return masks[0], masks[1]


def render(scene: Scene, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """The size×size×3 uint8 image of `scene`, with the jitter drawn from `rng`."""
    colours = {**COLOURS, **HELD_OUT_COLOURS}
    if scene.colour not in colours:
        raise ValueError(f"unknown colour {scene.colour!r}; known: {', '.join(colours)}")
    fill = np.array(colours[scene.colour], dtype=np.float32)
    outline = np.full(3, 20.0 if fill.mean() > 110 else 240.0, dtype=np.float32)
    base = background(scene.background, rng, size)
    inner, outer = _glyph_masks(scene, rng, size)
    image = _mix(outer, outline, base)
    image = _mix(inner, fill, image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class World:
    """A distribution over scenes: each attribute uniform over its choices, independent of the others.

    The default is the pretraining world; held-out worlds are made by passing other choices, e.g.
    `World(subjects=("★",))` for a DreamBooth identity or `World(backgrounds=("rings",))` for a style.
    """

    subjects: Sequence[str] = SUBJECTS
    families: Sequence[str] = FAMILIES
    variants: Sequence[str] = VARIANTS
    colours: Sequence[str] = tuple(COLOURS)
    backgrounds: Sequence[str] = tuple(BACKGROUNDS)
    size: int = SIZE
    seed: int = 0

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def scene(self, index: int) -> Scene:
        return self._draw(self._rng(index))

    def _draw(self, rng: np.random.Generator) -> Scene:
        fonts = {**FONTS, **HELD_OUT_FONTS}
        family = self.families[int(rng.integers(len(self.families)))]
        if family not in fonts:
            raise ValueError(f"unknown typeface {family!r}; known: {', '.join(fonts)}")
        subject = self.subjects[int(rng.integers(len(self.subjects)))]
        variants = [v for v in self.variants if v in fonts[family] and has_glyph(fonts[family][v], subject)]
        if not variants:
            raise ValueError(f"no variant of typeface {family!r} among {list(self.variants)} draws {subject!r}")
        return Scene(
            subject=subject,
            family=family,
            variant=variants[int(rng.integers(len(variants)))],
            colour=self.colours[int(rng.integers(len(self.colours)))],
            background=self.backgrounds[int(rng.integers(len(self.backgrounds)))],
        )

    def item(self, index: int) -> tuple[np.ndarray, Scene]:
        """Image and scene number `index` (the same on every call, machine and order)."""
        rng = self._rng(index)
        scene = self._draw(rng)
        return render(scene, rng, self.size), scene

    def images(self, count: int, start: int = 0) -> tuple[np.ndarray, list[Scene]]:
        """Items start … start+count-1 as one (count, size, size, 3) uint8 array and their scenes."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        array = np.empty((count, self.size, self.size, 3), dtype=np.uint8)
        scenes = []
        for offset in range(count):
            array[offset], scene = self.item(start + offset)
            scenes.append(scene)
        return array, scenes


def to_pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array))


def grid(arrays: np.ndarray | Sequence[np.ndarray], columns: int = 8, scale: int = 2):
    """A PIL contact sheet of images (for docs and eyeballing)."""
    from PIL import Image

    arrays = list(arrays)
    size = arrays[0].shape[0]
    rows = -(-len(arrays) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), "white")
    for index, array in enumerate(arrays):
        sheet.paste(to_pil(array), ((index % columns) * size, (index // columns) * size))
    return sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)


def attribute_values(attribute: str, held_out: bool = False) -> tuple[str, ...]:
    """The values of one scene attribute in the training world (or the held-out ones)."""
    table = {
        "subject": (SUBJECTS, HELD_OUT_SUBJECTS),
        "family": (FAMILIES, tuple(HELD_OUT_FONTS)),
        "variant": (VARIANTS, ()),
        "colour": (tuple(COLOURS), tuple(HELD_OUT_COLOURS)),
        "background": (tuple(BACKGROUNDS), tuple(HELD_OUT_BACKGROUNDS)),
    }
    if attribute not in table:
        raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(table)}")
    return table[attribute][1 if held_out else 0]
