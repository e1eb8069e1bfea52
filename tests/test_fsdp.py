"""FSDP (torch's `fully_shard`, FSDP2) with our layers on 2 CPU processes (gloo): sharded training equals training
in one process. accelerate's FSDP plugin needs CUDA and is not tested here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_fully_sharded_training_matches_one_process(tmp_path):
    out = tmp_path / "errors.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "fsdp_worker.py"), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(out.read_text())
    assert set(errors) == {"lora", "svfit", "loldu", "pissa"}
    for method, error in errors.items():
        assert error["moved"] > 1e-3, f"{method}: training must move the adapter"
        assert error["trained"] < 1e-6, f"{method}: sharded training differs by {error['trained']}"
