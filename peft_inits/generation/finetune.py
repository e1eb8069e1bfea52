"""A short fine-tune from a generated adapter (issue 22: a prediction as a head start, as HyperDreamBooth uses one).

A held-out subject trains as `adapter-dataset` trained its adapters — the data set's renders, batch size, warmup,
weight decay, per-adapter clipping and noise stream (`builder.Chunk`, `builder.population_noise_loss`) — but from given
start values instead of the method's init, for `steps` steps at `lr`, with the linear schedule over those steps. The
starts of several subjects train together in one population; `generation-eval`'s "hypernetwork + fine-tune" row
and `experiments/hypernetwork_headstart.py` both use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..diffusion.objective import Frozen
from ..population import Population
from ..training.optim import build_scheduler
from ..training.settings import AdapterSettings, TrainSettings
from .builder import Chunk, Job, population_noise_loss
from .dataset import Subject
from .hypernetwork_training import Attached, attach

TRAINING_KEYS = ("images", "references", "batch_size", "lr", "warmup", "weight_decay", "max_grad_norm", "prediction")
StepHook = Callable[[int], None]  # called with the number of steps done, before each step and after the last


def target_adapter(run_root: str | Path) -> AdapterSettings:
    """The adapter a hypernetwork run predicts, as its config.json records it."""
    return AdapterSettings(**json.loads((Path(run_root) / "config.json").read_text())["target_adapter"])


@dataclass
class Finetuner:
    """A training copy of the base (the method's adapter under a population of `size`) and the data set's settings."""

    attached: Attached
    frozen: Frozen
    settings: dict[str, Any]  # the adapter data set's (images, references, batch_size, warmup, ...)
    resolution: int
    init: dict[str, Tensor]  # the method's init of every member, by population parameter name

    @classmethod
    def build(cls, pipe, adapter: AdapterSettings, dataset_settings: dict[str, Any], size: int) -> Finetuner:
        """`pipe` becomes the training copy: give it a pipeline of its own, not the one that samples."""
        frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(torch.device("cpu"))
        resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
        attached = attach(pipe.unet, adapter, size)
        init = {n: p.detach().clone() for n, p in attached.population.named_parameters()}
        return cls(attached, frozen, dataset_settings, resolution, init)

    @property
    def population(self) -> Population:
        return self.attached.population

    def chunk(self, subjects: Sequence[Subject]) -> Chunk:
        """The subjects' renders, data order and noise streams, as `adapter-dataset` drew them (seed 0)."""
        jobs = [Job(subject, "heldout", 0) for subject in subjects]
        return Chunk(jobs, self.frozen, self.settings["images"], self.settings["references"], self.resolution,
                     self.settings["batch_size"], torch.device("cpu"))  # fmt: skip

    @torch.no_grad()
    def start_from(self, values: Tensor | None) -> None:
        """Member k starts at row k of `values` (n ≤ size rows of P, in the slots' order), the others (or all, for
        None) at the method's init."""
        own = dict(self.population.named_parameters())
        for name, param in own.items():
            param.copy_(self.init[name])
        if values is not None:
            for name, value in self.attached.slots.split(values).items():
                own[name][: len(value)].copy_(value)

    def train(self, chunk: Chunk, steps: int, lr: float, on_step: StepHook | None = None) -> None:
        """`steps` optimizer steps of every member from its current values, each on its own subject's batches; the
        noise streams restart, so two starts of one subject see the same draws. `on_step(k)` runs before step k + 1
        and once more at the end (k = steps), e.g. to score the members."""
        population = self.population
        chunk.generators = [torch.Generator().manual_seed(job.noise_seed) for job in chunk.jobs]
        optimizer = population.optimizer(lr, self.settings["weight_decay"])
        schedule = TrainSettings(steps=max(steps, 1), batch_size=self.settings["batch_size"],
                                 warmup=self.settings["warmup"], lr=lr)  # fmt: skip
        scheduler = build_scheduler(optimizer, schedule)
        for step in range(steps):
            if on_step is not None:
                on_step(step)
            latents, context, index = chunk.batch(step)
            losses = population_noise_loss(self.attached.unet, self.frozen.scheduler, population, latents, context,
                                           index, chunk.generators, self.settings["prediction"])  # fmt: skip
            losses.sum().backward()
            population.clip_grad_norms(self.settings["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(steps)

    def save(self, k: int, directory: str | Path) -> Path:
        """Member k as a normal adapter directory (PEFT layout, fingerprinted, checksummed)."""
        return self.population.save(k, directory)
