"""Worker of `test_fsdp_accelerate.py`, run under `accelerate launch --use_fsdp` on CUDA: accelerate's FSDP plugin
(FSDP2, PEFT's auto-wrap policy `fsdp_auto_wrap_policy`) around a tiny RoBERTa with our adapters, 3 AdamW steps on
each rank's share of the batch, then the gathered trained tensors compared with the same training in one process.
Rank 0 writes {method: {"trained": max error, "moved": max change}} to argv[1].

    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 tests/helpers/fsdp_accelerate_worker.py errors.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
from peft import get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_roberta

from peft_inits.registry import get_method

METHODS = ("lora", "svfit", "loldu", "pissa")


def build(method: str):
    config = get_method(method).config(r=2, target_modules=["query", "value"], init_weights=False)
    return get_peft_model(tiny_roberta(), config)


def train(model, batches, device) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for ids, labels in batches:
        model(input_ids=ids.to(device), labels=labels.to(device)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    full = [(torch.randint(0, 100, (8, 12), generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(3)]
    share = 8 // world
    return [(ids[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]) for ids, y in full]


def main() -> None:
    errors = {}
    # one Accelerator per process (its state is a singleton); the policy depends only on the layer classes
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy=fsdp_auto_wrap_policy(build("lora")))
    accelerator = Accelerator(fsdp_plugin=plugin)
    for method in METHODS:
        reference = build(method).cuda()
        train(reference, batches(0, 1), "cuda")
        want = {n: p.detach().cpu() for n, p in reference.named_parameters() if p.requires_grad}
        initial = {n: p.detach() for n, p in build(method).named_parameters() if p.requires_grad}

        model = build(method)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model, optimizer = accelerator.prepare(model, optimizer)
        for ids, labels in batches(accelerator.process_index, accelerator.num_processes):
            # the mean over each rank's share, averaged over ranks by FSDP, is the mean over the whole batch
            accelerator.backward(model(input_ids=ids.to(accelerator.device), labels=labels.to(accelerator.device)).loss)
            optimizer.step()
            optimizer.zero_grad()
        state = accelerator.get_state_dict(model)  # full tensors, gathered on rank 0
        if accelerator.is_main_process:
            got = {n: state[n].cpu() for n in want if n in state}
            assert got.keys() == want.keys(), sorted(set(want) - set(got))[:3]
            errors[method] = {
                "trained": max(float((got[n] - want[n]).abs().max()) for n in want),
                "moved": max(float((want[n] - initial[n]).abs().max()) for n in want),
            }
        accelerator.free_memory()
        accelerator.wait_for_everyone()
    if errors:
        Path(sys.argv[1]).write_text(json.dumps(errors))


if __name__ == "__main__":
    main()
