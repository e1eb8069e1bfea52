"""Evaluation metrics (accuracy, F1, Matthews, Pearson, Spearman) in plain torch: no scikit-learn or scipy needed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

METRICS = ("accuracy", "f1", "macro_f1", "matthews", "pearson", "spearman")


def confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix, rows = true class, columns = predicted class."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes).double()


def _f1_per_class(matrix: Tensor) -> Tensor:
    tp = matrix.diag()
    precision_den, recall_den = matrix.sum(0), matrix.sum(1)
    denominator = precision_den + recall_den
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.zeros_like(tp))


def matthews(matrix: Tensor) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K), equal to the binary MCC for two classes."""
    total = matrix.sum()
    correct = matrix.diag().sum()
    predicted, actual = matrix.sum(0), matrix.sum(1)
    numerator = correct * total - (predicted * actual).sum()
    denominator = torch.sqrt((total**2 - (predicted**2).sum()) * (total**2 - (actual**2).sum()))
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = torch.sqrt((x**2).sum() * (y**2).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _ranks(values: Tensor) -> Tensor:
    """Ranks with ties averaged."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    unique, inverse = torch.unique(values, return_inverse=True)
    if len(unique) < len(values):
        sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranks)
        counts = torch.bincount(inverse, minlength=len(unique)).double()
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    return pearson(_ranks(x.double()), _ranks(y.double()))


def classification_metrics(
    logits: Tensor, labels: Tensor, names: Sequence[str] = ("accuracy", "macro_f1")
) -> dict[str, float]:
    """Metrics of class logits (N × C) against integer labels; `f1` is the binary F1 of class 1."""
    pred = logits.argmax(-1)
    matrix = confusion(pred, labels, logits.shape[-1])
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(matrix.diag().sum() / matrix.sum())
        elif name == "macro_f1":
            out[name] = float(_f1_per_class(matrix).mean())
        elif name == "f1":
            out[name] = float(_f1_per_class(matrix)[1]) if matrix.shape[0] > 1 else math.nan
        elif name == "matthews":
            out[name] = matthews(matrix)
        else:
            raise ValueError(f"metric {name!r} does not apply to classification; use one of accuracy, f1, ...")
    return out


def regression_metrics(
    pred: Tensor, target: Tensor, names: Sequence[str] = ("pearson", "spearman")
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        if name == "pearson":
            out[name] = pearson(pred, target)
        elif name == "spearman":
            out[name] = spearman(pred, target)
        else:
            raise ValueError(f"metric {name!r} does not apply to regression; use pearson or spearman")
    return out
