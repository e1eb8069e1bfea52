"""The run directory: `config.json`, `metrics.jsonl` (one JSON record a line), `summary.json`, weights and plots.

One writer per run directory: a writer holds `.lock` (an OS file lock through `filelock`, released by the kernel
if the process dies) for the run's lifetime, and `.lock-owner.json` records its PID, host and start time. A second
writer (a fresh run, `--resume` or `--overwrite`) is refused with `RunDirBusy` naming the holder; a lock whose holder
died without releasing it is taken over with a `StaleLockWarning`. `log` and `truncate_metrics` refuse to run
without the lock, so `metrics.jsonl` can never interleave.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from ..checkpoint import atomic_write

# Record keys that legitimately differ between two identical runs (clocks and memory); everything else must match.
TIMING_KEYS = frozenset({"step_time", "peak_mem_mb", "eval_time", "elapsed_s"})
# Settings that may change on `--resume` without changing the result.
_RESUME_FREE = frozenset({"resume", "overwrite", "progress", "output_dir", "cache_dir", "config"})
LOCK_NAME = ".lock"
OWNER_NAME = ".lock-owner.json"


class RunDirBusy(ValueError):
    """Another live process is writing this run directory."""


class StaleLockWarning(UserWarning):
    """A run directory's lock was left by a process that died; it was taken over."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


class RunDir:
    """One run's output folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self._lock: FileLock | None = None

    # ------------------------------------------------------------------------------------------ the writer lock

    @property
    def locked(self) -> bool:
        """Whether this object holds the run directory's writer lock."""
        return self._lock is not None and self._lock.is_locked

    def owner(self) -> dict[str, Any] | None:
        """Who holds (or last held without releasing) the lock: pid, host, started; None if nobody is recorded."""
        try:
            owner = json.loads((self.path / OWNER_NAME).read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def lock(self) -> RunDir:
        """Become the run directory's only writer (creating the folder); a no-op if this object already is.

        Raises `RunDirBusy` when another live process holds it; warns `StaleLockWarning` when taking over the lock
        of a process that died holding it.
        """
        if self.locked:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_NAME), timeout=0, thread_local=False)  # held by the process
        try:
            lock.acquire()
        except Timeout:
            owner = self.owner()
            for _ in range(20):  # a holder that just got the lock writes its record a moment later
                if owner is not None:
                    break
                time.sleep(0.025)
                owner = self.owner()
            owner = owner or {}
            who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
            raise RunDirBusy(
                f"{self.path} is in use by another run: {who} is writing it; wait for it to finish, stop it, or "
                f"choose another --output-dir"
            ) from None
        previous = self.owner()
        if previous is not None:
            pid, host = previous.get("pid"), previous.get("host")
            here = host == socket.gethostname() and isinstance(pid, int)
            gone = "died without releasing it" if here and not _pid_alive(pid) else "did not release it"
            warnings.warn(
                f"{self.path}: taking over the lock left by process {pid} on {host} (since "
                f"{previous.get('started')}), which {gone}",
                StaleLockWarning,
                stacklevel=2,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv,
        }
        try:
            self.write_json(OWNER_NAME, record)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self

    def unlock(self) -> None:
        """Give up the writer lock (the owner record goes first, so nobody mistakes a clean exit for a crash)."""
        if not self.locked:
            return
        assert self._lock is not None
        (self.path / OWNER_NAME).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    @contextlib.contextmanager
    def writer(self, enabled: bool = True) -> Iterator[RunDir]:
        """Hold the writer lock for the block (released on exit and on exceptions); `enabled=False` (a DDP process
        that does not own the folder) holds nothing."""
        if not enabled:
            yield self
            return
        held = self.locked
        self.lock()
        try:
            yield self
        finally:
            if not held:
                self.unlock()

    def _require_lock(self, action: str) -> None:
        if not self.locked:
            raise RuntimeError(f"cannot {action} in {self.path} without its writer lock; call lock() or prepare()")

    # ------------------------------------------------------------------------------------------ contents

    def prepare(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> bool:
        """Take the writer lock (kept until `unlock`), then create the folder for a fresh run or check it for a
        resumed one. Returns True when resuming.

        A fresh run refuses a folder that already holds a run (unless `overwrite`); `resume` refuses a folder whose
        run was started with different settings, since its metrics could not continue the same curve.
        """
        held = self.locked
        self.lock()
        try:
            return self._prepare(config, resume=resume, overwrite=overwrite)
        except BaseException:
            if not held:  # a refused start does not keep the folder locked
                self.unlock()
            raise

    def _prepare(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> bool:
        config = json.loads(json.dumps(config, default=str))  # as config.json holds it (a Path is its text)
        existing = self.path / "config.json"
        if resume and existing.is_file():
            try:
                saved = json.loads(existing.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot resume {self.path}: {existing} is not valid JSON ({exc})") from exc
            if not isinstance(saved, dict):
                raise ValueError(f"cannot resume {self.path}: {existing} must hold a JSON object")
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
            for entry in self.path.iterdir():  # everything but the lock we hold
                if entry.name in (LOCK_NAME, OWNER_NAME):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.write_json("config.json", config)
        return False

    def write_json(self, name: str, payload: Any) -> Path:
        text = json.dumps(payload, indent=2, sort_keys=True, default=str)
        atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(text + "\n"))
        return self.path / name

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (flushed at once, so a killed run keeps its curve); needs the lock."""
        self._require_lock("append to metrics.jsonl")
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def metrics_size(self) -> int:
        return self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop the records a killed run wrote after its last checkpoint; needs the lock."""
        self._require_lock("truncate metrics.jsonl")
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
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number} is not a JSON record ({exc}): {line[:60]!r}") from exc
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
