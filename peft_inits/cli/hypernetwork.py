"""`sd.py train-hypernetwork`: reference features → an adapter's trained values, trained through the frozen U-Net's
denoising loss on the glyph pool's subjects (docs/adapter_generation.md, "End-to-end hypernetwork").

    python experiments/sd.py train-hypernetwork --method svfit --output-dir runs/hyper-svfit \
        [--subjects 120 --heldout 24] [--features judge,vae] [--steps 1500 --batch-size 16 --lr 1e-3]
    python experiments/sd.py train-hypernetwork --method lora --basis-dataset runs/data/adapters-lora \
        --basis-size 64 --output-dir runs/hyper-lora       # LoRA through its data set's principal directions
    python experiments/sd.py generate-adapter --generator runs/hyper-svfit --reference IMG_DIR --out ADAPTER

Training subjects are the first `--subjects` of the glyph pool and the held-out (validation) subjects its last
`--heldout`, as `adapter-dataset` splits them, so a hypernetwork and an adapter data set of the same counts share
their subjects; the pool excludes the pretraining letters and their look-alikes.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..glyph.shipped import DEFAULT_CACHE, SHIPPED, runner_family
from ..registry import method_names
from ..training.settings import AdapterSettings, TrainSettings
from . import args as cli
from .flags import add_settings_flags, settings_from_args

HYPERNET_TRAINING = TrainSettings(
    steps=1500, batch_size=16, lr=1e-3, warmup=0.0, eval_every=250, save_every=250, mixed_precision="no"
)
HYPERNET_TRAINING_FLAGS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "max_grad_norm", "eval_every",
                           "save_every", "seed")  # fmt: skip


def add_parser(commands) -> argparse.ArgumentParser:
    from ..generation.hypernetwork import HypernetSettings
    from ..generation.hypernetwork_basis import BasisSettings

    parser = commands.add_parser(
        "train-hypernetwork", help="train a hypernetwork (references → adapter) through the denoising loss"
    )
    parser.add_argument("--method", choices=method_names(), required=True, help="the adapter it predicts")
    parser.add_argument("--output-dir", required=True, help="run folder of the hypernetwork")
    parser.add_argument("--model", default=SHIPPED, help=f"diffusers folder, 'tiny', or the shipped {SHIPPED}")
    parser.add_argument("--r", type=int, default=None, help="rank (default: the method's)")
    parser.add_argument("--module-kinds", type=cli.csv_list, default=None, help="default: every attention projection")
    parser.add_argument("--init-seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=240, help="training subjects (the pool's first)")
    parser.add_argument("--heldout", type=int, default=12, help="held-out validation subjects (the pool's last)")
    group = parser.add_argument_group("reference-image features")
    group.add_argument("--features", type=lambda t: tuple(cli.csv_list(t)), default=("judge", "vae"),
                       help="judge, vae, image-encoder (comma-separated)")  # fmt: skip
    group.add_argument("--judge", default=None, help="glyph-world judge folder (default: the one in --cache-dir)")
    group.add_argument("--cache-dir", default=DEFAULT_CACHE, help="judge and shipped model cache")
    group.add_argument("--image-encoder", default=None, help="local CLIP vision / DINO checkpoint folder")
    add_settings_flags(parser.add_argument_group("hypernetwork"), HypernetSettings)
    add_settings_flags(parser.add_argument_group("output basis (docs/hypernetwork_lora_basis.md)"), BasisSettings)
    run = parser.add_argument_group("training (--batch-size: subjects per step)")
    add_settings_flags(run, TrainSettings, defaults=HYPERNET_TRAINING, only=HYPERNET_TRAINING_FLAGS)
    run.add_argument("--resume", action="store_true")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..generation import dataset as D
    from ..generation.hypernetwork import HypernetSettings
    from ..generation.hypernetwork_basis import BasisSettings
    from ..generation.hypernetwork_training import train_hypernetwork
    from ..generation.workflow import FeatureChoice

    train, heldout = D.subjects(args.subjects, args.heldout)
    adapter = AdapterSettings(method=args.method, r=args.r, module_kinds=args.module_kinds, head_modules=[],
                              init_seed=args.init_seed, family=runner_family(args.model))  # fmt: skip
    settings = settings_from_args(HypernetSettings, args)
    train_settings = settings_from_args(TrainSettings, args, eval_every=min(args.eval_every, args.steps),
                                        mixed_precision=HYPERNET_TRAINING.mixed_precision)  # fmt: skip
    choice = FeatureChoice(tuple(args.features), args.judge, args.cache_dir, args.image_encoder)
    meta = train_hypernetwork(args.output_dir, train=train, heldout=heldout, adapter=adapter, choice=choice,
                              settings=settings, train_settings=train_settings, model=args.model,
                              resume=args.resume, overwrite=args.overwrite,
                              basis=settings_from_args(BasisSettings, args))  # fmt: skip
    sizes, best = meta["sizes"], meta["summary"]["best"] or {}
    print(f"hypernetwork {args.output_dir}: {meta['method']}, {sizes['parameters']:,} parameters → "
          f"{sizes['predicted_values']} values ({sizes['outputs']} outputs), best val_loss {best.get('value')} at "
          f"step {best.get('step')}, {meta['wall_time_s']:.0f} s")  # fmt: skip
    return meta
