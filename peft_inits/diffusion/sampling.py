"""Sampling with DPM++ 2M Karras and image grids saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.0


def dpmpp_2m_karras(scheduler_config):
    """DPM++ 2M Karras: diffusers' multistep DPM-Solver++ (order 2) with Karras sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        scheduler_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    negative_prompt: str | None = None,
    progress: bool = False,
) -> list[list]:
    """Images[prompt][seed]: each image from its own seeded generator, so a grid is reproducible cell by cell."""
    sampler = dpmpp_2m_karras(pipe.scheduler.config)
    original = pipe.scheduler
    pipe.scheduler = sampler
    pipe.set_progress_bar_config(disable=not progress)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    try:
        rows = []
        for prompt in prompts:
            row = []
            for seed in seeds:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                output = pipe(
                    prompt,
                    negative_prompt=negative_prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    height=size,
                    width=size,
                    generator=generator,
                    output_type="pil",
                )
                row.append(output.images[0])
            rows.append(row)
    finally:
        pipe.scheduler = original
    return rows


def generate_batched(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> list[list]:
    """`generate` in one pipeline call (every prompt × seed a row of one batch, each with its own seeded generator):
    faster on a small model; the same starting noise, not bit-identical images (batched kernels round differently)."""
    original, pipe.scheduler = pipe.scheduler, dpmpp_2m_karras(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    try:
        images = pipe(
            [p for p in prompts for _ in seeds],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=[torch.Generator(device="cpu").manual_seed(s) for _ in prompts for s in seeds],
            output_type="pil",
        ).images
    finally:
        pipe.scheduler = original
    return [images[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]


def save_grid(rows: Sequence[Sequence], path: str | Path, row_labels: Sequence[str] | None = None) -> Path:
    """Paste images[row][col] into one PNG, with an optional label strip left of each row."""
    from PIL import Image, ImageDraw

    width, height = rows[0][0].size
    label_width = 0 if row_labels is None else max(80, 7 * max(len(label) for label in row_labels) + 8)
    grid = Image.new("RGB", (label_width + width * max(len(r) for r in rows), height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        if row_labels is not None:
            draw.text((4, i * height + height // 2 - 6), row_labels[i], fill="black")
        for j, image in enumerate(row):
            grid.paste(image, (label_width + j * width, i * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path
