"""The Block-wise LoRA ablation (arXiv 2403.07500) as one command, measured on the glyph-world model.

For every method and seed: an identity adapter (DreamBooth on a held-out glyph under a rare token, prior
preservation) and a style adapter (a held-out background under another token) are trained with `sd.py train`
(reused when finished: every run resumes), then both are loaded side by side and each row of
`composition.ABLATION_ROWS` (ID only, style only, ID + style on all blocks / upper / middle / lower) is rendered,
applied and merged, for prompts that ask for the subject on the style ("a red serif sks glyph on a zwx wall").
Each row is scored with the glyph judge: subject fidelity against renders of the held-out glyph, style fidelity
against renders of the held-out background, prompt fidelity of the attributes named in words (colour, typeface,
variant), and the judge's top-1 accuracy on subject and background (held-out values are among its classes).

Outputs in the output folder: `table.md` (mean ± std over seeds per row × method, and whether the paper's finding
holds per method), `ablation.json` (every number), `grid.png` (rows = placements, one column group per method, seed-0
adapters), the training runs under `runs/`, per-(method, seed) scores under `scores/` (reused on a rerun).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..diffusion.composition import ABLATION_ROWS, ablation, apply_placements, load_named_adapter, merge_placements
from ..diffusion.models import load_pipeline
from ..diffusion.render import render
from ..glyph.concepts import PROMPT_SEED, GlyphConcept, Prompt, concept_prompts, is_glyph
from ..glyph.scoring import score_samples
from ..glyph.world import World, to_pil
from ..registry import method_names
from ..training.fields import csv_list, setting
from ..training.settings import check_method

METRICS = ("subject_fidelity", "style_fidelity", "prompt_fidelity", "accuracy_subject", "accuracy_background")
HEADERS = ("subject fid.", "style fid.", "prompt fid.", "subject acc.", "style acc.")
BASE_ROW = "no adapter (base model)"
RENDER_ROW = "renders of the prompts (ceiling)"
# The paper's finding, per ID + style placement: (keeps the subject, takes the style).
LEARNED = 0.1  # a single adapter must beat the base model's judged accuracy by this much to count as learned
PAPER = {"ID + style, upper": (True, True), "ID + style, middle": (True, False), "ID + style, lower": (False, False)}


def _methods(text: str) -> tuple[str, ...]:
    """'svfit,loldu' → ("svfit", "loldu"), each checked against the adapter methods and the references."""
    return tuple(check_method(name) for name in csv_list(text))


def _method_lrs(text: str) -> tuple[tuple[str, float], ...]:
    """'svfit=0.2,loldu=5e-3' → (("svfit", 0.2), ("loldu", 0.005)), methods checked against the registry."""
    pairs = [item.split("=", 1) for item in csv_list(text)]
    if any(len(pair) != 2 or pair[0] not in method_names() for pair in pairs):
        raise ValueError(f"expected METHOD=LR pairs with methods from {', '.join(method_names())}")
    try:
        return tuple((name, float(value)) for name, value in pairs)
    except ValueError as exc:
        raise ValueError(f"learning rates must be numbers: {text!r}") from exc


@dataclass(frozen=True)
class AblationSettings:
    """Defaults sized so every registered method × 3 seeds runs in ≤ ~25 min on one CPU thread."""

    methods: tuple[str, ...] | None = setting(None, "default: every registered method", parse=_methods)
    seeds: tuple[int, ...] = setting((0, 1, 2), "adapter training seeds")
    subject: str = setting("♣", "identity concept: a glyph (held out: 2 7 ♣ ♥ Ω § & @)")
    style: str = setting("rings", "style concept: a background (held out: rings waves grid)")
    identity_token: str = "sks"
    style_token: str = "zwx"
    steps: int = setting(200, "identity adapter optimizer steps")
    # the held-out background came out slower than the glyph in probes
    style_steps: int = setting(250, "style adapter optimizer steps")
    lrs: tuple[tuple[str, float], ...] = setting((), "METHOD=LR,… instead of the registered rates", parse=_method_lrs)
    batch_size: int = 4
    images: int = setting(32, "rendered training images per concept", flag="--num-images")
    prompts: int = setting(8, "prompts asking for subject + style", flag="--num-prompts")
    sample_seeds: tuple[int, ...] = (0,)
    sample_steps: int = 25
    guidance: float = 4.0
    references: int = setting(64, "renders per concept for fidelity")

    def concepts(self) -> tuple[GlyphConcept, GlyphConcept]:
        return (
            GlyphConcept.parse(f"glyph:subject={self.subject}", self.identity_token),
            GlyphConcept.parse(f"glyph:background={self.style}", self.style_token),
        )


# ------------------------------------------------------------------------------------------------ one composition


@dataclass
class Composition:
    labels: tuple[str, ...]
    prompts: list[Prompt | str]
    rows: list[list]  # images per row (prompt-major, then seeds)
    scores: list[dict[str, Any]]  # per row; with `both`, also merged scores and the merged − applied pixel gap
    merged_rows: list[list] = field(default_factory=list)


def concept_of(adapter_dir: str | Path) -> GlyphConcept | None:
    """The glyph concept an adapter was trained on, from its run's config.json (None: photos or a folder)."""
    config_path = Path(adapter_dir).parent / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    data = config.get("data")
    return GlyphConcept.parse(data, config.get("token", "sks")) if is_glyph(data) else None


def compose_rows(
    pipe,
    identity_dir: str | Path,
    style_dir: str | Path,
    *,
    prompts: Sequence[str] | None = None,
    num_prompts: int = 4,
    seeds: Sequence[int] = (0,),
    steps: int = 25,
    guidance: float = 4.0,
    merge: bool = False,
    both: bool = False,
    scorer=None,
    weights: Mapping[str, float] | None = None,
    references: int = 64,
    progress=None,
) -> Composition:
    """Render (and score) the six placements of an identity and a style adapter on `pipe`'s U-Net.

    `merge` renders each row with the adapters folded into the weights; `both` renders applied *and* merged and
    records their largest pixel difference per row (`merged_max_pixel_diff`, 0–255), scoring both.
    """
    identity, style = concept_of(identity_dir), concept_of(style_dir)
    if prompts is None:
        if identity is None or style is None:
            raise ValueError("pass --prompts: only glyph-world adapters (sd.py train --data glyph:…) imply prompts")
        chosen: list[Prompt | str] = list(concept_prompts([identity, style], num_prompts))
    else:
        chosen = list(prompts)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    refs = {
        "subject_references": [to_pil(a) for a in identity.references(references, size)] if identity else None,
        "style_references": [to_pil(a) for a in style.references(references, size)] if style else None,
    }
    load_named_adapter(pipe.unet, identity_dir, "identity")
    load_named_adapter(pipe.unet, style_dir, "style")
    texts = [p.text if isinstance(p, Prompt) else p for p in chosen]
    per_image = [p for p in chosen for _ in seeds]
    result = Composition(ABLATION_ROWS, chosen, [], [])
    rows = ablation("identity", "style", weights)
    # Every applied row first: a merge/unmerge round trip that does not restore the base weight exactly (a method
    # bug) then shows up in the merged rows' pixel gap and cannot leak into the applied rows.
    modes = (False, True) if both else (merge,)
    images: dict[bool, list[list]] = {}
    for merged in modes:
        images[merged] = []
        for placements in rows:
            apply_placements(pipe.unet, placements)
            if merged:
                merge_placements(pipe.unet)
            cells = render(pipe, texts, seeds, steps=steps, guidance=guidance, progress=progress)
            images[merged].append([image for row in cells for image in row])
    apply_placements(pipe.unet, [])
    for index, main in enumerate(images[modes[0]]):
        row: dict[str, Any] = score_samples(scorer, main, per_image, **refs) if scorer is not None else {}
        if both:
            merged_images = images[True][index]
            row["merged_max_pixel_diff"] = max_pixel_diff(main, merged_images)
            if scorer is not None:
                row["merged"] = score_samples(scorer, merged_images, per_image, **refs)
            result.merged_rows.append(merged_images)
        result.rows.append(main)
        result.scores.append(row)
    return result


def max_pixel_diff(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Largest |a − b| over every pixel and channel of two equally long image lists (0–255)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} images: compare equally long lists")
    pairs = zip(a, b, strict=True)
    return int(max(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max() for x, y in pairs))


# ------------------------------------------------------------------------------------------------ the whole ablation


def run_ablation(
    settings: AblationSettings,
    output_dir: str | Path,
    *,
    model: str | None = None,
    cache_dir: str | Path | None = None,
    judge: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the adapters, render and score every row × method × seed, write table.md, JSON and grid."""
    from tqdm.auto import tqdm

    from ..glyph.scoring import make_scorer
    from ..glyph.shipped import SHIPPED, model_path
    from ..registry import method_names

    started = time.perf_counter()
    out = Path(output_dir)
    methods = list(settings.methods or method_names())
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {', '.join(method_names())}")
    identity, style = settings.concepts()
    scorer, note = make_scorer(judge=judge, cache_dir=cache_dir, glyph_model=True, progress=progress)
    record = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    record.update(methods=methods, model=model or SHIPPED)
    record = json.loads(json.dumps(record))  # as saved, so a rerun's comparison with the saved scores is exact
    jobs = [(m, s) for m in methods for s in settings.seeds]
    per_job_images = len(ABLATION_ROWS) * 2 * settings.prompts * len(settings.sample_seeds)
    train_bar = tqdm(total=2 * len(jobs), desc="adapters", disable=not progress, unit="run")
    render_bar = tqdm(total=len(jobs) * per_job_images, desc="rows", disable=not progress, unit="img")
    scores: dict[str, dict[str, Any]] = {}
    kept_images: dict[str, list[list]] = {}
    reused = 0
    try:
        for method, seed in jobs:
            dirs = {}
            for role, concept in (("identity", identity), ("style", style)):
                dirs[role] = out / "runs" / f"{method}-s{seed}-{role}"
                train_concept(
                    settings, concept, method, seed, dirs[role], model=model, cache_dir=cache_dir, judge=judge
                )
                train_bar.update(1)
            key = f"{method}-s{seed}"
            cached = _cached_scores(out / "scores" / f"{key}.json", record)
            if cached is not None:
                reused += 1
                scores[key] = cached
                if seed == settings.seeds[0]:
                    kept_images[method] = _load_cells(out / "cells" / key, len(ABLATION_ROWS))
                render_bar.update(per_job_images)
                continue
            pipe = load_pipeline(model_path(model, cache_dir))
            composition = compose_rows(
                pipe, dirs["identity"] / "weights", dirs["style"] / "weights", num_prompts=settings.prompts,
                seeds=settings.sample_seeds, steps=settings.sample_steps, guidance=settings.guidance, both=True,
                scorer=scorer, references=settings.references, progress=render_bar,
            )  # fmt: skip
            _save_cells(out / "cells" / key, composition.rows)
            scores[key] = {"settings": record, "rows": dict(zip(ABLATION_ROWS, composition.scores, strict=True))}
            _write_json(out / "scores" / f"{key}.json", scores[key])  # last: it marks the job done
            if seed == settings.seeds[0]:
                kept_images[method] = composition.rows
    finally:
        train_bar.close()
        render_bar.close()
    references = _reference_rows(settings, model, cache_dir, scorer)
    summary = summarise(scores, methods, settings.seeds)
    report = {
        "command": "python experiments/sd.py ablation",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": record,
        "scorer": note,
        "wall_time_s": time.perf_counter() - started,
        "reused_jobs": reused,
        "jobs": len(jobs),
        "summary": summary,
        "references": {name: row["scores"] for name, row in references.items()},
        "verdict": verdicts(summary, methods, references[BASE_ROW]["scores"], references[RENDER_ROW]["scores"]),
        "runs": scores,
    }
    _write_json(out / "ablation.json", report)
    table = markdown(report, methods)
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(table))
    ablation_grid(kept_images, methods, references[BASE_ROW]["images"], out / "grid.png")
    return report


def train_concept(
    settings: AblationSettings,
    concept: GlyphConcept,
    method: str,
    seed: int,
    run_dir: Path,
    *,
    model: str | None,
    cache_dir: str | Path | None,
    judge: str | Path | None,
) -> dict[str, Any]:
    """One adapter of the ablation (identity or style), trained — or found finished — in `run_dir` with the SD
    runner's settings for this model: `sd train --data CONCEPT --seed S --init-seed S --resume`."""
    from ..diffusion.train import SampleSettings
    from ..glyph.personalize import train_concept_adapter
    from ..glyph.shipped import runner_family
    from ..training.settings import AdapterSettings, TrainSettings

    steps = settings.steps if concept.attribute == "subject" else settings.style_steps
    train = TrainSettings(
        steps=steps, batch_size=settings.batch_size, lr=dict(settings.lrs).get(method), head_lr=0.0, warmup=0.0,
        eval_every=steps, save_every=steps, seed=seed, progress=False,
    )  # fmt: skip
    adapter = AdapterSettings(method=method, head_modules=[], init_seed=seed, family=runner_family(model))
    return train_concept_adapter(
        concept, adapter, train, run_dir, model=model, cache_dir=cache_dir, judge=judge, num_images=settings.images,
        num_prompts=2, sample=SampleSettings(seeds=(0,), steps=settings.sample_steps, guidance=settings.guidance),
        resume=True,
    )  # fmt: skip


def _save_cells(folder: Path, rows: list[list]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            atomic_write(folder / f"row{r}-{c:03d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))


def _load_cells(folder: Path, count: int) -> list[list]:
    from PIL import Image

    rows = []
    for r in range(count):
        files = sorted(folder.glob(f"row{r}-*.png"))
        if not files:
            raise FileNotFoundError(f"{folder} lacks the images of row {r}: delete {folder.parent.parent / 'scores'}")
        rows.append([Image.open(f).convert("RGB") for f in files])
    return rows


def _cached_scores(path: Path, record: dict) -> dict | None:
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("settings") == record else None


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _reference_rows(settings, model, cache_dir, scorer) -> dict[str, dict[str, Any]]:
    """The base model on the same prompts (no adapter knows the tokens) and renders of the prompted scenes."""
    from ..glyph.shipped import model_path

    identity, style = settings.concepts()
    pipe = load_pipeline(model_path(model, cache_dir))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompts = concept_prompts([identity, style], settings.prompts)
    per_image = [p for p in prompts for _ in settings.sample_seeds]
    refs = {
        "subject_references": [to_pil(a) for a in identity.references(settings.references, size)],
        "style_references": [to_pil(a) for a in style.references(settings.references, size)],
    }
    cells = render(pipe, [p.text for p in prompts], settings.sample_seeds, steps=settings.sample_steps,
                   guidance=settings.guidance)  # fmt: skip
    base = [image for row in cells for image in row]
    renders = World(seed=PROMPT_SEED, size=size, subjects=(identity.value,), backgrounds=(style.value,))
    rendered = [to_pil(a) for a in renders.images(settings.prompts)[0] for _ in settings.sample_seeds]
    return {
        BASE_ROW: {"images": base, "scores": score_samples(scorer, base, per_image, **refs)},
        RENDER_ROW: {"images": rendered, "scores": score_samples(scorer, rendered, per_image, **refs)},
    }


# ------------------------------------------------------------------------------------------------ aggregation


def summarise(scores: Mapping[str, Mapping[str, Any]], methods: Sequence[str], seeds: Sequence[int]) -> dict:
    """{row: {method: {metric: {'mean', 'std', 'n'}}}} over seeds (std with ddof=1; 0 for one seed)."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for row in ABLATION_ROWS:
        summary[row] = {}
        for method in methods:
            per_seed = [scores[f"{method}-s{s}"]["rows"][row] for s in seeds]
            metrics = [*METRICS, "diversity", "gram_distance", "merged_max_pixel_diff"]
            summary[row][method] = {m: _stats([r[m] for r in per_seed if m in r]) for m in metrics}
    return summary


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size)}


def verdict(
    summary: Mapping[str, Any],
    methods: Sequence[str],
    base: Mapping[str, float],
    measures: tuple[str, str] = ("subject_fidelity", "style_fidelity"),
) -> dict[str, Any]:
    """Per method and ID + style placement: does it keep the subject / take the style, and does that match the paper?

    `measures` = (subject measure, style measure): the fidelities (default) or the judge's accuracies. A row keeps the
    subject when its subject measure is at least half-way from the base model's to the ID-only row's; it takes the
    style when its style measure is at least half-way from the base model's to the style-only row's (seed means).
    When the single adapter beats the base model by less than `LEARNED` of that measure's base-to-ceiling range,
    there is nothing to keep or take and the answer is None.
    """
    out: dict[str, Any] = {}
    for method in methods:
        means = {row: {m: v["mean"] for m, v in summary[row][method].items()} for row in ABLATION_ROWS}
        bars = {}
        for metric, single in zip(measures, ("ID only", "style only"), strict=True):
            learned = means[single][metric] - base[metric] >= LEARNED * abs(
                base.get(f"ceiling_{metric}", 1.0) - base[metric]
            )
            bars[metric] = (base[metric] + means[single][metric]) / 2 if learned else None
        rows = {}
        for row, expected in PAPER.items():
            found = tuple(None if bars[m] is None else bool(means[row][m] >= bars[m]) for m in measures)
            matches = None if None in found else found == expected
            rows[row] = {
                "keeps_subject": found[0],
                "takes_style": found[1],
                "paper": list(expected),
                "matches": matches,
            }
        results = [r["matches"] for r in rows.values()]
        out[method] = {
            "measures": list(measures),
            "subject_bar": bars[measures[0]],
            "style_bar": bars[measures[1]],
            "rows": rows,
            "reproduces": None if None in results else all(results),
        }
    return out


VERDICTS = {"fidelity": ("subject_fidelity", "style_fidelity"), "accuracy": ("accuracy_subject", "accuracy_background")}


def verdicts(
    summary: Mapping[str, Any], methods: Sequence[str], base: Mapping[str, float], ceiling: Mapping[str, float]
):
    """The verdict by fidelities and by judged accuracies (the learned-or-not margin is relative to the renders)."""
    framed = {**base, **{f"ceiling_{m}": ceiling[m] for m in METRICS}}
    return {name: verdict(summary, methods, framed, measures) for name, measures in VERDICTS.items()}


def markdown(report: Mapping[str, Any], methods: Sequence[str]) -> str:
    """The table (mean ± std over seeds) with the reference rows, and the per-method verdicts."""
    summary, seeds = report["summary"], report["settings"]["seeds"]
    lines = [
        f"Block-wise LoRA ablation on the glyph-world model ({report['date']}, {report['wall_time_s'] / 60:.1f} min; "
        f"{report['reused_jobs']} of {report['jobs']} (method, seed) jobs reused from an earlier run):",
        f"mean ± std over seeds {', '.join(map(str, seeds))}; {report['scorer']}.",
        "",
        "| row | method | " + " | ".join(HEADERS) + " | merged − applied (max px) |",
        "|---|---|" + "---|" * (len(HEADERS) + 1),
    ]
    for row in ABLATION_ROWS:
        for method in methods:
            cells = summary[row][method]
            numbers = [f"{cells[m]['mean']:.3f} ± {cells[m]['std']:.3f}" for m in METRICS]
            gap = cells["merged_max_pixel_diff"]
            lines.append(f"| {row} | {method} | " + " | ".join(numbers) + f" | {gap['mean']:.1f} |")
    for name, row_scores in report["references"].items():
        lines.append(f"| {name} | – | " + " | ".join(f"{row_scores[m]:.3f}" for m in METRICS) + " | – |")
    combined = [row for row in ABLATION_ROWS if row.startswith("ID + style")]
    lines += ["", "Share of the single adapter's effect that each ID + style row keeps (subject fidelity: (row − style "
              "only) / (ID only − style only); style fidelity: (row − ID only) / (style only − ID only); seed means):",
              "", "| method | " + " | ".join(f"{r.split(', ')[1]}: subject, style" for r in combined) + " |",
              "|---|" + "---|" * len(combined)]  # fmt: skip
    for method in methods:
        shares = [effect_shares(summary, method, row) for row in combined]
        lines.append(f"| {method} | " + " | ".join(f"{a:.2f}, {b:.2f}" for a, b in shares) + " |")
    mark = {True: "yes", False: "no", None: "–"}
    placements = " | ".join(f"{p}: subject, style" for p in ("upper", "middle", "lower"))
    for name, found_by_method in report["verdict"].items():
        lines += ["", f"By {name} ({' / '.join(VERDICTS[name])}):", "",
                  f"| method | {placements} | paper reproduces |", "|---|---|---|---|---|"]  # fmt: skip
        for method in methods:
            found = found_by_method[method]
            cells = [
                f"{mark[r['keeps_subject']]}, {mark[r['takes_style']]}" + (" ✗" if r["matches"] is False else "")
                for r in found["rows"].values()
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {mark[found['reproduces']]} |")
    lines += [
        "",
        "Paper (arXiv 2403.07500): upper = yes, yes; middle = yes, no; lower = no, no. A row keeps the subject when",
        "its subject measure is at least half-way from the base model's to ID only's, and takes the style likewise",
        "(style measure, base → style only); ✗ marks a placement that differs from the paper; – : the single adapter",
        f"beat the base model by less than {LEARNED:.0%} of the base-to-renders range: nothing to keep or take.",
        "",
    ]
    return "\n".join(lines)


def effect_shares(summary: Mapping[str, Any], method: str, row: str) -> tuple[float, float]:
    """(subject, style) share of the single adapter's fidelity gain over the other adapter alone that `row` keeps."""
    mean = {r: {m: summary[r][method][m]["mean"] for m in ("subject_fidelity", "style_fidelity")} for r in summary}
    identity, style, here = mean["ID only"], mean["style only"], mean[row]
    subject_gap = identity["subject_fidelity"] - style["subject_fidelity"]
    style_gap = style["style_fidelity"] - identity["style_fidelity"]
    return (
        (here["subject_fidelity"] - style["subject_fidelity"]) / subject_gap if subject_gap else float("nan"),
        (here["style_fidelity"] - identity["style_fidelity"]) / style_gap if style_gap else float("nan"),
    )


def ablation_grid(images: Mapping[str, list[list]], methods: Sequence[str], base: list, path: Path) -> Path:
    """Rows = the base model, then the placements; one column group per method (seed-0 adapters), 2× upscaled."""
    from PIL import Image, ImageDraw

    shown = [m for m in methods if m in images]
    if not shown:
        return path
    cell = base[0].size[0] * 2
    count = len(base)
    label, gap, header = 150, cell // 4, 16
    width = label + len(shown) * (count * cell + gap)
    labels = (BASE_ROW, *ABLATION_ROWS)
    sheet = Image.new("RGB", (width, header + len(labels) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for g, method in enumerate(shown):
        left = label + g * (count * cell + gap)
        draw.text((left + 2, 2), method, fill="black")
        for r, row in enumerate([base, *images[method]]):
            for c, image in enumerate(row):
                sheet.paste(image.resize((cell, cell), Image.NEAREST), (left + c * cell, header + r * cell))
    for r, text in enumerate(labels):
        draw.text((4, header + r * cell + cell // 2 - 6), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path
