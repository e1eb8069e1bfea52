"""Step times of several methods measured round-robin on the same batches, against the frozen-base step.

A frozen-base step is a forward pass plus a backward pass down to the input embeddings (what any adapter in the first
layer needs) with no parameter gradient and no optimizer: the floor every adapter method pays. Each round times one
training step (forward, backward, AdamW step) of every method and one frozen-base step on the same batch, rotating the
order, so on a shared or throttling machine all of them see the same load; ratios are taken per round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from accelerate.utils import set_seed
from torch import nn

from .loop import make_accelerator
from .sampler import StepSampler
from .settings import TrainSettings
from .task import Task, to_device

FROZEN = "frozen base"
Builder = Callable[[], tuple[nn.Module, "torch.optim.Optimizer | None"]]


def require_input_grads(model: nn.Module) -> None:
    """Make the first layer's output require grad, so backward runs through the frozen network."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
        return
    first = next(m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Conv2d, nn.Linear)))
    first.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))


def frozen_builder(build_model: Callable[[], nn.Module]) -> Builder:
    """The frozen base model: no trainable parameter, gradients flow to the input embeddings."""

    def build() -> tuple[nn.Module, None]:
        model = build_model()
        model.requires_grad_(False)
        require_input_grads(model)
        return model, None

    return build


def interleaved_step_times(
    builders: dict[str, Builder], task: Task, settings: TrainSettings, steps: Sequence[int]
) -> dict[str, dict[int, float]]:
    """Seconds per training step of each builder's (model, optimizer) for the 1-based steps in `steps`, one round per
    step after an untimed warm-up round. A None optimizer means forward + backward only."""
    accelerator = make_accelerator(settings.mixed_precision)
    device = accelerator.device
    built = {}
    for label, build in builders.items():
        set_seed(settings.seed)
        model, optimizer = build()
        built[label] = (model.to(device).train(), optimizer)
    sampler = StepSampler(len(task.train), settings.batch_size, settings.seed)
    times: dict[str, dict[int, float]] = {label: {} for label in built}
    labels = list(built)
    for round_index, step in enumerate([steps[0], *steps]):
        batch = to_device(task.train.batch(sampler.indices(step - 1)), device)
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            model, optimizer = built[label]
            began = time.perf_counter()
            with accelerator.autocast():
                loss = task.loss(model, batch)
            loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index > 0:
                times[label][step] = time.perf_counter() - began
    return times
