"""Train one adapter on an SD pipeline's U-Net: DreamBooth / style data in, a run directory with the adapter, a
final sample grid and (given a scorer) its scores out. The SD command line and the Block-wise ablation both call
`train_adapter`; neither builds argv for the other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..training.run import execute
from ..training.settings import AdapterSettings, TrainSettings
from .objective import Frozen, diffusion_task
from .render import render
from .sampling import DEFAULT_STEPS, save_grid
from .trainset import TrainingSet, prompt_texts

# (images, their prompts, the reference images) → {"note": ..., metric: value}
Scorer = Callable[[list, list, list], dict[str, Any]]


@dataclass(frozen=True)
class SampleSettings:
    """The sample grid drawn at each checkpoint and at the end: every prompt × seed, DPM++ 2M Karras."""

    seeds: tuple[int, ...] = (0, 1)
    steps: int = DEFAULT_STEPS
    guidance: float = 4.0


def device_and_dtype(mixed_precision: str) -> tuple[torch.device, torch.dtype]:
    """Where the frozen VAE and text encoder run: fp32 on CPU, bf16 (or fp16) on a GPU unless told `no`."""
    if not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32
    half = torch.bfloat16 if mixed_precision in ("auto", "bf16") and torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda"), half


def frozen_parts(pipe, mixed_precision: str = "auto") -> Frozen:
    """The pipeline's frozen VAE, text encoder, tokenizer and noise schedule, on the training device."""
    device, dtype = device_and_dtype(mixed_precision)
    return Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(device, dtype)


def native_resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def train_adapter(
    pipe,
    frozen: Frozen,
    data: TrainingSet,
    adapter: AdapterSettings,
    train: TrainSettings,
    sample: SampleSettings,
    output_dir: str | Path,
    *,
    config: dict[str, Any],
    prediction: str | None = None,
    prior_weight: float = 1.0,
    scorer: Callable[[], Scorer] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train `adapter` on `pipe.unet` (wrapped in place), sample the final grid, score it, and return the summary.

    `config` is what config.json records about the model and data (the data's own record is added); `scorer` is
    built only once training is over (judges and CLIP load lazily). A finished run found with `resume` is returned
    as saved."""
    output_dir = Path(output_dir)
    prediction = prediction or pipe.scheduler.config.get("prediction_type", "epsilon")
    task = diffusion_task(
        data.data, frozen, prediction=prediction, prior_weight=prior_weight, validation=data.validation
    )
    prompts = prompt_texts(data.prompts)

    def sample_grid(model: torch.nn.Module, step: int, run_dir: Path) -> None:
        rows = render(pipe, prompts, sample.seeds, steps=sample.steps, guidance=sample.guidance)
        save_grid(rows, run_dir / "samples" / f"step-{step:06d}.png", prompts)

    task.on_checkpoint = sample_grid
    record = dict(config)
    record.update(prompt=data.record.get("prompt"), class_prompt=data.record.get("class_prompt"))
    record.update({k: v for k, v in data.record.items() if k not in ("prompt", "class_prompt")})
    record.update(prediction=prediction)
    summary = execute(
        output_dir=output_dir,
        build_model=lambda: pipe.unet,
        adapter=adapter,
        train_settings=train,
        task=task,
        config=record,
        resume=resume,
        overwrite=overwrite,
    )
    if "samples" in summary:  # a finished run that `resume` found: its samples and scores are already there
        return summary
    started = time.perf_counter()
    rows = render(pipe, prompts, sample.seeds, steps=sample.steps, guidance=sample.guidance)
    per_image = (time.perf_counter() - started) / (len(prompts) * len(sample.seeds))
    grid = save_grid(rows, output_dir / "samples" / "final.png", prompts)
    scores = final_scores(scorer() if scorer else None, data, rows, sample.seeds)
    summary.update(samples=str(grid.relative_to(output_dir)), sample_time_per_image_s=per_image, scores=scores)
    text = json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(output_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return summary


def final_scores(scorer: Scorer | None, data: TrainingSet, rows: list[list], seeds: Sequence[int]) -> dict[str, Any]:
    """Metrics of the final samples against the training images (subject and style fidelity), of the prompted
    attributes, and their diversity; only a note without a scorer."""
    if scorer is None:
        return {"note": "not scored: no scorer given"}
    images = [image for row in rows for image in row]
    prompts = [p for p in data.prompts for _ in seeds]
    return scorer(images, prompts, data.references)
