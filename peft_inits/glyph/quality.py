"""How well a glyph-world model draws what it is asked: the judge's per-attribute accuracy on generated samples.

A fixed prompt set (scenes drawn from the training world with its own seed) is rendered by the model with DPM++ 2M
Karras; the judge (trained on rendered images only) names each attribute of each sample. Two references frame the
numbers: the judge's accuracy on fresh renders (its own ceiling) and on the same renders passed through the model's
VAE (the ceiling of anything decoded by that VAE).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.metrics import JudgeScorer
from ..diffusion.sampling import generate, save_grid
from .judge import ATTRIBUTES, JudgeSettings, cached_judge
from .pretrain import to_pixels
from .world import World

PROMPT_SEED = 77


def prompt_scenes(count: int, seed: int = PROMPT_SEED) -> list:
    """The fixed prompt set: `count` scenes of the training world (seed 77, never a training seed)."""
    return World(seed=seed).images(count)[1]


@torch.no_grad()
def vae_round_trip(vae, images: np.ndarray) -> list:
    """Images encoded to the posterior mean and decoded, as PIL (what the VAE alone does to a render)."""
    from .world import to_pil

    pixels = to_pixels(images).to(next(vae.parameters()).dtype)
    decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    arrays = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [to_pil(a) for a in arrays]


def measure(
    pipe,
    *,
    judge=None,
    cache_dir: str | Path = "runs/cache",
    prompts: int = 48,
    seeds: tuple[int, ...] = (0, 1),
    steps: int = 25,
    guidance: float = 4.0,
    output_dir: str | Path | None = None,
    judge_settings: JudgeSettings | None = None,
) -> dict[str, Any]:
    """Per-attribute accuracy of samples (and of the two references); writes quality.json and a grid when asked."""
    from .world import to_pil

    judge = judge or cached_judge(cache_dir, judge_settings)
    scorer = JudgeScorer(judge)
    scenes = prompt_scenes(prompts)
    targets = [{a: getattr(s, a) for a in ATTRIBUTES} for s in scenes]
    started = time.perf_counter()
    rows = generate(pipe, [s.caption() for s in scenes], list(seeds), steps=steps, guidance=guidance)
    sample_s = (time.perf_counter() - started) / (len(scenes) * len(seeds))
    samples = [image for row in rows for image in row]
    sample_targets = [t for t in targets for _ in seeds]
    renders = World(seed=PROMPT_SEED).images(prompts)[0]
    report = {
        "prompts": prompts,
        "seeds": list(seeds),
        "sample_steps": steps,
        "guidance": guidance,
        "sample_time_per_image_s": sample_s,
        "samples": scorer.accuracy(samples, sample_targets),
        "samples_prompt_fidelity": float(scorer.prompt_scores(samples, sample_targets).mean()),
        "renders": scorer.accuracy([to_pil(a) for a in renders], targets),
        "vae_round_trip": scorer.accuracy(vae_round_trip(pipe.vae, renders), targets),
        "judge": asdict(judge_settings or JudgeSettings()),
    }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
        shown = min(prompts, 12)
        pairs = [[to_pil(renders[i]).resize((64, 64)), *(im.resize((64, 64)) for im in rows[i])] for i in range(shown)]
        save_grid(pairs, out / "quality_samples.png", [scenes[i].caption() for i in range(shown)])
    return report
