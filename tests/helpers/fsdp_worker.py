"""Worker of `test_fsdp.py` (run under `torch.distributed.run`, 2 CPU processes, gloo): FSDP2 `fully_shard` on
every adapter layer and the root, 3 SGD steps on each rank's half of the batch, then the gathered trained tensors
compared with the same training in one process. Writes the errors to argv[1] (rank 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).parent))
from model_cases import MLP
from peft import get_peft_model

from peft_inits import AdapterLayer
from peft_inits.registry import get_method


def build(method: str):
    torch.manual_seed(0)
    config = get_method(method).config(r=3, target_modules=["fc1", "fc2"], init_weights=False)
    return get_peft_model(MLP(), config)


def train(model, batches) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for batch in batches:
        model(batch).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    X = torch.randn(3, 8, 13, generator=torch.Generator().manual_seed(1))
    errors = {}
    for method in ("lora", "svfit", "loldu", "pissa"):
        sharded, reference = build(method), build(method)
        for module in sharded.modules():  # PEFT's policy: wrap the layers that hold trainable parameters
            if isinstance(module, AdapterLayer):
                fully_shard(module)
        fully_shard(sharded)
        share = X.shape[1] // world
        train(sharded, [x[rank * share : (rank + 1) * share] for x in X])
        train(reference, list(X))
        full = {n: p.full_tensor().detach() for n, p in sharded.named_parameters() if p.requires_grad}
        want = {n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}
        assert full.keys() == want.keys() and full
        initial = dict(build(method).named_parameters())
        moved = max(float((want[n] - initial[n].detach()).abs().max()) for n in want)
        errors[method] = {
            "trained": max(float((full[n] - want[n]).abs().max()) for n in want),
            "moved": moved,
        }
    if rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(errors))
    dist.barrier()  # both ranks tear gloo down together: a rank leaving early can abort the other under load
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
