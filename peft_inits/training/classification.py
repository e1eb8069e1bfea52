"""A classification (or regression) `Task` over in-memory splits, for any model that maps inputs to logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import classification_metrics, regression_metrics
from .task import BatchData, Task, to_device

Forward = Callable[[nn.Module, dict[str, Any]], Tensor]


def hf_logits(model: nn.Module, inputs: dict[str, Any]) -> Tensor:
    """transformers models: keyword inputs, `.logits` out."""
    return model(**inputs).logits


def tensor_logits(model: nn.Module, inputs: dict[str, Any]) -> Tensor:
    """timm-style models: one image tensor in, logits out."""
    return model(inputs["pixel_values"])


def _loss(logits: Tensor, labels: Tensor, regression: bool) -> Tensor:
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)


def evaluate(
    model: nn.Module,
    data: BatchData,
    forward: Forward,
    metrics: Sequence[str],
    batch_size: int,
    regression: bool = False,
) -> dict[str, float]:
    """Loss and metrics of `model` on `data`, in order, batch by batch (the caller sets eval mode / no_grad)."""
    device = next(model.parameters()).device
    outputs, targets = [], []
    for start in range(0, len(data), batch_size):
        batch = to_device(data.batch(range(start, min(start + batch_size, len(data)))), device)
        outputs.append(forward(model, batch["inputs"]).float().cpu())
        targets.append(batch["labels"].cpu())
    logits, labels = torch.cat(outputs), torch.cat(targets)
    result = {"loss": float(_loss(logits, labels, regression))}
    if regression:
        result.update(regression_metrics(logits.squeeze(-1), labels, metrics))
    else:
        result.update(classification_metrics(logits, labels, metrics))
    return result


def classification_task(
    splits: dict[str, BatchData],
    forward: Forward,
    metrics: Sequence[str],
    *,
    eval_batch_size: int = 64,
    regression: bool = False,
) -> Task:
    """Cross-entropy (MSE for regression) training on splits['train']; evaluation on 'validation' / 'test'."""

    def loss(model: nn.Module, batch: dict[str, Any]) -> Tensor:
        return _loss(forward(model, batch["inputs"]), batch["labels"], regression)

    def run_eval(model: nn.Module, split: str) -> dict[str, float]:
        return evaluate(model, splits[split], forward, metrics, eval_batch_size, regression)

    return Task(
        train=splits["train"],
        loss=loss,
        evaluate=run_eval if "validation" in splits else None,
        metric=metrics[0],
        greater_is_better=True,
        has_test="test" in splits,
    )
