"""`sd.py descriptors`: the descriptor study in the paper's setting — style adapters of a generative model.

arXiv 2412.12048 asks whether a collection of style LoRAs of a text-to-image model can be clustered and searched by
style from the weights alone, and finds the weights beat CLIP/DINO image features. Here: style adapters of the
glyph-world model (`glyph:background=<style>` concepts, the rare token in "… on a sks wall"), `--seeds` adapters per
style, each seed its own training renders (other glyphs, colours, typefaces) and its own noise and data order. They
train K at a time (`population`) through the adapter-dataset pipeline, with the SD runner's loss and defaults.
Every method's collection is described by `factors`, `delta` and (SVFit/LoLDU) `gains`, and by two image-feature
baselines in the CLIP/DINO role — the judge's mean features of the adapter's *training* images and of images
*generated* with it — clustered with k-means (k = styles) and scored by ARI, NMI and P@(seeds − 1).

    python experiments/sd.py descriptors --output-dir runs/style-descriptors            # 6 styles × 4 seeds × all
    python experiments/sd.py descriptors --model tiny --styles brick,rings --seeds 2 --steps 2 --judge J  # seconds
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..collection import clustering_scores, index_collection, plot_map
from ..descriptors import DESCRIPTORS
from ..diffusion.composition import Placement, apply_placements, load_named_adapter
from ..diffusion.sampling import generate
from ..generation import dataset as D
from ..generation.builder import AdapterDatasetSettings, build_adapter_dataset
from ..glyph.concepts import GlyphConcept, concept_prompts
from ..glyph.shipped import DEFAULT_CACHE
from ..registry import method_names
from ..training.fields import setting

STYLES = ("brick", "grass", "stripes", "checks", "dots", "rings")  # 5 seen in pretraining, 1 held out
DATA_SEED = 40_000  # renders of style adapters: no pretraining, prompt or reference seed


@dataclass(frozen=True)
class StyleConcept:
    """The data of one style adapter, in the interface the adapter-dataset pipeline trains (`generation.dataset.
    Subject`): the glyph world with its background fixed to `style`, each image captioned with the style token."""

    subject_id: str  # "b<number>": the pipeline derives the adapter's noise stream from the number
    style: str
    replicate: int

    @property
    def glyph(self) -> str:  # the dataset entry's `subject` field: the learned concept's value
        return self.style

    family = variant = colour = ""  # vary from image to image: the concept fixes only the background

    def images(self, count: int, size: int, stream: str) -> tuple[np.ndarray, list[str]]:
        offset = {"train": 0, "references": 1}[stream]
        seed = DATA_SEED + 2 * int(self.subject_id[1:]) + offset
        arrays, captions, _ = GlyphConcept("background", self.style).instance(count, size, seed=seed)
        return arrays, captions


def style_concepts(styles: Sequence[str], seeds: int) -> list[StyleConcept]:
    """One concept per (style, seed): `seeds` adapters of every style, each with its own renders."""
    concepts = []
    for i, style in enumerate(styles):
        GlyphConcept.parse(f"glyph:background={style}")  # an unknown style fails here, naming the known ones
        concepts += [StyleConcept(f"b{i * 100 + seed:03d}", style, seed) for seed in range(seeds)]
    return concepts


# ------------------------------------------------------------------------------------------------ arguments


@dataclass(frozen=True)
class StyleStudySettings:
    """The style-descriptor study: `seeds` adapters of each style, for every method."""

    output_dir: str = "runs/style-descriptors"
    model: str | None = setting(None, "diffusers folder, 'tiny', or default: the shipped glyph model")
    methods: tuple[str, ...] | None = setting(None, "default: every registered method")
    styles: tuple[str, ...] = setting(tuple(STYLES), "backgrounds (default: %(default)s)")
    seeds: int = setting(4, "adapters per style (default: %(default)s)")
    steps: int = setting(150, "optimizer steps per adapter (default: %(default)s)")
    images: int = setting(16, "training renders per adapter (default: %(default)s)")
    generated: int = setting(2, "images generated per adapter for the baseline")
    sample_steps: int = setting(15, "DPM++ 2M Karras steps of those images")
    population: int = setting(24, "adapters trained together in one forward")
    judge: str | None = setting(None, "glyph-world judge folder (default: trained into --cache-dir)")
    cache_dir: str = DEFAULT_CACHE
    progress: bool = True


def _dataset_settings(args: StyleStudySettings) -> AdapterDatasetSettings:
    """One adapter per style concept with the SD runner's defaults (learning rate, rank, targets)."""
    return AdapterDatasetSettings(
        model=args.model, cache_dir=args.cache_dir, seeds=(0,), steps=args.steps, images=args.images, references=2,
        population=args.population, progress=args.progress,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the study


def _judge_scorer(args: StyleStudySettings):
    from ..diffusion.metrics import JudgeScorer
    from ..glyph.judge import cached_judge, load_judge

    judge = load_judge(args.judge)[0] if args.judge else cached_judge(args.cache_dir, progress=args.progress)
    return JudgeScorer(judge)


@torch.no_grad()
def generated_features(pipe, scorer, entries, root: Path, args: StyleStudySettings) -> np.ndarray:
    """Mean judge features of `--generated` images sampled with each adapter, on the same style-token prompts."""
    prompts = [p.text for p in concept_prompts([GlyphConcept("background", args.styles[0])], args.generated)]
    rows = []
    for entry in entries:
        load_named_adapter(pipe.unet, root / "adapters" / entry.name, "probe")
        apply_placements(pipe.unet, [Placement("probe")])
        images = [row[0] for row in generate(pipe, prompts, [0], steps=args.sample_steps, guidance=4.0)]
        rows.append(scorer.features(images).mean(0).numpy())
        pipe.unet.delete_adapters("probe")
    return np.stack(rows)


@torch.no_grad()
def training_features(scorer, concepts: Sequence[StyleConcept], images: int, size: int) -> dict[str, np.ndarray]:
    """Mean judge features of each concept's training renders (the same for every method's adapter of it)."""
    return {c.subject_id: scorer.features(list(c.images(images, size, "train")[0])).mean(0).numpy() for c in concepts}


def evaluate(
    args: StyleStudySettings, method: str, root: Path, scorer, training: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Scores of every weight descriptor and both image baselines on one method's style collection; `training`:
    `training_features` by concept id."""
    from ..diffusion.models import load_pipeline
    from ..glyph.shipped import model_path

    dataset = D.read_dataset(root)
    by_name = {entry.name: entry for entry in dataset.adapters}
    pipe = load_pipeline(model_path(args.model, args.cache_dir))
    collection = index_collection(root / "adapters", pipe.unet, progress=args.progress)
    if collection.failures:
        raise RuntimeError(f"unreadable adapters in the study: {collection.failures}")
    entries = [by_name[Path(record.path).name] for record in collection.records]
    labels = [entry.subject for entry in entries]
    k = args.seeds - 1
    rows = []
    has_gains = all(record.gains for record in collection.records)
    for name, descriptor in DESCRIPTORS.items():
        if name == "gains" and not has_gains:
            continue
        X = descriptor(collection.records, pipe.unet)
        rows.append({"method": method, "descriptor": name, **clustering_scores(X, labels, k=k)})
        plot_map(X, labels, Path(args.output_dir) / f"map-{method}-{name}.png", f"{method}: {name} descriptor")
    seen = np.stack([training[e.subject_id] for e in entries])
    generated = generated_features(pipe, scorer, entries, root, args)
    for name, X in (("training-image features", seen), ("generated-image features", generated)):
        rows.append({"method": method, "descriptor": name, **clustering_scores(X, labels, k=k)})
    return rows


def format_table(rows: Sequence[dict[str, Any]], k: int) -> str:
    lines = [f"| adapter | descriptor | ARI | NMI | P@{k} |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['descriptor']} | {r['ari']:.3f} | {r['nmi']:.3f} | {r[f'p@{k}']:.3f} |")
    return "\n".join(lines)


def run(args: StyleStudySettings) -> list[dict[str, Any]]:
    """Build each method's style collection, score every descriptor and baseline, write results.json/.md."""
    methods = args.methods or method_names()
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {', '.join(method_names())}")
    if len(args.styles) < 2 or args.seeds < 2:
        raise ValueError("the study needs at least 2 styles and 2 seeds per style")
    concepts = style_concepts(args.styles, args.seeds)
    scorer = _judge_scorer(args)
    out = Path(args.output_dir)
    rows: list[dict[str, Any]] = []
    training: dict[str, np.ndarray] = {}
    for method in methods:
        root = out / method
        dataset = build_adapter_dataset(method, root, _dataset_settings(args), concepts=(concepts, []))
        training = training or training_features(scorer, concepts, args.images, dataset.settings["resolution"])
        rows += evaluate(args, method, root, scorer, training)
    table = format_table(rows, args.seeds - 1)
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2) + "\n"))
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(table + "\n"))
    print(f"{len(args.styles)} styles × {args.seeds} seeds, {args.steps} steps\n{table}")
    return rows
