"""FSDP (torch's `fully_shard`, FSDP2) with our layers on 2 CPU processes (gloo): sharded training equals training
in one process. accelerate's FSDP plugin (CUDA only): test_fsdp_accelerate.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from distributed_run import assert_trained_like_one_process, run_worker

HERE = Path(__file__).resolve().parents[1] / "helpers"


def test_fully_sharded_training_matches_one_process(tmp_path):
    out = tmp_path / "errors.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "fsdp_worker.py"), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    errors = run_worker(command, out, env, timeout=300)
    assert_trained_like_one_process(errors, {"lora", "svfit", "loldu", "pissa"}, tolerance=1e-6)
