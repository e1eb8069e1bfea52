"""`peft-inits vit`: image classification with transformers ViTs or timm models; adapters on query+value by default
(timm's fused `qkv` is one matrix and gets one adapter).

Embedded default — an honest protocol, since no pretrained ViT exists offline: a tiny ViT (4 layers, width 64,
8×8 inputs, 2×2 patches) is pretrained on scikit-learn digits 0–4 with the shared loop (cached), then each method
adapts it to the unseen digits 5–9 with a fresh head. It shows whether a method can re-purpose pretrained
features; it is no substitute for ViT-B/16 on real images. Bring your own: `--model /path/to/vit-base --data
/path/to/imagefolder`, or `--model timm:vit_base_patch16_224 --checkpoint W.safetensors`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..training.vit import DEFAULTS, ImageTaskSettings, run_vit
from .args import adapter_settings, add_adapter_args, add_run_args, add_train_args, parse_with_config
from .args import train_settings as make_train_settings
from .flags import add_settings_flags, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_flags(parser.add_argument_group("data and model"), ImageTaskSettings)
    add_adapter_args(parser)
    add_train_args(parser, DEFAULTS)
    add_run_args(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Adapt one method; print and return its summary."""
    return run_vit(
        settings_from_args(ImageTaskSettings, args),
        adapter_settings(args),
        make_train_settings(args),
        args.output_dir,
        cache_dir=args.cache_dir,
        resume=args.resume,
        overwrite=args.overwrite,
    )
