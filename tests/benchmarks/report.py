"""Write BENCHMARKS.md from the JSON files of the benchmark suite (one per machine: CPU, H100, ...).

    python tests/benchmarks/report.py tests/benchmarks/results/cpu.json [more.json ...] > BENCHMARKS.md

Every ratio comes from round-robin minima measured inside one test (the variant, the frozen base and, per layer,
PEFT LoRA run in turn), so they compare runs taken seconds apart under the same machine load. Absolute times are
pytest-benchmark's minimum over the test's own rounds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LAYER_COLUMNS = (
    ("peft_lora", "PEFT LoRA"),
    ("lora_fused", "our LoRA"),
    ("svfit_factored", "SVFit factored"),
    ("svfit_fused", "SVFit fused"),
    ("svfit_onegemm", "SVFit one-GEMM"),
    ("svfit_auto", "SVFit auto"),
    ("svfit_merged", "SVFit merged/step"),
    ("loldu_factored", "LoLDU factored"),
    ("loldu_fused", "LoLDU fused"),
    ("loldu_onegemm", "LoLDU one-GEMM"),
    ("loldu_auto", "LoLDU auto"),
    ("loldu_merged", "LoLDU merged/step"),
)
LAYER_LABELS = {
    "frozen": "frozen base",
    "peft_lora": "PEFT LoRA",
    "lora_fused": "our LoRA (fused)",
    "lora_factored": "our LoRA, factored",
    **{key: label for key, label in LAYER_COLUMNS[2:]},
}
INIT_LABELS = {
    "lora": "our LoRA (kaiming, no decomposition)",
    "peft_lora": "PEFT LoRA default",
    "svfit_exact": "SVFit, exact SVD",
    "svfit_randomized": "SVFit, randomized SVD (niter 2, +10 columns)",
    "loldu_truncated": "LoLDU, truncated elimination (r steps)",
    "loldu_full": "LoLDU, full LU",
    "peft_pissa": 'PEFT `init_lora_weights="pissa"`',
    "peft_pissa_niter_4": 'PEFT `init_lora_weights="pissa_niter_4"`',
    "peft_olora": 'PEFT `init_lora_weights="olora"`',
    "svfit_randomized_niter_4": "SVFit, randomized SVD (niter 4, +10 columns)",
    "loldu": "LoLDU, default (partial pivoting, auto method)",
}


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.2f}" if seconds < 0.1 else f"{seconds * 1e3:.0f}"


def secs(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.2f}"


def _paired(extra: dict, name: str, reference: str) -> float | None:
    paired = extra.get("paired_min_s") or {}
    if name in paired and reference in paired:
        return paired[name] / paired[reference]
    return None


# ------------------------------------------------------------------------------------------------------ sections


def machine_section(data: dict, source: str) -> str:
    info = data.get("machine_info", {})
    ours = info.get("peft_inits", {})
    cpu = info.get("cpu", {}).get("brand_raw") or info.get("processor") or "?"
    commit = data.get("commit_info", {})
    load = ours.get("loadavg_start"), ours.get("loadavg_end")
    rows = [
        ("device", ours.get("device", "?")),
        ("CPU", f"{cpu}, {ours.get('cpu_count', '?')} logical cores"),
        ("torch threads", ours.get("torch_threads", "?")),
        ("grid", f"`{ours.get('bench_set', '?')}` set"),
        ("python", info.get("python_version", "?")),
        (
            "versions",
            ", ".join(f"{k} {ours.get(k, '?')}" for k in ("torch", "triton", "peft", "transformers", "diffusers")),
        ),
        ("platform", ours.get("platform", info.get("system", "?"))),
        ("run", f"{data.get('datetime', '?')}, commit {str(commit.get('id', '?'))[:10]}"),
        ("1-min load average", f"{_load(load[0])} at start, {_load(load[1])} at end"),
        ("data", f"`{source}`"),
    ]
    return table(["", ""], rows)


def _load(values: Any) -> str:
    return "?" if not values else f"{values[0]:.2f}"


def layer_sections(benchmarks: list[dict]) -> list[str]:
    layer = [b for b in benchmarks if b["extra_info"].get("kind") == "layer"]
    if not layer:
        return []
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in layer:
        e = b["extra_info"]
        key = (e["dtype"], e["mode"], e["layer"], e["m"], e["n"], e["tokens"], e["r"])
        groups[key][e["variant"]] = b
    out = []

    headline = sorted(
        (k for k in groups if k[1] == "train" and k[3] == k[4] == 768 and k[5] >= 512), key=lambda k: (k[5], k[6])
    )
    for key in headline:
        variants = groups[key]
        rows = []
        for name, label in LAYER_LABELS.items():
            if name not in variants:
                continue
            e = variants[name]["extra_info"]
            rows.append(
                (
                    label,
                    ms(variants[name]["stats"]["min"]),
                    ratio(1.0 if name == "frozen" else _paired(e, name, "frozen")),
                    ratio(1.0 if name == "peft_lora" else _paired(e, name, "peft_lora")),
                    f"{e.get('saved_bytes', 0) / 1024:.0f}",
                    f"{e.get('trainable', 0):,}",
                )
            )
        out.append(
            f"### Headline: one {key[3]}×{key[4]} Linear, {key[5]} tokens, r = {key[6]}, "
            f"forward + backward ({key[0]})\n\n"
            + table(["path", "min ms", "× frozen", "× PEFT LoRA", "saved for backward, KiB", "trainable"], rows)
        )

    for dtype, mode in sorted({(k[0], k[1]) for k in groups}, key=lambda dm: (dm[0], dm[1] != "train")):
        keys = [k for k in groups if k[0] == dtype and k[1] == mode]
        rows = []
        for key in keys:
            variants = groups[key]
            frozen = variants.get("frozen")
            cells = [key[2], f"{key[3]}×{key[4]}", key[5], key[6], ms(frozen["stats"]["min"]) if frozen else "–"]
            for name, _ in LAYER_COLUMNS:
                cells.append(ratio(_paired(variants[name]["extra_info"], name, "frozen")) if name in variants else "–")
            rows.append(cells)
        title = "forward + backward" if mode == "train" else "forward only (inference, no autograd graph)"
        out.append(
            f"### Per layer, {title}, {dtype}: time of the frozen base and every path as a multiple of it\n\n"
            + table(["layer", "m×n", "tokens", "r", "frozen ms", *(label for _, label in LAYER_COLUMNS)], rows)
        )
    return out


def model_sections(benchmarks: list[dict]) -> list[str]:
    model = [b for b in benchmarks if b["extra_info"].get("kind") == "model"]
    by_model: dict[str, list[dict]] = defaultdict(list)
    for b in model:
        by_model[b["extra_info"]["model"]].append(b)
    out = []
    for name, items in by_model.items():
        to_frozen = {
            b["extra_info"]["variant"]: _paired(b["extra_info"], b["extra_info"]["variant"], "frozen") for b in items
        }
        to_frozen["frozen"] = 1.0
        rows = []
        for b in items:
            e = b["extra_info"]
            variant = e["variant"]
            targets = e.get("targets")
            peft = to_frozen.get(f"peft_lora_{targets}") if targets else None
            vs_peft = to_frozen[variant] / peft if peft and to_frozen.get(variant) else None
            rows.append(
                (
                    variant,
                    ms(b["stats"]["min"]),
                    ratio(to_frozen.get(variant)),
                    ratio(vs_peft),
                    f"{e.get('trainable', 0):,}",
                    mib(e.get("saved_bytes")),
                    mib(e.get("peak_bytes")),
                )
            )
        tokens = items[0]["extra_info"].get("tokens")
        unit = "latents of 8×8" if name == "tiny-unet" else "tokens"
        peak = items[0]["extra_info"].get("peak_method", "?")
        out.append(
            f"### {name}: one training step ({tokens} {unit}), peak memory measured as `{peak}`\n\n"
            "Variant names: `<method>_<targets>[_r<rank>][_<path>]`; no path suffix = the layer's default (the cost "
            "model), `_factored` = forced factored path (fused Function), `_merged` = ΔW rebuilt every step under "
            "plain autograd (official LoLDU code). × PEFT LoRA compares with PEFT LoRA at its default rank on the "
            "same targets.\n\n"
            + table(
                ["variant", "min ms", "× frozen", "× PEFT LoRA (same targets)", "trainable", "saved MiB", "peak MiB"],
                rows,
            )
        )
    return out


def init_sections(benchmarks: list[dict]) -> list[str]:
    out = []
    paired = [b for b in benchmarks if b["extra_info"].get("kind") == "init_paired"]
    if paired:
        inits = list(dict.fromkeys(k for b in paired for k in b["extra_info"]["paired_min_s"]))
        rows = []
        for init in inits:
            cells = [INIT_LABELS.get(init, init)]
            for b in paired:
                times = b["extra_info"]["paired_min_s"]
                t, ref = times.get(init), times.get("peft_pissa_niter_4")
                cells.append("–" if t is None else f"{secs(t)} ({ratio(t / ref) if ref else '–'})")
            rows.append(cells)
        header = [
            f"{b['extra_info']['target']}: {b['extra_info']['matrices']} matrices, "
            f"{b['extra_info']['weights_M']:.1f} M weights"
            for b in paired
        ]
        out.append(
            f"### Whole-model init, r = {paired[0]['extra_info']['r']}: seconds (× PEFT pissa_niter_4), round-robin "
            "minima inside one test per target\n\n"
            "`get_peft_model` on the target Linears only (real names and shapes, random weights).\n\n"
            + table(["init", *header], rows)
        )
    whole = [b for b in benchmarks if b["extra_info"].get("kind") == "init_model"]
    if whole:
        times = {b["extra_info"]["init"]: b["stats"]["min"] for b in whole}
        pissa = times.get("peft_pissa")
        rows = [(INIT_LABELS.get(init, init), secs(t), ratio(t / pissa) if pissa else "–") for init, t in times.items()]
        e = whole[0]["extra_info"]
        out.append(
            f"### Whole model: {e['model']} ({e['matrices']} matrices of {e['m']}×{e['n']}), r = {e['r']}\n\n"
            + table(["init", "seconds (min)", "× PEFT pissa"], rows)
        )
    single = [b for b in benchmarks if b["extra_info"].get("kind") == "init_matrix"]
    if single:
        grid: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
        for b in single:
            e = b["extra_info"]
            grid[(e["m"], e["n"])][e["init"]] = b["stats"]["min"]
        inits = list(dict.fromkeys(b["extra_info"]["init"] for b in single))
        rows = [[f"{m}×{n}", *(secs(grid[(m, n)].get(i)) for i in inits)] for (m, n) in sorted(grid)]
        out.append(
            f"### Growth with matrix size: one Linear, r = {single[0]['extra_info']['r']}, seconds (min)\n\n"
            + table(["matrix", *inits], rows)
        )
    return out


def count_sections(benchmarks: list[dict]) -> list[str]:
    counts = [b for b in benchmarks if b["extra_info"].get("kind") == "counts"]
    if not counts:
        return []
    rows = [(b["extra_info"]["config"], k, f"{v:,}") for b in counts for k, v in b["extra_info"]["counts"].items()]
    return [
        "### Trainable parameters (asserted against closed forms in `tests/benchmarks/test_param_counts.py`)\n\n"
        + table(["configuration", "method", "trainable"], rows)
    ]


# ------------------------------------------------------------------------------------------------------ page

INTRO = """# Benchmarks

Generated by `python tests/benchmarks/report.py {sources} > BENCHMARKS.md` from the JSON written by the benchmark
suite. Do not edit by hand. The suite:

    python -m pytest tests/benchmarks --benchmark-enable --benchmark-json=tests/benchmarks/results/cpu.json

(`--bench-set full` for training-sized token counts and the whole shape × rank grid; on a CUDA machine the suite
uses the GPU and the full set by default: `bash tests/benchmarks/run_gpu.sh`.)

How to read the numbers:

- **Paths.** *factored* = our adapter layer forced onto the unfused reference maths (`functional.linear_delta`
  under plain autograd); *fused* = forced factored path through `peft_inits.kernels.adapter_delta` (Triton kernels
  on CUDA, the same autograd Function in torch on CPU: scale folded into the r-wide gain, only h = x Rᵀ saved, no
  dR/dC GEMMs for frozen factors); *one-GEMM* = forced merged path (`kernels/merged.py`: W′ = W + ΔW formed once
  per call, one GEMM forward and one for dx, the gain gradient from the projections or from dyᵀx, whichever the
  cost model says is cheaper); *auto* = the layer as users get it: `kernels/cost.py` picks factored or one-GEMM
  per call from (T, r, m, n); *merged/step* = ΔW rebuilt and added to W under plain autograd on every step, as the
  official LoLDU code does. PEFT LoRA is PEFT's own `LoraConfig`; all adapters use alpha = r (scale 1).
- **Shared machine.** 2 CPU cores shared by several agents, 1 torch thread, run under `nice -n 5`: absolute times
  drift by up to 2× between tests; compare ratios taken inside one test.
- **Ratios** (× frozen, × PEFT LoRA) come from round-robin minima: inside each test the variant, the frozen base
  and (per layer) PEFT LoRA run in turn for about a second, and each one's best time is kept. This cancels most
  of the drift of a shared machine; absolute milliseconds are the test's own minimum and drift more.
- **Memory.** *saved for backward* counts the distinct storages autograd keeps between forward and backward,
  excluding weights, buffers and the layer's input (deterministic). *Peak* is the step's high-water mark above
  what was allocated before it: `torch.cuda.max_memory_allocated` on GPU; on CPU the resident-set high-water mark
  (VmHWM, reset through /proc/self/clear_refs after `malloc_trim`), which includes allocator slack.
- Speed claims belong here, never in unit tests. The model-level rows are forward + backward of the whole model
  down to grad-requiring inputs, with optimizer steps excluded.
"""

NO_GPU = """## GPU

No GPU numbers yet: the session that produced this page had no GPU lent to it. On a CUDA machine,
`bash tests/benchmarks/run_gpu.sh` runs the GPU parity tests of the Triton kernels, then the full grid (bf16 and
fp32 layers), and writes `tests/benchmarks/results/gpu.json`; regenerate this page with both JSON files.
"""


def render(paths: list[Path]) -> str:
    parts = [INTRO.format(sources=" ".join(str(p) for p in paths))]
    has_gpu = False
    for path in paths:
        data = json.loads(path.read_text())
        device = data.get("machine_info", {}).get("peft_inits", {}).get("device", "cpu")
        has_gpu |= device != "cpu"
        benchmarks = data.get("benchmarks", [])
        parts.append(f"## {device}\n\n" + machine_section(data, str(path)))
        sections = [
            ("Per-layer step time", layer_sections(benchmarks)),
            ("Model-level training step", model_sections(benchmarks)),
            ("Initialisation time", init_sections(benchmarks)),
            ("Parameter counts", count_sections(benchmarks)),
        ]
        for title, blocks in sections:
            if blocks:
                parts.append(f"## {title} ({device})\n\n" + "\n\n".join(blocks))
    if not has_gpu:
        parts.append(NO_GPU)
    return "\n\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="pytest-benchmark JSON files")
    args = parser.parse_args(argv)
    print(render(args.results), end="")


if __name__ == "__main__":
    main()
