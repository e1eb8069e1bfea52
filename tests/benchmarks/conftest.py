"""Benchmark-suite switches: timed benchmarks run only with `--benchmark-enable`, on one torch thread.

The default `python -m pytest` passes `--benchmark-disable` (pyproject addopts); tests marked `perf` are then
deselected, so the default run only executes the cheap checks in this folder (the parameter counts). The suite:

    python -m pytest tests/benchmarks --benchmark-enable --benchmark-json=.benchmarks/cpu.json

Options (this folder must be on the command line for them to exist):
`--bench-set cpu|full` (default: cpu on CPU, full on CUDA) picks token counts and the shape × rank grid;
`--bench-device cpu|cuda` (default: cuda when available).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
_START_LOAD = os.getloadavg() if hasattr(os, "getloadavg") else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peft_inits benchmarks")
    group.addoption("--bench-set", choices=("cpu", "full"), default=None, help="shape/token grid (default by device)")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None, help="device (default: cuda if any)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "perf: timed benchmark, runs only with --benchmark-enable")
    torch.set_num_threads(1)


def benchmarks_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_enable", default=False)) or not config.getoption(
        "benchmark_disable", default=True
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if benchmarks_enabled(config):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("perf") and HERE in item.path.parents else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def bench_device(config: pytest.Config) -> torch.device:
    name = config.getoption("bench_device", default=None) or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda but no CUDA device is available")
    return torch.device(name)


def bench_set(config: pytest.Config) -> str:
    return config.getoption("bench_set", default=None) or ("full" if bench_device(config).type == "cuda" else "cpu")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    return bench_device(request.config)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Versions, threads, device and the load average around the run (the machine may be shared)."""
    dev = bench_device(config)
    machine_info["peft_inits"] = {
        "torch": torch.__version__,
        "triton": _version("triton"),
        "peft": _version("peft"),
        "transformers": _version("transformers"),
        "diffusers": _version("diffusers"),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "bench_set": bench_set(config),
        "loadavg_start": _START_LOAD,
        "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
