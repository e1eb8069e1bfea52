"""PNG plots with matplotlib's Agg backend (no display needed): one run's curves and the combined convergence plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .rundir import read_records


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (what TensorBoard's smoothing slider shows)."""
    out, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**index))
    return out


def plot_run(run_dir: str | os.PathLike, metric: str = "accuracy") -> list[Path]:
    """Write `loss.png` (training loss, smoothed, and validation loss) and `<metric>.png` into the run directory."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    records = read_records(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax.plot(steps, losses, alpha=0.25, color="C0")
        ax.plot(steps, smooth(losses), color="C0", label="train (smoothed)")
    if evals and "loss" in evals[0]:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", color="C1", label="validation")
    ax.set(xlabel="step", ylabel="loss", title=run_dir.name)
    ax.legend()
    fig.tight_layout()
    written.append(run_dir / "loss.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    if evals and metric in evals[0]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-")
        ax.set(xlabel="step", ylabel=f"validation {metric}", title=run_dir.name)
        fig.tight_layout()
        written.append(run_dir / f"{metric}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def plot_convergence(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    path: str | os.PathLike,
    metric: str = "accuracy",
    title: str = "",
    reference: float | None = None,
) -> Path:
    """Validation `metric` and smoothed training loss against step for several runs, in one PNG.

    `runs` maps a label to its metrics.jsonl records; `reference` draws a dashed line (e.g. 95% of LoRA's best).
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (label, records) in enumerate(runs.items()):
        color = f"C{index % 10}"
        evals = [r for r in records if r.get("type") == "eval" and metric in r]
        train = [r for r in records if r.get("type") == "train"]
        if evals:
            left.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", ms=3, color=color, label=label)
        if train:
            right.plot([r["step"] for r in train], smooth([r["loss"] for r in train]), color=color, label=label)
    if reference is not None:
        left.axhline(reference, ls="--", color="grey", lw=1, label="95% of LoRA's best")
    left.set(xlabel="step", ylabel=f"validation {metric}", title="convergence")
    right.set(xlabel="step", ylabel="training loss (smoothed)", title="training loss")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
