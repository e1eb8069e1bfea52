"""Pair one row of a `hypernetwork_eval.py` report with a row of another, subject by subject (e.g. LoRA through a
basis vs SVFit's hypernetwork on the same held-out subjects; docs/hypernetwork_lora_basis.md).

    python experiments/paired_reports.py runs/eval-lora-k64-s0/report.json:hypernetwork-0 \
        ../wt-hyper/runs/eval-svfit-s0/report.json:hypernetwork-0

The two reports must hold the same subjects, prompts and image seeds, and their `none` rows (the base model, the same
in both when the judge and the sampler are) must agree to 1e-9, or the pairing is refused. Prints the mean paired
difference ± s.e.m. and the wins of the first row, per score.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from peft_inits.cli import args as cli

SCORES = ("judge", "shape")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="REPORT.json:ROW")
    parser.add_argument("second", help="REPORT.json:ROW")
    return parser.parse_args(argv)


def _rows(spec: str) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, float]]], str]:
    path, _, row = spec.rpartition(":")
    if not path:
        raise ValueError(f"{spec!r}: write REPORT.json:ROW")
    report = json.loads(Path(path).read_text())
    scores = {d["subject_id"]: d["scores"] for d in report["details"]}
    missing = [s for s, v in scores.items() if row not in v]
    if missing:
        raise ValueError(f"{path} has no row {row!r} for {missing[:3]}; rows: {sorted(next(iter(scores.values())))}")
    return report, scores, row


def main(args: argparse.Namespace) -> dict[str, Any]:
    (report_a, a, row_a), (report_b, b, row_b) = _rows(args.first), _rows(args.second)
    for key in ("prompts", "image_seeds"):
        if report_a[key] != report_b[key]:
            raise ValueError(f"the reports differ in {key}: {report_a[key]} vs {report_b[key]}")
    if sorted(a) != sorted(b):
        raise ValueError("the reports hold different subjects")
    for metric in SCORES:
        worst = max(abs(a[s]["none"][metric] - b[s]["none"][metric]) for s in a)
        if worst > 1e-9:
            raise ValueError(f"the base model's {metric} scores differ by {worst:.3g}: another judge or sampler")
    result = {}
    for metric in SCORES:
        differences = [a[s][row_a][metric] - b[s][row_b][metric] for s in sorted(a)]
        result[metric] = {"mean": statistics.fmean(differences),
                          "sem": statistics.stdev(differences) / len(differences) ** 0.5,
                          "wins": sum(d > 0 for d in differences), "n": len(differences)}  # fmt: skip
        entry = result[metric]
        print(f"{metric}: {row_a} − {row_b} {entry['mean']:+.3f} ± {entry['sem']:.3f} ({entry['wins']}/{entry['n']})")
    return result


if __name__ == "__main__":
    cli.run_script(main, parse_args)
