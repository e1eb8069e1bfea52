"""ViT builders: the tiny ViT pretrained on digits 0–4 (cached), local transformers checkpoints, and timm models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_write, load_tensors
from .data import digits
from .data.cache import cache_dir

# The tiny ViT of the digits protocol and how it is pretrained. Changing either changes the cache key.
DIGITS_VIT = {
    "image_size": 8,
    "patch_size": 2,
    "num_channels": 1,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
DIGITS_PRETRAIN = {"steps": 600, "batch_size": 64, "lr": 1e-3, "head_lr": 1e-3, "weight_decay": 0.05, "seed": 0}
_PROTOCOL_VERSION = 1


@dataclass
class VisionModel:
    """How to build a fresh classifier and feed it: transformers take `pixel_values=`, timm a positional tensor."""

    build: Callable[[], nn.Module]
    forward: Callable[[nn.Module, dict[str, Any]], torch.Tensor]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


def _digits_key() -> str:
    payload = json.dumps({"vit": DIGITS_VIT, "pretrain": DIGITS_PRETRAIN, "v": _PROTOCOL_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def pretrained_digits_vit(cache: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Directory of the tiny ViT pretrained on digits 0–4 (`config.json`, `model.safetensors`, `pretrain.json`).

    Built once with the shared training loop (method `full`), then read from the cache.
    """
    from transformers import ViTConfig, ViTForImageClassification

    from .classification import classification_task, hf_logits
    from .run import execute
    from .settings import AdapterSettings, TrainSettings

    directory = cache_dir(cache) / "vit-digits" / _digits_key()
    if (directory / "model.safetensors").is_file() and (directory / "pretrain.json").is_file():
        return directory
    print(
        f"pretraining the tiny base ViT on digits 0-4 ({DIGITS_PRETRAIN['steps']} steps, once: cached in {directory}); "
        "the bar below is that pretraining (method 'full'), not your run",
        file=sys.stderr,
    )
    corpus = digits.pretrain_corpus()
    config = ViTConfig(**DIGITS_VIT, num_labels=corpus.num_labels)
    task = classification_task(corpus.splits, hf_logits, ("accuracy",), eval_batch_size=256)
    settings = TrainSettings(**DIGITS_PRETRAIN, eval_every=100, eval_at_start=False, progress=progress)
    work = directory / "pretrain-run"
    summary = execute(
        output_dir=work,
        build_model=lambda: ViTForImageClassification(config),
        adapter=AdapterSettings(method="full"),
        train_settings=settings,
        task=task,
        config={"runner": "vit-digits-pretrain", "vit": DIGITS_VIT, "protocol": corpus.notes["protocol"]},
        overwrite=True,
    )
    text = config.to_json_string()
    atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(text))
    shutil.copyfile(work / summary["weights_file"], directory / "model.tmp")
    os.replace(directory / "model.tmp", directory / "model.safetensors")
    record = {"held_out_accuracy_0_4": summary["final"]["accuracy"], "pretrain": DIGITS_PRETRAIN, "vit": DIGITS_VIT}
    atomic_write(directory / "pretrain.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    return directory


def digits_model(num_labels: int, cache: str | os.PathLike | None = None, progress: bool = False) -> VisionModel:
    """The pretrained tiny ViT with a fresh `num_labels` head (seeded by the run)."""
    from transformers import ViTConfig, ViTForImageClassification

    from .classification import hf_logits

    directory = pretrained_digits_vit(cache, progress)
    config = ViTConfig.from_json_file(str(directory / "config.json"))
    state = load_tensors(directory / "model.safetensors")
    accuracy = json.loads((directory / "pretrain.json").read_text())["held_out_accuracy_0_4"]

    def build() -> nn.Module:
        model = ViTForImageClassification(config)
        model.load_state_dict(state)
        model.classifier = nn.Linear(config.hidden_size, num_labels)  # new classes, new head
        model.config.num_labels = num_labels
        return model

    return VisionModel(
        build,
        hf_logits,
        config.image_size,
        config.num_channels,
        (0.5,),
        (0.5,),
        f"tiny ViT pretrained on digits 0-4 (held-out accuracy {accuracy:.3f}), adapted to digits 5-9",
    )


def transformers_model(path: str, num_labels: int, reset_head: bool = False) -> VisionModel:
    """A local transformers image classifier (ViT, DeiT, ...); its processor's mean/std when present."""
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    from .classification import hf_logits

    if not Path(path).is_dir():
        raise FileNotFoundError(f"model path {path} is not a local checkpoint directory")
    config = AutoConfig.from_pretrained(path)
    is_classifier = any("ForImageClassification" in a for a in (config.architectures or []))
    if is_classifier and config.num_labels != num_labels and not reset_head:
        raise ValueError(
            f"label-count mismatch: the checkpoint {path} is a {config.num_labels}-label classifier but the data has "
            f"{num_labels} labels; pass --reset-head to train a new head"
        )
    mean, std = _processor_stats(Path(path))

    def build() -> nn.Module:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return AutoModelForImageClassification.from_pretrained(
            path, num_labels=num_labels, ignore_mismatched_sizes=reset_head
        )

    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    return VisionModel(build, hf_logits, size, config.num_channels, mean, std, f"transformers {path}")


def _processor_stats(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        data = json.loads(processor.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def timm_model(spec: str, num_labels: int, checkpoint: str | None = None) -> VisionModel:
    """`timm:<name>`: a timm model with a fresh `num_labels` head, weights from a local `checkpoint` file."""
    try:
        import timm
    except ImportError as exc:
        raise SystemExit(f"--model {spec} needs `pip install timm` (and a torchvision matching torch)") from exc
    from .classification import tensor_logits

    name = spec.split(":", 1)[1]
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    overlay = {"file": str(checkpoint)} if checkpoint else None

    def build() -> nn.Module:
        return timm.create_model(
            name, pretrained=checkpoint is not None, num_classes=num_labels, pretrained_cfg_overlay=overlay
        )

    probe = build()
    cfg = dict(getattr(probe, "pretrained_cfg", {}) or {})
    channels, size, _ = cfg.get("input_size", (3, 224, 224))
    mean = tuple(cfg.get("mean", (0.5,) * channels))
    std = tuple(cfg.get("std", (0.5,) * channels))
    return VisionModel(build, tensor_logits, size, channels, mean, std, f"timm {name}")
