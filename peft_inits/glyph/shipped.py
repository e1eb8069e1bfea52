"""The shipped glyph-world model as the SD runner's default `--model`, unpacked once into a cache folder.

`--model` absent → the packed model in `assets/glyph-t2i` is unpacked (links to the packed parts and to the installed
MiniLM) into `<cache>/glyph-t2i-<hash of packed.json>` through a temporary sibling and one rename, so a killed run
never leaves a half-made folder and a newly shipped model gets a fresh folder. `--model tiny` is the random tiny
pipeline (fast tests); anything else is a diffusers folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..atomic import replace_directory
from ..diffusion.tiny import TINY
from .assets import GLYPH_T2I, PACKED_MARK, unpack

SHIPPED = "glyph-t2i"  # the default model's name, as runs and adapter datasets record it
DEFAULT_CACHE = "runs/cache"
PARTS = ("model_index.json", "unet", "vae", "scheduler", "tokenizer", "text_encoder")


def model_kind(model: str | None) -> str:
    """'glyph' (the shipped default, None or its name), 'tiny' (random tiny pipeline) or 'sd' (a diffusers folder)."""
    if model is None or model == SHIPPED:
        return "glyph"
    return TINY if model == TINY else "sd"


def runner_family(model: str | None) -> str:
    """Whose registered defaults (learning rate, rank) apply: 'glyph' for the shipped model, else 'sd'."""
    return "glyph" if model_kind(model) == "glyph" else "sd"


def model_name(model: str | None) -> str:
    """What a run records for `--model`: the shipped model's name, 'tiny', or the folder's absolute path."""
    kind = model_kind(model)
    return {"glyph": SHIPPED, TINY: TINY}.get(kind) or str(Path(model).expanduser().resolve())


def shipped_model(cache_dir: str | Path | None = None, packed: Path = GLYPH_T2I) -> Path:
    """The unpacked shipped model in `cache_dir` (made on first use; reused while every link still resolves)."""
    mark = packed / PACKED_MARK
    if not mark.is_file():
        raise FileNotFoundError(f"the shipped model {packed} is missing its {PACKED_MARK}: reinstall peft_inits")
    key = hashlib.sha256(mark.read_bytes()).hexdigest()[:10]
    folder = Path(cache_dir or DEFAULT_CACHE) / f"glyph-t2i-{key}"
    if all((folder / part).exists() for part in PARTS):  # exists() follows links: a moved checkout re-unpacks
        return folder
    with replace_directory(folder, keep_other_files=False) as tmp:
        unpack(packed, tmp)
    return folder


def model_path(model: str | None, cache_dir: str | Path | None = None) -> str | None:
    """The folder `load_pipeline` reads for `--model` (None: the tiny pipeline)."""
    kind = model_kind(model)
    if kind == "glyph":
        return str(shipped_model(cache_dir))
    return None if kind == TINY else model
