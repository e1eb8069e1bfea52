"""How well an adapter data set's principal directions describe its adapters, and whether the adapters share a gauge
(docs/hypernetwork_lora_basis.md; issue 22).

    python experiments/basis_check.py --hypernetwork runs/hyper-lora-k64-s0 --output runs/basis-check.json \
        [--dataset runs/data/adapters-lora] [--sizes 8,16,32,64,119]

The hypernetwork run gives the slot order, the adapter's init and the basis it was trained with; the data set (default:
the one the run's basis came from) gives the adapters. Reports, with no sampling:

- per trained tensor kind (the last part of the saved key, e.g. LoRA's lora_A / lora_B): RMS of the init, of the
  training adapters' change from the init, and of the difference between two training adapters, and for a nonzero
  init each adapter's cosine with it. Adapters trained from one random A keep a high cosine with it (two independent
  random inits have cosine ≈ 0): they share that A's gauge, so a PCA over (A, B) compares like with like;
- for each k: the share of the training adapters' variance (around their mean) in the top-k directions, and the
  share of the *held-out* adapters' deviation from the training mean that the same k directions capture (the held-out
  adapters are read here only to evaluate the basis, never to fit it);
- that the run's basis equals the one refitted here (its top directions, up to sign).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from peft_inits import functional as Fn
from peft_inits.cli import args as cli
from peft_inits.generation.entries import training_data
from peft_inits.generation.hypernetwork_basis import adapter_vector
from peft_inits.generation.hypernetwork_run import load_hypernetwork


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hypernetwork", required=True, help="a run trained with --basis-dataset")
    parser.add_argument("--dataset", default=None, help="default: the run's basis data set")
    parser.add_argument("--sizes", type=lambda t: [int(s) for s in cli.csv_list(t)], default=[8, 16, 32, 64])
    parser.add_argument("--output", required=True, help="JSON report")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    run = load_hypernetwork(args.hypernetwork)
    recorded = run.meta.get("basis")
    if not recorded:
        raise ValueError(f"{run.root} was trained without an output basis")
    dataset = training_data(args.dataset or recorded["dataset"])
    train = torch.stack([adapter_vector(e.directory, run.keys) for e in dataset.entries("train")])
    heldout = torch.stack([adapter_vector(e.directory, run.keys) for e in dataset.entries("heldout")])
    init = run.net.init.double()
    kinds: dict[str, list[tuple[int, int]]] = {}
    offset = 0
    for key, shape in zip(run.keys, run.net.slots.shapes, strict=True):
        count = int(torch.Size(shape).numel())
        kinds.setdefault(key.rpartition(".")[2], []).append((offset, offset + count))
        offset += count

    def rms(x: torch.Tensor) -> float:
        return float(x.square().mean().sqrt())

    gauge = {}
    for kind, spans in kinds.items():
        index = torch.cat([torch.arange(a, b) for a, b in spans])
        gauge[kind] = {
            "values": len(index),
            "init_rms": rms(init[index]),
            "change_from_init_rms": rms(train[:, index] - init[index]),
            "between_adapters_rms": rms(train[1:, index] - train[:-1, index]),
        }
        if float(init[index].norm()) > 0:  # a random init: trained copies of one init stay correlated with it
            cosine = torch.nn.functional.cosine_similarity(train[:, index], init[index][None], dim=1)
            gauge[kind]["cosine_with_init"] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
    mean = train.mean(0)
    _, S, Vh = torch.linalg.svd(train - mean, full_matrices=False)
    total = float(S.square().sum())
    deviation = heldout - mean
    sizes = sorted({min(k, len(S)) for k in args.sizes} | {len(train) - 1})
    captured = {}
    for k in sizes:
        projected = deviation @ Vh[:k].T
        captured[k] = {
            "train_variance": float(S[:k].square().sum()) / total,
            "heldout_deviation": float(projected.square().sum() / deviation.square().sum()),
        }
    k = int(recorded["size"])
    _, refit, _ = Fn.principal_basis(train, k, bool(recorded["whiten"]))
    cosines = torch.nn.functional.cosine_similarity(refit, run.net.basis.double(), dim=1).abs()
    report = {
        "hypernetwork": str(run.root),
        "dataset": str(dataset.root),
        "train_adapters": len(train),
        "heldout_adapters": len(heldout),
        "values": int(train.shape[1]),
        "gauge": gauge,
        "captured": captured,
        "mean_adapter_change_from_init_rms": rms(mean - init),
        "run_basis_vs_refit_min_abs_cosine": float(cosines.min()),
        "run_basis_vs_refit_max_shift_diff": float((mean - init - run.net.shift.double()).abs().max()),
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    cli.run_script(main, parse_args)
