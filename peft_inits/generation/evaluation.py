"""Held-out evaluation of a weight generator: does a generated adapter render the subject of its references?

For every held-out subject of a data set, up to six ways to render it, sampled on the same prompts and image seeds:

- `generated`: the generator's adapter from the subject's references (one per generator seed);
- `hypernetwork`: with `hypernetworks`, each end-to-end hypernetwork's zero-shot adapter (one per run, i.e. per
  training seed; `train-hypernetwork`, trained on subjects disjoint from the held-out ones, which is checked);
- `trained`: the subject's adapter trained on its references (the data set's "heldout" adapters: the upper bound);
- `retrieval`: the training adapter whose subject's reference features are nearest (cosine over the generator's
  normalised features): the baseline a hypernetwork must beat;
- `words`: no adapter, the subject described in words: the judge's nearest training-world caption of the
  references (nearest training letter, typeface, variant, colour);
- `none`: no adapter, the adapters' prompt.

Also, without any sampling: each adapter's distance to the subject's trained adapter in the generator's token space
(RMS in training-set std units) for `generated`, `hypernetwork`, `retrieval` and the training mean (token 0) — does
the generator predict the weights better than looking them up? — and, the memorisation check, each generated
adapter's distance to its nearest *training* adapter (a copy of one would be at 0).

Scores (`diffusion/metrics.py` with the glyph judge): subject fidelity (pairwise cosine of sample vs reference
features), prompt fidelity (judged probability of the prompted background) and, for glyph-world subjects with a
plain background among the prompts, shape fidelity (`glyph.shape_fidelity`: the plain prompt's samples vs plain
renders of the subject; no learned features, so a score the feature-conditioned generators cannot game). Each row
is averaged over subjects per *variant* — generator seed (generated), hypernetwork run, data-set seed (trained),
image seed (the deterministic rows) — and reported as mean ± std over variants, with the wall time to produce one
adapter.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..training.fields import setting
from . import features as feats
from .dataset import DatasetEntry, Subject
from .entries import training_data
from .workflow import Base, check_base, generate_tensors, load_generator, model_folder, write_generated

ROWS = ("generated", "hypernetwork", "hypernetwork + fine-tune", "trained", "retrieval", "words", "none")


@dataclass(frozen=True)
class EvalSettings:
    seeds: tuple[int, ...] = setting((0, 1, 2), "generator seeds")
    image_seeds: tuple[int, ...] = setting((0, 1), "image sampling seeds")
    guidance: float = setting(2.0, "generator guidance")
    image_guidance: float = setting(4.0, "image classifier-free guidance")
    sample_steps: int = 25
    prompt_template: str | None = setting(None, "adapter prompt with {background}")
    backgrounds: tuple[str, ...] = ("plain", "brick")
    limit: int | None = setting(None, "at most this many held-out subjects")
    shown_references: int = 4
    prompts: tuple[str, ...] | None = setting(None, "real SD: prompts holding the subject word (not backgrounds)")
    describe: str | None = setting(
        None, "words row: the subject in words, replacing the subject word (default: the judge's caption)"
    )
    class_word: str | None = setting(None, "CLIP-T: the class noun replacing the subject word (DreamBooth's protocol)")
    shape: bool = setting(True, "glyph-shape fidelity of the plain prompt's samples (glyph-world subjects)")
    finetune_steps: int = setting(0, "'hypernetwork + fine-tune' row: steps from each prediction (0: no row)")
    finetune_lr: float | None = setting(None, "that fine-tune's learning rate (default: the data set's)")


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": float(statistics.fmean(values)),
        "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def describe(scorer, references: Sequence[Any], background: str, known: dict[str, Any] | None = None) -> str:
    """The nearest training-world caption of the references: the attributes the data set records for the subject
    (`known`: family, variant, colour — its typeface and colour words), the rest by the judge's mean probabilities
    over training-world values (the glyph itself: the nearest training letter)."""
    from ..glyph.world import Scene, attribute_values

    probabilities = scorer.probabilities(references)
    chosen = {}
    for attribute in ("subject", "family", "variant", "colour"):
        value = (known or {}).get(attribute)
        if attribute != "subject" and value in attribute_values(attribute):
            chosen[attribute] = value
            continue
        classes = scorer.judge.classes[attribute]
        allowed = [classes.index(v) for v in attribute_values(attribute)]
        mean = probabilities[attribute].mean(0)[allowed]
        chosen[attribute] = attribute_values(attribute)[int(mean.argmax())]
    return Scene(background=background, **chosen).caption()


def _nearest_subject(run, condition: dict[str, torch.Tensor]) -> str:
    train = run.normaliser(run.train_conditions())
    query = run.normaliser({k: v[None] for k, v in condition.items()})
    names = list(train)
    bank = torch.cat([F.normalize(train[n].double(), dim=1) for n in names], dim=1)
    vector = torch.cat([F.normalize(query[n].double(), dim=1) for n in names], dim=1)
    return run.meta["train_adapters"][int((bank @ vector.T).squeeze(1).argmax())]


def adapter_tokens(run, directory: Path) -> torch.Tensor:
    """An adapter directory in the generator's token space (normalised units; the training mean is 0)."""
    from ..checkpoint import verify_adapter_dir
    from .entries import WRAPPER_PREFIX
    from .representation import adapter_vectors

    _, tensors = verify_adapter_dir(directory)
    state = {key.removeprefix(WRAPPER_PREFIX): value for key, value in tensors.items()}
    return run.codec.encode([adapter_vectors(run.layout, state, str(directory))])[0]


def token_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """RMS difference over the real coordinates, in normalised units (1 ≈ one training-set std per coordinate)."""
    return float((((a - b) ** 2) * mask).sum() / mask.sum()) ** 0.5


@dataclass
class EvalPlan:
    """What an evaluation renders and how it scores: the generator, the held-out subjects, the pipeline, the prompts."""

    settings: EvalSettings
    out: Path
    run: Any  # the loaded generator (workflow.load_generator)
    dataset: Any  # dataset.AdapterDataset
    subjects: dict[str, list[DatasetEntry]]  # held-out subject id → its trained adapters (one per data-set seed)
    chosen: list[str]
    train_by_name: dict[str, DatasetEntry]
    pipe: Any
    sources: Any  # the generator's feature sources, built on this pipeline
    scorer: Any
    word: str  # the data set's subject word ("sks glyph")
    prompts: list[str]
    prompted: list | None  # what prompt fidelity checks per prompt (judge: backgrounds; CLIP: the text)
    hypernetworks: list[tuple[Any, Any]]  # (hypernetwork_run.HypernetworkRun, its feature sources on this pipeline)
    bank: torch.Tensor  # the training adapters in token space (memorisation check)
    plain: int | None  # which prompt the shape score reads (None: no shape score)
    finetuner: Any = None  # finetune.Finetuner on its own copy of the base, with `finetune_steps`


@dataclass
class SubjectResult:
    """One held-out subject: per row, its scores per variant; the time to each adapter; weight distances."""

    variants: dict[str, list[dict[str, float]]]
    times: dict[str, list[float]]
    distances: dict[str, list[float]]
    detail: dict[str, Any]
    grid_row: list


def evaluate(
    dataset_dir: str | Path,
    generator_dir: str | Path,
    output_dir: str | Path,
    *,
    settings: EvalSettings | None = None,
    model: str | None = None,
    judge: str | None = None,
    cache_dir: str | None = "runs/cache",
    image_encoder: str | None = None,
    clip: str | None = None,
    dino: str | None = None,
    hypernetworks: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Score every row on the held-out subjects; write report.json, report.md and grid.png into `output_dir`.

    Scores come from the glyph judge, or from local CLIP / DINO checkpoints (`clip`, `dino`: real SD), with
    `settings.prompts`, `describe` and `class_word` saying what the prompts, the words row and CLIP-T read."""
    plan = make_plan(
        dataset_dir, generator_dir, output_dir, settings or EvalSettings(), model=model, judge=judge,
        cache_dir=cache_dir, image_encoder=image_encoder, clip=clip, dino=dino, hypernetworks=hypernetworks,
    )  # fmt: skip
    subjects = tqdm(plan.chosen, desc="held-out subjects", unit="subject", dynamic_ncols=True)
    results = [evaluate_subject(plan, subject_id) for subject_id in subjects]
    return write_report(plan, results)


def make_plan(
    dataset_dir: str | Path,
    generator_dir: str | Path,
    output_dir: str | Path,
    settings: EvalSettings,
    *,
    model: str | None,
    judge: str | None,
    cache_dir: str | None,
    image_encoder: str | None,
    clip: str | None,
    dino: str | None,
    hypernetworks: Sequence[str | Path] = (),
) -> EvalPlan:
    """Load the generator, the data set's held-out subjects, the pipeline and the scorer; fix the prompts."""
    from ..diffusion.metrics import ClipDinoScorer, JudgeScorer
    from ..diffusion.models import load_pipeline
    from ..glyph.judge import cached_judge, load_judge
    from ..glyph.world import BACKGROUNDS, HELD_OUT_BACKGROUNDS
    from .workflow import FeatureChoice

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = load_generator(generator_dir)
    dataset = training_data(dataset_dir)
    if dataset.method and dataset.method != run.method:
        raise ValueError(f"{dataset.root} holds {dataset.method} adapters but {run.root} generates {run.method}")
    subjects: dict[str, list[DatasetEntry]] = {}
    for entry in dataset.entries("heldout"):
        subjects.setdefault(entry.subject_id, []).append(entry)
    if not subjects:
        raise ValueError(f"{dataset.root} has no held-out adapters (split 'heldout') to evaluate on")
    chosen = sorted(subjects)[: settings.limit]
    train_by_name = {e.name: e for e in dataset.entries("train")}
    model = model if model is not None else run.meta.get("model")
    pipe = load_pipeline(model_folder(model, cache_dir or "runs/cache"))
    check_base(pipe.unet, run.layout, run.template, f"generator {run.root}")
    base = Base(pipe.unet, pipe.vae, pipe.unet.config.sample_size * pipe.vae_scale_factor, model)
    recorded = run.choice
    sources = FeatureChoice(
        recorded.sources, judge or recorded.judge, recorded.cache_dir, image_encoder or recorded.image_encoder
    ).build(base)
    word = dataset.settings.get("subject_word") or "sks glyph"
    if clip or dino:
        scorer: Any = ClipDinoScorer(clip=clip, dino=dino)
        if not settings.prompts:
            raise ValueError("scoring with CLIP/DINO needs explicit prompts (--prompts) holding the subject word")
        prompts = list(settings.prompts)
        prompted: list | None = None
        if clip:
            prompted = [p.replace(word, settings.class_word or settings.describe or "").strip() for p in prompts]
        if settings.describe is None:
            raise ValueError("without the glyph judge the words row needs --describe (the subject in words)")
    else:
        scorer = JudgeScorer(load_judge(judge)[0] if judge else cached_judge(cache_dir or "runs/cache"))
        phrases = {**BACKGROUNDS, **HELD_OUT_BACKGROUNDS}
        unknown = [b for b in settings.backgrounds if b not in phrases]
        if unknown:
            raise ValueError(f"unknown background(s) {unknown}; known: {', '.join(phrases)}")
        template = settings.prompt_template or dataset.settings.get("prompt_template") or f"a {word} on {{background}}"
        prompts = [template.format(background=phrases[b]) for b in settings.backgrounds]
        prompted = [{"background": b} for b in settings.backgrounds]
    hypers = [_load_hypernetwork(path, run, base, chosen, cache_dir) for path in hypernetworks]
    bank = torch.stack([adapter_tokens(run, e.directory) for e in train_by_name.values()])
    plain = None
    if settings.shape and not (clip or dino) and "plain" in settings.backgrounds:
        plain = list(settings.backgrounds).index("plain")
    finetuner = _finetuner(settings, hypers, dataset, model, cache_dir) if settings.finetune_steps else None
    return EvalPlan(settings, out, run, dataset, subjects, chosen, train_by_name, pipe, sources, scorer, word,
                    prompts, prompted, hypers, bank, plain, finetuner)  # fmt: skip


def _finetuner(settings: EvalSettings, hypers: Sequence[tuple[Any, Any]], dataset, model, cache_dir):
    """The 'hypernetwork + fine-tune' row's trainer: the data set's training settings on a second copy of the base."""
    from ..diffusion.models import load_pipeline
    from .finetune import TRAINING_KEYS, Finetuner, target_adapter

    if settings.finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be >= 0, got {settings.finetune_steps}")
    if not hypers:
        raise ValueError("--finetune-steps fine-tunes the hypernetworks' predictions: pass --hypernetworks")
    missing = [k for k in TRAINING_KEYS if k not in dataset.settings]
    if missing:
        raise ValueError(f"{dataset.root} records no {', '.join(missing)}: it was not built by adapter-dataset, so "
                         "there is no training recipe to fine-tune with")  # fmt: skip
    adapters = {json.dumps(asdict(target_adapter(hyper.root)), sort_keys=True) for hyper, _ in hypers}
    if len(adapters) > 1:
        raise ValueError("the hypernetworks predict different adapter configurations; fine-tune them separately")
    pipe = load_pipeline(model_folder(model, cache_dir or "runs/cache"))
    finetuner = Finetuner.build(pipe, target_adapter(hypers[0][0].root), dataset.settings, size=1)
    if finetuner.attached.slots.names != hypers[0][0].net.slots.names:
        raise ValueError(f"{hypers[0][0].root} predicts other tensors than its adapter configuration trains")
    return finetuner


def _load_hypernetwork(path: str | Path, generator, base: Base, heldout: Sequence[str], cache_dir: str | None):
    """A hypernetwork run and its feature sources, checked against the generator's method, base and adapter layout
    and against the held-out subjects (none may be among its training subjects)."""
    from .hypernetwork_run import load_hypernetwork
    from .workflow import FeatureChoice

    hyper = load_hypernetwork(path)
    if hyper.method != generator.method:
        raise ValueError(
            f"hypernetwork {hyper.root} predicts {hyper.method} adapters; the generator {generator.method}"
        )
    check_base(base.unet, hyper.layout, hyper.template, f"hypernetwork {hyper.root}")
    if hyper.layout != generator.layout:
        raise ValueError(f"hypernetwork {hyper.root} adapts other layers than the generator {generator.root}: "
                         "rows of one evaluation must share the adapter layout")  # fmt: skip
    leaked = sorted(set(heldout) & set(hyper.meta["train_subjects"]))
    if leaked:
        raise ValueError(f"held-out subjects {leaked[:5]} are among hypernetwork {hyper.root}'s training subjects")
    recorded = hyper.choice
    choice = FeatureChoice(recorded.sources, recorded.judge, recorded.cache_dir or cache_dir, recorded.image_encoder)
    return hyper, choice.build(base)


def render_rows(plan: EvalPlan, adapter: Path | None, texts: Sequence[str], tag: str) -> list[list]:
    """Every prompt × image seed with `adapter` (None: the base model); the adapter is removed again."""
    from ..diffusion.composition import Placement, apply_placements, load_named_adapter
    from ..diffusion.sampling import generate

    unet, settings = plan.pipe.unet, plan.settings
    if adapter is not None:
        load_named_adapter(unet, adapter, tag)
        apply_placements(unet, [Placement(tag)])
    else:
        apply_placements(unet, [])
    try:
        return generate(
            plan.pipe, texts, settings.image_seeds, steps=settings.sample_steps, guidance=settings.image_guidance
        )
    finally:
        if adapter is not None:
            unet.delete_adapters(tag)


def score_rows(
    plan: EvalPlan, rows: list[list], reference_features: torch.Tensor, shape_references: Sequence | None = None
) -> list[dict[str, float]]:
    """Per image seed: subject and prompt fidelity over that seed's images (every prompt); shape fidelity of its
    plain-prompt image when `shape_references` are given."""
    from ..diffusion.metrics import subject_fidelity
    from ..glyph.shape_fidelity import shape_fidelity

    result = []
    for column, _ in enumerate(plan.settings.image_seeds):
        images = [row[column] for row in rows]
        values = {"subject_fidelity": subject_fidelity(plan.scorer.features(images), reference_features)}
        if plan.prompted is not None:
            values["prompt_fidelity"] = float(plan.scorer.prompt_scores(images, plan.prompted).double().mean())
        if shape_references is not None and plan.plain is not None:
            values["shape_fidelity"] = shape_fidelity([rows[plan.plain][column]], shape_references)
        result.append(values)
    return result


def _finetune(plan: EvalPlan, values: torch.Tensor, subject: Subject | None, name: str, out: Path) -> Path:
    """A prediction (1, P) for `subject`, fine-tuned `finetune_steps` steps on its renders."""
    settings, finetuner = plan.settings, plan.finetuner
    if subject is None:
        raise ValueError(f"{name}: not a glyph-world subject, so there are no renders to fine-tune on")
    finetuner.start_from(values)
    lr = settings.finetune_lr if settings.finetune_lr is not None else finetuner.settings["lr"]
    finetuner.train(finetuner.chunk([subject]), settings.finetune_steps, lr)
    return finetuner.save(0, out)


def _pooled(per_seed: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(s[k] for s in per_seed) for k in per_seed[0]}


def _shape_references(plan: EvalPlan, subject: Subject | None, size: int) -> list | None:
    """Plain renders of a glyph-world subject for the shape score; None without a plain prompt or for a subject the
    glyph world cannot render (None, e.g. a real-SD data set)."""
    from ..glyph.shape_fidelity import REFERENCE_SEED, plain_references

    if plan.plain is None or subject is None:
        return None
    return list(plain_references(subject, 8, size, REFERENCE_SEED))


def glyph_subject(entry: DatasetEntry) -> Subject | None:
    """The glyph-world subject an entry records (None for one the glyph world cannot render, e.g. real SD)."""
    from ..glyph.world import attribute_values

    look = entry.look or {}
    known = all(look.get(a) in attribute_values(a) + attribute_values(a, True) for a in ("family", "variant", "colour"))
    if not known or len(entry.subject) != 1:
        return None
    return Subject(entry.subject_id, entry.subject, look["family"], look["variant"], look["colour"])


def evaluate_subject(plan: EvalPlan, subject_id: str) -> SubjectResult:
    """Render and score every row for one held-out subject."""
    run, settings, prompts = plan.run, plan.settings, plan.prompts
    entries = plan.subjects[subject_id]
    references = feats.read_references(entries[0].references_dir)
    reference_features = plan.scorer.features(references)
    subject = glyph_subject(entries[0])
    shapes = _shape_references(plan, subject, plan.pipe.unet.config.sample_size * plan.pipe.vae_scale_factor)

    def scored(rows: list[list]) -> list[dict[str, float]]:
        return score_rows(plan, rows, reference_features, shapes)

    began = time.perf_counter()
    condition = feats.condition(plan.sources, references)
    feature_s = time.perf_counter() - began
    variants: dict[str, list[dict[str, float]]] = {}
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    mask = run.codec.mask()
    target = torch.stack([adapter_tokens(run, e.directory) for e in entries]).mean(0)
    distances: dict[str, list[float]] = {}

    def measure(row: str, directory: Path) -> None:
        tokens = adapter_tokens(run, directory)
        distances.setdefault(row, []).append(token_distance(tokens, target, mask))
        nearest = min(token_distance(tokens, stored, mask) for stored in plan.bank)
        distances.setdefault(f"{row}: nearest training adapter", []).append(nearest)

    generated_rows = None
    for seed in settings.seeds:
        began = time.perf_counter()
        state = generate_tensors(run, {k: v[None] for k, v in condition.items()}, guidance=settings.guidance,
                                 seed=seed)[0]  # fmt: skip
        directory = write_generated(run, state, plan.out / "generated" / f"{subject_id}-seed{seed}", {"seed": seed})
        times["generated"].append(feature_s + time.perf_counter() - began)
        measure("generated", directory)
        rows = render_rows(plan, directory, prompts, "generated")
        generated_rows = generated_rows or rows
        variants.setdefault("generated", []).append(_pooled(scored(rows)))
    for index, (hyper, sources) in enumerate(plan.hypernetworks):
        began = time.perf_counter()
        own = condition if sources is plan.sources else feats.condition(sources, references)
        with torch.no_grad():
            values = hyper.net({k: v[None] for k, v in own.items()})
        state = hyper.state_of(values[0])
        directory = hyper.write(state, plan.out / "hypernetwork" / f"{subject_id}-run{index}", {"run": str(hyper.root)})
        times["hypernetwork"].append(time.perf_counter() - began + (feature_s if sources is plan.sources else 0.0))
        measure("hypernetwork", directory)
        variants.setdefault("hypernetwork", []).append(_pooled(scored(render_rows(plan, directory, prompts, "hyper"))))
        if plan.finetuner is not None:
            row = "hypernetwork + fine-tune"
            began = time.perf_counter()
            out = plan.out / "finetuned" / f"{subject_id}-run{index}"
            directory = _finetune(plan, values, subject, entries[0].name, out)
            times[row].append(times["hypernetwork"][-1] + time.perf_counter() - began)
            measure(row, directory)
            variants.setdefault(row, []).append(_pooled(scored(render_rows(plan, directory, prompts, "finetuned"))))
    trained_rows = None
    for entry in entries:
        rows = render_rows(plan, entry.directory, prompts, "trained")
        trained_rows = trained_rows or rows
        variants.setdefault("trained", []).append(_pooled(scored(rows)))
        if entry.train_time_s is not None:
            times["trained"].append(float(entry.train_time_s))
    began = time.perf_counter()
    nearest = plan.train_by_name[_nearest_subject(run, condition)]
    times["retrieval"].append(feature_s + time.perf_counter() - began)
    variants["retrieval"] = scored(render_rows(plan, nearest.directory, prompts, "retrieval"))
    distances["retrieval"] = [token_distance(adapter_tokens(run, nearest.directory), target, mask)]
    distances["training mean"] = [token_distance(torch.zeros_like(target), target, mask)]
    if settings.describe is not None:
        words = [p.replace(plan.word, settings.describe) for p in prompts]
    else:
        words = [describe(plan.scorer, references, b, entries[0].look) for b in settings.backgrounds]
    variants["words"] = scored(render_rows(plan, None, words, "words"))
    times["words"].append(0.0)
    variants["none"] = scored(render_rows(plan, None, prompts, "none"))
    times["none"].append(0.0)
    detail = {
        "subject_id": subject_id,
        "subject": entries[0].subject,
        "retrieved": nearest.name,
        "retrieved_subject": nearest.subject,
        "words": words,
        "scores": variants,
    }
    assert generated_rows is not None and trained_rows is not None
    shown = [image.resize(generated_rows[0][0].size) for image in references[: settings.shown_references]]
    return SubjectResult(variants, times, distances, detail, shown + generated_rows[0] + trained_rows[0])


def summarise(results: Sequence[SubjectResult]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per row: each metric's mean ± std over variants and the mean time to an adapter; per adapter kind: its
    distance to the trained adapter). A variant's value is the mean over subjects."""
    table = {}
    for row in (row for row in ROWS if row in results[0].variants):
        per_subject = [r.variants[row] for r in results]
        variants = min(len(v) for v in per_subject)
        entry: dict[str, Any] = {}
        for metric in per_subject[0][0]:
            per_variant = [statistics.fmean(s[k][metric] for s in per_subject) for k in range(variants)]
            entry[metric] = _mean_std(per_variant)
        times = [t for r in results for t in r.times.get(row, [])]
        entry["time_to_adapter_s"] = statistics.fmean(times) if times else None
        table[row] = entry
    weight_distance = {}
    for kind in results[0].distances:
        per_subject = [r.distances[kind] for r in results]
        variants = min(len(v) for v in per_subject)
        if variants > 1:  # generator seeds: mean over subjects per seed, then mean ± std over seeds
            weight_distance[kind] = _mean_std([statistics.fmean(v[k] for v in per_subject) for k in range(variants)])
        else:  # one adapter per subject: mean ± std over subjects
            weight_distance[kind] = _mean_std([v[0] for v in per_subject])
    return table, weight_distance


def write_report(plan: EvalPlan, results: Sequence[SubjectResult]) -> dict[str, Any]:
    """report.json, report.md and grid.png (references | generated | trained, one row per subject)."""
    from ..diffusion.sampling import save_grid

    settings = plan.settings
    table, weight_distance = summarise(results)
    grid_rows = [r.grid_row for r in results]
    scale = 2 if grid_rows[0][0].size[0] < 64 else 1
    grid_rows = [[image.resize((image.width * scale, image.height * scale)) for image in r] for r in grid_rows]
    grid = save_grid(grid_rows, plan.out / "grid.png", [r.detail["subject_id"] for r in results])
    report = {
        "dataset": str(plan.dataset.root),
        "generator": str(plan.run.root),
        "method": plan.run.method,
        "features": list(plan.run.choice.sources),
        "prompts": plan.prompts,
        "settings": asdict(settings),
        "subjects": len(plan.chosen),
        "generator_size": plan.run.meta["sizes"],
        "table": table,
        "weight_distance": weight_distance,
        "details": [r.detail for r in results],
        "grid": str(grid),
        "grid_columns": f"{settings.shown_references} references | generated (seed {settings.seeds[0]}, prompt 1, "
        f"image seeds {list(settings.image_seeds)}) | trained (first seed, prompt 1)",
    }
    (plan.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    (plan.out / "report.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report's table as Markdown (mean ± std over variants)."""
    size = report["generator_size"]
    metrics = [m for m in next(iter(report["table"].values())) if m != "time_to_adapter_s"]
    lines = [
        f"Held-out subjects: {report['subjects']}, method {report['method']}, features {', '.join(report['features'])};"
        f" generator {size['parameters']:,} parameters ({size['weights_bytes'] / 2**20:.2f} MiB weights).",
        "",
        "| row | " + " | ".join(m.replace("_", " ") for m in metrics) + " | time to adapter (s) |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for row, entry in report["table"].items():
        cells = [f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in metrics]
        seconds = "–" if entry["time_to_adapter_s"] is None else f"{entry['time_to_adapter_s']:.2f}"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {seconds} |")
    lines += [
        "",
        "Distance to the subject's trained adapter in the generator's token space (RMS, training-set std units):",
        "",
        *(f"- {row}: {v['mean']:.3f} ± {v['std']:.3f}" for row, v in report["weight_distance"].items()),
    ]
    return "\n".join(lines) + "\n"
