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

from peft_inits.cli import args as cli
from peft_inits.generation import features as feats
from peft_inits.generation.dataset import Subject
from peft_inits.generation.entries import training_data
from peft_inits.generation.heldout import (
    SCORES,
    HeldoutSampler,
    Retrieval,
    SubjectScorer,
    mean_sem,
)
from peft_inits.generation.heldout import paired as paired_difference
from peft_inits.generation.hypernetwork_basis import adapter_vector
from peft_inits.generation.hypernetwork_run import load_hypernetwork
from peft_inits.generation.workflow import Base, check_base, model_folder


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


def main(args: argparse.Namespace) -> dict[str, Any]:
    from peft_inits.diffusion.metrics import JudgeScorer
    from peft_inits.diffusion.models import load_pipeline
    from peft_inits.glyph.judge import cached_judge

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
    sampler = HeldoutSampler(pipe, args.backgrounds, args.image_seeds, args.sample_steps, args.image_guidance)
    sources = runs[0].choice.build(Base(pipe.unet, pipe.vae, resolution, runs[0].meta.get("model")))
    judge = JudgeScorer(cached_judge(args.cache_dir))
    names = [s for s in runs[0].meta["train_subjects"] if s in bank]
    retrieval = Retrieval(runs[0], names) if len(names) >= 2 else None  # held-out adapters only: no retrieval row

    vectors_bank = {s: adapter_vector(bank[s].directory, runs[0].keys) for s in names}
    if retrieval is not None:
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
        scorer = SubjectScorer(judge, subject, references, resolution)
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
            if retrieval is not None:
                vector = adapter_vector(directory, run.keys)
                nearest = min(distance(vector, v) for v in vectors_bank.values())
                distances.setdefault("hypernetwork: to own trained", []).append(distance(vector, own))
                distances.setdefault("hypernetwork: to nearest training adapter", []).append(nearest)
        retrieved = None
        if retrieval is not None:
            retrieved = retrieval.nearest(condition)
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
            subject_scores[row] = scorer.score(sampler(directory))
        trained = [v for row, v in subject_scores.items() if row.startswith("trained-")]
        merged = {row: v for row, v in subject_scores.items() if not row.startswith("trained-")}
        merged["trained"] = {m: statistics.fmean(v[m] for v in trained) for m in SCORES}  # seeds' mean
        for row, value in merged.items():
            for metric, score in value.items():
                scores.setdefault(row, {m: [] for m in SCORES})[metric].append(score)
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
        for metric in SCORES
    }
    table = {row: {metric: mean_sem(values) for metric, values in value.items()} for row, value in per_subject.items()}
    seed_means = {m: [statistics.fmean(scores[r][m]) for r in hyper_rows] for m in SCORES}
    hyper = per_subject["hypernetwork (mean over seeds)"]
    paired = {
        f"hypernetwork vs {other}": {m: paired_difference(hyper[m], per_subject[other][m]) for m in SCORES}
        for other in ("none", "retrieval", "trained", "training mean")
        if other in per_subject
    }
    paired["trained vs none"] = {
        m: paired_difference(per_subject["trained"][m], per_subject["none"][m]) for m in SCORES
    }
    report = {
        "dataset": str(dataset.root),
        "hypernetworks": [str(r.root) for r in runs],
        "method": dataset.method,
        "subjects": len(chosen),
        "training_subjects": len(trained_on),
        "retrieval_bank": len(names) if retrieval is not None else 0,
        "prompts": sampler.prompts,
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
                 for m in SCORES]  # fmt: skip
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
