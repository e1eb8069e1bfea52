"""ViT task: image classification with transformers ViTs or timm models; adapters on query+value by default
(timm's fused `qkv` is one matrix and gets one adapter).

Embedded default — an honest protocol, since no pretrained ViT exists offline: a tiny ViT (4 layers, width 64,
8×8 inputs, 2×2 patches) is pretrained on scikit-learn digits 0–4 with the shared loop (cached), then each method
adapts it to the unseen digits 5–9 with a fresh head. It shows whether a method can re-purpose pretrained
features; it is no substitute for ViT-B/16 on real images. Bring your own: `--model /path/to/vit-base --data
/path/to/imagefolder`, or `--model timm:vit_base_patch16_224 --checkpoint W.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState

from .classification import classification_task
from .data import digits
from .data.images import ImageCorpus
from .data.local_images import load_image_folder
from .encoder import default_output_dir, format_summary, subsample_size
from .fields import setting
from .run import execute
from .settings import AdapterSettings, TrainSettings
from .vit_models import VisionModel, digits_model, timm_model, transformers_model

DEFAULTS = TrainSettings(steps=300, batch_size=32, eval_every=25)


@dataclass(frozen=True)
class ImageTaskSettings:
    """The model and data of an image-classification run (flags: `--model`, `--data`, ...)."""

    model: str | None = setting(None, "local transformers checkpoint, or timm:<name>; default digits")
    checkpoint: str | None = setting(None, "timm weights file (.safetensors/.pth) for timm:<name>")
    data: str = setting("digits", "'digits' (default protocol) or an image folder")
    num_labels: int | None = setting(None, "expected class count (checked against data)")
    reset_head: bool = setting(False, "replace a checkpoint's head of another size")
    image_mean: tuple[float, ...] | None = setting(None, "override normalisation mean, e.g. 0.5,0.5,0.5")
    image_std: tuple[float, ...] | None = None
    train_size: int | None = setting(None, "stratified subsample of train (default all)", parse=subsample_size)
    eval_size: int | None = setting(None, parse=subsample_size)
    test_size: int | None = setting(None, parse=subsample_size)


def _folder_classes(args: ImageTaskSettings) -> int:
    """Class count of an image folder, known before the model is built (one sub-folder per class)."""
    root = Path(args.data)
    if not root.exists():
        raise FileNotFoundError(f"data path {root} does not exist")
    train = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes or (root / "dataset_dict.json").is_file():
        if args.num_labels is None:
            raise ValueError(f"{train} has no class sub-folders; pass --num-labels for a save_to_disk dataset")
        return args.num_labels  # checked against the dataset's labels once it is read
    if args.num_labels is not None and args.num_labels != len(classes):
        raise ValueError(
            f"label-count mismatch: --num-labels {args.num_labels} but {root} has {len(classes)} classes "
            f"({', '.join(classes)})"
        )
    return len(classes)


def load_model_and_data(
    args: ImageTaskSettings, cache_dir: str | None = None, progress: bool = True
) -> tuple[VisionModel, ImageCorpus]:
    """The model (fresh head for the data's classes) and the preprocessed, subsampled splits."""
    if args.data == "digits":
        corpus = digits.adapt_corpus()
        if args.num_labels is not None and args.num_labels != corpus.num_labels:
            raise ValueError(
                f"label-count mismatch: --num-labels {args.num_labels} but the digits protocol adapts to "
                f"{corpus.num_labels} classes (5-9)"
            )
        num_labels = corpus.num_labels
    else:
        corpus, num_labels = None, _folder_classes(args)
    if args.model is None:
        if args.data != "digits":
            raise ValueError("the tiny digits ViT expects 8×8 digits; pass --model for your own images")
        model = digits_model(num_labels, cache_dir, progress)
    elif args.model.startswith("timm:"):
        model = timm_model(args.model, num_labels, args.checkpoint)
    else:
        model = transformers_model(args.model, num_labels, args.reset_head)
    if corpus is None:
        corpus = load_image_folder(
            args.data,
            size=model.image_size,
            channels=model.channels,
            mean=args.image_mean or model.mean,
            std=args.image_std or model.std,
            num_labels=num_labels,
            cache=cache_dir,
        )
    sizes = {"train": args.train_size, "validation": args.eval_size, "test": args.test_size}
    return model, corpus.subsample(sizes, seed=0)


def run_vit(
    data: ImageTaskSettings,
    adapter: AdapterSettings,
    train: TrainSettings,
    output_dir: str | Path | None = None,
    *,
    cache_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Adapt one method; print and return its summary."""
    model, corpus = load_model_and_data(data, cache_dir, train.progress)
    task = classification_task(corpus.splits, model.forward, corpus.metrics, eval_batch_size=train.eval_batch_size)
    output = Path(output_dir) if output_dir else default_output_dir("vit", adapter.label())
    config = {
        "runner": "vit",
        "model": data.model or "digits-tiny-vit",
        "data": data.data,
        "sizes": {name: len(split) for name, split in corpus.splits.items()},
    }
    summary = execute(
        output_dir=output,
        build_model=model.build,
        adapter=adapter,
        train_settings=train,
        task=task,
        config=config,
        resume=resume,
        overwrite=overwrite,
        info={"model": model.description, "data": corpus.notes},
    )
    PartialState().print(model.description)
    PartialState().print(format_summary(summary, output))
    return summary
