"""Atomic, pickle-free training checkpoints for `--resume`.

Layout under the run directory::

    checkpoints/step-00000040/model.safetensors      trainable tensors (adapter + head; everything for full)
    checkpoints/step-00000040/optimizer.safetensors  AdamW moments and step counters
    checkpoints/step-00000040/rng-<rank>.safetensors every generator of process <rank>
    checkpoints/step-00000040/state.json             step, scheduler, optimizer groups, AMP scaler, metrics offset
    checkpoints/latest                               name of the newest complete checkpoint (written last)

Every file is written through a temporary file and a rename, and `latest` only moves once a checkpoint is complete,
so a run killed at any moment resumes from the last complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ..checkpoint import atomic_write, load_tensors, save_tensors
from . import rng

LATEST = "latest"


@dataclass
class TrainingState:
    """What `load` hands back to the loop."""

    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    metrics_bytes: int
    elapsed_s: float
    rng_tensors: dict[str, Tensor]
    rng_metadata: dict[str, str]


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (per-parameter state) and JSON (groups, scalars)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = [
        {**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in meta["param_groups"]
    ]
    return {"state": per_param, "param_groups": groups}


def save(
    directory: Path,
    *,
    step: int,
    model_state: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    metrics_bytes: int,
    elapsed_s: float,
    rank: int = 0,
    is_main: bool = True,
    barrier: Any = None,
) -> Path:
    """Write checkpoint `step` (every process writes its RNG file, the main process the rest), then move `latest`."""
    root = directory / "checkpoints"
    path = root / f"step-{step:08d}"
    rng_tensors, rng_meta = rng.capture()
    save_tensors(rng_tensors, path / f"rng-{rank}.safetensors", metadata=rng_meta)
    if is_main:
        save_tensors(model_state, path / "model.safetensors")
        optim_tensors, optim_meta = _optimizer_tensors(optimizer.state_dict())
        save_tensors(optim_tensors, path / "optimizer.safetensors")
        state = {
            "step": step,
            "optimizer": optim_meta,
            "scheduler": scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "metrics_bytes": metrics_bytes,
            "elapsed_s": elapsed_s,
        }
        text = json.dumps(state, indent=1)
        atomic_write(path / "state.json", lambda tmp: Path(tmp).write_text(text))
    if barrier is not None:
        barrier()
    if is_main:
        atomic_write(root / LATEST, lambda tmp: Path(tmp).write_text(path.name))
        for old in root.glob("step-*"):
            if old.is_dir() and old.name != path.name:
                shutil.rmtree(old, ignore_errors=True)
    return path


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    pointer = directory / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise ValueError(f"{pointer} names {path.name}, which is incomplete; the run directory is damaged")
    return path


def load(path: Path, rank: int = 0) -> TrainingState:
    """Read a checkpoint written by `save`."""
    state = json.loads((path / "state.json").read_text())
    rng_file = path / f"rng-{rank}.safetensors"
    if not rng_file.is_file():
        raise ValueError(f"{path} has no RNG state for process {rank}: resume with the same number of processes")
    with safe_open(str(rng_file), "pt") as handle:
        rng_tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        rng_meta = dict(handle.metadata() or {})
    optimizer = _optimizer_state(load_tensors(path / "optimizer.safetensors"), state["optimizer"])
    return TrainingState(
        step=int(state["step"]),
        model=load_tensors(path / "model.safetensors"),
        optimizer=optimizer,
        scheduler=state["scheduler"],
        scaler=state["scaler"],
        metrics_bytes=int(state["metrics_bytes"]),
        elapsed_s=float(state["elapsed_s"]),
        rng_tensors=rng_tensors,
        rng_metadata=rng_meta,
    )
