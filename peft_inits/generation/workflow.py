"""Train a weight generator on an adapter data set, load it back, and write a generated adapter directory.

A generator run folder holds, besides the usual run files (config.json, metrics.jsonl, checkpoints/, summary.json,
weights/model.safetensors from `execute`):

    generator.json          method, adapter config, layout, feature sources, base model, settings, sizes
    codec.safetensors       the layer codec (means, stds, PCA bases) and the feature statistics
    template.safetensors    one training adapter's saved tensors: the frozen, base-derived ones (fingerprints, σ_r …)
    conditions.safetensors  the training subjects' raw reference features (nearest-neighbour retrieval baseline)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..checkpoint import load_tensors, read_config, read_json_object, save_tensors, write_adapter_dir
from ..registry import method_of_peft_type
from ..training.run import execute
from ..training.settings import AdapterSettings, TrainSettings
from . import features as feats
from .dataset import AdapterDataset, DatasetEntry
from .entries import WRAPPER_PREFIX, load_entries, reference_images, training_data
from .generator import Denoiser, FeatureNormaliser, GeneratorSettings, TokenRows, generator_task, sample_tokens
from .representation import (
    Codec,
    LayerLayout,
    adapter_tensors,
    adapter_vectors,
    discover_layout,
    layout_from_json,
    layout_to_json,
)

TEMPLATE_ADAPTER = "generation-template"
FORMAT = 1


# ------------------------------------------------------------------------------------------------ base model


@dataclass
class Base:
    """The parts of the base pipeline the generator needs: the U-Net (layouts, fingerprints) and the VAE."""

    unet: nn.Module
    vae: nn.Module
    resolution: int
    model: str | None


def model_folder(model: str | None, cache_dir: str | Path = "runs/cache") -> str | None:
    """A data set's or user's model name as a folder: None for the tiny pipeline (None, '' or 'tiny'), the shipped
    glyph-world model's name unpacked into `cache_dir` (`glyph.shipped`), or an existing diffusers folder."""
    from ..glyph.shipped import SHIPPED, TINY, model_kind, model_path

    if model in (None, "", TINY):
        return None
    if model_kind(model) == "sd" and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither a diffusers folder, {TINY!r}, nor the shipped {SHIPPED!r}; pass --model DIR"
        )
    return model_path(model, cache_dir)


def load_base(model: str | None, cache_dir: str | Path = "runs/cache") -> Base:
    """The U-Net and VAE of a local diffusers folder, the shipped glyph-world model ('glyph-t2i', unpacked into
    `cache_dir`), or the tiny embedded pipeline (model None or 'tiny')."""
    name, model = model, model_folder(model, cache_dir)
    if model is None:
        from ..diffusion.tiny import tiny_pipeline

        pipe = tiny_pipeline()
        unet, vae = pipe.unet, pipe.vae
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        root = Path(model).expanduser()
        if not (root / "unet").is_dir() or not (root / "vae").is_dir():
            raise FileNotFoundError(f"--model {root} is not a diffusers SD folder (it needs unet/ and vae/)")
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True)
    resolution = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    return Base(unet.eval(), vae.eval(), resolution, None if name in (None, "", "tiny") else str(name))


def base_fingerprints(unet: nn.Module, layout: Sequence[LayerLayout], what: str) -> dict[str, Tensor]:
    """The fingerprint of every adapted layer's base weight (computed once; a missing layer is an error)."""
    modules = dict(unet.named_modules())
    fingerprints = {}
    for layer in layout:
        module = modules.get(layer.name)
        weight = getattr(getattr(module, "base_layer", module), "weight", None)
        if weight is None:
            raise ValueError(f"{what}: the base model has no layer {layer.name}; it was made for another model")
        fingerprints[layer.name] = Fn.weight_fingerprint(weight)
    return fingerprints


def check_base(
    unet: nn.Module | Mapping[str, Tensor], layout: Sequence[LayerLayout], template: Mapping[str, Tensor], what: str
) -> None:
    """Every adapted layer exists in the base (`unet`, or its `base_fingerprints`) and its weight has the
    fingerprint the adapters in `template` were trained on."""
    fingerprints = base_fingerprints(unet, layout, what) if isinstance(unet, nn.Module) else unet
    for layer in layout:
        saved = template.get(layer.key("fingerprint"))
        if saved is None:
            raise ValueError(f"{what}: {layer.key('fingerprint')} is missing, so the base cannot be checked")
        stored = saved.view(torch.float64) if saved.dtype == torch.int64 else saved.double()
        if not Fn.fingerprints_match(stored, fingerprints[layer.name]):
            raise ValueError(
                f"{what} was trained for another base model: the weight of {layer.name} differs from the one its "
                "adapters were trained on (fingerprint mismatch); pass the --model it was trained for"
            )


# ------------------------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class FeatureChoice:
    """Which feature sources, and where their networks come from (recorded with the generator)."""

    sources: tuple[str, ...] = ("judge", "vae")
    judge: str | None = None  # a judge folder; None: trained once into `cache_dir` (docs/glyph_world.md)
    cache_dir: str | None = "runs/cache"
    image_encoder: str | None = None

    def build(self, base: Base | None) -> list[feats.FeatureSource]:
        judge = None
        if "judge" in self.sources:
            from ..glyph.judge import cached_judge, load_judge

            if self.judge is not None:
                judge = load_judge(self.judge)[0]
            elif self.cache_dir is not None:
                judge = cached_judge(self.cache_dir)
        return feats.build_sources(
            self.sources,
            judge=judge,
            vae=None if base is None else base.vae,
            vae_size=None if base is None else base.resolution,
            image_encoder=self.image_encoder,
        )


@dataclass
class SubjectFeatures:
    """Per entry: each source's mean reference feature (N, D), the per-image features (N, R, D, zero-padded) and
    the number of reference images (N,)."""

    means: dict[str, Tensor]
    images: dict[str, Tensor]
    counts: Tensor


def subject_features(sources: Sequence[feats.FeatureSource], entries: Sequence[DatasetEntry]) -> SubjectFeatures:
    """Features of every entry's references, computed once per subject."""
    cache: dict[str, dict[str, Tensor]] = {}
    rows = []
    for entry in entries:
        if entry.subject_id not in cache:
            images = reference_images(entry)
            cache[entry.subject_id] = {source.name: source(images) for source in sources}
        rows.append(cache[entry.subject_id])
    counts = torch.tensor([len(next(iter(row.values()))) for row in rows])
    width = int(counts.max())
    padded = {}
    for source in sources:
        stack = torch.zeros(len(rows), width, rows[0][source.name].shape[1], dtype=torch.float64)
        for i, row in enumerate(rows):
            stack[i, : len(row[source.name])] = row[source.name]
        padded[source.name] = stack
    means = {name: stack.sum(1) / counts[:, None] for name, stack in padded.items()}
    return SubjectFeatures(means, padded, counts)


def _rows(tokens: Tensor, features: SubjectFeatures, normaliser: FeatureNormaliser, keep: float) -> TokenRows:
    """Rows with normalised conditions; per-image features are normalised alike (the map is affine)."""
    images = {name: normaliser.one(name, stack) for name, stack in features.images.items()}
    return TokenRows(tokens, normaliser(features.means), images, features.counts, keep)


# ------------------------------------------------------------------------------------------------ training


@dataclass
class PreparedData:
    dataset: AdapterDataset
    config: dict[str, Any]
    layout: list[LayerLayout]
    template: dict[str, Tensor]
    codec: Codec
    train: list[DatasetEntry]
    heldout: list[DatasetEntry]
    train_tokens: Tensor
    heldout_tokens: Tensor
    explained_variance: float


def prepare_data(dataset_dir: str | Path, base: Base, latent: int, progress: bool = False) -> PreparedData:
    """Read and verify the data set, check it against the base, discover the layout and fit the codec."""
    from tqdm.auto import tqdm

    dataset = training_data(dataset_dir)
    train, heldout = dataset.entries("train"), dataset.entries("heldout")
    if len(train) < 2:
        raise ValueError(f"{dataset.root} has {len(train)} training adapter(s); a generator needs at least two")
    config, states = load_entries(dataset, [*train, *heldout])
    adapter_config = read_config(train[0].directory)
    base.unet.add_adapter(adapter_config, adapter_name=TEMPLATE_ADAPTER)
    try:
        layout = discover_layout(base.unet, TEMPLATE_ADAPTER)
    finally:
        base.unet.delete_adapters(TEMPLATE_ADAPTER)
    fingerprints = base_fingerprints(base.unet, layout, f"data set {dataset.root}")
    for entry, state in zip([*train, *heldout], states, strict=True):
        check_base(fingerprints, layout, state, f"adapter {entry.directory}")
    vectors = [
        adapter_vectors(layout, state, str(entry.directory))
        for entry, state in tqdm(
            list(zip([*train, *heldout], states, strict=True)), desc="reading adapters", disable=not progress
        )
    ]
    codec = Codec.fit(vectors[: len(train)], latent)
    tokens = codec.encode(vectors)
    return PreparedData(
        dataset=dataset,
        config=config,
        layout=layout,
        template=states[0],
        codec=codec,
        train=train,
        heldout=heldout,
        train_tokens=tokens[: len(train)],
        heldout_tokens=tokens[len(train) :],
        explained_variance=codec.explained_variance(vectors[: len(train)]),
    )


def train_generator(
    dataset_dir: str | Path,
    output_dir: str | Path,
    *,
    choice: FeatureChoice,
    settings: GeneratorSettings | None = None,
    train_settings: TrainSettings | None = None,
    model: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or resume) a generator on the data set's training adapters; validation on the held-out ones."""
    settings = settings or GeneratorSettings()
    train_settings = train_settings or TrainSettings(steps=2000, batch_size=64, lr=1e-3, warmup=100, eval_every=200)
    started = time.perf_counter()
    dataset = training_data(dataset_dir)
    model = model if model is not None else dataset.model
    base = load_base(model, choice.cache_dir or "runs/cache")
    data = prepare_data(dataset_dir, base, settings.latent, progress=train_settings.progress)
    sources = choice.build(base)
    feature_started = time.perf_counter()
    train_features = subject_features(sources, data.train)
    heldout_features = subject_features(sources, data.heldout) if data.heldout else None
    feature_s = time.perf_counter() - feature_started
    raw_train = train_features.means
    normaliser = FeatureNormaliser.fit(raw_train)
    train_rows = _rows(data.train_tokens, train_features, normaliser, settings.reference_keep)
    validation = train_rows
    if heldout_features is not None:
        validation = TokenRows(data.heldout_tokens, normaliser(heldout_features.means))
    mask = data.codec.mask()
    dims = {name: int(value.shape[1]) for name, value in raw_train.items()}
    layers, token_width = mask.shape
    task = generator_task(train_rows, validation, mask, settings)
    method = method_of_peft_type(data.config["peft_type"])
    method_name = method.name if method is not None else str(data.config["peft_type"])
    run_config = {
        "runner": "generator",
        "dataset": str(Path(dataset_dir)),
        "model": base.model,
        "method": method_name,
        "adapters": [e.name for e in data.train],
        "heldout": [e.name for e in data.heldout],
        "features": asdict(choice),
        "generator": asdict(settings),
    }
    run_config = json.loads(json.dumps(run_config))  # as config.json holds it (tuples become lists), for --resume
    summary = execute(
        output_dir=output_dir,
        build_model=lambda: Denoiser(layers, token_width, dims, settings),
        adapter=AdapterSettings(method="full", head_modules=[]),
        train_settings=train_settings,
        task=task,
        config=run_config,
        resume=resume,
        overwrite=overwrite,
    )
    root = Path(output_dir)
    save_tensors({**data.codec.tensors(), **{f"features.{k}": v for k, v in normaliser.tensors().items()}},
                 root / "codec.safetensors")  # fmt: skip
    save_tensors(data.template, root / "template.safetensors")
    save_tensors({f"{k}": v for k, v in raw_train.items()}, root / "conditions.safetensors")
    parameters = sum(p.numel() for p in Denoiser(layers, token_width, dims, settings).parameters())
    sizes = {
        "parameters": parameters,
        "weights_bytes": (root / "weights" / "model.safetensors").stat().st_size,
        "codec_bytes": (root / "codec.safetensors").stat().st_size,
        "template_bytes": (root / "template.safetensors").stat().st_size,
    }
    meta = {
        "format": FORMAT,
        "method": method_name,
        "model": base.model,
        "adapter_config": data.config,
        "layout": layout_to_json(data.layout),
        "features": asdict(choice),
        "feature_dims": dims,
        "generator": asdict(settings),
        "train_subjects": [e.subject_id for e in data.train],
        "train_adapters": [e.name for e in data.train],
        "explained_variance": data.explained_variance,
        "token_widths": data.codec.widths,
        "token_range": float(data.train_tokens.abs().max()),
        "sizes": sizes,
        "feature_time_s": feature_s,
        "summary": {k: summary.get(k) for k in ("steps", "train_time_s", "best", "final", "median_step_time_s")},
        "wall_time_s": time.perf_counter() - started,
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    from ..atomic import atomic_write

    atomic_write(root / "generator.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    return meta


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class RecordedRun:
    """What every adapter-generator run folder records (the diffusion generator's, the hypernetwork's): its meta —
    method and feature sources — and the conditions of its training subjects."""

    root: Path
    meta: dict[str, Any]

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def choice(self) -> FeatureChoice:
        recorded = self.meta["features"]
        return FeatureChoice(
            tuple(recorded["sources"]), recorded.get("judge"), recorded.get("cache_dir"), recorded.get("image_encoder")
        )

    def train_conditions(self) -> dict[str, Tensor]:
        return load_tensors(self.root / "conditions.safetensors")


@dataclass
class GeneratorRun(RecordedRun):
    layout: list[LayerLayout]
    codec: Codec
    normaliser: FeatureNormaliser
    denoiser: Denoiser
    template: dict[str, Tensor]


def load_generator(run_dir: str | Path) -> GeneratorRun:
    """A finished generator run (an unfinished or foreign folder is an error saying what is missing)."""
    root = Path(run_dir)
    path = root / "generator.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a finished generator run ({path} does not exist); train one with sd.py train-generator"
        )
    meta = read_json_object(path, "generator description")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; this peft_inits reads format {FORMAT}")
    layout = layout_from_json(meta["layout"])
    tensors = load_tensors(root / "codec.safetensors")
    codec = Codec.from_tensors(tensors, len(layout))
    features = {k.removeprefix("features."): v for k, v in tensors.items() if k.startswith("features.")}
    normaliser = FeatureNormaliser.from_tensors(features, meta["features"]["sources"])
    settings = GeneratorSettings(**meta["generator"])
    denoiser = Denoiser(len(layout), codec.token_width, meta["feature_dims"], settings)
    weights = load_tensors(root / "weights" / "model.safetensors")
    denoiser.load_state_dict(weights)
    template = load_tensors(root / "template.safetensors")
    return GeneratorRun(root, meta, layout, codec, normaliser, denoiser.eval(), template)


# ------------------------------------------------------------------------------------------------ generating


def generate_tensors(
    run: GeneratorRun, conditions: Mapping[str, Tensor], *, guidance: float, seed: int, steps: int = 50
) -> list[dict[str, Tensor]]:
    """Saved-adapter tensors for each row of raw (unnormalised) `conditions` (name → (B, D))."""
    tokens = sample_tokens(
        run.denoiser,
        run.normaliser(conditions),
        run.codec.mask(),
        steps=steps,
        guidance=guidance,
        seed=seed,
        clip=1.5 * run.meta["token_range"],
    )
    return [adapter_tensors(run.layout, run.template, vectors) for vectors in run.codec.decode(tokens)]


def write_generated(run: GeneratorRun, state: Mapping[str, Tensor], out: str | Path, info: Mapping[str, Any]) -> Path:
    """A normal adapter directory in the layout `PeftModel.save_pretrained` writes (keys under `base_model.model.`,
    the data set's config, checksummed weights), plus `generated.json` saying how it was made."""
    text = json.dumps(dict(info), indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"
    tensors = {f"{WRAPPER_PREFIX}{key}": value for key, value in state.items()}
    return write_adapter_dir(out, tensors, run.meta["adapter_config"], texts={"generated.json": text})


def generate_adapter(
    generator: str | Path,
    references: str | Path,
    out: str | Path,
    *,
    method: str | None = None,
    model: str | None = None,
    guidance: float = 2.0,
    seed: int = 0,
    steps: int = 50,
    judge: str | None = None,
    image_encoder: str | None = None,
) -> dict[str, Any]:
    """Write the adapter the generator predicts for the subject of `references`; returns what was done and timings."""
    started = time.perf_counter()
    images = feats.read_references(references)  # bad references fail before anything heavy loads
    run = load_generator(generator)
    if method is not None and method != run.method:
        raise ValueError(f"generator {run.root} was trained on {run.method} adapters, not {method}; use --method "
                         f"{run.method} or a generator trained on a {method} data set")  # fmt: skip
    model = model if model is not None else run.meta.get("model")
    base = load_base(model, run.choice.cache_dir or "runs/cache")
    check_base(base.unet, run.layout, run.template, f"generator {run.root}")
    choice = run.choice
    choice = FeatureChoice(
        choice.sources, judge or choice.judge, choice.cache_dir, image_encoder or choice.image_encoder
    )
    sources = choice.build(base)
    loaded = time.perf_counter()
    conditions = {k: v[None] for k, v in feats.condition(sources, images).items()}
    state = generate_tensors(run, conditions, guidance=guidance, seed=seed, steps=steps)[0]
    info = {
        "generator": str(Path(generator)),
        "references": str(Path(references)),
        "images": len(images),
        "method": run.method,
        "model": model,
        "guidance": guidance,
        "seed": seed,
        "steps": steps,
        "features": list(choice.sources),
    }
    directory = write_generated(run, state, out, info)
    done = time.perf_counter()
    return {**info, "out": str(directory), "load_s": loaded - started, "generate_s": done - loaded,
            "wall_s": done - started}  # fmt: skip
