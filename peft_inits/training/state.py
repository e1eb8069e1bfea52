"""Atomic, pickle-free training checkpoints for `--resume`.

Layout under the run directory::

    checkpoints/step-00000040/model.safetensors      trainable tensors (adapter + head; everything for full)
    checkpoints/step-00000040/optimizer.safetensors  AdamW moments and step counters
    checkpoints/step-00000040/rng-<rank>.safetensors every generator of process <rank>
    checkpoints/step-00000040/state.json             step, scheduler, optimizer groups, AMP scaler, metrics offset
    checkpoints/latest                               name of the newest complete checkpoint (written last)

A checkpoint is written into `checkpoints/.step-00000040.partial` and renamed to `step-00000040` once every process
has written its part; `latest` only moves after that, so a run killed at any moment resumes from the last complete
checkpoint, and a partial directory left by a kill is removed by the next save. Every safetensors file carries a
checksum (`checkpoint.save_tensors`); damaged files, garbage `state.json` and missing fields are refused with an
error naming the file.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import atomic_write, load_tensors, read_json_object, read_tensors, save_tensors
from . import rng

LATEST = "latest"
_RNG_TENSORS = frozenset({"python_state", "numpy_keys", "torch_cpu"})
_NAME = re.compile(r"step-\d{8}")
# state.json field → the JSON types it must have
_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "scaler": (dict, type(None)),
    "metrics_bytes": (int,),
    "elapsed_s": (int, float),
}


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
    """Write checkpoint `step` (every process writes its RNG file, the main process the rest), then move `latest`.

    Collective when `barrier` is given: every process must call it.
    """
    root = directory / "checkpoints"
    path = root / f"step-{step:08d}"
    partial = root / f".{path.name}.partial"
    if is_main:
        if partial.exists():
            shutil.rmtree(partial)  # left by a killed save
        partial.mkdir(parents=True)
    if barrier is not None:
        barrier()
    rng_tensors, rng_meta = rng.capture()
    save_tensors(rng_tensors, partial / f"rng-{rank}.safetensors", metadata=rng_meta)
    if is_main:
        save_tensors(model_state, partial / "model.safetensors")
        optim_tensors, optim_meta = _optimizer_tensors(optimizer.state_dict())
        save_tensors(optim_tensors, partial / "optimizer.safetensors")
        state = {
            "step": step,
            "optimizer": optim_meta,
            "scheduler": scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "metrics_bytes": metrics_bytes,
            "elapsed_s": elapsed_s,
        }
        text = json.dumps(state, indent=1)
        atomic_write(partial / "state.json", lambda tmp: Path(tmp).write_text(text))
    if barrier is not None:
        barrier()
    if is_main:
        pointer = root / LATEST
        if pointer.is_file() and pointer.read_text().strip() == path.name:
            raise ValueError(f"{path} is the latest checkpoint of this run; refusing to overwrite it in place")
        if path.exists():
            shutil.rmtree(path)  # a complete checkpoint newer than `latest`, from a run killed before moving it
        partial.rename(path)
        atomic_write(pointer, lambda tmp: Path(tmp).write_text(path.name))
        for old in [*root.glob("step-*"), *root.glob(".step-*.partial")]:
            if old.is_dir() and old.name != path.name:
                shutil.rmtree(old, ignore_errors=True)
    return path


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    pointer = directory / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"{pointer} should name a checkpoint like 'step-00000040' but holds {name[:40]!r}")
    path = pointer.parent / name
    if not (path / "state.json").is_file():
        raise ValueError(f"{pointer} names {path.name}, which is incomplete; the run directory is damaged")
    return path


def _read_state(path: Path) -> dict[str, Any]:
    """state.json, checked field by field."""
    state = read_json_object(path, "checkpoint state")
    missing = sorted(set(_FIELDS) - set(state))
    if missing:
        raise ValueError(f"checkpoint file {path} lacks {missing}; the checkpoint is damaged or from another tool")
    for key, types in _FIELDS.items():
        if not isinstance(state[key], types) or (isinstance(state[key], bool) and bool not in types):
            raise ValueError(f"checkpoint file {path}: {key!r} has the wrong type ({type(state[key]).__name__})")
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(optimizer.get("scalars"), dict):
        raise ValueError(f"checkpoint file {path}: 'optimizer' lacks its 'param_groups' list or 'scalars' object")
    return state


def load(path: Path, rank: int = 0) -> TrainingState:
    """Read a checkpoint written by `save`; any damaged or missing part is an error naming the file."""
    state = _read_state(path / "state.json")
    rng_file = path / f"rng-{rank}.safetensors"
    if not rng_file.is_file():
        raise ValueError(f"{path} has no RNG state for process {rank}: resume with the same number of processes")
    rng_tensors, rng_meta = read_tensors(rng_file)
    lacking = sorted({"python", "numpy"} - set(rng_meta)) + sorted(_RNG_TENSORS - set(rng_tensors))
    if lacking:
        raise ValueError(f"checkpoint file {rng_file} lacks the generator states {lacking}")
    optimizer_file = path / "optimizer.safetensors"
    try:
        optimizer = _optimizer_state(load_tensors(optimizer_file), state["optimizer"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{optimizer_file} and {path / 'state.json'} do not describe one optimizer ({exc})") from exc
    return TrainingState(
        step=state["step"],
        model=load_tensors(path / "model.safetensors"),
        optimizer=optimizer,
        scheduler=state["scheduler"],
        scaler=state["scaler"],
        metrics_bytes=state["metrics_bytes"],
        elapsed_s=float(state["elapsed_s"]),
        rng_tensors=rng_tensors,
        rng_metadata=rng_meta,
    )
