"""Would K-adapter population training speed up the convergence study's SD task? (issue 21)

    python experiments/population_seeds.py --method lora --lr 9e-3 --seeds 2,3,5 --steps 20

Times, in one process on the shipped glyph model, the optimisation step of the study's SD cell (DreamBooth of ♣,
batch 4, prior preservation, the method at its study rate), three ways:

- `study loop`: `glyph.personalize.train_concept_adapter`, the call the study makes per seed (its median step time);
- `population, K = 1`: the same loss (instance + prior, VAE and text encoder per step, as the study's task computes
  it) on a `Population` of one;
- `population, K`: K seeds of the cell in one U-Net forward, each member with its own renders, data order and
  noise, per-member gradient clipping.

Prints seconds per step per adapter and the ratios; `--output` writes them as JSON. Only speed is measured here:
population members get exactly the updates they would get alone (`tests/core/test_population.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from peft_inits.diffusion.models import load_pipeline
from peft_inits.diffusion.objective import Frozen
from peft_inits.diffusion.train import SampleSettings, frozen_parts, native_resolution
from peft_inits.generation.builder import population_noise_loss
from peft_inits.glyph.concepts import GlyphConcept
from peft_inits.glyph.personalize import train_concept_adapter
from peft_inits.glyph.shipped import model_path, runner_family
from peft_inits.glyph.trainset import glyph_training_set
from peft_inits.population import Population
from peft_inits.training.prepare import prepare
from peft_inits.training.sampler import StepSampler
from peft_inits.training.settings import AdapterSettings, TrainSettings

CONCEPT = "glyph:subject=♣"  # the study's SD subject
BATCH = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lora")
    parser.add_argument("--lr", type=float, default=9e-3)
    parser.add_argument(
        "--seeds",
        type=lambda t: [int(k) for k in t.split(",")],
        default=[2, 3, 5],
        help="population sizes K to time (the study trains 3 selection seeds per grid cell, then 2)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (after 2 warm-up)")
    parser.add_argument("--model", default=None, help="'tiny' for a structure check; default: the shipped glyph model")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--output", default=None, help="JSON file for the numbers")
    return parser.parse_args(argv)


def adapter_settings(args: argparse.Namespace, seed: int) -> AdapterSettings:
    return AdapterSettings(method=args.method, head_modules=[], family=runner_family(args.model), init_seed=seed)


def study_loop_step_time(args: argparse.Namespace) -> float:
    """Median step time of the study's own per-seed call, on a short budget (no evals, a one-image sample grid)."""
    steps = args.steps + 2
    train = TrainSettings(steps=steps, batch_size=BATCH, lr=args.lr, seed=0, eval_every=steps, save_every=0,
                          warmup=0.0, head_lr=0.0, eval_at_start=False, progress=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_concept_adapter(
            GlyphConcept.parse(CONCEPT), adapter_settings(args, 0), train, Path(tmp) / "run",
            model=args.model, cache_dir=args.cache_dir, sample=SampleSettings(seeds=(0,), steps=2), num_prompts=1,
        )  # fmt: skip
    return float(summary["median_step_time_s"])


def population_step_times(args: argparse.Namespace, size: int) -> list[float]:
    """Seconds of each timed step of `size` seeds trained as one population on the study's loss."""
    pipe = load_pipeline(model_path(args.model, args.cache_dir))
    frozen: Frozen = frozen_parts(pipe)
    resolution = native_resolution(pipe)
    torch.manual_seed(0)
    unet = prepare(pipe.unet, adapter_settings(args, 0)).model
    unet.train()
    population = Population(unet, size)
    concept = GlyphConcept.parse(CONCEPT)
    length = (args.steps + 2) * BATCH
    members = [glyph_training_set(concept, frozen, resolution, length=length, seed=k).data for k in range(size)]
    samplers = [StepSampler(len(data), BATCH, seed=k) for k, data in enumerate(members)]
    generators = [torch.Generator().manual_seed(k) for k in range(size)]
    optimizer = population.optimizer(args.lr, 0.01)
    prediction = frozen.scheduler.config.get("prediction_type", "epsilon")
    times = []
    for step in range(args.steps + 2):
        started = time.perf_counter()
        batches = [data.batch(sampler.indices(step)) for data, sampler in zip(members, samplers, strict=True)]
        pixels = torch.cat([b["pixels"] for b in batches] + [b["prior_pixels"] for b in batches])
        ids = torch.cat([b["ids"] for b in batches] + [b["prior_ids"] for b in batches])
        owner = torch.arange(size).repeat_interleave(BATCH)
        latents, context = frozen.latents(pixels), frozen.context(ids)  # per step, as the study's loss encodes them
        # each member's mean over its 4 instance + 4 prior samples, × 2: instance loss + prior loss, as the study
        loss = 2 * population_noise_loss(unet, frozen.scheduler, population, latents, context,
                                         torch.cat([owner, owner]), generators, prediction)  # fmt: skip
        loss.sum().backward()
        population.clip_grad_norms(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    population.detach()
    return times[2:]


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    study = study_loop_step_time(args)
    alone = statistics.median(population_step_times(args, 1))
    result = {"method": args.method, "lr": args.lr, "timed_steps": args.steps,
              "study_loop_s_per_step": study, "population_1_s_per_step": alone, "populations": {}}  # fmt: skip
    print(f"{args.method} at lr {args.lr}: study loop {study:.3f} s/step, population of 1 {alone:.3f} s/step")
    for size in args.seeds:
        together = statistics.median(population_step_times(args, size))
        row = {
            "s_per_step": together,
            "s_per_step_per_adapter": together / size,
            "speedup_vs_study_loop": study * size / together,
            "speedup_vs_population_1": alone * size / together,
        }
        result["populations"][size] = row
        print(
            f"K = {size}: {together:.3f} s/step, {together / size:.3f} s/step per adapter, "
            f"×{row['speedup_vs_study_loop']:.2f} vs the study loop, ×{row['speedup_vs_population_1']:.2f} vs K = 1"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(parse_args())
