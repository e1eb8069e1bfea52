"""The one training loop every runner uses (encoder, ViT, and the later SD and descriptor studies).

Built on `accelerate`: the same code runs on CPU, one GPU, or several with `accelerate launch` (DDP), with bf16/fp16
autocast on GPU. Evaluation runs on the main process with the unwrapped model. Checkpoints hold everything needed
for `resume` to reproduce an uninterrupted run's metrics exactly: trainable tensors, optimizer, scheduler, AMP scaler,
every RNG and the metrics.jsonl offset; the data order is a function of the step (`StepSampler`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import rng, state
from .optim import build_optimizer, build_scheduler, learning_rates
from .prepare import Prepared, trainable_state
from .rundir import RunDir
from .sampler import StepSampler
from .settings import TrainSettings
from .task import Task, to_device

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]


@functools.cache
def make_accelerator(mixed_precision: str = "auto") -> Accelerator:
    """One Accelerator per precision and process; 'auto' is bf16 (or fp16) on a GPU and full precision on CPU.

    Without a GPU it is created with `cpu=True`, which is what lets `torchrun`/`accelerate launch` run several CPU
    processes (gloo DDP) instead of silently running one.
    """
    gpu = torch.cuda.is_available()
    if mixed_precision == "auto" and not gpu:
        mixed_precision = "no"
    elif mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(mixed_precision=mixed_precision, cpu=not gpu)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if resource is not None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return float("nan")


@dataclass
class LoopResult:
    steps: int
    elapsed_s: float
    resumed_from: int


def _evaluate(task: Task, model: torch.nn.Module, accelerator: Accelerator, run: RunDir, step: int, split: str) -> None:
    if task.evaluate is None:
        return
    if accelerator.is_main_process:
        start = time.perf_counter()
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            metrics = task.evaluate(accelerator.unwrap_model(model), split)
        record = {"type": "test" if split == "test" else "eval", "step": step, "split": split, **metrics}
        record["eval_time"] = time.perf_counter() - start
        run.log(record)
    accelerator.wait_for_everyone()


def _restore(checkpoint: state.TrainingState, prepared: Prepared, optimizer, scheduler, accelerator) -> None:
    model = accelerator.unwrap_model(prepared.model)
    own = set(model.state_dict())
    unknown = sorted(set(checkpoint.model) - own)
    if unknown:
        raise ValueError(f"checkpoint holds tensors this model lacks ({unknown[:3]}...); it belongs to another run")
    model.load_state_dict(checkpoint.model, strict=False)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    if checkpoint.scaler is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(checkpoint.scaler)
    rng.restore(checkpoint.rng_tensors, checkpoint.rng_metadata)


def _run_hook(hook, model: torch.nn.Module, step: int, run: RunDir) -> None:
    """Call a checkpoint hook (e.g. a sample grid) without letting it move any RNG: resume must stay exact."""
    tensors, metadata = rng.capture()
    was_training = model.training
    model.eval()
    try:
        hook(model, step, run.path)
    finally:
        model.train(was_training)
        rng.restore(tensors, metadata)


def train(
    prepared: Prepared,
    task: Task,
    settings: TrainSettings,
    run: RunDir,
    *,
    resume: bool = False,
    accelerator: Accelerator | None = None,
) -> LoopResult:
    """Train `prepared.model` for `settings.steps` optimizer steps, logging to `run`; continue from the run's last
    checkpoint when `resume` is set. The caller seeds the generators before building the model."""
    accelerator = accelerator or make_accelerator(settings.mixed_precision)
    sampler = StepSampler(
        len(task.train), settings.batch_size, settings.seed, accelerator.process_index, accelerator.num_processes
    )
    optimizer = build_optimizer(prepared, settings)
    scheduler = build_scheduler(optimizer, settings)
    model, optimizer = accelerator.prepare(prepared.model, optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    start, elapsed = 0, 0.0
    checkpoint_path = state.latest(run.path) if resume else None
    if checkpoint_path is not None:
        checkpoint = state.load(checkpoint_path, accelerator.process_index)
        _restore(checkpoint, prepared, optimizer, scheduler, accelerator)
        start, elapsed = checkpoint.step, checkpoint.elapsed_s
        if accelerator.is_main_process:
            run.truncate_metrics(checkpoint.metrics_bytes)
    elif accelerator.is_main_process:
        run.truncate_metrics(0)
    if start == 0 and settings.eval_at_start:
        _evaluate(task, model, accelerator, run, 0, "validation")

    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(
        total=settings.steps,
        initial=start,
        desc=prepared.settings.label(),
        disable=not (settings.progress and accelerator.is_local_main_process),
        dynamic_ncols=True,
    )
    for step in range(start, settings.steps):
        began = time.perf_counter()
        model.train()
        batch = to_device(task.train.batch(sampler.indices(step)), device)
        with accelerator.autocast():
            loss = task.loss(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower the learning rate")
        accelerator.backward(loss)
        grad_norm = None
        if settings.max_grad_norm > 0 and accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        lrs = learning_rates(optimizer)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - began
        elapsed += step_time
        done = step + 1
        loss_value = float(accelerator.reduce(loss.detach(), "mean"))
        if accelerator.is_main_process:
            record: dict[str, Any] = {"type": "train", "step": done, "epoch": round(sampler.epoch_of(done), 4)}
            record.update(loss=loss_value, lr=lrs.get("adapter", math.nan), head_lr=lrs.get("head", math.nan))
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            record.update(step_time=step_time, peak_mem_mb=peak_memory_mb(device))
            run.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if done % settings.eval_every == 0 or done == settings.steps:
            _evaluate(task, model, accelerator, run, done, "validation")
        if settings.save_every and done % settings.save_every == 0 and done < settings.steps:
            state.save(
                run.path,
                step=done,
                model_state=trainable_state(prepared) if accelerator.is_main_process else {},
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=accelerator.scaler,
                metrics_bytes=run.metrics_size(),
                elapsed_s=elapsed,
                rank=accelerator.process_index,
                is_main=accelerator.is_main_process,
                barrier=accelerator.wait_for_everyone,
            )
            if task.on_checkpoint is not None and accelerator.is_main_process:
                _run_hook(task.on_checkpoint, accelerator.unwrap_model(model), done, run)
    bar.close()
    if task.has_test:
        _evaluate(task, model, accelerator, run, settings.steps, "test")
    return LoopResult(steps=settings.steps, elapsed_s=elapsed, resumed_from=start)
