"""SD runner subcommands of zero-shot adapter generation (docs/adapter_generation.md):

python experiments/sd.py train-generator --dataset DIR --output-dir RUN [--features judge,vae] [--steps N]
python experiments/sd.py generate-adapter --generator RUN --reference IMG_DIR --method svfit --out DIR
python experiments/sd.py generation-eval --dataset DIR --generator RUN --output-dir EVAL
python experiments/sd.py train-hypernetwork --method svfit --output-dir RUN   (`hypernetwork.py`)
python experiments/sd.py distill-hypernetwork --hypernetwork RUN --dataset DIR --output-dir NEW_DIR

`generate-adapter --generator` takes a generator run or a hypernetwork run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..training.settings import TrainSettings
from . import args as cli
from . import hypernetwork as train_hypernetwork
from .flags import add_settings_flags, settings_from_args


def _sources(text: str) -> tuple[str, ...]:
    return tuple(cli.csv_list(text))


def _features(parser: argparse.ArgumentParser, defaults: bool) -> None:
    group = parser.add_argument_group("reference-image features")
    if defaults:
        group.add_argument(
            "--features", type=_sources, default=("judge", "vae"), help="judge, vae, image-encoder (comma-separated)"
        )
    group.add_argument("--judge", default=None, help="glyph-world judge folder (default: the one in --cache-dir)")
    group.add_argument("--cache-dir", default="runs/cache", help="where the judge is trained once and kept")
    group.add_argument("--image-encoder", default=None, help="local CLIP vision / DINO checkpoint folder")


# train-generator's optimisation defaults (a generator trains far longer and wider batches than an adapter)
GENERATOR_TRAINING = TrainSettings(
    steps=3000, batch_size=64, lr=1e-3, warmup=100, eval_every=250, save_every=500, mixed_precision="no"
)
GENERATOR_TRAINING_FLAGS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "eval_every", "save_every", "seed")


def add_parsers(commands) -> None:
    """Add train-generator, generate-adapter and generation-eval to the SD runner's subcommands."""
    from ..generation.evaluation import EvalSettings
    from ..generation.generator import GeneratorSettings

    train = commands.add_parser("train-generator", help="train a weight generator on an adapter data set")
    train.add_argument("--dataset", required=True, help="adapter data set folder (dataset.json, adapters/, ...)")
    train.add_argument("--output-dir", required=True, help="run folder of the generator")
    train.add_argument("--model", default=None, help="base diffusers folder (default: the data set's)")
    _features(train, defaults=True)
    add_settings_flags(
        train.add_argument_group("generator"), GeneratorSettings, skip=("train_timesteps", "beta_schedule")
    )
    run = train.add_argument_group("training")
    add_settings_flags(run, TrainSettings, defaults=GENERATOR_TRAINING, only=GENERATOR_TRAINING_FLAGS)
    run.add_argument("--resume", action="store_true")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    train_hypernetwork.add_parser(commands)
    generate = commands.add_parser("generate-adapter", help="write the adapter a generator predicts for references")
    generate.add_argument("--generator", required=True, help="run folder of train-generator or train-hypernetwork")
    generate.add_argument("--reference", required=True, help="folder of the subject's reference images")
    generate.add_argument("--method", default=None, help="the adapter method expected (checked against the generator)")
    generate.add_argument("--out", required=True, help="adapter directory to write")
    generate.add_argument("--model", default=None, help="base diffusers folder (default: the generator's)")
    generate.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance on the condition")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--steps", type=int, default=50, help="DDIM steps")
    _features(generate, defaults=False)

    distill = commands.add_parser("distill-hypernetwork", help="a data set of a hypernetwork's adapters (item 6)")
    distill.add_argument("--hypernetwork", required=True, help="a train-hypernetwork run")
    distill.add_argument("--dataset", required=True, help="the adapter data set whose training adapters it replaces")
    distill.add_argument("--output-dir", required=True, help="the new data set (must not exist)")
    distill.add_argument("--cache-dir", default=None)

    evaluate = commands.add_parser("generation-eval", help="held-out subjects: generated vs trained vs baselines")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--generator", required=True)
    evaluate.add_argument("--hypernetworks", type=cli.csv_list, default=[],
                          help="train-hypernetwork runs: a 'hypernetwork' row (one variant per run)")  # fmt: skip
    evaluate.add_argument("--output-dir", required=True, help="report.json, report.md and grid.png go here")
    evaluate.add_argument("--model", default=None, help="base diffusers folder (default: the generator's)")
    real_sd = ("prompts", "describe", "class_word")
    add_settings_flags(evaluate, EvalSettings, skip=("shown_references", *real_sd))
    evaluate.add_argument("--judge", default=None, help="judge folder scoring the samples (default: --cache-dir's)")
    evaluate.add_argument("--cache-dir", default="runs/cache")
    evaluate.add_argument("--image-encoder", default=None)
    real = evaluate.add_argument_group("real SD (CLIP / DINO scoring instead of the glyph judge)")
    real.add_argument("--clip", default=None, help="local CLIP folder: CLIP-I and CLIP-T")
    real.add_argument("--dino", default=None, help="local DINO folder: subject fidelity")
    add_settings_flags(real, EvalSettings, only=real_sd)


def train_generator(args: argparse.Namespace) -> dict[str, Any]:
    from ..generation.generator import GeneratorSettings
    from ..generation.workflow import FeatureChoice
    from ..generation.workflow import train_generator as run

    settings = settings_from_args(GeneratorSettings, args)
    train = settings_from_args(
        TrainSettings,
        args,
        eval_every=min(args.eval_every, args.steps),
        mixed_precision=GENERATOR_TRAINING.mixed_precision,
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
    from ..generation.hypernetwork_run import generate_adapter as predict
    from ..generation.hypernetwork_run import is_hypernetwork_run
    from ..generation.workflow import generate_adapter as run

    if is_hypernetwork_run(args.generator):  # one forward of the MLP: no guidance, seed or sampling steps
        result = predict(args.generator, args.reference, args.out, method=args.method, model=args.model,
                         judge=args.judge, image_encoder=args.image_encoder)  # fmt: skip
        print(f"wrote {result['out']} ({result['method']}, hypernetwork) in {result['wall_s']:.2f} s")
        return result
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

    settings = settings_from_args(EvalSettings, args)
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
        hypernetworks=args.hypernetworks,
    )
    print(json.dumps(report["table"], indent=2))
    return report


def distill_hypernetwork(args: argparse.Namespace) -> Any:
    from ..generation.distill import distill_dataset

    dataset = distill_dataset(args.hypernetwork, args.dataset, args.output_dir, cache_dir=args.cache_dir)
    train = dataset.entries("train")
    print(f"wrote {args.output_dir}: {len(train)} training adapters predicted by {args.hypernetwork}, "
          f"{len(dataset.entries('heldout'))} held-out adapters kept")  # fmt: skip
    return dataset


COMMANDS = {
    "train-generator": train_generator,
    "generate-adapter": generate_adapter,
    "generation-eval": generation_eval,
    "distill-hypernetwork": distill_hypernetwork,
    "train-hypernetwork": train_hypernetwork.run,
}
