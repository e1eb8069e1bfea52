"""A predicted adapter as a head start (issue 22): fine-tune the held-out subjects' adapters from the hypernetwork's
prediction, from the retrieved training adapter and from the method's standard init, and follow both the reference
denoising loss and the images' subject fidelity step by step.

    python experiments/hypernetwork_headstart.py --dataset runs/data/adapters-svfit \
        --hypernetwork runs/hyper-svfit-s0 --lr 0.02 --output-dir runs/headstart-svfit

Every start trains as `adapter-dataset` trained the data set's held-out adapters (its images, batch, steps, schedule,
per-adapter noise streams; all held-out subjects in one population); only the learning rate of the generated and
retrieved starts is `--lr` (default: the data set's), since a rate meant for a start far from the optimum first
undoes a start near it. The standard init at the data set's rate reproduces its trained adapters (its last loss is
the data set's `eval_loss_end`), so its final checkpoint is the "trained" target. At each `--checkpoints` step the
reference loss is recorded (one fixed draw per subject: a proxy that needs no sampling); at each `--score-at` step
every subject's adapter is saved and sampled with `generation-eval`'s prompts and seeds and scored by the judge and
by glyph shape. Writes report.json, report.md and fidelity.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from peft_inits.cli import args as cli
from peft_inits.diffusion.models import load_pipeline
from peft_inits.generation import dataset as D
from peft_inits.generation import features as feats
from peft_inits.generation.builder import _eval_losses
from peft_inits.generation.finetune import Finetuner, target_adapter
from peft_inits.generation.heldout import SCORES, HeldoutSampler, Retrieval, SubjectScorer, mean_sem
from peft_inits.generation.heldout import paired as paired_difference
from peft_inits.generation.hypernetwork_basis import adapter_vector
from peft_inits.generation.hypernetwork_run import load_hypernetwork
from peft_inits.generation.workflow import Base, check_base, model_folder

STARTS = ("standard init", "hypernetwork", "retrieval")


def _steps(text: str) -> list[int]:
    return [int(s) for s in cli.csv_list(text)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--hypernetwork", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--starts", type=cli.csv_list, default=list(STARTS), help=f"of {','.join(STARTS)}")
    parser.add_argument("--lr", type=float, default=None, help="the generated and retrieved starts' rate")
    parser.add_argument("--checkpoints", type=_steps, default=[0, 5, 10, 15, 25, 50, 100, 150])
    parser.add_argument("--score-at", type=_steps, default=[0, 5, 15, 50, 150], help="'' = loss only")
    parser.add_argument("--limit", type=int, default=None, help="at most this many held-out subjects")
    parser.add_argument("--cache-dir", default="runs/cache")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from peft_inits.diffusion.metrics import JudgeScorer
    from peft_inits.glyph.judge import cached_judge

    unknown = sorted(set(args.starts) - set(STARTS))
    if unknown:
        raise ValueError(f"unknown start(s) {unknown}; choose from {', '.join(STARTS)}")
    began = time.perf_counter()
    dataset = D.read_dataset(args.dataset)
    settings = dataset.settings
    run = load_hypernetwork(args.hypernetwork)
    if run.method != dataset.method:
        raise ValueError(f"{run.root} predicts {run.method} adapters but {dataset.root} holds {dataset.method}")
    entries = sorted((e for e in dataset.entries("heldout") if e.seed == 0), key=lambda e: e.subject_id)
    entries = entries[: args.limit]
    if set(e.subject_id for e in entries) & set(run.meta["train_subjects"]):
        raise ValueError("held-out subjects of the data set are among the hypernetwork's training subjects")
    folder = model_folder(run.meta.get("model"), args.cache_dir)
    pipe = load_pipeline(folder)
    check_base(pipe.unet, run.layout, run.template, f"hypernetwork {run.root}")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    sources = run.choice.build(Base(pipe.unet, pipe.vae, resolution, run.meta.get("model")))
    references = [feats.read_references(e.references_dir) for e in entries]
    conditions = [feats.condition(sources, r) for r in references]
    predicted = run.net({k: torch.stack([c[k] for c in conditions]) for k in conditions[0]}).detach()
    bank = {e.subject_id: e for e in dataset.entries("train") if e.seed == 0 and e.subject_id in run.meta[
        "train_subjects"]}  # fmt: skip
    retrieved: list[str] = []
    retrieved_values = None
    if "retrieval" in args.starts:
        retrieval = Retrieval(run, [s for s in run.meta["train_subjects"] if s in bank])
        retrieved = [retrieval.nearest({k: v[None] for k, v in c.items()}) for c in conditions]
        retrieved_values = torch.stack([adapter_vector(bank[s].directory, run.keys).float() for s in retrieved])

    subjects = [D.Subject(e.subject_id, e.subject, e.family, e.variant, e.colour) for e in entries]
    scoring = bool(args.score_at)
    if scoring:
        sampler = HeldoutSampler(load_pipeline(folder))  # a second, unhooked copy of the base for sampling
        judge = JudgeScorer(cached_judge(args.cache_dir))
        scorers = [SubjectScorer(judge, s, r, resolution) for s, r in zip(subjects, references, strict=True)]

    finetuner = Finetuner.build(pipe, target_adapter(run.root), settings, len(entries))
    population, chunk = finetuner.population, finetuner.chunk(subjects)
    rates = {"standard init": settings["lr"], "hypernetwork": args.lr or settings["lr"],
             "retrieval": args.lr or settings["lr"]}  # fmt: skip
    losses: dict[str, dict[int, list[float]]] = {}
    scores: dict[str, dict[int, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for start in args.starts:

            def record(step: int, start: str = start) -> None:
                if step in args.checkpoints:
                    losses.setdefault(start, {})[step] = _eval_losses(finetuner.attached.unet,
                        finetuner.frozen.scheduler, population, chunk, settings["prediction"])  # fmt: skip
                if step in args.score_at:
                    row = scores.setdefault(start, {}).setdefault(step, {m: [] for m in SCORES})
                    for k, scorer in enumerate(scorers):
                        directory = finetuner.save(k, Path(scratch) / f"{k}")
                        for metric, value in scorer.score(sampler(directory)).items():
                            row[metric].append(value)
                shown = {m: f"{statistics.fmean(v):.3f}" for m, v in scores.get(start, {}).get(step, {}).items()}
                if step in args.checkpoints or shown:
                    loss = statistics.fmean(losses[start][step]) if step in losses.get(start, {}) else float("nan")
                    print(f"{start} step {step}: loss {loss:.4f} {shown} ({time.perf_counter() - began:.0f} s)",
                          flush=True)  # fmt: skip

            finetuner.start_from({"hypernetwork": predicted, "retrieval": retrieved_values}.get(start))
            finetuner.train(chunk, settings["steps"], rates[start], on_step=record)
    population.detach()
    report = _report(args, dataset, run, entries, rates, retrieved, losses, scores)
    report["wall_time_s"] = time.perf_counter() - began
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(report))
    if scores:
        plot(report, out / "fidelity.png")
    print(markdown(report))
    return report


def _report(args, dataset, run, entries, rates, retrieved, losses, scores) -> dict[str, Any]:
    """Mean curves, the trained target (the standard init's last scored step) and steps to reach it."""
    targets = [e.eval_loss_end for e in entries]
    loss_steps = {
        start: [next((s for s in sorted(curve) if curve[s][k] <= targets[k]), None) for k in range(len(entries))]
        for start, curve in losses.items()
    }
    report: dict[str, Any] = {
        "dataset": str(dataset.root),
        "hypernetwork": str(run.root),
        "method": dataset.method,
        "subjects": len(entries),
        "learning_rates": {s: rates[s] for s in args.starts},
        "trained_steps": dataset.settings["steps"],
        "retrieved": retrieved,
        "trained_loss": statistics.fmean(targets),
        "loss": {s: {step: mean_sem(v) for step, v in curve.items()} for s, curve in losses.items()},
        "loss_steps_to_trained": loss_steps,
        "fidelity": {
            s: {step: {m: mean_sem(v) for m, v in row.items()} for step, row in curve.items()}
            for s, curve in scores.items()
        },
    }
    trained = scores.get("standard init", {}).get(dataset.settings["steps"])
    if trained is not None:
        report["trained_fidelity"] = {m: mean_sem(v) for m, v in trained.items()}
        report["vs_trained"] = {
            start: {step: {m: paired_difference(row[m], trained[m]) for m in SCORES} for step, row in curve.items()}
            for start, curve in scores.items()
        }
        report["fidelity_steps_to_trained"] = {
            start: {m: next((step for step in sorted(curve) if statistics.fmean(curve[step][m]) >=
                             statistics.fmean(trained[m])), None) for m in SCORES}
            for start, curve in scores.items()
        }  # fmt: skip
    return report


def markdown(report: dict[str, Any]) -> str:
    rates = ", ".join(f"{s} lr {r:g}" for s, r in report["learning_rates"].items())
    lines = [f"{report['method']}, {report['subjects']} held-out subjects ({rates}); the trained adapters: "
             f"{report['trained_steps']} steps from the standard init, reference loss {report['trained_loss']:.4f}",
             "", "Reference loss after k steps (mean ± s.e.m. over subjects):", "",
             "| k | " + " | ".join(report["loss"]) + " |", "|---" * (len(report["loss"]) + 1) + "|"]  # fmt: skip
    for step in sorted({s for curve in report["loss"].values() for s in curve}):
        cells = [f"{c[step]['mean']:.4f} ± {c[step]['sem']:.4f}" if step in c else "" for c in report["loss"].values()]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if report["fidelity"]:
        lines += [
            "",
            "Subject fidelity after k steps, judge / shape (mean ± s.e.m. over subjects):",
            "",
            "| k | " + " | ".join(report["fidelity"]) + " |",
            "|---" * (len(report["fidelity"]) + 1) + "|",
        ]
        for step in sorted({s for curve in report["fidelity"].values() for s in curve}):
            cells = [" / ".join(f"{c[step][m]['mean']:.3f} ± {c[step][m]['sem']:.3f}" for m in SCORES)
                     if step in c else "" for c in report["fidelity"].values()]  # fmt: skip
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if "vs_trained" in report:
        lines += ["", "Paired difference to the trained adapters (mean ± s.e.m., wins), judge / shape:", ""]
        for start, curve in report["vs_trained"].items():
            cells = [f"k={step}: " + " / ".join(f"{v[m]['mean']:+.3f} ± {v[m]['sem']:.3f} ({v[m]['wins']}/{v[m]['n']})"
                                                for m in SCORES) for step, v in curve.items()]  # fmt: skip
            lines.append(f"- {start}: " + "; ".join(cells))
        lines += ["", "First scored k whose mean fidelity reaches the trained adapters' (judge, shape):", ""]
        lines += [f"- {s}: {v['judge']}, {v['shape']}" for s, v in report["fidelity_steps_to_trained"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SCORES), figsize=(5 * len(SCORES), 3.6))
    for axis, metric in zip(axes, SCORES, strict=True):
        for start, curve in report["fidelity"].items():
            steps = sorted(curve)
            mean = [curve[s][metric]["mean"] for s in steps]
            sem = [curve[s][metric]["sem"] for s in steps]
            axis.errorbar(steps, mean, yerr=sem, marker="o", capsize=3, label=start)
        if "trained_fidelity" in report:
            axis.axhline(report["trained_fidelity"][metric]["mean"], color="grey", linestyle="--", label="trained")
        axis.set_xscale("symlog", linthresh=5)
        axis.set_xlabel("fine-tuning steps")
        axis.set_ylabel(f"{metric} subject fidelity")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{report['method']}: head starts on {report['subjects']} held-out subjects")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    cli.run_script(main, parse_args)
