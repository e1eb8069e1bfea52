"""What the shared loop needs to know about a task: its training batches, its loss and its evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class BatchData(Protocol):
    """An in-memory training set that builds a batch from a list of indices."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> dict[str, Any]: ...


LossFn = Callable[[nn.Module, dict[str, Any]], Tensor]
EvalFn = Callable[[nn.Module, str], dict[str, float]]
CheckpointHook = Callable[[nn.Module, int, Path], None]


@dataclass
class Task:
    """The loop's view of a task.

    `loss(model, batch)` returns the scalar training loss of a batch already on the device; `evaluate(model, split)`
    returns metrics of a split ('validation', 'test') with `metric` among them.
    """

    train: BatchData
    loss: LossFn
    evaluate: EvalFn | None = None
    metric: str = "accuracy"
    greater_is_better: bool = True
    has_test: bool = False
    on_checkpoint: CheckpointHook | None = None  # (model, step, run dir) after each checkpoint, main process only

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best


def to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to `device`."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj
