"""One complete run: seed, build, adapt, train, save, summarise, plot. Every runner and `compare` call `execute`."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from . import plots
from .loop import make_accelerator, train
from .prepare import prepare, save_weights
from .rundir import RunDir, environment
from .settings import AdapterSettings, TrainSettings, as_dict
from .task import Task


def summarise(run: RunDir, task: Task, *, skip: int = 2) -> dict[str, Any]:
    """Best/final validation metric, test metrics and the median step time (first `skip` steps are warm-up)."""
    evals = run.records("eval")
    tests = run.records("test")
    best = None
    for record in evals:
        value = record.get(task.metric)
        if value is not None and task.better(value, None if best is None else best["value"]):
            best = {"value": value, "step": record["step"]}
    times = [r["step_time"] for r in run.records("train")[skip:]] or [r["step_time"] for r in run.records("train")]
    return {
        "metric": task.metric,
        "best": best,
        "final": evals[-1] if evals else None,
        "test": tests[-1] if tests else None,
        "median_step_time_s": statistics.median(times) if times else None,
        "peak_mem_mb": max((r.get("peak_mem_mb", 0.0) for r in run.records("train")), default=None),
    }


def execute(
    *,
    output_dir: str | Path,
    build_model: Callable[[], nn.Module],
    adapter: AdapterSettings,
    train_settings: TrainSettings,
    task: Task,
    config: dict[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training run into `output_dir` and return its summary (also written to summary.json).

    `config` is what the run directory records and what `resume` checks; `info` is copied into the summary.
    A finished run (summary.json present) is not redone on `resume`: its summary is returned.
    """
    run = RunDir(output_dir)
    train_config = {k: v for k, v in as_dict(train_settings).items() if k != "progress"}
    config = {**config, "adapter": as_dict(adapter), "train": train_config}
    accelerator = make_accelerator(train_settings.mixed_precision)
    # The main process owns the folder and holds its writer lock for the whole run (released on any exit).
    with run.writer(enabled=accelerator.is_main_process):
        return _execute(run, build_model, adapter, train_settings, task, config, resume, overwrite, info, accelerator)


def _execute(
    run: RunDir,
    build_model: Callable[[], nn.Module],
    adapter: AdapterSettings,
    train_settings: TrainSettings,
    task: Task,
    config: dict[str, Any],
    resume: bool,
    overwrite: bool,
    info: dict[str, Any] | None,
    accelerator: Accelerator,
) -> dict[str, Any]:
    if accelerator.is_main_process:  # one process creates or checks the folder, the others follow it
        resuming = run.prepare(config, resume=resume, overwrite=overwrite)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        resuming = resume and (run.path / "config.json").is_file()
    if resuming and (run.path / "summary.json").is_file():
        return json.loads((run.path / "summary.json").read_text())
    started = time.perf_counter()
    set_seed(train_settings.seed)
    model = build_model()
    prepared = prepare(model, adapter)
    set_seed(train_settings.seed)
    result = train(prepared, task, train_settings, run, resume=resuming, accelerator=accelerator)
    summary: dict[str, Any] = {
        "method": adapter.method,
        "label": adapter.label(),
        **prepared.counts(),
        "targets": len(prepared.targets),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "train_time_s": result.elapsed_s,
    }
    if accelerator.is_main_process:
        weights = save_weights(prepared, run.path / "weights")
        summary.update(summarise(run, task))
        summary["weights_file"] = str(weights.relative_to(run.path))
        summary["weights_bytes"] = weights.stat().st_size
        summary["wall_time_s"] = time.perf_counter() - started
        summary["environment"] = {**environment(), "accelerator": str(accelerator.device)}
        summary["info"] = info or {}
        run.write_json("summary.json", summary)
        plots.plot_run(run.path, task.metric)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # every process returns the summary the main one wrote
        summary = json.loads((run.path / "summary.json").read_text())
    return summary
