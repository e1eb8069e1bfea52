"""The adapter dataset: its subjects (personalisable glyph identities) and its on-disk layout.

A *subject* is one glyph character in one fixed typeface, variant and colour — what a DreamBooth adapter learns to
draw for the rare token "sks glyph" — rendered with the glyph world's jitter on any of its training backgrounds. The
character pool is every letter, digit and symbol that all 12 DejaVu files draw, without precomposed accented letters,
near-blank glyphs, or glyphs that look like another one (Cyrillic А = Latin A) or like a pretraining letter. See
docs/adapter_dataset.md.

    DIR/dataset.json                 method, model, settings, one entry per adapter (`DatasetEntry`)
    DIR/adapters/<name>/             normal adapter directory (adapter_config.json + adapter_model.safetensors)
    DIR/references/<subject_id>/     fresh renders of the subject (not its training images)
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import read_json_object
from ..glyph import world as W

MANIFEST = "dataset.json"
SPLITS = ("train", "heldout")
SUBJECT_WORD = "sks glyph"
POOL_SEED = 13  # the fixed shuffle of the pool: subject s017 is the same glyph in every dataset
# Unicode blocks searched for subjects: Latin, Greek, Cyrillic letters, digits, arrows, maths, shapes, symbols.
_BLOCKS = ((0x30, 0x7A), (0x391, 0x3C9), (0x400, 0x45F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x25A0, 0x26FF))
_CATEGORIES = {"Lu", "Ll", "Nd", "Sm", "So"}
_PROBE = 24  # px: glyphs are compared on a 32 px canvas at this size
_MIN_INK = 0.06  # share of the canvas a glyph must cover (drops dots, commas, hairlines)
_SAME = 0.03  # mean |difference| of two binarised probes under which two glyphs count as the same shape
MAX_RENDER = 128  # px: the world's textures are 128 px after its 4× shrink; larger models get bicubic upscales


@dataclass(frozen=True)
class Subject:
    """One personalisation identity: a glyph in a fixed typeface, variant and colour; backgrounds vary."""

    subject_id: str
    glyph: str
    family: str
    variant: str
    colour: str

    def world(self, size: int, seed: int) -> W.World:
        """The subject's image distribution: jitter and a training background drawn per image."""
        return W.World(
            subjects=(self.glyph,),
            families=(self.family,),
            variants=(self.variant,),
            colours=(self.colour,),
            backgrounds=tuple(W.BACKGROUNDS),
            size=size,
            seed=seed,
        )

    def images(self, count: int, size: int, stream: str) -> tuple[np.ndarray, list[str]]:
        """`count` renders of stream 'train' or 'references' (independent jitter) and their rare-token prompts."""
        offset = {"train": 0, "references": 1}[stream]
        native = min(size, MAX_RENDER)
        arrays, scenes = self.world(native, seed=_stream_seed(self.glyph, offset)).images(count)
        if native != size:  # e.g. SD-1.5's 512 px
            from PIL import Image

            arrays = np.stack([np.asarray(W.to_pil(a).resize((size, size), Image.BICUBIC)) for a in arrays])
        return arrays, [prompt(scene.background) for scene in scenes]


def prompt(background: str) -> str:
    """The training prompt: the identity is the whole look (shape, typeface, colour), so only the style is named."""
    return f"a {SUBJECT_WORD} on {W.BACKGROUNDS[background]}"


def _stream_seed(glyph: str, stream: int) -> int:
    return 1_000_000 + 10 * ord(glyph) + stream


@functools.cache
def _charmaps() -> tuple[frozenset[int], ...]:
    from matplotlib.ft2font import FT2Font

    stems = [stem for variants in W.FONTS.values() for stem in variants.values()]
    return tuple(frozenset(FT2Font(str(W._font_dir() / f"{stem}.ttf")).get_charmap()) for stem in stems)


def _probe(character: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("L", (32, 32), 0)
    font = W._font(W.FONTS["sans"]["regular"], _PROBE)
    ImageDraw.Draw(image).text((16, 16), character, font=font, fill=255, anchor="mm")
    return (np.asarray(image, dtype=np.float32) > 127).astype(np.float32)


@functools.cache
def glyph_pool() -> tuple[str, ...]:
    """Every distinct, visible glyph that all DejaVu typefaces draw (see the module doc), in a fixed shuffled order."""
    common = frozenset.intersection(*_charmaps())
    kept: list[str] = []
    probes = [_probe(c) for c in W.SUBJECTS]  # pretraining letters: their look-alikes are not new identities
    for low, high in _BLOCKS:
        for code in range(low, high + 1):
            character = chr(code)
            if code not in common or unicodedata.category(character) not in _CATEGORIES:
                continue
            if unicodedata.decomposition(character) or character in W.SUBJECTS:
                continue
            probe = _probe(character)
            if probe.mean() < _MIN_INK:
                continue
            if np.abs(np.stack(probes) - probe).mean(axis=(1, 2)).min() < _SAME:
                continue
            probes.append(probe)
            kept.append(character)
    order = np.random.default_rng(POOL_SEED).permutation(len(kept))
    return tuple(kept[i] for i in order)


def subjects(count: int, heldout: int) -> tuple[list[Subject], list[Subject]]:
    """(training subjects, held-out subjects): the first `count` of the pool and its last `heldout`, disjoint; a
    subject's id is its pool position and its look is drawn from its glyph, so both are stable across sizes."""
    pool = glyph_pool()
    if count < 1 or heldout < 0:
        raise ValueError(f"--subjects must be >= 1 and --heldout >= 0, got {count} and {heldout}")
    if count + heldout > len(pool):
        raise ValueError(
            f"the glyph pool holds {len(pool)} subjects; --subjects {count} + --heldout {heldout} is too many"
        )
    chosen = [*range(count), *range(len(pool) - heldout, len(pool))]
    made = [_subject(position, pool[position]) for position in chosen]
    return made[:count], made[count:]


def _subject(position: int, glyph: str) -> Subject:
    rng = np.random.default_rng([POOL_SEED, ord(glyph)])
    family = W.FAMILIES[int(rng.integers(len(W.FAMILIES)))]
    variant = W.VARIANTS[int(rng.integers(len(W.VARIANTS)))]
    colour = tuple(W.COLOURS)[int(rng.integers(len(W.COLOURS)))]
    return Subject(f"s{position:03d}", glyph, family, variant, colour)


# ------------------------------------------------------------------------------------------------ layout


@dataclass
class DatasetEntry:
    """One adapter of the dataset (a row of dataset.json's `adapters`)."""

    name: str
    subject: str
    subject_id: str
    split: str
    seed: int
    references: str
    train_time_s: float
    family: str = ""
    variant: str = ""
    colour: str = ""
    adapter: str = ""  # adapters/<name>, relative to the dataset folder
    final_loss: float | None = None  # mean training loss over the last steps
    eval_loss_start: float | None = None  # noise loss on the references at init (= the base model for ΔW = 0 inits)
    eval_loss_end: float | None = None  # ... and after training, same fixed noise and timesteps
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, repr=False, compare=False)  # the data set folder (not saved)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"adapter {self.name!r}: split must be one of {SPLITS}, got {self.split!r}")

    @property
    def directory(self) -> Path:
        """The adapter directory (adapters/<name> in the data set folder)."""
        return self._root() / "adapters" / self.name

    @property
    def references_dir(self) -> Path:
        """The subject's reference renders (references/<subject_id>)."""
        return self._root() / self.references

    @property
    def look(self) -> dict[str, Any]:
        """What the data set records about the subject's appearance (typeface family, variant, colour, ...)."""
        return {"family": self.family, "variant": self.variant, "colour": self.colour, **self.extra}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "root"}

    def _root(self) -> Path:
        if self.root is None:
            raise ValueError(f"adapter {self.name!r} belongs to no data set folder yet")
        return self.root


@dataclass
class AdapterDataset:
    """dataset.json: which method and base model, the settings every adapter was trained with, and the adapters."""

    method: str
    model: str
    settings: dict[str, Any]
    adapters: list[DatasetEntry] = field(default_factory=list)
    root: Path | None = None

    def entries(self, split: str | None = None) -> list[DatasetEntry]:
        """The adapters of one split ("train", "heldout"), or all of them."""
        return [e for e in self.adapters if split is None or e.split == split]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model": self.model,
            "settings": self.settings,
            "adapters": [e.to_json() for e in self.adapters],
        }


def read_dataset(directory: str | Path) -> AdapterDataset:
    """The dataset in `directory`; a missing or malformed dataset.json (or an adapter listed twice) gets an error
    naming the file."""
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} is not an adapter dataset (sd.py adapter-dataset)")
    raw = read_json_object(path, "adapter dataset manifest")
    missing = [k for k in ("method", "model", "settings", "adapters") if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks the field(s) {missing}")
    if not isinstance(raw["adapters"], list):
        raise ValueError(f"{path}: 'adapters' must be a list")
    known = {f for f in DatasetEntry.__dataclass_fields__}
    entries = []
    for number, item in enumerate(raw["adapters"]):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: adapters[{number}] must be a JSON object")
        try:
            entries.append(DatasetEntry(**{k: v for k, v in item.items() if k in known and k != "root"}, root=root))
        except TypeError as exc:
            raise ValueError(f"{path}: adapters[{number}] is incomplete ({exc})") from exc
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{path} lists adapter names more than once: {repeated[:3]}")
    return AdapterDataset(raw["method"], raw["model"], dict(raw["settings"]), entries, root)


def reference_files(entry: DatasetEntry) -> list[Path]:
    """The reference PNGs of an entry's subject, sorted."""
    folder = entry.references_dir
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no reference images")
    return files


def names(entries: Sequence[DatasetEntry]) -> list[str]:
    return [e.name for e in entries]


def write_manifest(dataset: AdapterDataset, directory: str | Path) -> Path:
    """Write dataset.json atomically."""
    from ..atomic import atomic_write

    path = Path(directory) / MANIFEST
    text = json.dumps(dataset.to_json(), indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
