"""The adapter data set (`sd adapter-dataset`): a personalised adapter for every subject × seed, trained K at a
time in one forward.

    python experiments/sd.py adapter-dataset --method svfit --output-dir /work/data/adapters-svfit
    python experiments/sd.py adapter-dataset --method lora --model tiny --subjects 2 --steps 3 --output-dir x

Each adapter is a DreamBooth run of the SD runner's loss (`objective.noise_loss`: ε/v MSE at random timesteps on VAE
latents, the prompt "a sks glyph on <background>") with the runner's defaults (the method's SD learning rate and rank,
every attention projection, AdamW, gradient clipping at 1), on one subject of `generation.dataset` (a glyph in a fixed
typeface, variant and colour). `--population K` adapters train together (`peft_inits.population`): same results as one
at a time, one U-Net forward per step. Finished adapters are kept and skipped on a rerun; the folder has one writer
(the run-dir lock). Layout and subject design: docs/adapter_dataset.md.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..blocks import parse_blocks
from ..checkpoint import verify_adapter_dir
from ..diffusion.objective import Frozen
from ..glyph.shipped import DEFAULT_CACHE, SHIPPED, model_name, model_path, runner_family
from ..population import Population, per_adapter_mean
from ..registry import method_names
from ..training.fields import setting
from ..training.optim import build_scheduler
from ..training.prepare import prepare
from ..training.rundir import RunDir
from ..training.sampler import StepSampler
from ..training.settings import AdapterSettings, TrainSettings, default_lr
from . import dataset as D

EVAL_SEED = 1234  # the fixed noise/timestep draw of the before/after loss (as `objective.diffusion_task`)
# Settings that do not change any adapter (population size only batches them; output and progress are places)
_FREE = ("population", "progress")


@dataclasses.dataclass(frozen=True)
class Job:
    """One adapter to train: a subject, a seed, and where it goes."""

    subject: D.Subject
    split: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.subject.subject_id}-seed{self.seed}"

    @property
    def noise_seed(self) -> int:  # noise and timesteps differ per subject, not only per seed
        suffix = self.subject.subject_id[1:]  # the pool position of "s042"; any other id: a stable hash of it
        position = int(suffix) if suffix.isdigit() else zlib.crc32(self.subject.subject_id.encode())
        return self.seed * 1_000_003 + position


@dataclasses.dataclass(frozen=True)
class AdapterDatasetSettings:
    """How every adapter of a data set is trained (the SD runner's defaults where unset) and how many there are."""

    model: str | None = setting(None, f"diffusers folder, 'tiny', or default: the shipped {SHIPPED}")
    cache_dir: str = setting(DEFAULT_CACHE, f"where the shipped {SHIPPED} is unpacked")
    subjects: int = setting(60, "training subjects (default: %(default)s)")
    heldout: int = setting(12, "held-out subjects (default: %(default)s)")
    seeds: tuple[int, ...] = (0, 1)
    images: int = setting(16, "training renders per subject (default: %(default)s)")
    references: int = setting(8, "reference renders per subject (not trained on)")
    steps: int = setting(150, "optimizer steps per adapter (default: %(default)s)")
    batch_size: int = setting(4, "images per adapter and step (default: %(default)s)")
    lr: float | None = setting(None, "default: the method's SD learning rate")
    r: int | None = setting(None, "rank (default: the method's SD rank)")
    alpha: float | None = None
    module_kinds: tuple[str, ...] | None = setting(None, "default: every attention projection")
    target_modules: tuple[str, ...] | None = None
    blocks: Sequence[str] | Mapping[str, Any] | None = setting(
        None, "e.g. 0-2,5 or JSON {'0-2': 8, '5': 0}", parse=parse_blocks
    )
    init_seed: int = setting(0, "seed of random inits (LoRA A), as the runner's")
    weight_decay: float = setting(0.01, "on adapter matrices only")
    max_grad_norm: float = setting(1.0, "per adapter; 0 disables clipping")
    warmup: float = setting(0.0, "fraction of steps (<1) or steps (>=1)")
    population: int = setting(16, "adapters trained together in one forward")
    progress: bool = setting(True, "tqdm bar")


# ------------------------------------------------------------------------------------------------ the command


def _pipeline(model: str | None, cache_dir: str):
    from ..diffusion.models import load_pipeline

    return load_pipeline(model_path(model, cache_dir)), model_name(model)


def _settings(method: str, args: AdapterDatasetSettings, resolution: int, model_name: str) -> dict[str, Any]:
    """What every adapter of the dataset was trained with (a rerun must match it, except `_FREE`)."""
    return {
        "model": model_name,
        "resolution": resolution,
        "subject_word": D.SUBJECT_WORD,
        "images": args.images,
        "references": args.references,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr if args.lr is not None else default_lr(method, runner_family(args.model)),
        "r": args.r,
        "alpha": args.alpha,
        "module_kinds": _listed(args.module_kinds),
        "target_modules": _listed(args.target_modules),
        "blocks": args.blocks,
        "init_seed": args.init_seed,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "warmup": args.warmup,
        "prediction": None,  # filled from the scheduler
    }


def _listed(names: Sequence[str] | None) -> list[str] | None:
    return None if names is None else list(names)  # as the manifest's JSON holds it


def _check_existing(root: Path, method: str, settings: dict[str, Any]) -> D.AdapterDataset | None:
    """The dataset already in `root` (None if none), refused when it is another method's or other settings'."""
    if not (root / D.MANIFEST).is_file():
        if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            leftovers = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
            if set(leftovers) - {"adapters", "references"}:
                raise ValueError(f"{root} is not empty and holds no {D.MANIFEST}; choose an empty --output-dir")
        return None
    existing = D.read_dataset(root)
    if existing.method != method:
        raise ValueError(
            f"{root / D.MANIFEST} is a {existing.method} dataset; --method {method} needs another --output-dir"
        )
    changed = sorted(k for k in set(settings) | set(existing.settings) if k not in _FREE
                     and existing.settings.get(k) != settings.get(k))  # fmt: skip
    if changed:
        details = "; ".join(f"{k}: {existing.settings.get(k)!r} → {settings.get(k)!r}" for k in changed)
        raise ValueError(f"{root / D.MANIFEST} was built with other settings ({details}); use another --output-dir")
    return existing


def build_adapter_dataset(
    method: str,
    output_dir: str | Path,
    args: AdapterDatasetSettings,
    concepts: tuple[Sequence, Sequence] | None = None,
) -> D.AdapterDataset:
    """Build (or complete) the `method` data set in `output_dir`; returns its manifest.

    `concepts` = (training, held-out) replaces the glyph subjects with other concepts of the same interface as
    `generation.dataset.Subject` (`subject_id`, `glyph`, `family`, `variant`, `colour`, `images(count, size,
    stream)`), e.g. the style concepts of `style_descriptors`."""
    if args.population < 1 or args.steps < 1 or args.batch_size < 1 or args.images < args.batch_size:
        raise ValueError(
            f"need --population, --steps, --batch-size >= 1 and --images >= --batch-size, got {args.population}, "
            f"{args.steps}, {args.batch_size}, {args.images}"
        )
    if method not in method_names():
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(method_names())}")
    train, heldout = concepts or D.subjects(args.subjects, args.heldout)  # a bad count fails before loading
    root = Path(output_dir)
    with RunDir(root).writer():
        return _run(method, args, root, train, heldout)


def _run(
    method: str, args: AdapterDatasetSettings, root: Path, train: list[D.Subject], heldout: list[D.Subject]
) -> D.AdapterDataset:
    pipe, model_name = _pipeline(args.model, args.cache_dir)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    settings = _settings(method, args, resolution, model_name)
    settings["prediction"] = pipe.scheduler.config.get("prediction_type", "epsilon")
    existing = _check_existing(root, method, settings)
    dataset = existing or D.AdapterDataset(method, model_name, settings, [], root)
    dataset.root, dataset.settings = root, {**dataset.settings, "population": args.population}
    done = {e.name for e in dataset.adapters if _is_complete(root / "adapters" / e.name)}
    dataset.adapters = [e for e in dataset.adapters if e.name in done]
    jobs = [Job(s, split, seed) for split, group in (("train", train), ("heldout", heldout)) for s in group
            for seed in args.seeds]  # fmt: skip
    todo = [job for job in jobs if job.name not in done]
    for subject in {job.subject.subject_id: job.subject for job in jobs}.values():
        _write_references(root, subject, args.references, resolution)
    print(f"{method} adapter dataset in {root}: {len(jobs)} adapters, {len(jobs) - len(todo)} done, "
          f"{len(todo)} to train, {args.population} at a time")  # fmt: skip
    if todo:
        _train_all(method, args, pipe, dataset, todo, resolution, settings)
    D.write_manifest(dataset, root)
    return dataset


def _is_complete(directory: Path) -> bool:
    try:
        verify_adapter_dir(directory)
    except (OSError, ValueError):
        return False
    return True


def _write_references(root: Path, subject: D.Subject, count: int, resolution: int) -> None:
    from PIL import Image

    folder = root / "references" / subject.subject_id
    if len(list(folder.glob("ref-*.png"))) >= count:
        return
    arrays, _ = subject.images(count, resolution, "references")
    for i, array in enumerate(arrays):
        atomic_write(folder / f"ref-{i:02d}.png", lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG"))


def _pixels(arrays: np.ndarray) -> Tensor:
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Chunk:
    """Up to K jobs trained together: their images' latents and prompts' text states (computed once: the images are
    fixed renders and both encoders are frozen, so every step would recompute the same values), data order and noise
    streams."""

    def __init__(self, jobs: Sequence[Job], frozen: Frozen, images: int, references: int, resolution: int,
                 batch_size: int, device: torch.device) -> None:  # fmt: skip
        self.jobs = list(jobs)
        self.latents, self.context, self.ref_latents, self.ref_context = [], [], [], []
        states: dict[str, Tensor] = {}
        for job in self.jobs:
            for count, stream, latents, context in (
                (images, "train", self.latents, self.context),
                (references, "references", self.ref_latents, self.ref_context),
            ):
                arrays, prompts = job.subject.images(count, resolution, stream)
                latents.append(frozen.latents(_pixels(arrays).to(device)))
                for text in set(prompts) - set(states):
                    states[text] = frozen.context(frozen.tokens([text]).to(device))[0]
                context.append(torch.stack([states[text] for text in prompts]))
        self.samplers = [StepSampler(images, batch_size, job.seed) for job in self.jobs]
        self.generators = [torch.Generator().manual_seed(job.noise_seed) for job in self.jobs]

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """(latents, text states, adapter index) of one step: each adapter's own batch, in job order."""
        picks = [sampler.indices(step) for sampler in self.samplers]
        latents = torch.cat([x[i] for x, i in zip(self.latents, picks, strict=True)])
        context = torch.cat([c[i] for c, i in zip(self.context, picks, strict=True)])
        index = torch.cat([torch.full((len(i),), k) for k, i in enumerate(picks)]).to(latents.device)
        return latents, context, index


def population_noise_loss(
    unet: torch.nn.Module,
    scheduler: Any,
    population: Population,
    latents: Tensor,
    context: Tensor,
    index: Tensor,
    generators: Sequence[torch.Generator],
    prediction: str,
) -> Tensor:
    """Each adapter's `objective.noise_loss`, shape (K,), from one U-Net forward on VAE latents and text states:
    adapter k's noise and timesteps come from its own generator, drawn in the order `noise_loss(..., generator=
    generators[k])` draws them for its samples."""
    noise = torch.empty(latents.shape)
    timesteps = torch.empty(latents.shape[0], dtype=torch.long)
    steps = scheduler.config.num_train_timesteps
    cpu_index = index.cpu()
    for k, generator in enumerate(generators):
        rows = (cpu_index == k).nonzero().flatten()
        if len(rows):
            noise[rows] = torch.randn((len(rows), *latents.shape[1:]), generator=generator)
            timesteps[rows] = torch.randint(0, steps, (len(rows),), generator=generator)
    noise, timesteps = noise.to(latents), timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = noise if prediction == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    with population.batch(index):
        predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
    per_sample = (predicted.float() - target.float()).pow(2).flatten(1).mean(1)
    return per_adapter_mean(per_sample, index, population.size)


def _eval_losses(unet, scheduler, population: Population, chunk: Chunk, prediction: str) -> list[float]:
    """Each adapter's noise loss on its references, on one fixed draw of noise and timesteps per adapter."""
    latents, context = torch.cat(chunk.ref_latents), torch.cat(chunk.ref_context)
    index = torch.cat([torch.full((len(x),), k) for k, x in enumerate(chunk.ref_latents)]).to(latents.device)
    generators = [torch.Generator().manual_seed(EVAL_SEED) for _ in chunk.jobs]
    with torch.no_grad():
        losses = population_noise_loss(unet, scheduler, population, latents, context, index, generators, prediction)
    return losses[: len(chunk.jobs)].tolist()


def _adapter_settings(method: str, args: AdapterDatasetSettings) -> AdapterSettings:
    return AdapterSettings(
        method=method,
        r=args.r,
        alpha=args.alpha,
        target_modules=_listed(args.target_modules),
        module_kinds=_listed(args.module_kinds),
        blocks=args.blocks,
        head_modules=[],
        init_seed=args.init_seed,
        family=runner_family(args.model),
    )


def _train_all(
    method: str,
    args: AdapterDatasetSettings,
    pipe,
    dataset: D.AdapterDataset,
    todo: list[Job],
    resolution: int,
    settings,
) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(device)
    torch.manual_seed(args.init_seed)
    prepared = prepare(pipe.unet.to(device), _adapter_settings(method, args))
    unet = prepared.model
    unet.train()
    size = min(args.population, len(todo))
    population = Population(unet, size)
    init = [p.detach().clone() for p in population.parameters()]
    schedule = TrainSettings(steps=args.steps, batch_size=args.batch_size, warmup=args.warmup, lr=settings["lr"])
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    bar = tqdm(total=len(todo) * args.steps, desc=f"{method} adapters", unit="step", unit_scale=1,
               disable=not args.progress, dynamic_ncols=True)  # fmt: skip
    try:
        for number, jobs in enumerate(chunks, start=1):
            started = time.perf_counter()
            with torch.no_grad():
                for param, value in zip(population.parameters(), init, strict=True):
                    param.copy_(value)
            chunk = Chunk(jobs, frozen, args.images, args.references, resolution, args.batch_size, device)
            before = _eval_losses(unet, frozen.scheduler, population, chunk, settings["prediction"])
            optimizer = population.optimizer(settings["lr"], args.weight_decay)
            scheduler = build_scheduler(optimizer, schedule)
            recent: list[Tensor] = []
            for step in range(args.steps):
                latents, context, index = chunk.batch(step)
                losses = population_noise_loss(
                    unet,
                    frozen.scheduler,
                    population,
                    latents,
                    context,
                    index,
                    chunk.generators,
                    settings["prediction"],
                )
                total = losses.sum()
                if not torch.isfinite(total):
                    raise FloatingPointError(f"the loss became {total.item()} at step {step + 1}; lower --lr")
                total.backward()
                population.clip_grad_norms(args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                recent = [*recent[-9:], losses.detach()[: len(jobs)].cpu()]
                bar.update(len(jobs))
                mean = float(losses.detach()[: len(jobs)].mean())
                bar.set_postfix(chunk=f"{number}/{len(chunks)}", loss=f"{mean:.4f}")
            after = _eval_losses(unet, frozen.scheduler, population, chunk, settings["prediction"])
            final = torch.stack(recent).mean(0).tolist()
            elapsed = time.perf_counter() - started
            for k, job in enumerate(jobs):
                population.save(k, dataset.root / "adapters" / job.name)
                dataset.adapters.append(
                    D.DatasetEntry(
                        name=job.name,
                        subject=job.subject.glyph,
                        subject_id=job.subject.subject_id,
                        split=job.split,
                        seed=job.seed,
                        references=f"references/{job.subject.subject_id}",
                        train_time_s=elapsed / len(jobs),
                        family=job.subject.family,
                        variant=job.subject.variant,
                        colour=job.subject.colour,
                        adapter=f"adapters/{job.name}",
                        final_loss=final[k],
                        eval_loss_start=before[k],
                        eval_loss_end=after[k],
                        extra={"population": len(jobs), "chunk_time_s": elapsed},
                    )
                )
            D.write_manifest(dataset, dataset.root)  # after every chunk: a kill loses at most one chunk
            tqdm.write(
                f"chunk {number}/{len(chunks)}: {len(jobs)} adapters in {elapsed:.1f} s "
                f"({elapsed / len(jobs):.2f} s/adapter); reference loss {np.mean(before):.4f} → {np.mean(after):.4f}"
            )
    finally:
        bar.close()
        population.detach()
