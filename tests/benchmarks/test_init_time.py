"""Initialisation time: `get_peft_model` on the same targets with each init, ours and PEFT's PiSSA.

- Whole model: a RoBERTa-base-sized encoder (random weights), query + value = 24 matrices of 768², r = 8.
- Growth with matrix size: one n × n Linear (plus LLaMA-7B's 11008 × 4096 in the full set), r = 8.

Inits: our LoRA (kaiming, no decomposition, the floor), PEFT LoRA default, SVFit exact SVD, SVFit randomized SVD
(niter 2, 10 oversampling columns), LoLDU truncated pivoted elimination (r steps) and full LU, PEFT
`init_lora_weights="pissa"` (full SVD) and `"pissa_niter_4"` (`torch.svd_lowrank`, q = r, 4 power iterations).

- Paired whole-model inits (`test_whole_model_init_paired`): every init of one target set timed round-robin in one
  test (ratios to PEFT `pissa_niter_4` taken seconds apart), on the target weights only (a container of Linears
  with the real names and shapes, random values: init time does not depend on them) — RoBERTa-base all encoder
  linears (72), SD-1.5 UNet attention (128) and one LLaMA-7B decoder layer's q,v (2 × 4096²). Also PEFT OLoRA.
"""

from __future__ import annotations

import copy
import functools
import time

import pytest
import torch
from bench_utils import roberta_base, synchronize
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


PAIRED_INITS = {
    "peft_pissa_niter_4": INITS["peft_pissa_niter_4"],
    "peft_olora": lambda targets: LoraConfig(
        r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights="olora"
    ),
    "peft_lora": INITS["peft_lora"],
    "svfit_randomized": INITS["svfit_randomized"],
    "svfit_randomized_niter_4": lambda targets: SVFitConfig(
        r=RANK, target_modules=targets, svd="randomized", svd_niter=4
    ),
    "loldu": lambda targets: LoLDUConfig(r=RANK, target_modules=targets),
}
ROBERTA_ALL = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


class TargetWeights(nn.Module):
    """Only the target Linears of a model, under their real dotted names, with random weights."""

    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name, (m, n) in shapes.items():
            parent = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            linear = nn.Linear(n, m, bias=False, device="meta")
            linear.weight = nn.Parameter(0.02 * torch.randn(m, n, generator=g), requires_grad=False)
            parent.add_module(leaf, linear)


def _linear_shapes(model: nn.Module, suffixes: list[str]) -> dict[str, tuple[int, int]]:
    return {
        name: tuple(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)
    }


def paired_targets(name: str) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """(name → shape, target_modules) of one benchmarked target set, from meta-device models."""
    if name == "roberta-base all linears":
        from transformers import RobertaConfig, RobertaModel

        with torch.device("meta"):
            model = RobertaModel(RobertaConfig())
        return _linear_shapes(model, ROBERTA_ALL), ROBERTA_ALL
    if name == "sd-1.5 unet attention":
        from tiny_models import sd15_unet_meta

        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        return _linear_shapes(sd15_unet_meta(), targets), targets
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(num_hidden_layers=1, vocab_size=32000, hidden_size=4096, intermediate_size=11008)
    with torch.device("meta"):
        model = LlamaModel(config)
    return _linear_shapes(model, ["q_proj", "v_proj"]), ["q_proj", "v_proj"]


PAIRED_TARGETS = ("roberta-base all linears", "sd-1.5 unet attention", "llama-7b q,v (one decoder layer)")


@pytest.mark.parametrize("target", PAIRED_TARGETS)
def test_whole_model_init_paired(benchmark, target, request):
    device = bench_device(request.config)
    shapes, targets = paired_targets(target)
    base = TargetWeights(shapes).to(device)
    rounds = 2 if device.type == "cpu" else 3

    def init(config_of) -> float:
        model = copy.deepcopy(base)
        synchronize(device)
        start = time.perf_counter()
        get_peft_model(model, config_of(targets))
        synchronize(device)
        return time.perf_counter() - start

    best = dict.fromkeys(PAIRED_INITS, float("inf"))
    for _ in range(rounds):
        for name, config_of in PAIRED_INITS.items():
            best[name] = min(best[name], init(config_of))
    benchmark.group = f"init paired | {target} | r={RANK}"
    benchmark.extra_info.update(
        kind="init_paired",
        target=target,
        matrices=len(shapes),
        weights_M=sum(m * n for m, n in shapes.values()) / 1e6,
        r=RANK,
        paired_min_s=best,
    )
    benchmark.pedantic(lambda: init(PAIRED_INITS["loldu"]), rounds=1, iterations=1, warmup_rounds=0)
