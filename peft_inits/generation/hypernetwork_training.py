"""`sd.py train-hypernetwork`: train a `Hypernetwork` through the frozen U-Net's DreamBooth denoising loss.

Subjects are anything with the interface of `generation.dataset.Subject` (`subject_id`, `images(count, size,
stream)`): each gives `images` training renders (stream 'train': the denoising loss) and `references` reference
renders (stream 'references': the condition), never the same images. A step takes `batch_size` training subjects ×
`renders` of their renders, one U-Net forward with each sample served by its subject's predicted adapter
(`Population.substitute`), the loss `adapter_dataset.population_noise_loss` (ε / v MSE at random timesteps, as every
adapter of an adapter data set is trained). Validation: the held-out subjects' loss on a fixed draw.

The run goes through `training.run.execute` (checkpoints, exact resume, tqdm, metrics.jsonl); afterwards the
folder also holds `hypernetwork.json` (what it predicts and for which base), `template.safetensors` (the adapter's
saved tensors at init: fingerprints and frozen factors every predicted adapter reuses) and `conditions.safetensors`
(the training subjects' raw features, for retrieval). With a `BasisSettings` data set the network predicts
coefficients of that data set's principal directions (`hypernetwork_basis`); the basis is checked and fitted before
anything is written, saved in the weights and recorded (with its digest) in `hypernetwork.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import save_tensors
from ..population import Population
from ..training.run import execute
from ..training.settings import AdapterSettings, TrainSettings
from . import features as feats
from .entries import WRAPPER_PREFIX
from .hypernetwork import HypernetSettings, Hypernetwork, Slots, feature_stats, hypernetwork_task
from .hypernetwork_basis import BasisSettings, basis_source, fit_basis
from .representation import SAVED_INFIX, LayerLayout, discover_layout, layout_to_json
from .workflow import Base, FeatureChoice, model_folder

FORMAT = 1
META = "hypernetwork.json"
EVAL_SEED = 1234  # the fixed noise/timestep draw of validation (as the adapter data set's before/after loss)


class SubjectLike(Protocol):
    subject_id: str

    def images(self, count: int, size: int, stream: str) -> tuple[np.ndarray, list[str]]: ...


class DenoisingSubjects:
    """Subjects as the denoising loss needs them: VAE latents of their training renders (N, I, C, H, W), each
    render's prompt (an index into one table of text-encoder states, computed once), and their conditions."""

    def __init__(self, latents: Tensor, prompt_ids: Tensor, contexts: Tensor, conditions: dict[str, Tensor],
                 unet: torch.nn.Module, scheduler: Any, prediction: str, renders: int) -> None:  # fmt: skip
        self.latents, self.prompt_ids, self.contexts = latents, prompt_ids, contexts
        self.conditions = conditions
        self.unet, self.scheduler, self.prediction, self.renders = unet, scheduler, prediction, renders

    def __len__(self) -> int:
        return len(self.latents)

    def losses(self, population: Population, rows: Tensor, fixed: bool) -> Tensor:
        from .builder import population_noise_loss

        count, images = len(rows), self.latents.shape[1]
        if fixed:  # the first `renders` images, each subject its own fixed noise
            picks = torch.arange(self.renders).expand(count, -1)
            generators = [torch.Generator().manual_seed(EVAL_SEED + int(row)) for row in rows]
        else:  # global RNG: the loop's checkpoints restore it, so resume stays exact
            picks = torch.rand(count, images).argsort(dim=1)[:, : self.renders]
            seeds = torch.randint(0, 2**62, (count,))
            generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        latents = self.latents[rows[:, None], picks].flatten(0, 1)
        context = self.contexts[self.prompt_ids[rows[:, None], picks].flatten()]
        index = torch.arange(count).repeat_interleave(self.renders)
        losses = population_noise_loss(
            self.unet, self.scheduler, population, latents, context, index, generators, self.prediction
        )
        return losses[:count]


def render_features(sources: Sequence[feats.FeatureSource], subjects: Sequence[SubjectLike], count: int,
                    resolution: int) -> dict[str, Tensor]:  # fmt: skip
    """Each subject's condition (mean features of `count` reference renders), name → (N, D) float64."""
    from ..glyph.world import to_pil

    rows = []
    for subject in subjects:
        arrays, _ = subject.images(count, resolution, "references")
        rows.append(feats.condition(sources, [to_pil(a) for a in arrays]))
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def denoising_subjects(subjects: Sequence[SubjectLike], frozen: Any, sources: Sequence[feats.FeatureSource],
                       unet: torch.nn.Module, settings: HypernetSettings, resolution: int,
                       prediction: str) -> DenoisingSubjects:  # fmt: skip
    """Latents, prompts and conditions of `subjects` (renders are deterministic per subject)."""
    latents, prompt_ids, table = [], [], {}
    for subject in subjects:
        arrays, prompts = subject.images(settings.images, resolution, "train")
        pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # uint8 HWC → [-1, 1] CHW
        latents.append(frozen.latents(pixels.to(unet.device)))
        prompt_ids.append(torch.tensor([table.setdefault(text, len(table)) for text in prompts]))
    texts = list(table)
    contexts = frozen.context(frozen.tokens(texts).to(unet.device))
    conditions = render_features(sources, subjects, settings.references, resolution)
    return DenoisingSubjects(torch.stack(latents), torch.stack(prompt_ids), contexts, conditions, unet,
                             frozen.scheduler, prediction, settings.renders)  # fmt: skip


@dataclass
class Attached:
    """The frozen U-Net with the method's adapter, its population, and what a predicted adapter is written from."""

    unet: torch.nn.Module
    population: Population
    slots: Slots
    keys: list[str]  # the saved key of each slot
    template: dict[str, Tensor]
    adapter_config: dict[str, Any]
    layout: list[LayerLayout]


def attach(unet: torch.nn.Module, adapter: AdapterSettings, size: int) -> Attached:
    """Put the method's adapter on `unet` (frozen), a population of `size` on it, and read the slots and template."""
    from peft import get_peft_model_state_dict

    from ..training.prepare import prepare

    torch.manual_seed(adapter.init_seed)
    prepared = prepare(unet, adapter)
    model = prepared.model.eval()
    population = Population(model, size)
    model.requires_grad_(False)
    slots = Slots.of(population)
    template = {k.removeprefix(WRAPPER_PREFIX): v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    keys = []
    for name in slots.names:
        layer, _, param = name.rpartition(".")
        key = f"{layer.removeprefix(WRAPPER_PREFIX)}{SAVED_INFIX}{param}"
        if key not in template:
            raise ValueError(f"{name}: the saved adapter has no {key}; cannot write predicted adapters")
        keys.append(key)
    layout = discover_layout(model, "default")
    return Attached(model, population, slots, keys, template, model.peft_config["default"].to_dict(), layout)


def train_hypernetwork(
    output_dir: str | Path,
    *,
    train: Sequence[SubjectLike],
    heldout: Sequence[SubjectLike],
    adapter: AdapterSettings,
    choice: FeatureChoice,
    settings: HypernetSettings | None = None,
    train_settings: TrainSettings | None = None,
    model: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    basis: BasisSettings | None = None,
) -> dict[str, Any]:
    """Train (or resume) a hypernetwork for `adapter` on `model` ('glyph-t2i', 'tiny' or a diffusers folder),
    through `basis`'s output basis when it names a data set; returns what `hypernetwork.json` records."""
    from ..diffusion.models import load_pipeline
    from ..diffusion.objective import Frozen
    from ..training.loop import make_accelerator

    settings = settings or HypernetSettings()
    train_settings = train_settings or TrainSettings(steps=1500, batch_size=16, lr=1e-3, warmup=0.0)
    overlap = sorted({s.subject_id for s in train} & {s.subject_id for s in heldout})
    if overlap:
        raise ValueError(f"training and held-out subjects overlap ({', '.join(overlap[:5])}); they must be disjoint")
    if len(train) < train_settings.batch_size:
        raise ValueError(f"{len(train)} training subjects, fewer than one batch of {train_settings.batch_size}")
    source = basis_source(basis, method=adapter.method, heldout=[s.subject_id for s in heldout],
                          init_seed=adapter.init_seed)  # fmt: skip
    started = time.perf_counter()
    pipe = load_pipeline(model_folder(model, choice.cache_dir or "runs/cache"))
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    device = make_accelerator(train_settings.mixed_precision).device  # where `execute` puts the hypernetwork
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(device)
    sources = choice.build(Base(pipe.unet, pipe.vae, resolution, model))
    attached = attach(pipe.unet.to(device), adapter, train_settings.batch_size)
    try:
        output_basis, basis_info = None, None
        if source is not None:
            output_basis, basis_info = fit_basis(source, attached.slots, attached.keys, attached.template,
                                                 attached.layout, pipe.unet)  # fmt: skip
        data = [denoising_subjects(group, frozen, sources, attached.unet, settings, resolution, prediction)
                for group in (train, heldout) if group]  # fmt: skip
        train_data, heldout_data = data[0], (data[1] if len(data) > 1 else None)
        dims = {name: int(value.shape[1]) for name, value in train_data.conditions.items()}
        stats = feature_stats(train_data.conditions)
        task = hypernetwork_task(attached.population, train_data, heldout_data)
        method = adapter.method
        run_config = json.loads(json.dumps({
            "runner": "hypernetwork",
            "model": model,
            "method": method,
            "target_adapter": asdict(adapter),
            "features": asdict(choice),
            "hypernetwork": asdict(settings),
            "train_subjects": [s.subject_id for s in train],
            "heldout_subjects": [s.subject_id for s in heldout],
        }))  # fmt: skip
        if basis_info is not None:  # a run without a basis keeps the config it had before bases existed
            run_config["basis"] = {k: basis_info[k] for k in ("dataset", "size", "whiten", "digest")}
        summary = execute(
            output_dir=output_dir,
            build_model=lambda: Hypernetwork(dims, attached.slots, stats, settings, output_basis),
            adapter=AdapterSettings(method="full", head_modules=[]),
            train_settings=train_settings,
            task=task,
            config=run_config,
            resume=resume,
            overwrite=overwrite,
        )
    finally:
        attached.population.detach()
    root = Path(output_dir)
    save_tensors(attached.template, root / "template.safetensors")
    save_tensors({k: v.contiguous() for k, v in train_data.conditions.items()}, root / "conditions.safetensors")
    net = Hypernetwork(dims, attached.slots, stats, settings, output_basis)
    slot_columns = (attached.slots.names, attached.slots.shapes, attached.keys)
    meta = {
        "format": FORMAT,
        "kind": "hypernetwork",
        "method": method,
        "model": model,
        "adapter_config": attached.adapter_config,
        "layout": layout_to_json(attached.layout),
        "slots": [[n, list(s), k] for n, s, k in zip(*slot_columns, strict=True)],
        "features": asdict(choice),
        "feature_dims": dims,
        "hypernetwork": asdict(settings),
        "basis": basis_info,
        "train_subjects": [s.subject_id for s in train],
        "heldout_subjects": [s.subject_id for s in heldout],
        "sizes": {
            "parameters": sum(p.numel() for p in net.parameters()),
            "predicted_values": attached.slots.size,
            "outputs": output_basis.size if output_basis is not None else attached.slots.size,
            "weights_bytes": (root / "weights" / "model.safetensors").stat().st_size,
            "template_bytes": (root / "template.safetensors").stat().st_size,
        },
        "summary": {k: summary.get(k) for k in ("steps", "train_time_s", "best", "final", "median_step_time_s")},
        "wall_time_s": time.perf_counter() - started,
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    from ..atomic import atomic_write

    atomic_write(root / META, lambda tmp: Path(tmp).write_text(text + "\n"))
    return meta
