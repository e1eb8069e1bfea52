"""`peft-inits collection DIR --base MODEL_DIR`: index a folder of adapters, describe each by its weights, cluster,
retrieve and map them (the library: `peft_inits.collection`, `peft_inits.descriptors`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..collection import cluster, clustering_scores, index_collection, plot_map
from ..descriptors import DESCRIPTORS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder holding adapter directories (each with adapter_config.json)")
    parser.add_argument("--base", required=True, help="local transformers/diffusers model directory of the base")
    parser.add_argument("--descriptor", choices=sorted(DESCRIPTORS), default="delta")
    parser.add_argument("--kinds", default=None, help="comma-separated module kinds, e.g. 'attn' or 'ff'")
    parser.add_argument("--clusters", type=int, default=None, help="k for k-means (default: number of labels)")
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--map", default=None, help="PNG path for the 2-D map")
    return parser.parse_args(argv)


def load_base(path: str) -> nn.Module:
    """A base model from a local directory: diffusers UNet if it has a `unet/` or UNet config, else transformers."""
    root = Path(path)
    if not root.is_dir():
        raise SystemExit(f"--base {path} is not a directory")
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    if (root / "unet").is_dir() or config.get("_class_name") == "UNet2DConditionModel":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(path, subfolder="unet" if (root / "unet").is_dir() else None)
    from transformers import AutoModel

    return AutoModel.from_pretrained(path)


def main(args: argparse.Namespace) -> dict[str, object]:
    base = load_base(args.base).eval()
    collection = index_collection(args.root, base)
    for path, reason in collection.failures.items():
        print(f"skipped {path}: {reason}")
    if not collection.records:
        raise SystemExit(f"no readable adapter under {args.root}")
    kinds = args.kinds.split(",") if args.kinds else None
    X = DESCRIPTORS[args.descriptor](collection.records, base, module_kinds=kinds)
    result: dict[str, object] = {"adapters": len(collection.records), "skipped": len(collection.failures)}
    labels = collection.labels
    if all(label is not None for label in labels):
        result.update(clustering_scores(X, labels, k=args.neighbours))
    k = args.clusters or len(set(labels))
    result["clusters"] = cluster(X, k).tolist() if len(X) >= k > 1 else []
    if args.map:
        result["map"] = str(plot_map(X, labels, args.map, title=f"{args.descriptor} descriptor"))
    print(json.dumps(result, indent=2))
    return result
