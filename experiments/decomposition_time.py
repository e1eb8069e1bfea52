"""Whole-model decomposition time: exact SVD, randomized SVD and pivoted LDU on real model target shapes.

    python experiments/decomposition_time.py [--r 8] [--threads 1]

Target shapes come from the dry run of the block-selection layer on RoBERTa-base and SD-1.5 built on the meta
device; the weights are random (init time does not depend on the values), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from peft_inits import AdapterSpec, SVFitConfig
from peft_inits.adapters import build_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def target_shapes(r: int) -> dict[str, list[tuple[int, ...]]]:
    """Weight shapes of the default and all-linear targets of RoBERTa-base and SD-1.5 attention."""
    from tiny_models import sd15_unet_meta
    from transformers import RobertaConfig, RobertaModel

    with torch.device("meta"):
        roberta = RobertaModel(RobertaConfig())
    unet = sd15_unet_meta()

    def shapes(model: torch.nn.Module, config: SVFitConfig) -> list[tuple[int, ...]]:
        modules = dict(model.named_modules())
        return [tuple(modules[t.name].weight.shape) for t in config.resolve(model)]

    return {
        "roberta-base query,value": shapes(roberta, SVFitConfig(r=r)),
        "roberta-base all encoder linears": shapes(roberta, SVFitConfig(r=r, module_kinds=["attn", "ff"])),
        "sd-1.5 unet attention": shapes(unet, SVFitConfig(r=r)),
    }


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    torch.set_num_threads(args.threads)
    specs = {
        "svd exact": AdapterSpec("svfit", args.r),
        "svd randomized": AdapterSpec("svfit", args.r, options={"svd": "randomized"}),
        "ldu truncated": AdapterSpec("loldu", args.r, options={"ldu_method": "truncated"}),
        "ldu full": AdapterSpec("loldu", args.r, options={"ldu_method": "full"}),
    }
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, shapes in target_shapes(args.r).items():
        weights = [0.02 * torch.randn(shape, generator=generator) for shape in shapes]
        row: dict[str, object] = {"targets": name, "matrices": len(shapes)}
        row["weights_M"] = sum(w.numel() for w in weights) / 1e6
        for label, spec in specs.items():
            start = time.perf_counter()
            for weight in tqdm(weights, desc=f"{name}: {label}", leave=False):
                build_adapter(weight, spec)
            row[label] = time.perf_counter() - start
        rows.append(row)
    print(f"r={args.r}, {args.threads} thread(s), torch {torch.__version__}")
    print("| targets | matrices | weights (M) | " + " | ".join(f"{s} (s)" for s in specs) + " |")
    print("|---|---:|---:|" + "---:|" * len(specs))
    for row in rows:
        times = " | ".join(f"{row[s]:.2f}" for s in specs)
        print(f"| {row['targets']} | {row['matrices']} | {row['weights_M']:.1f} | {times} |")
    return rows


if __name__ == "__main__":
    main(parse_args())
