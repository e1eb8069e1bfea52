"""The frozen-base step: the cost floor every adapter method pays, measured in the same process as the runs.

A frozen-base step is a forward pass plus a backward pass down to the input embeddings (what any adapter in the first
layer needs) with no parameter gradient and no optimizer, on the very batches the runs train on. Dividing a method's
step time by it on the same step gives the adapter overhead (DESIGN.md §6 uses the same ratio).
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


def require_input_grads(model: nn.Module) -> None:
    """Make the first layer's output require grad, so backward runs through the frozen network."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
        return
    first = next(m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Conv2d, nn.Linear)))
    first.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))


def frozen_step_times(
    build_model: Callable[[], nn.Module], task: Task, settings: TrainSettings, steps: Sequence[int]
) -> dict[int, float]:
    """Seconds of a frozen-base step for each 1-based step number in `steps` (one untimed warm-up step first)."""
    accelerator = make_accelerator(settings.mixed_precision)
    device = accelerator.device
    set_seed(settings.seed)
    model = build_model().to(device)
    model.requires_grad_(False)
    require_input_grads(model)
    model.train()
    sampler = StepSampler(len(task.train), settings.batch_size, settings.seed)
    times: dict[int, float] = {}
    for step in [steps[0], *steps]:
        began = time.perf_counter()
        batch = to_device(task.train.batch(sampler.indices(step - 1)), device)
        with accelerator.autocast():
            loss = task.loss(model, batch)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[step] = time.perf_counter() - began
    return times
