"""The SD runner: block-wise personalisation / style training, sampling, composition, the Block-wise LoRA ablation,
LoRA export, and the glyph-world text-to-image model (pretraining, quality, scores).

    python experiments/sd.py train --data glyph:subject=♣ --method svfit        # shipped glyph-world model (default)
    python experiments/sd.py train --data glyph:background=rings --token zwx --method loldu --blocks upper
    python experiments/sd.py train --model ~/sd-v1-5 --data ~/my-cat --instance-prompt "a photo of sks cat" \\
        --class-prompt "a photo of a cat" --method svfit --module-kinds attn,resnet
    python experiments/sd.py sample --adapter runs/sd-x/weights --prompts "a red serif sks glyph on grass"
    python experiments/sd.py compose --identity runs/id/weights --style runs/style/weights
    python experiments/sd.py ablation --output-dir runs/ablation       # every method × 3 seeds, table + grid + JSON
    python experiments/sd.py export --adapter runs/sd-x/weights --format kohya
    python experiments/sd.py pretrain --output-dir runs/t2i     # glyph-world text-to-image model → runs/t2i/model

Without --model the runner uses the shipped glyph-world model (docs/glyph_world.md: 32 × 32 captioned glyphs, an
SD-1.5-shaped U-Net, MiniLM text encoder; its samples name the prompted glyph 87 % and colour 99 % of the time, the
background 56 %), unpacked once into --cache-dir. `--model tiny` is a random tiny SD-shaped pipeline that exercises
the code paths in seconds and says nothing about image quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..diffusion.composition import load_named_adapter
from ..diffusion.images import load_image_folder
from ..diffusion.models import load_pipeline
from ..diffusion.objective import PREDICTION_TYPES
from ..diffusion.sampling import DEFAULT_STEPS, generate, save_grid
from ..diffusion.train import SampleSettings, device_and_dtype, frozen_parts, native_resolution, train_adapter
from ..diffusion.trainset import PhotoData, photo_training_set, prompt_texts
from ..export import LAYOUTS, export_diffusers_lora, export_kohya, export_peft_lora
from ..generation.builder import AdapterDatasetSettings, build_adapter_dataset
from ..glyph.concepts import GlyphConcept, is_glyph
from ..glyph.scoring import make_scorer, sample_scorer
from ..glyph.shipped import DEFAULT_CACHE, SHIPPED, model_kind, model_path, runner_family
from ..glyph.trainset import check_data, glyph_training_set
from ..registry import method_names
from ..studies import style_descriptors
from ..studies.style_descriptors import StyleStudySettings
from ..training.settings import TrainSettings, default_lr
from . import args as cli
from . import generation
from .flags import add_settings_flags, settings_from_args

TRAIN_DEFAULTS = TrainSettings(steps=60, batch_size=2, eval_every=20, warmup=0.0, save_every=20, head_lr=0.0)
# Per --model kind, the defaults of options left unset: the shipped glyph model trains a held-out glyph; the tiny
# pipeline and real SD folders keep the photo defaults (steps and batch sized for the tiny pipeline).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "glyph": {"data": "glyph:subject=♣", "steps": 200, "batch_size": 4, "eval_every": 50, "save_every": 100,
              "guidance": 4.0, "seeds": [0, 1]},
    "tiny": {"data": "subject", "steps": 60, "batch_size": 2, "eval_every": 20, "save_every": 20, "guidance": 7.0,
             "seeds": [0, 1, 2]},
    "sd": {"data": "subject", "steps": 60, "batch_size": 2, "eval_every": 20, "save_every": 20, "guidance": 7.0,
           "seeds": [0, 1, 2]},
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = _train_parser(commands)

    sample = commands.add_parser("sample", help="sample an image grid, with or without an adapter")
    _model_arg(sample)
    sample.add_argument("--adapter", default=None, help="adapter directory (adapter_config.json + safetensors)")
    sample.add_argument("--output", default="samples.png")
    _sample_args(sample, prompts_required=True)

    _compose_parser(commands)
    _ablation_parser(commands)

    export = commands.add_parser("export", help="export an adapter as a standard LoRA (PEFT, diffusers, kohya)")
    _model_arg(export)
    export.add_argument("--adapter", required=True)
    export.add_argument(
        "--format",
        choices=(*LAYOUTS, "all"),
        default="all",
        help="peft: PeftModel.from_pretrained; diffusers: pipe.load_lora_weights(dir); kohya: A1111/ComfyUI "
        "(default: %(default)s)",
    )
    export.add_argument("--output", default=None, help="default: next to the adapter")

    _pretrain_parser(commands)
    _quality_parser(commands)
    _score_parser(commands)
    _adapter_dataset_parser(commands)
    _descriptors_parser(commands)
    generation.add_parsers(commands)

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "train":  # `--config FILE` supplies defaults for the train options
        args = cli.parse_with_config(train, argv[argv.index("train") + 1 :])
        args.command = "train"
        if args.method not in method_names():
            train.error(f"the SD runner trains adapters only: --method must be one of {', '.join(method_names())}")
    return args


def _train_parser(commands) -> argparse.ArgumentParser:
    """`train`: an adapter on the U-Net (DreamBooth / style), scored at the end; unset options follow MODEL_DEFAULTS."""
    train = commands.add_parser("train", help="train an adapter on the U-Net")
    _model_arg(train, cache=False)
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        default=None,
        help="glyph-world concept glyph:subject=VALUE / glyph:background=VALUE (default with the shipped model: "
        "glyph:subject=♣), 'subject' (chelsea), 'style' (brick+gravel; default with --model tiny) or a folder",
    )
    data.add_argument("--token", default="sks", help="glyph data: the rare token that names the concept")
    data.add_argument("--num-images", type=int, default=32, help="glyph data: rendered training images")
    data.add_argument("--num-prompts", type=int, default=4, help="glyph data: sample prompts (new scenes)")
    data.add_argument("--instance-prompt", default=None, help="default: 'a photo of sks cat' / 'a wall in sks style'")
    data.add_argument(
        "--class-prompt", default=None, help="enables prior preservation (DreamBooth); glyph data: always on"
    )
    data.add_argument("--prior-weight", type=float, default=1.0, help="0 turns glyph prior preservation off")
    data.add_argument(
        "--num-class-images",
        type=int,
        default=None,
        help="class images: sampled by the base model (default 4) or, glyph data, rendered (default --num-images)",
    )
    data.add_argument("--resolution", type=int, default=None, help="crop size (default: the model's native size)")
    data.add_argument("--prediction", choices=PREDICTION_TYPES, default=None, help="default: the scheduler's")
    _sample_args(train, prompts_required=False)
    _scorer_args(train)
    cli.add_adapter_args(
        train, methods=method_names(), head=False, kinds_help="default: every attention projection; e.g. attn2,resnet"
    )
    cli.add_train_args(train, TRAIN_DEFAULTS, head=False)
    train.set_defaults(steps=None, batch_size=None, eval_every=None, save_every=None)  # per model: MODEL_DEFAULTS
    cli.add_run_args(train)
    return train


def _compose_parser(commands) -> None:
    compose = commands.add_parser("compose", help="identity + block-wise style ablation grid, with per-row scores")
    _model_arg(compose)
    compose.add_argument("--identity", required=True, help="identity adapter directory (a run's weights/)")
    compose.add_argument("--style", required=True, help="style adapter directory (a run's weights/)")
    compose.add_argument("--identity-weight", type=float, default=1.0)
    compose.add_argument("--style-weight", type=float, default=1.0)
    compose.add_argument("--merge", action="store_true", help="merge the adapters into the weights for each row")
    compose.add_argument("--output", default="composition.png", help="grid PNG; scores go to <output>.json")
    compose.add_argument(
        "--num-prompts", type=int, default=4, help="glyph adapters without --prompts: prompts asking for both"
    )
    _sample_args(compose, prompts_required=False)
    _scorer_args(compose)


def _ablation_parser(commands) -> None:
    """`ablation`: the Block-wise LoRA ablation for every method × seed on the shipped glyph model (see .ablation)."""
    from ..studies.ablation import AblationSettings

    ablation = commands.add_parser(
        "ablation",
        help="Block-wise LoRA ablation: methods × seeds, table + grid + JSON",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_arg(ablation)
    ablation.add_argument("--output-dir", default="runs/ablation", help="runs, table.md, ablation.json, grid.png")
    add_settings_flags(ablation, AblationSettings)
    ablation.add_argument("--judge", default=None, help="glyph-world judge folder (default: the cached one)")
    ablation.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bars")


def _scorer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scores (metrics.py)")
    group.add_argument("--clip", default=None, help="local CLIP folder (CLIP-I, CLIP-T)")
    group.add_argument("--dino", default=None, help="local DINO folder (subject fidelity, diversity, style)")
    group.add_argument("--judge", default=None, help="glyph-world judge folder (default: the cached one)")


def _pretrain_parser(commands) -> None:
    """`pretrain`: the glyph-world text-to-image model (VAE, then an SD-1.5-shaped U-Net; see .pretrain)."""
    from ..glyph.pretrain import PretrainSettings

    pretrain = commands.add_parser("pretrain", help="pretrain the glyph-world text-to-image model (resumable)")
    pretrain.add_argument("--output-dir", default="runs/t2i-pretrain", help="run folder; model in <dir>/model")
    add_settings_flags(pretrain, PretrainSettings)
    pretrain.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    pretrain.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    pretrain.add_argument("--overwrite", action="store_true", help="replace an existing run in --output-dir")
    pretrain.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bars")


def _quality_parser(commands) -> None:
    quality = commands.add_parser("quality", help="judge a glyph-world model: per-attribute accuracy of its samples")
    quality.add_argument("--model", required=True, help="a glyph-world diffusers folder (sd.py pretrain → <dir>/model)")
    quality.add_argument("--output-dir", default=None, help="quality.json + quality_samples.png (default: the model's)")
    quality.add_argument("--num-prompts", type=int, default=48, help="fixed prompt set size")
    quality.add_argument("--seeds", type=lambda t: [int(s) for s in cli.csv_list(t)], default=[0, 1])
    quality.add_argument("--sample-steps", type=int, default=DEFAULT_STEPS)
    quality.add_argument("--guidance", type=float, default=4.0)
    quality.add_argument("--cache-dir", default="runs/cache", help="where the judge is trained once and kept")


def _score_parser(commands) -> None:
    score = commands.add_parser("score", help="DreamBooth-style metrics of a folder of generated images")
    score.add_argument("--images", required=True, help="folder of generated images")
    score.add_argument("--subject-references", default=None, help="folder of reference-subject images")
    score.add_argument("--style-references", default=None, help="folder of style-reference images")
    score.add_argument("--prompt", default=None, help="the prompt of every image (CLIP-T; needs --clip)")
    score.add_argument("--attributes", default=None, help="glyph world: prompted values, e.g. colour=red,subject=K")
    score.add_argument("--clip", default=None, help="local CLIP folder (CLIP-I, CLIP-T)")
    score.add_argument("--dino", default=None, help="local DINO folder (subject fidelity, diversity, style)")
    score.add_argument("--judge", default=None, help="glyph-world judge folder (default: trained into --cache-dir)")
    score.add_argument("--cache-dir", default="runs/cache")
    score.add_argument("--output", default=None, help="write the scores as JSON here")


def _adapter_dataset_parser(commands) -> None:
    """`adapter-dataset`: a personalised adapter per subject × seed (generation.builder)."""
    parser = commands.add_parser(
        "adapter-dataset", help="train a personalised adapter per subject × seed (issue 13; resumable)"
    )
    parser.add_argument("--method", choices=method_names(), required=True)
    parser.add_argument("--output-dir", required=True, help="dataset folder (dataset.json, adapters/, references/)")
    add_settings_flags(parser, AdapterDatasetSettings)


def _descriptors_parser(commands) -> None:
    """`descriptors`: the style-descriptor study (studies.style_descriptors)."""
    parser = commands.add_parser("descriptors", help="cluster style adapters of the glyph model by their weights")
    add_settings_flags(parser, StyleStudySettings)


def _model_arg(parser: argparse.ArgumentParser, cache: bool = True) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="local diffusers SD-1.x/2.x folder, or 'tiny' (random tiny pipeline); default: the shipped glyph model",
    )
    if cache:  # `train` gets --cache-dir from the shared run options
        parser.add_argument("--cache-dir", default=None, help=f"shipped model, judge (default: {DEFAULT_CACHE})")


def _sample_args(parser: argparse.ArgumentParser, prompts_required: bool) -> None:
    group = parser.add_argument_group("sampling (DPM++ 2M Karras)")
    group.add_argument(
        "--prompts", type=cli.csv_list, default=None, required=prompts_required, help="comma-separated prompts"
    )
    group.add_argument("--seeds", type=_int_list, default=None, help="default: 0,1 (glyph model), 0,1,2 (others)")
    group.add_argument("--sample-steps", type=int, default=DEFAULT_STEPS)
    group.add_argument("--guidance", type=float, default=None, help="CFG scale; default 4 (glyph model), 7 (others)")


def _int_list(text: str) -> list[int]:
    return [int(s) for s in cli.csv_list(text)]


def fill_model_defaults(args: argparse.Namespace) -> str:
    """Set every option left at None to its default for the --model kind; returns the kind."""
    kind = model_kind(args.model)
    for name, value in MODEL_DEFAULTS[kind].items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    return kind


# ------------------------------------------------------------------------------------------------ commands


def _pipeline(args: argparse.Namespace, dtype: torch.dtype = torch.float32):
    return load_pipeline(model_path(args.model, args.cache_dir), dtype)


def train(args: argparse.Namespace) -> dict[str, Any]:
    kind = fill_model_defaults(args)
    check_data(args.data)
    pipe = _pipeline(args, device_and_dtype(args.mixed_precision)[1] if kind == "sd" else torch.float32)
    resolution = args.resolution or native_resolution(pipe)
    output_dir = Path(args.output_dir or f"runs/sd-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    frozen = frozen_parts(pipe, args.mixed_precision)
    sample = SampleSettings(seeds=tuple(args.seeds), steps=args.sample_steps, guidance=args.guidance)
    data = _training_set(pipe, args, frozen, resolution, output_dir, sample)
    family = runner_family(args.model)
    adapter = cli.adapter_settings(args, head_modules=[], family=family)
    settings = cli.train_settings(args, lr=args.lr if args.lr is not None else default_lr(args.method, family))

    def scorer():
        return sample_scorer(
            clip=args.clip, dino=args.dino, judge=args.judge, cache_dir=args.cache_dir, glyph_model=kind == "glyph",
            progress=args.progress,
        )  # fmt: skip

    config = {"runner": "sd", "model": args.model or SHIPPED, "data": args.data, "resolution": resolution}
    summary = train_adapter(
        pipe, frozen, data, adapter, settings, sample, output_dir, config=config, prediction=args.prediction,
        prior_weight=args.prior_weight, scorer=scorer, resume=args.resume, overwrite=args.overwrite,
    )  # fmt: skip
    scores = summary["scores"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
    print(
        f"{summary['label']}: {summary['trainable_params']:,} trainable, median step "
        f"{summary['median_step_time_s']:.3f} s, {summary['sample_time_per_image_s']:.2f} s/image, "
        f"grid {output_dir / summary['samples']}\n{scores['note']}" + (f": {shown}" if shown else "")
    )
    return summary


def _training_set(pipe, args: argparse.Namespace, frozen, resolution: int, run_dir: Path, sample: SampleSettings):
    """The data `--data` names: a glyph-world concept, or photos (an embedded set or a folder)."""
    length = max(args.steps * args.batch_size, 64)
    if is_glyph(args.data):
        concept = GlyphConcept.parse(args.data, args.token)
        return glyph_training_set(
            concept, frozen, resolution, length=length, seed=args.seed, num_images=args.num_images,
            prior_weight=args.prior_weight, num_class_images=args.num_class_images, prompts=args.prompts,
            num_prompts=args.num_prompts,
        )  # fmt: skip
    photos = PhotoData(
        args.data, args.instance_prompt, args.class_prompt, args.num_class_images, args.resolution,
        tuple(args.prompts) if args.prompts else None,
    )  # fmt: skip
    return photo_training_set(
        pipe, photos, frozen, resolution, run_dir, length=length, seed=args.seed, sample=sample,
        progress=args.progress,
    )  # fmt: skip


def sample(args: argparse.Namespace) -> Path:
    fill_model_defaults(args)
    pipe = _pipeline(args)
    if args.adapter:
        load_named_adapter(pipe.unet, args.adapter, "default")
    rows = generate(pipe, args.prompts, args.seeds, steps=args.sample_steps, guidance=args.guidance, progress=True)
    return save_grid(rows, args.output, args.prompts)


def compose(args: argparse.Namespace) -> Path:
    """The Block-wise LoRA ablation grid (one row per placement, one column per (prompt, seed)), and per-row scores
    next to it (`<output>.json`) when a scorer is available."""
    from ..studies.ablation import compose_rows

    kind = fill_model_defaults(args)
    pipe = _pipeline(args)
    scorer, note = make_scorer(
        clip=args.clip, dino=args.dino, judge=args.judge, cache_dir=args.cache_dir, glyph_model=kind == "glyph"
    )
    result = compose_rows(
        pipe, args.identity, args.style, prompts=args.prompts, num_prompts=args.num_prompts, seeds=args.seeds,
        steps=args.sample_steps, guidance=args.guidance, merge=args.merge, scorer=scorer,
        weights={"identity": args.identity_weight, "style": args.style_weight},
    )  # fmt: skip
    texts = prompt_texts(result.prompts)
    grid = save_grid(result.rows, args.output, list(result.labels))
    report = {"prompts": texts, "seeds": args.seeds, "merged": args.merge, "note": note, "rows": result.scores}
    path = Path(args.output).with_suffix(".json")
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n"))
    print(f"{grid}; {note}" + (f"; scores {path}" if scorer is not None else ""))
    return grid


def ablation(args: argparse.Namespace) -> dict[str, Any]:
    """Every method × seed: identity + style adapters, the six placements applied and merged, table + grid + JSON."""
    from ..studies.ablation import AblationSettings, run_ablation

    settings = settings_from_args(AblationSettings, args)
    report = run_ablation(
        settings, args.output_dir, model=args.model, cache_dir=args.cache_dir, judge=args.judge, progress=args.progress
    )
    print((Path(args.output_dir) / "table.md").read_text())
    return report


def adapter_dataset(args: argparse.Namespace):
    return build_adapter_dataset(args.method, args.output_dir, settings_from_args(AdapterDatasetSettings, args))


def descriptors(args: argparse.Namespace) -> list[dict[str, Any]]:
    return style_descriptors.run(settings_from_args(StyleStudySettings, args))


def export(args: argparse.Namespace) -> list[Path]:
    pipe = _pipeline(args)
    load_named_adapter(pipe.unet, args.adapter, "default")
    out = Path(args.output or Path(args.adapter).parent / "export")
    written = []
    writers = {
        "peft": lambda: export_peft_lora(pipe.unet, out / "peft_lora"),
        "diffusers": lambda: export_diffusers_lora(pipe.unet, out / "diffusers_lora"),
        "kohya": lambda: export_kohya(pipe.unet, out / "kohya_lora.safetensors"),
    }
    for layout in LAYOUTS if args.format == "all" else (args.format,):
        written.append(writers[layout]())
    for path in written:
        size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
        print(f"wrote {path} ({size / 1024:.1f} KiB)")
    return written


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from ..glyph.pretrain import PretrainSettings
    from ..glyph.pretrain import pretrain as run_pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(PretrainSettings, args)
    summary = run_pretrain(
        args.output_dir, settings, resume=args.resume, overwrite=args.overwrite, progress=args.progress
    )
    print(f"model: {summary['model_dir']} (use --model {summary['model_dir']}); {summary['wall_time_s']:.0f} s")
    return summary


def quality(args: argparse.Namespace) -> dict[str, Any]:
    from ..glyph.quality import measure

    pipe = load_pipeline(args.model)
    report = measure(
        pipe,
        cache_dir=args.cache_dir,
        prompts=args.num_prompts,
        seeds=tuple(args.seeds),
        steps=args.sample_steps,
        guidance=args.guidance,
        output_dir=args.output_dir or Path(args.model).parent,
    )
    for name in ("samples", "vae_round_trip", "renders"):
        print(f"{name:>15}: " + ", ".join(f"{a} {v:.3f}" for a, v in report[name].items()))
    return report


def score(args: argparse.Namespace) -> dict[str, float]:
    """Scores with CLIP/DINO when their paths are given, else with the glyph world's judge."""
    from ..diffusion.metrics import ClipDinoScorer, JudgeScorer
    from ..diffusion.metrics import score as compute

    images = load_image_folder(args.images)
    folders = {"subject_references": args.subject_references, "style_references": args.style_references}
    references = {name: load_image_folder(path) for name, path in folders.items() if path}
    prompts = None
    if args.clip or args.dino:
        scorer = ClipDinoScorer(clip=args.clip, dino=args.dino)
        if args.attributes:
            raise ValueError("--attributes names glyph-world values; with --clip use --prompt")
        prompts = [args.prompt] * len(images) if args.prompt else None
    else:
        from ..glyph.judge import cached_judge, load_judge

        if args.prompt:
            raise ValueError("--prompt is scored by CLIP: pass --clip PATH (or --attributes for the glyph judge)")
        judge = load_judge(args.judge)[0] if args.judge else cached_judge(args.cache_dir)
        scorer = JudgeScorer(judge)
        if args.attributes:
            pairs = [item.split("=", 1) for item in cli.csv_list(args.attributes)]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"--attributes must be name=value pairs, got {args.attributes!r}")
            prompts = [dict(pairs)] * len(images)
    result = compute(scorer, images, prompts=prompts, **references)
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


COMMANDS = {
    "score": score,
    "train": train,
    "sample": sample,
    "compose": compose,
    "ablation": ablation,
    "export": export,
    "pretrain": pretrain,
    "quality": quality,
    "adapter-dataset": adapter_dataset,
    "descriptors": descriptors,
    **generation.COMMANDS,
}


def main(args: argparse.Namespace) -> Any:
    return COMMANDS[args.command](args)
