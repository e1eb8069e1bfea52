"""The run directory: `config.json`, `metrics.jsonl` (one JSON record a line), `summary.json`, weights and plots."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write

# Record keys that legitimately differ between two identical runs (clocks and memory); everything else must match.
TIMING_KEYS = frozenset({"step_time", "peak_mem_mb", "eval_time", "elapsed_s"})
# Settings that may change on `--resume` without changing the result.
_RESUME_FREE = frozenset({"resume", "overwrite", "progress", "output_dir", "cache_dir", "config"})


class RunDir:
    """One run's output folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"

    def prepare(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> bool:
        """Create the folder for a fresh run or check it for a resumed one. Returns True when resuming.

        A fresh run refuses a folder that already holds a run (unless `overwrite`); `resume` refuses a folder whose
        run was started with different settings, since its metrics could not continue the same curve.
        """
        existing = self.path / "config.json"
        if resume and existing.is_file():
            saved = json.loads(existing.read_text())
            changed = sorted(
                key for key in set(saved) | set(config) if key not in _RESUME_FREE and saved.get(key) != config.get(key)
            )
            if changed:
                details = "; ".join(f"{k}: {saved.get(k)!r} → {config.get(k)!r}" for k in changed)
                raise ValueError(f"cannot resume {self.path}: it was started with other settings ({details})")
            return True
        if existing.is_file() or self.metrics_path.is_file():
            if not overwrite:
                raise ValueError(
                    f"{self.path} already holds a run; pass --resume to continue it or --overwrite to replace it"
                )
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_json("config.json", config)
        return False

    def write_json(self, name: str, payload: Any) -> Path:
        text = json.dumps(payload, indent=2, sort_keys=True, default=str)
        atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(text + "\n"))
        return self.path / name

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (flushed at once, so a killed run keeps its curve)."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def metrics_size(self) -> int:
        return self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop the records a killed run wrote after its last checkpoint."""
        if self.metrics_path.is_file():
            with open(self.metrics_path, "r+b") as handle:
                handle.truncate(size)
        elif size:
            raise ValueError(f"{self.metrics_path} is missing; the run cannot be resumed")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        return read_records(self.metrics_path, kind)


def read_records(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file, optionally only those of one type ('train', 'eval', 'test')."""
    path = Path(path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("type") == kind]


def without_timing(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with the clock/memory fields removed: what two identical runs must agree on exactly."""
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def environment() -> dict[str, Any]:
    """Versions and hardware, for summary.json."""
    versions = {}
    for package in ("torch", "transformers", "peft", "accelerate", "peft-inits", "diffusers", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "cuda": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
