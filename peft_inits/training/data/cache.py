"""Where cached splits and pretrained checkpoints live: `--cache-dir`, else $PEFT_INITS_CACHE, else
~/.cache/peft_inits."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit is not None:
        root = Path(explicit)
    elif os.environ.get("PEFT_INITS_CACHE"):
        root = Path(os.environ["PEFT_INITS_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peft_inits"
    root.mkdir(parents=True, exist_ok=True)
    return root
