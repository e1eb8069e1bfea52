"""Do adapter weights alone tell which "style" an adapter learned? A controlled study on digits.

Protocol: the embedded tiny ViT (pretrained on digits 0–4) is adapted to digits 5–9 rendered in one of six styles
(rotation, blur, inversion, thick strokes, pixel noise, elastic distortion). Each (style, seed) pair is one adapter:
the seed changes the training subsample, the adapter init and the data order. For each adapter type the collection is
then described by its weights alone (`factors`, `delta`, `gains`) and by an image-feature baseline (the mean frozen
ViT embedding of the adapter's training images, the role CLIP/DINO features play in arXiv 2412.12048), clustered with
k-means (k = number of styles) and scored by ARI, NMI and retrieval precision@k against the style labels.

    peft-inits descriptor-study                  # 6 styles × 4 seeds × 3 methods (minutes on a CPU)
    peft-inits descriptor-study --styles rotate,invert,noise --seeds 2 --steps 10   # tiny
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import atomic_write
from ..collection import clustering_scores, index_collection, plot_map
from ..descriptors import DESCRIPTORS
from ..training.classification import classification_task
from ..training.data import digits
from ..training.data.images import ImageCorpus, ImageData
from ..training.fields import setting
from ..training.run import execute
from ..training.settings import AdapterSettings, TrainSettings
from ..training.vit_models import digits_model

STYLE_NAMES = ("rotate", "blur", "invert", "thick", "noise", "elastic")
BACKGROUND = -1.0  # digits are scaled to [-1, 1] with a dark background


def _shift(pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample with a sampling grid, filling outside with the background."""
    out = F.grid_sample(pixels - BACKGROUND, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + BACKGROUND


def stylise(pixels: torch.Tensor, style: str, seed: int = 0) -> torch.Tensor:
    """Render N × 1 × 8 × 8 digits in one style; random styles draw from a generator seeded per image set."""
    generator = torch.Generator().manual_seed(seed)
    n = pixels.shape[0]
    if style == "rotate":
        angle = math.radians(30.0)
        theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
        grid = F.affine_grid(theta.expand(n, 2, 3), list(pixels.shape), align_corners=False)
        return _shift(pixels, grid)
    if style == "blur":
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16.0).view(1, 1, 3, 3)
        return F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel)
    if style == "invert":
        return -pixels
    if style == "thick":
        return F.max_pool2d(pixels, 3, stride=1, padding=1)
    if style == "noise":
        return (pixels + 0.5 * torch.randn(pixels.shape, generator=generator)).clamp(-1.0, 1.0)
    if style == "elastic":
        field = torch.randn(n, 2, 4, 4, generator=generator) * 0.25
        field = F.interpolate(field, size=pixels.shape[-2:], mode="bicubic", align_corners=False)
        identity = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), list(pixels.shape), align_corners=False)
        return _shift(pixels, identity + field.permute(0, 2, 3, 1))
    raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLE_NAMES)}")


def styled_corpus(style: str, seed: int, train_size: int) -> ImageCorpus:
    """Digits 5–9 in `style`: a seed-dependent training subsample, fixed validation/test splits."""
    base = digits.adapt_corpus()
    subsample = base.subsample({"train": train_size}, seed=seed)
    splits = {
        name: ImageData(stylise(data.pixels, style, seed=seed * 31 + i), data.labels)
        for i, (name, data) in enumerate(subsample.splits.items())
    }
    return ImageCorpus(
        f"digits5-9-{style}",
        splits,
        base.num_labels,
        base.label_names,
        base.metrics,
        {**base.notes, "style": style, "seed": seed},
    )


@dataclass(frozen=True)
class DigitStudySettings:
    """The digits descriptor study: `seeds` adapters of each style, for every method."""

    styles: tuple[str, ...] = STYLE_NAMES
    seeds: int = setting(4, "adapters per style")
    methods: tuple[str, ...] = ("lora", "svfit", "loldu")
    r: int = 8
    steps: int = 80
    train_size: int = 200
    output_dir: str = "runs/descriptor-study"
    cache_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.styles) - set(STYLE_NAMES))
        if unknown:
            raise ValueError(f"unknown style(s) {unknown}; choose from {', '.join(STYLE_NAMES)}")
        if len(self.styles) < 2 or self.seeds < 2:
            raise ValueError("the study needs at least 2 styles and 2 seeds per style")


def train_collection(args: DigitStudySettings, method: str) -> Path:
    """Train one adapter per (style, seed) for `method`; each weights folder gets a meta.json with its style."""
    root = Path(args.output_dir) / method
    for style in args.styles:
        for seed in range(args.seeds):
            run = root / f"{style}-{seed}"
            if (run / "summary.json").is_file():
                continue
            corpus = styled_corpus(style, seed, args.train_size)
            model = digits_model(corpus.num_labels, args.cache_dir)
            task = classification_task(corpus.splits, model.forward, corpus.metrics, eval_batch_size=256)
            settings = TrainSettings(
                steps=args.steps,
                batch_size=32,
                eval_every=args.steps,
                eval_at_start=False,
                seed=seed,
                progress=args.progress,
            )
            execute(
                output_dir=run,
                build_model=model.build,
                task=task,
                train_settings=settings,
                adapter=AdapterSettings(method=method, r=args.r, init_seed=seed),
                config={"runner": "descriptor-study", "style": style, "seed": seed},
                overwrite=True,
            )
            label = json.dumps({"label": style, "seed": seed})
            atomic_write(run / "weights" / "meta.json", lambda tmp, text=label: Path(tmp).write_text(text))
    return root


@torch.no_grad()
def image_features(args: DigitStudySettings, labels: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """Baseline: mean [CLS] embedding of each adapter's training images under the frozen pretrained ViT."""
    backbone = digits_model(5, args.cache_dir).build().vit.eval()
    rows = []
    for style, seed in zip(labels, seeds, strict=True):
        pixels = styled_corpus(style, seed, args.train_size).splits["train"].pixels
        rows.append(backbone(pixel_values=pixels).last_hidden_state[:, 0].mean(0).numpy())
    return np.stack(rows)


def evaluate(args: DigitStudySettings, method: str, root: Path) -> list[dict[str, Any]]:
    """Scores of every descriptor (and the image baseline) on one method's collection; maps saved as PNG."""
    base = digits_model(5, args.cache_dir).build().eval()
    collection = index_collection(root, base, progress=args.progress)
    if collection.failures:
        raise RuntimeError(f"unreadable adapters in the study: {collection.failures}")
    labels = collection.labels
    seeds = [json.loads((Path(r.path) / "meta.json").read_text())["seed"] for r in collection.records]
    k = args.seeds - 1
    has_gains = all(record.gains for record in collection.records)
    features = {name: fn for name, fn in DESCRIPTORS.items() if name != "gains" or has_gains}
    rows = []
    for name, descriptor in features.items():
        X = descriptor(collection.records, base)
        rows.append({"method": method, "descriptor": name, **clustering_scores(X, labels, k=k)})
        plot_map(X, labels, Path(args.output_dir) / f"map-{method}-{name}.png", f"{method}: {name} descriptor")
    X = image_features(args, labels, seeds)
    rows.append({"method": method, "descriptor": "image features", **clustering_scores(X, labels, k=k)})
    return rows


def format_table(rows: Sequence[dict[str, Any]], k: int) -> str:
    lines = [f"| adapter | descriptor | ARI | NMI | P@{k} |", "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['descriptor']} | {row['ari']:.3f} | {row['nmi']:.3f} | {row[f'p@{k}']:.3f} |"
        )
    return "\n".join(lines)


def run_study(args: DigitStudySettings) -> list[dict[str, Any]]:
    """Train every method's collection (finished runs are kept), score it, write results.json/.md and maps."""
    rows = []
    for method in args.methods:
        rows += evaluate(args, method, train_collection(args, method))
    table = format_table(rows, args.seeds - 1)
    out = Path(args.output_dir)
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(table + "\n"))
    print(f"{len(args.styles)} styles × {args.seeds} seeds, {args.steps} steps, r={args.r}\n{table}")
    return rows
