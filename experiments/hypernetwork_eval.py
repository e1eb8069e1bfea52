"""Held-out evaluation of end-to-end hypernetworks (issue 22): zero-shot adapters vs retrieval, none and trained.

    python experiments/hypernetwork_eval.py --dataset runs/data/adapters-svfit \
        --hypernetworks runs/hyper-svfit-s0,runs/hyper-svfit-s1 --output-dir runs/hyper-svfit-eval

For every held-out subject of the adapter data set (disjoint from the hypernetworks' training subjects, which is
checked), rows on the same prompts and image seeds:

- `hypernetwork` (one per run, i.e. per training seed): the adapter predicted from the subject's references;
- `retrieval`: the data set's adapter of the training subject whose reference features are nearest (cosine over the
  hypernetwork's normalised features), restricted to the hypernetwork's own training subjects;
- `trained`: the subject's own trained adapters (split `heldout`); `none`: the base model;
- with `--mean-row`, `training mean`: the mean of the retrieval bank's adapters (what a hypernetwork with an output
  basis and its shift predicts before training; docs/hypernetwork_lora_basis.md).

Two subject-fidelity scores: the judge's (pairwise cosine of judge features, sample vs the subject's references, as
`generation-eval`) and glyph shape (`diffusion.shape_fidelity`: canonical foreground-mask IoU of the plain-background
prompt's samples vs plain-background renders of the subject; no learned features). Per subject each row's scores
are averaged over prompts and image seeds; rows are compared pairwise over subjects (mean paired difference ± s.e.m.,
wins). Also: seconds per zero-shot adapter (features + forward + write) and, with no sampling, each adapter's
distance (RMS over the trained values in training-set std units) to the subject's trained adapter and to the nearest
training adapter (memorisation check). Writes report.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from peft_inits.cli import args as cli
from peft_inits.generation import features as feats
from peft_inits.generation.dataset import Subject
from peft_inits.generation.entries import training_data
from peft_inits.generation.hypernetwork_basis import adapter_vector
from peft_inits.generation.hypernetwork_run import load_hypernetwork
from peft_inits.generation.workflow import Base, check_base, model_folder
from peft_inits.glyph.shape_fidelity import plain_references, shape_fidelity

SHAPE_SEED = 778  # plain-background references for the shape score: a stream no training or reference image uses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--hypernetworks", type=cli.csv_list, required=True, help="run folders (training seeds)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--image-seeds", type=lambda t: [int(s) for s in cli.csv_list(t)], default=[0, 1])
    parser.add_argument("--backgrounds", type=cli.csv_list, default=["plain", "brick"], help="first must be plain")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--image-guidance", type=float, default=4.0)
    parser.add_argument("--limit", type=int, default=None, help="at most this many held-out subjects")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--mean-row", action="store_true", help="also sample the training adapters' mean")
    return parser.parse_args(argv)


def _paired(a: list[float], b: list[float]) -> dict[str, float]:
    differences = [x - y for x, y in zip(a, b, strict=True)]
    sem = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
    return {"mean": statistics.fmean(differences), "sem": sem, "wins": sum(d > 0 for d in differences),
            "n": len(differences)}  # fmt: skip


def main(args: argparse.Namespace) -> dict[str, Any]:
    from peft_inits.diffusion.composition import Placement, apply_placements, load_named_adapter
    from peft_inits.diffusion.metrics import JudgeScorer, subject_fidelity
    from peft_inits.diffusion.models import load_pipeline
    from peft_inits.diffusion.sampling import dpmpp_2m_karras
    from peft_inits.glyph.judge import cached_judge
    from peft_inits.glyph.world import BACKGROUNDS

    if args.backgrounds[0] != "plain":
        raise ValueError("the first --backgrounds entry must be plain: the shape score reads its samples")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = training_data(args.dataset)
    runs = [load_hypernetwork(path) for path in args.hypernetworks]
    for run in runs:
        if run.method != dataset.method:
            raise ValueError(f"{run.root} predicts {run.method} adapters but {dataset.root} holds {dataset.method}")
    trained_on = set(runs[0].meta["train_subjects"])
    if any(set(run.meta["train_subjects"]) != trained_on for run in runs):
        raise ValueError("the hypernetworks were trained on different subjects; compare runs of one split")
    heldout: dict[str, list] = {}
    for entry in dataset.entries("heldout"):
        heldout.setdefault(entry.subject_id, []).append(entry)
    leaked = sorted(set(heldout) & trained_on)
    if leaked:
        raise ValueError(f"held-out subjects {leaked[:5]} are among the hypernetworks' training subjects")
    chosen = sorted(heldout)[: args.limit]
    bank = {e.subject_id: e for e in dataset.entries("train") if e.subject_id in trained_on and e.seed == 0}
    pipe = load_pipeline(model_folder(runs[0].meta.get("model"), args.cache_dir))
    for run in runs:
        check_base(pipe.unet, run.layout, run.template, f"hypernetwork {run.root}")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    sources = runs[0].choice.build(Base(pipe.unet, pipe.vae, resolution, runs[0].meta.get("model")))
    scorer = JudgeScorer(cached_judge(args.cache_dir))
    prompts = [f"a sks glyph on {BACKGROUNDS[b]}" for b in args.backgrounds]

    # retrieval: the hypernetwork's normalised features, cosine per source, over its training subjects in the bank
    net = runs[0].net
    train_conditions = runs[0].train_conditions()
    names = [s for s in runs[0].meta["train_subjects"] if s in bank]
    rows = [runs[0].meta["train_subjects"].index(s) for s in names]
    retrieval = len(names) >= 2  # a data set of held-out adapters only: no retrieval row, no weight distances

    def normalised(conditions: dict[str, torch.Tensor]) -> torch.Tensor:
        x = net.normalised({k: v.float() for k, v in conditions.items()})
        widths = [net.state_dict()[f"mean_{i}"].numel() for i in range(len(net.sources))]
        return torch.cat([F.normalize(part, dim=1) for part in x.split(widths, dim=1)], dim=1)

    keys_bank = normalised({k: v[rows] for k, v in train_conditions.items()}) if retrieval else None

    def sample(adapter: Path | None) -> list[list]:
        """images[prompt][seed], one batched pipeline call (each image its own seeded generator)."""
        if adapter is not None:
            load_named_adapter(pipe.unet, adapter, "row")
            apply_placements(pipe.unet, [Placement("row")])
        else:
            apply_placements(pipe.unet, [])
        original, pipe.scheduler = pipe.scheduler, dpmpp_2m_karras(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        try:
            texts = [p for p in prompts for _ in args.image_seeds]
            generators = [torch.Generator().manual_seed(s) for _ in prompts for s in args.image_seeds]
            images = pipe(
                texts,
                num_inference_steps=args.sample_steps,
                guidance_scale=args.image_guidance,
                height=resolution,
                width=resolution,
                generator=generators,
                output_type="pil",
            ).images
        finally:
            pipe.scheduler = original
            if adapter is not None:
                pipe.unet.delete_adapters("row")
        seeds = len(args.image_seeds)
        return [images[i * seeds : (i + 1) * seeds] for i in range(len(prompts))]

    vectors_bank = {s: adapter_vector(bank[s].directory, runs[0].keys) for s in names}
    if retrieval:
        stacked = torch.stack(list(vectors_bank.values()))
        mean, std = stacked.mean(0), stacked.std(0).clamp_min(1e-12)
    mean_adapter = None
    if args.mean_row:
        if not retrieval:
            raise ValueError("--mean-row needs the data set's training adapters (the retrieval bank)")
        info = {"row": "training mean", "adapters": len(names)}
        mean_adapter = runs[0].write(runs[0].state_of(mean.float()), out / "adapters" / "training-mean", info)

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((((a - b) / std) ** 2).mean().sqrt())

    scores: dict[str, dict[str, list[float]]] = {}
    distances: dict[str, list[float]] = {}
    times: list[float] = []
    details = []
    began_all = time.perf_counter()
    for number, subject_id in enumerate(chosen, start=1):
        entries = heldout[subject_id]
        first = entries[0]
        subject = Subject(subject_id, first.subject, first.family, first.variant, first.colour)
        references = feats.read_references(first.references_dir)
        reference_features = scorer.features(references)
        shape_references = list(plain_references(subject, 8, resolution, SHAPE_SEED))
        began = time.perf_counter()
        condition = {k: v[None] for k, v in feats.condition(sources, references).items()}
        feature_s = time.perf_counter() - began
        own = torch.stack([adapter_vector(e.directory, runs[0].keys) for e in entries]).mean(0)
        adapters: dict[str, Path | None] = {}
        for k, run in enumerate(runs):
            began = time.perf_counter()
            state = run.states(condition)[0]
            directory = run.write(state, out / "adapters" / f"hypernetwork-{k}" / subject_id, {"subject": subject_id})
            times.append(feature_s + time.perf_counter() - began)
            adapters[f"hypernetwork-{k}"] = directory
            if retrieval:
                vector = adapter_vector(directory, run.keys)
                nearest = min(distance(vector, v) for v in vectors_bank.values())
                distances.setdefault("hypernetwork: to own trained", []).append(distance(vector, own))
                distances.setdefault("hypernetwork: to nearest training adapter", []).append(nearest)
        retrieved = None
        if retrieval:
            similarity = keys_bank @ normalised(condition).T
            retrieved = names[int(similarity.squeeze(1).argmax())]
            adapters["retrieval"] = bank[retrieved].directory
            distances.setdefault("retrieval: to own trained", []).append(distance(vectors_bank[retrieved], own))
            distances.setdefault("training mean: to own trained", []).append(distance(mean, own))
        if mean_adapter is not None:
            adapters["training mean"] = mean_adapter
        for index, entry in enumerate(entries):
            adapters[f"trained-{index}"] = entry.directory
        adapters["none"] = None
        subject_scores = {}
        for row, directory in adapters.items():
            images = sample(directory)
            flat = [image for prompt_row in images for image in prompt_row]
            judge = subject_fidelity(scorer.features(flat), reference_features)
            shape = shape_fidelity(images[0], shape_references)
            subject_scores[row] = {"judge": judge, "shape": shape}
        trained = [v for row, v in subject_scores.items() if row.startswith("trained-")]
        merged = {row: v for row, v in subject_scores.items() if not row.startswith("trained-")}
        merged["trained"] = {m: statistics.fmean(v[m] for v in trained) for m in ("judge", "shape")}  # seeds' mean
        for row, value in merged.items():
            for metric, score in value.items():
                scores.setdefault(row, {"judge": [], "shape": []})[metric].append(score)
        details.append({"subject_id": subject_id, "glyph": first.subject, "retrieved": retrieved,
                        "scores": subject_scores})  # fmt: skip
        elapsed = time.perf_counter() - began_all
        print(f"{number}/{len(chosen)} {subject_id}: " + ", ".join(
            f"{row} {v['judge']:.3f}/{v['shape']:.3f}" for row, v in subject_scores.items()) + f" ({elapsed:.0f} s)",
            flush=True)  # fmt: skip

    hyper_rows = [f"hypernetwork-{k}" for k in range(len(runs))]
    per_subject = {row: value for row, value in scores.items()}
    per_subject["hypernetwork (mean over seeds)"] = {
        metric: [statistics.fmean(scores[r][metric][i] for r in hyper_rows) for i in range(len(chosen))]
        for metric in ("judge", "shape")
    }
    table = {
        row: {metric: {"mean": statistics.fmean(values),
                       "sem": statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0}
              for metric, values in value.items()}
        for row, value in per_subject.items()
    }  # fmt: skip
    seed_means = {m: [statistics.fmean(scores[r][m]) for r in hyper_rows] for m in ("judge", "shape")}
    hyper = per_subject["hypernetwork (mean over seeds)"]
    paired = {
        f"hypernetwork vs {other}": {m: _paired(hyper[m], per_subject[other][m]) for m in ("judge", "shape")}
        for other in ("none", "retrieval", "trained", "training mean")
        if other in per_subject
    }
    paired["trained vs none"] = {
        m: _paired(per_subject["trained"][m], per_subject["none"][m]) for m in ("judge", "shape")
    }
    report = {
        "dataset": str(dataset.root),
        "hypernetworks": [str(r.root) for r in runs],
        "method": dataset.method,
        "subjects": len(chosen),
        "training_subjects": len(trained_on),
        "retrieval_bank": len(names) if retrieval else 0,
        "prompts": prompts,
        "image_seeds": args.image_seeds,
        "table": table,
        "hypernetwork_seed_means": {m: {"values": v, "spread": max(v) - min(v)} for m, v in seed_means.items()},
        "paired": paired,
        "seconds_per_zero_shot_adapter": {"median": statistics.median(times), "max": max(times), "n": len(times)},
        "weight_distance": {
            k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for k, v in distances.items()
        },
        "sizes": runs[0].meta["sizes"],
        "details": details,
        "wall_time_s": time.perf_counter() - began_all,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['method']}: {report['subjects']} held-out subjects, hypernetworks trained on "
        f"{report['training_subjects']} subjects ({len(report['hypernetworks'])} seeds), retrieval bank "
        f"{report['retrieval_bank']}; per-subject means over {len(report['prompts'])} prompts × "
        f"{len(report['image_seeds'])} image seeds (shape: the plain prompt's samples).",
        "",
        "| row | judge subject fidelity | shape fidelity |",
        "|---|---|---|",
    ]
    for row, entry in report["table"].items():
        lines.append(f"| {row} | {entry['judge']['mean']:.3f} ± {entry['judge']['sem']:.3f} | "
                     f"{entry['shape']['mean']:.3f} ± {entry['shape']['sem']:.3f} |")  # fmt: skip
    lines += ["", "(± s.e.m. over subjects)", "", "| paired over subjects | judge: mean diff ± s.e.m. (wins) | "
              "shape: mean diff ± s.e.m. (wins) |", "|---|---|---|"]  # fmt: skip
    for name, entry in report["paired"].items():
        cells = [f"{entry[m]['mean']:+.3f} ± {entry[m]['sem']:.3f} ({entry[m]['wins']}/{entry[m]['n']})"
                 for m in ("judge", "shape")]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    spread = report["hypernetwork_seed_means"]
    seconds = report["seconds_per_zero_shot_adapter"]
    lines += [
        "",
        f"Hypernetwork seed means: judge {[round(v, 3) for v in spread['judge']['values']]} (spread "
        f"{spread['judge']['spread']:.3f}), shape {[round(v, 3) for v in spread['shape']['values']]} (spread "
        f"{spread['shape']['spread']:.3f}).",
        f"Zero-shot adapter (features + forward + write, in process): median {seconds['median']:.3f} s, "
        f"max {seconds['max']:.3f} s over {seconds['n']}.",
        "",
        "Weight distance (RMS over trained values, training-set std units):",
        "",
        *(f"- {k}: {v['mean']:.3f} ± {v['std']:.3f}" for k, v in report["weight_distance"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    cli.run_script(main, parse_args)
