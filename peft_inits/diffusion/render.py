"""Batched DPM++ 2M Karras sampling: many (prompt, seed) cells per pipeline call, each from its own seeded generator.

The latents of a cell come from `torch.Generator().manual_seed(seed)` exactly as in `sampling.generate`, so a cell is
the same image whatever batch it lands in (up to float rounding of batched matmuls); batching 16 cells makes the
glyph model ~3× faster per image on one CPU thread (0.47 → 0.14 s, 2026-12-02).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .sampling import DEFAULT_STEPS, dpmpp_2m_karras


def render(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = 4.0,
    batch: int = 16,
    progress=None,
) -> list[list]:
    """Images[prompt][seed] as PIL; `progress` (a tqdm bar) advances by one per image."""
    cells = [(p, s) for p in prompts for s in seeds]
    original = pipe.scheduler
    pipe.scheduler = dpmpp_2m_karras(original.config)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    try:
        for start in range(0, len(cells), batch):
            chunk = cells[start : start + batch]
            output = pipe(
                [p for p, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=[torch.Generator(device="cpu").manual_seed(s) for _, s in chunk],
                output_type="pil",
            )
            images.extend(output.images)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        pipe.scheduler = original
    return [images[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]
