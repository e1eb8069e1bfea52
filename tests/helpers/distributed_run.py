"""Run a distributed test worker and read its verdict: {method: {"trained": max error vs one process, "moved": max
change from init}}, written by rank 0 to the path given as the worker's last argument."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def run_worker(command: list[str], out: Path, env: dict[str, str], timeout: int) -> dict[str, dict[str, float]]:
    """Run `command` (whose last argument is `out`) and return the errors it wrote; a failed run shows its stderr."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def assert_trained_like_one_process(errors: dict[str, dict[str, float]], methods: set[str], tolerance: float) -> None:
    assert set(errors) == methods
    for method, error in errors.items():
        assert error["moved"] > 1e-3, f"{method}: training must move the adapter"
        assert error["trained"] < tolerance, f"{method}: distributed training differs by {error['trained']}"
