"""Initialisation time: `get_peft_model` on the same targets with each init, ours and PEFT's PiSSA.

- Whole model: a RoBERTa-base-sized encoder (random weights), query + value = 24 matrices of 768², r = 8.
- Growth with matrix size: one n × n Linear (plus LLaMA-7B's 11008 × 4096 in the full set), r = 8.

Inits: our LoRA (kaiming, no decomposition, the floor), PEFT LoRA default, SVFit exact SVD, SVFit randomized SVD
(niter 2, 10 oversampling columns), LoLDU truncated pivoted elimination (r steps) and full LU, PEFT
`init_lora_weights="pissa"` (full SVD) and `"pissa_niter_4"` (`torch.svd_lowrank`, q = r, 4 power iterations).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from bench_utils import roberta_base
from conftest import bench_device, bench_set
from peft import LoraConfig, get_peft_model
from torch import nn

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig

pytestmark = pytest.mark.perf

RANK = 8
INITS = {
    "lora": lambda targets: LoRAConfig(r=RANK, target_modules=targets),
    "peft_lora": lambda targets: LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets),
    "svfit_exact": lambda targets: SVFitConfig(r=RANK, target_modules=targets, svd="exact"),
    "svfit_randomized": lambda targets: SVFitConfig(r=RANK, target_modules=targets, svd="randomized", svd_niter=2),
    "loldu_truncated": lambda targets: LoLDUConfig(r=RANK, target_modules=targets, ldu_method="truncated"),
    "loldu_full": lambda targets: LoLDUConfig(r=RANK, target_modules=targets, ldu_method="full"),
    "peft_pissa": lambda targets: LoraConfig(
        r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights="pissa"
    ),
    "peft_pissa_niter_4": lambda targets: LoraConfig(
        r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights="pissa_niter_4"
    ),
}
CPU_SIZES = [(256, 256), (512, 512), (1024, 1024), (2048, 2048)]
FULL_SIZES = [*CPU_SIZES, (4096, 4096), (11008, 4096)]


class OneLinear(nn.Module):
    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "matrix_case" in metafunc.fixturenames:
        sizes = FULL_SIZES if bench_set(metafunc.config) == "full" else CPU_SIZES
        cases = [(size, init) for size in sizes for init in INITS]
        metafunc.parametrize("matrix_case", cases, ids=[f"{m}x{n}-{init}" for (m, n), init in cases])


@functools.lru_cache(maxsize=1)
def _roberta(device: str) -> nn.Module:
    return roberta_base().to(device).eval()


@functools.lru_cache(maxsize=1)
def _one_linear(m: int, n: int, device: str) -> nn.Module:
    torch.manual_seed(0)
    return OneLinear(m, n).to(device)


def _time_init(benchmark, base: nn.Module, config, rounds: int, device: torch.device) -> None:
    def setup():
        return (copy.deepcopy(base),), {}

    def init(model):
        get_peft_model(model, config)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.pedantic(init, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("init", list(INITS))
def test_whole_model_init(benchmark, init, request):
    device = bench_device(request.config)
    base = _roberta(str(device))
    benchmark.group = "init | roberta-base query+value (24 × 768²) | r=8"
    benchmark.extra_info.update(
        kind="init_model", model="roberta-base q,v", matrices=24, m=768, n=768, r=RANK, init=init
    )
    _time_init(benchmark, base, INITS[init](["query", "value"]), rounds=2, device=device)


def test_matrix_init(benchmark, matrix_case, request):
    (m, n), init = matrix_case
    device = bench_device(request.config)
    base = _one_linear(m, n, str(device))
    benchmark.group = "init | one matrix | r=8"
    benchmark.extra_info.update(kind="init_matrix", m=m, n=n, r=RANK, init=init)
    _time_init(benchmark, base, INITS[init](["proj"]), rounds=3 if m * n <= 1024**2 else 1, device=device)
