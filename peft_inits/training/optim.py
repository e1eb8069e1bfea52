"""AdamW with separate learning rates for the adapter (or body) and the head, and a linear warmup/decay schedule."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .prepare import Prepared
from .settings import TrainSettings


def _split_decay(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Matrices get weight decay; vectors (SVFit s, LoLDU z, biases, norms) never do: decaying s or z toward 0
    would pull the adapter away from the identity instead of toward it."""
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]


def build_optimizer(prepared: Prepared, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW over the adapter/body group (method learning rate) and the head group (`head_lr`)."""
    groups = []
    for role, params, lr in (
        ("adapter", prepared.adapter_params, settings.lr_for(prepared.method, prepared.settings.family)),
        ("head", prepared.head_params, settings.head_lr),
    ):
        decay, no_decay = _split_decay(params)
        for chosen, weight_decay in ((decay, settings.weight_decay), (no_decay, 0.0)):
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": weight_decay, "role": role})
    if not groups:
        raise ValueError(f"method {prepared.method!r} left no parameter to train")
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)


def linear_schedule(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate: 0 → 1 over `warmup` steps, then 1 → 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> LambdaLR:
    warmup, total = settings.warmup_steps(), settings.steps
    return LambdaLR(optimizer, lambda step: linear_schedule(step, warmup, total))


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate per role ('adapter', 'head')."""
    return {group.get("role", "adapter"): float(group["lr"]) for group in optimizer.param_groups}
