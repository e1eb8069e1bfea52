"""accelerate's FSDP plugin with PEFT's auto-wrap policy around our layers.

accelerate enables FSDP only on accelerators (its CPU path is DDP), so the training check is GPU-marked; what CPU can
check is that PEFT's `fsdp_auto_wrap_policy` sees our adapters: every trainable adapter tensor lies inside a unit the
policy wraps (a RoBERTa layer), so FSDP shards and gathers them with their layer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from distributed_run import assert_trained_like_one_process, run_worker
from peft import get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy
from tiny_models import tiny_roberta

from peft_inits.registry import get_method

HERE = Path(__file__).resolve().parents[1] / "helpers"


@pytest.mark.parametrize("method", ["lora", "svfit", "loldu"])
def test_peft_auto_wrap_policy_wraps_every_adapter(method):
    model = get_peft_model(tiny_roberta(), get_method(method).config(r=2, target_modules=["query", "value"]))
    policy = fsdp_auto_wrap_policy(model)
    wrapped = [name for name, module in model.named_modules() if policy(module, recurse=False, nonwrapped_numel=0)]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad and "pi_adapters" in name]
    assert trainable
    for name in trainable:
        assert any(name.startswith(unit + ".") for unit in wrapped), f"{name} is in no FSDP unit"
    assert all("layer." in unit for unit in wrapped if ".encoder." in unit)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate's FSDP plugin needs a CUDA device")
def test_accelerate_fsdp_training_matches_one_process(tmp_path):
    out = tmp_path / "errors.json"
    processes = min(2, torch.cuda.device_count())
    launcher = shutil.which("accelerate") or "accelerate"
    command = [launcher, "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", str(processes),
               "--mixed_precision", "no", str(HERE / "fsdp_accelerate_worker.py"), str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    errors = run_worker(command, out, env, timeout=600)
    assert_trained_like_one_process(errors, {"lora", "svfit", "loldu", "pissa"}, tolerance=1e-4)
