"""Where the merged (one-GEMM) adapter path overtakes the factored one: measured against the cost model.

    python experiments/adapter_path_crossover.py [--shapes 768x768 384x384] [--tokens 64 128 256 512 1024 2048]
        [--ranks 8 64 full] [--budget 0.5] [--out docs/adapter_path_crossover.md]

For each weight shape, rank and token count, one SVFit `AdapterLayer` runs a forward + backward (input and gain
need grad) on the forced factored path (the fused autograd Function) and on the forced merged path, round-robin
with the frozen Linear; the table gives both as multiples of the frozen layer, the measured winner and the path
`kernels.cost.choose_path` picks. 1 thread, fp32; the machine may be shared, so only ratios within a row count.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from peft_inits import AdapterLayer, AdapterSpec
from peft_inits.atomic import atomic_write
from peft_inits.kernels.cost import choose_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["768x768", "384x384"], help="m×n weights, e.g. 3072x768")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--ranks", nargs="+", default=["8", "64", "full"], help="ranks; 'full' = min(m, n)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of round-robin timing per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/adapter_path_crossover.md"))
    args = parser.parse_args(argv)
    try:
        args.shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    except ValueError:
        parser.error(f"--shapes takes m×n like 768x768, got {args.shapes}")
    return args


def round_robin(steps: dict[str, Callable[[], None]], budget: float, min_rounds: int = 3) -> dict[str, float]:
    best = dict.fromkeys(steps, float("inf"))
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < budget:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def measure_row(m: int, n: int, r: int, tokens: int, budget: float) -> dict[str, object]:
    torch.manual_seed(0)
    base = nn.Linear(n, m).requires_grad_(False)
    layer = AdapterLayer(
        base, "default", AdapterSpec(method="svfit", r=r, options={"svd": "randomized", "svd_niter": 1})
    )
    with torch.no_grad():
        layer.adapter("default").s.add_(0.01)
    x = torch.randn(tokens, n, requires_grad=True)
    grad_out = torch.randn(tokens, m)

    def step(module: nn.Module, path: str | None) -> Callable[[], None]:
        def run() -> None:
            if path is not None:
                layer.adapter_path = path
            x.grad = None
            layer.zero_grad(set_to_none=True)
            module(x).backward(grad_out)

        return run

    steps = {"frozen": step(base, None), "factored": step(layer, "factored"), "merged": step(layer, "merged")}
    for s in steps.values():
        s()
    best = round_robin(steps, budget)
    model = choose_path(tokens, r, m, n, need_dx=True, need_dgain=True)
    measured = "merged" if best["merged"] < best["factored"] else "factored"
    return {
        "m": m,
        "n": n,
        "r": r,
        "T": tokens,
        "frozen_ms": 1e3 * best["frozen"],
        "factored": best["factored"] / best["frozen"],
        "merged": best["merged"] / best["frozen"],
        "measured": measured,
        "model": model.path,
        "gain_gradient": model.gain_gradient,
    }


def markdown(rows: list[dict[str, object]], command: str) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    agree = sum(row["measured"] == row["model"] for row in rows)
    lines = [
        "# Adapter path crossover: factored vs merged (one GEMM)\n",
        f"Measured {today} with `{command}` (torch {torch.__version__}, 1 thread, fp32, CPU, shared machine: "
        "ratios are round-robin minima within each row).\n",
        "SVFit layer, forward + backward with x and the gain needing grad. *factored* = the fused x → R → g → C "
        "Function; *merged* = W′ = W + ΔW formed per call, one GEMM forward and one for dx, custom gain gradient. "
        "*model* = `kernels.cost.choose_path` (the path `adapter_path='auto'` takes). "
        f"The model agrees with the measured winner in {agree} of {len(rows)} rows.\n",
        "| m×n | r | T | frozen ms | factored × frozen | merged × frozen | measured winner | cost model |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        model = row["model"] + (f" ({row['gain_gradient']})" if row["model"] == "merged" else "")
        lines.append(
            f"| {row['m']}×{row['n']} | {row['r']} | {row['T']} | {row['frozen_ms']:.2f} | {row['factored']:.2f} | "
            f"{row['merged']:.2f} | {row['measured']} | {model} |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    torch.set_num_threads(args.threads)
    rows = []
    for m, n in args.shapes:
        ranks = [min(m, n) if r == "full" else int(r) for r in args.ranks]
        for r in ranks:
            for tokens in args.tokens:
                row = measure_row(m, n, r, tokens, args.budget)
                print(row, flush=True)
                rows.append(row)
    command = ("python experiments/adapter_path_crossover.py " + " ".join(sys.argv[1:])).strip()
    page = markdown(rows, command)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(page))
    print(page)
    return rows


if __name__ == "__main__":
    main(parse_args())
