"""SD runner subcommands of zero-shot adapter generation (docs/adapter_generation.md):

python experiments/sd.py train-generator --dataset DIR --output-dir RUN [--features judge,vae] [--steps N]
python experiments/sd.py generate-adapter --generator RUN --reference IMG_DIR --method svfit --out DIR
python experiments/sd.py generation-eval --dataset DIR --generator RUN --output-dir EVAL
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..training import cli


def _sources(text: str) -> tuple[str, ...]:
    return tuple(cli.csv_list(text))


def _ints(text: str) -> list[int]:
    return [int(s) for s in cli.csv_list(text)]


def _features(parser: argparse.ArgumentParser, defaults: bool) -> None:
    group = parser.add_argument_group("reference-image features")
    if defaults:
        group.add_argument(
            "--features", type=_sources, default=("judge", "vae"), help="judge, vae, image-encoder (comma-separated)"
        )
    group.add_argument("--judge", default=None, help="glyph-world judge folder (default: the one in --cache-dir)")
    group.add_argument("--cache-dir", default="runs/cache", help="where the judge is trained once and kept")
    group.add_argument("--image-encoder", default=None, help="local CLIP vision / DINO checkpoint folder")


def add_parsers(commands) -> None:
    """Add train-generator, generate-adapter and generation-eval to the SD runner's subcommands."""
    from ..generation.generator import PREDICTIONS, GeneratorSettings

    g = GeneratorSettings()
    train = commands.add_parser("train-generator", help="train a weight generator on an adapter data set")
    train.add_argument("--dataset", required=True, help="adapter data set folder (dataset.json, adapters/, ...)")
    train.add_argument("--output-dir", required=True, help="run folder of the generator")
    train.add_argument("--model", default=None, help="base diffusers folder (default: the data set's)")
    _features(train, defaults=True)
    arch = train.add_argument_group("generator")
    arch.add_argument("--width", type=int, default=g.width, help="transformer width")
    arch.add_argument("--depth", type=int, default=g.depth, help="transformer layers")
    arch.add_argument("--heads", type=int, default=g.heads)
    arch.add_argument("--latent", type=int, default=g.latent, help="per-layer latent size (PCA) of wide layers")
    arch.add_argument("--condition-dropout", type=float, default=g.condition_dropout, help="for guidance")
    arch.add_argument("--prediction", choices=PREDICTIONS, default=g.prediction)
    arch.add_argument(
        "--reference-keep", type=float, default=g.reference_keep, help="share of references per training condition"
    )
    run = train.add_argument_group("training")
    run.add_argument("--steps", type=int, default=3000)
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--weight-decay", type=float, default=0.01)
    run.add_argument("--warmup", type=float, default=100)
    run.add_argument("--eval-every", type=int, default=250)
    run.add_argument("--save-every", type=int, default=500)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    generate = commands.add_parser("generate-adapter", help="write the adapter a generator predicts for references")
    generate.add_argument("--generator", required=True, help="generator run folder (train-generator)")
    generate.add_argument("--reference", required=True, help="folder of the subject's reference images")
    generate.add_argument("--method", default=None, help="the adapter method expected (checked against the generator)")
    generate.add_argument("--out", required=True, help="adapter directory to write")
    generate.add_argument("--model", default=None, help="base diffusers folder (default: the generator's)")
    generate.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance on the condition")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--steps", type=int, default=50, help="DDIM steps")
    _features(generate, defaults=False)

    evaluate = commands.add_parser("generation-eval", help="held-out subjects: generated vs trained vs baselines")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--generator", required=True)
    evaluate.add_argument("--output-dir", required=True, help="report.json, report.md and grid.png go here")
    evaluate.add_argument("--model", default=None, help="base diffusers folder (default: the generator's)")
    evaluate.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="generator seeds")
    evaluate.add_argument("--image-seeds", type=_ints, default=[0, 1], help="image sampling seeds")
    evaluate.add_argument("--guidance", type=float, default=2.0, help="generator guidance")
    evaluate.add_argument("--image-guidance", type=float, default=4.0, help="image classifier-free guidance")
    evaluate.add_argument("--sample-steps", type=int, default=25)
    evaluate.add_argument("--prompt-template", default=None, help="adapter prompt with {background}")
    evaluate.add_argument("--backgrounds", type=cli.csv_list, default=["plain", "brick"])
    evaluate.add_argument("--limit", type=int, default=None, help="at most this many held-out subjects")
    evaluate.add_argument("--judge", default=None, help="judge folder scoring the samples (default: --cache-dir's)")
    evaluate.add_argument("--cache-dir", default="runs/cache")
    evaluate.add_argument("--image-encoder", default=None)
    real = evaluate.add_argument_group("real SD (CLIP / DINO scoring instead of the glyph judge)")
    real.add_argument("--clip", default=None, help="local CLIP folder: CLIP-I and CLIP-T")
    real.add_argument("--dino", default=None, help="local DINO folder: subject fidelity")
    real.add_argument("--prompts", type=cli.csv_list, default=None, help="prompts holding the subject word")
    real.add_argument("--describe", default=None, help="words row: the subject in words, replacing the subject word")
    real.add_argument("--class-word", default=None, help="CLIP-T: the class noun replacing the subject word")


def train_generator(args: argparse.Namespace) -> dict[str, Any]:
    from ..generation.generator import GeneratorSettings
    from ..generation.pipeline import FeatureChoice
    from ..generation.pipeline import train_generator as run
    from ..training.settings import TrainSettings

    settings = GeneratorSettings(
        width=args.width,
        depth=args.depth,
        heads=args.heads,
        latent=args.latent,
        condition_dropout=args.condition_dropout,
        prediction=args.prediction,
        reference_keep=args.reference_keep,
    )
    train = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        eval_every=min(args.eval_every, args.steps),
        save_every=args.save_every,
        seed=args.seed,
        mixed_precision="no",
        progress=args.progress,
    )
    choice = FeatureChoice(tuple(args.features), args.judge, args.cache_dir, args.image_encoder)
    meta = run(
        args.dataset,
        args.output_dir,
        choice=choice,
        settings=settings,
        train_settings=train,
        model=args.model,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    sizes = meta["sizes"]
    print(
        f"generator {args.output_dir}: {meta['method']}, {sizes['parameters']:,} parameters "
        f"({sizes['weights_bytes'] / 2**20:.2f} MiB), features {','.join(choice.sources)}, "
        f"codec keeps {meta['explained_variance']:.4f} of the variance, {meta['wall_time_s']:.0f} s"
    )
    return meta


def generate_adapter(args: argparse.Namespace) -> dict[str, Any]:
    from ..generation.pipeline import generate_adapter as run

    result = run(
        args.generator,
        args.reference,
        args.out,
        method=args.method,
        model=args.model,
        guidance=args.guidance,
        seed=args.seed,
        steps=args.steps,
        judge=args.judge,
        image_encoder=args.image_encoder,
    )
    print(f"wrote {result['out']} ({result['method']}) in {result['wall_s']:.2f} s")
    return result


def generation_eval(args: argparse.Namespace) -> dict[str, Any]:
    from ..generation.evaluation import EvalSettings, evaluate

    settings = EvalSettings(
        seeds=tuple(args.seeds),
        image_seeds=tuple(args.image_seeds),
        guidance=args.guidance,
        image_guidance=args.image_guidance,
        sample_steps=args.sample_steps,
        prompt_template=args.prompt_template,
        backgrounds=tuple(args.backgrounds),
        limit=args.limit,
        prompts=tuple(args.prompts) if args.prompts else None,
        describe=args.describe,
        class_word=args.class_word,
    )
    report = evaluate(
        args.dataset,
        args.generator,
        args.output_dir,
        settings=settings,
        model=args.model,
        judge=args.judge,
        cache_dir=args.cache_dir,
        image_encoder=args.image_encoder,
        clip=args.clip,
        dino=args.dino,
    )
    print(json.dumps(report["table"], indent=2))
    return report


COMMANDS = {
    "train-generator": train_generator,
    "generate-adapter": generate_adapter,
    "generation-eval": generation_eval,
}
