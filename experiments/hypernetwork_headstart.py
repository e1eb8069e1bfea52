"""A predicted adapter as a head start (issue 22): fine-tune the held-out subjects' adapters from the hypernetwork's
prediction and from the method's standard init, and follow the reference denoising loss step by step.

    python experiments/hypernetwork_headstart.py --dataset runs/data/adapters-svfit \
        --hypernetwork runs/hyper-svfit-s0 --output-dir runs/headstart-svfit

Both runs train exactly as `adapter-dataset` trained the data set's held-out adapters (its settings: images, batch,
steps, learning rate, schedule, per-adapter noise streams; all held-out subjects in one population), so the standard
init's last value reproduces the data set's `eval_loss_end`. The score is that loss (each subject's references, one
fixed draw of noise and timesteps): a proxy for fidelity that needs no sampling. Reports, per checkpoint, the mean
loss of both starts and, per subject, the first checkpoint at which it reaches its trained adapter's loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from peft_inits.cli import args as cli
from peft_inits.diffusion.models import load_pipeline
from peft_inits.diffusion.objective import Frozen
from peft_inits.generation import dataset as D
from peft_inits.generation import features as feats
from peft_inits.generation.builder import Chunk, Job, _eval_losses, population_noise_loss
from peft_inits.generation.hypernetwork_run import load_hypernetwork
from peft_inits.generation.hypernetwork_training import attach
from peft_inits.generation.workflow import Base, check_base, model_folder
from peft_inits.training.optim import build_scheduler
from peft_inits.training.settings import AdapterSettings, TrainSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--hypernetwork", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--checkpoints", type=lambda t: [int(s) for s in cli.csv_list(t)],
                        default=[0, 5, 10, 15, 25, 50, 100, 150])  # fmt: skip
    parser.add_argument("--cache-dir", default="runs/cache")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    dataset = D.read_dataset(args.dataset)
    settings = dataset.settings
    run = load_hypernetwork(args.hypernetwork)
    if run.method != dataset.method:
        raise ValueError(f"{run.root} predicts {run.method} adapters but {dataset.root} holds {dataset.method}")
    entries = sorted((e for e in dataset.entries("heldout") if e.seed == 0), key=lambda e: e.subject_id)
    if set(e.subject_id for e in entries) & set(run.meta["train_subjects"]):
        raise ValueError("held-out subjects of the data set are among the hypernetwork's training subjects")
    pipe = load_pipeline(model_folder(run.meta.get("model"), args.cache_dir))
    check_base(pipe.unet, run.layout, run.template, f"hypernetwork {run.root}")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    sources = run.choice.build(Base(pipe.unet, pipe.vae, resolution, run.meta.get("model")))
    conditions = [feats.condition(sources, feats.read_references(dataset.references_dir(e))) for e in entries]
    predicted = run.net({k: torch.stack([c[k] for c in conditions]) for k in conditions[0]}).detach()
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(torch.device("cpu"))
    adapter = AdapterSettings(**{k: v for k, v in json.loads((run.root / "config.json").read_text())[
        "target_adapter"].items()})  # fmt: skip
    attached = attach(pipe.unet, adapter, len(entries))
    population = attached.population
    init = [p.detach().clone() for p in population.parameters()]
    jobs = [Job(D.Subject(e.subject_id, e.subject, e.family, e.variant, e.colour), "heldout", 0) for e in entries]
    chunk = Chunk(jobs, frozen, settings["images"], settings["references"], resolution, settings["batch_size"],
                  torch.device("cpu"))  # fmt: skip
    prediction = settings["prediction"]
    schedule = TrainSettings(steps=settings["steps"], batch_size=settings["batch_size"], warmup=settings["warmup"],
                             lr=settings["lr"])  # fmt: skip
    curves: dict[str, dict[int, list[float]]] = {}
    for start in ("standard init", "hypernetwork"):
        with torch.no_grad():
            for param, value in zip(population.parameters(), init, strict=True):
                param.copy_(value)
            if start == "hypernetwork":
                values = attached.slots.split(predicted)
                own = dict(population.named_parameters())
                for name, value in values.items():
                    own[name].copy_(value)
        chunk.generators = [torch.Generator().manual_seed(job.noise_seed) for job in jobs]
        optimizer = population.optimizer(settings["lr"], settings["weight_decay"])
        scheduler = build_scheduler(optimizer, schedule)
        curve = curves.setdefault(start, {})
        for step in range(settings["steps"] + 1):
            if step in args.checkpoints:
                curve[step] = _eval_losses(attached.unet, frozen.scheduler, population, chunk, prediction)
                print(f"{start} step {step}: {statistics.fmean(curve[step]):.4f}", flush=True)
            if step == settings["steps"]:
                break
            latents, context, index = chunk.batch(step)
            losses = population_noise_loss(attached.unet, frozen.scheduler, population, latents, context, index,
                                           chunk.generators, prediction)  # fmt: skip
            losses.sum().backward()
            population.clip_grad_norms(settings["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    population.detach()
    targets = [e.eval_loss_end for e in entries]

    def reached(curve: dict[int, list[float]], k: int) -> int | None:
        return next((step for step in sorted(curve) if curve[step][k] <= targets[k]), None)

    report = {
        "dataset": str(dataset.root),
        "hypernetwork": str(run.root),
        "method": dataset.method,
        "subjects": len(entries),
        "trained_loss": statistics.fmean(targets),
        "curves": {
            start: {
                step: {"mean": statistics.fmean(v), "sem": statistics.stdev(v) / len(v) ** 0.5}
                for step, v in curve.items()
            }
            for start, curve in curves.items()
        },
        "steps_to_trained": {
            start: [reached(curve, k) for k in range(len(entries))] for start, curve in curves.items()
        },
        "wall_time_s": time.perf_counter() - began,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{report['method']}, {len(entries)} held-out subjects; reference loss of the trained adapters "
             f"{report['trained_loss']:.4f}", "", "| step | " + " | ".join(curves) + " |",
             "|---" * (len(curves) + 1) + "|"]  # fmt: skip
    for step in sorted(next(iter(curves.values()))):
        cells = [f"{report['curves'][s][step]['mean']:.4f} ± {report['curves'][s][step]['sem']:.4f}" for s in curves]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    for start, steps in report["steps_to_trained"].items():
        lines.append(f"\n{start}: first checkpoint at the trained adapter's loss, per subject: {steps}")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    cli.run_script(main, parse_args)
