"""Capture and restore every random generator a training step touches (Python, NumPy, torch CPU and CUDA), as
safetensors tensors plus string metadata: no pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import torch
from torch import Tensor


def capture() -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata describing the current state of all generators."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "python_state": torch.tensor(state, dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = cuda_state
    metadata = {
        "python": json.dumps({"version": version, "gauss": gauss}),
        "numpy": json.dumps({"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}),
    }
    return tensors, metadata


def restore(tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Put the generators back in the captured state."""
    python = json.loads(metadata["python"])
    random.setstate((python["version"], tuple(int(v) for v in tensors["python_state"].tolist()), python["gauss"]))
    numpy_meta = json.loads(metadata["numpy"])
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy_meta["kind"], keys, numpy_meta["pos"], numpy_meta["has_gauss"], numpy_meta["cached"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k.split("_")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
