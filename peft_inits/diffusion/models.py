"""SD pipelines to adapt: a local diffusers folder (SD-1.x/2.x layout, the unpacked glyph model) or the random tiny
one. Library code (the ablation, adapter datasets, style descriptors, the generator's evaluation) loads pipelines
here, never through the SD command line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .tiny import TINY


def load_pipeline(path: str | None, dtype: torch.dtype = torch.float32):
    """A diffusers SD pipeline from a local folder (SD-1.x/2.x layout, the unpacked glyph model), or the tiny one."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if path is None or path == TINY:
        from .tiny import tiny_pipeline

        return tiny_pipeline()
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--model {root} does not exist")
    if not (root / "unet").is_dir() or not (root / "model_index.json").is_file():
        raise ValueError(
            f"--model {root} is not a diffusers SD checkpoint: it needs model_index.json and a unet/ folder"
        )
    with _quiet_loading():
        pipe = StableDiffusionPipeline.from_pretrained(
            str(root), dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return pipe


@contextlib.contextmanager
def _quiet_loading():
    """No loading bars and no 'Expected types for text_encoder' note (the glyph model's MiniLM is no CLIP)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
