"""Text classification data from local files, read with Hugging Face `datasets` (no hub access).

`--data PATH` may be:
- a file (.csv, .tsv, .json, .jsonl, .parquet): split 80/10/10 (stratified, fixed seed) into train/validation/test;
- a folder holding files whose names start with train / validation (or dev, val) / test, e.g. a local clone of the
  hub's GLUE repo (`sst2/train-00000-of-00001.parquet`, ...), or GLUE TSVs with a header line;
- a folder written by `datasets.DatasetDict.save_to_disk`.
With `--task sst2` (any GLUE task) the columns, label count and metrics come from the task and a `PATH/sst2` sub-folder
is used when present. Test splits without labels (GLUE's are all -1) are dropped: report validation then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import cache_dir
from .glue import GlueTask, glue_task
from .hf import require_datasets
from .splits import stratified_split
from .text import TextCorpus, TextSplit

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "validation_matched": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "dev_matched": "validation",
    "test": "test",
    "test_matched": "test",
}
_TEXT_GUESSES = (("text", None), ("sentence", None), ("sentence1", "sentence2"), ("question", "sentence"))
_LABEL_GUESSES = ("label", "labels", "sentiment", "target")
_CARVE_SEED = 20241017


def _split_of(path: Path) -> str | None:
    stem = path.name.split(".")[0]
    for candidate in (stem, stem.split("-")[0]):
        if candidate.lower() in _SPLIT_NAMES:
            return _SPLIT_NAMES[candidate.lower()]
    return None


def _read_files(files: dict[str, list[Path]], cache: Path) -> dict[str, Any]:
    suffixes = {p.suffix.lower() for paths in files.values() for p in paths}
    if len(suffixes) != 1:
        raise ValueError(f"data files must share one format, got {sorted(suffixes)}")
    suffix = suffixes.pop()
    kwargs: dict[str, Any] = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    loaded = require_datasets().load_dataset(
        _BUILDERS[suffix],
        data_files={split: [str(p) for p in paths] for split, paths in files.items()},
        cache_dir=str(cache / "hf-datasets"),
        **kwargs,
    )
    return dict(loaded)


def read_splits(path: str | os.PathLike, task: str | None = None, cache: str | os.PathLike | None = None) -> dict:
    """The raw `datasets` splits found at `path` (see the module docstring for the accepted layouts)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    root = cache_dir(cache)
    if path.is_file():
        if path.suffix.lower() not in _BUILDERS:
            raise ValueError(f"{path}: unsupported data file type; use one of {', '.join(_BUILDERS)}")
        return _read_files({"train": [path]}, root)
    if task and (path / task.lower()).is_dir():
        path = path / task.lower()
    if (path / "dataset_dict.json").is_file():
        return dict(require_datasets().load_from_disk(str(path)))
    files: dict[str, list[Path]] = {}
    for file in sorted(path.iterdir()):
        split = _split_of(file)
        if split and file.suffix.lower() in _BUILDERS and split not in files:
            files.setdefault(split, []).append(file)
    if "train" not in files:
        raise ValueError(
            f"{path} holds no train.* data file ({', '.join(_BUILDERS)}) and no save_to_disk dataset; "
            "expected files named train / validation (dev) / test"
        )
    return _read_files(files, root)


def _columns(columns: Sequence[str], text_columns: Sequence[str] | None, spec: GlueTask | None) -> tuple:
    if text_columns:
        chosen = (text_columns[0], text_columns[1] if len(text_columns) > 1 else None)
    elif spec is not None:
        chosen = (spec.text, spec.text_pair)
    else:
        chosen = next(((a, b) for a, b in _TEXT_GUESSES if a in columns and (b is None or b in columns)), None)
        if chosen is None:
            raise ValueError(f"cannot tell the text column among {list(columns)}; pass --text-columns")
    missing = [c for c in chosen if c is not None and c not in columns]
    if missing:
        raise ValueError(f"text column(s) {missing} not in the data; columns: {list(columns)}")
    return chosen


def _label_column(columns: Sequence[str], requested: str | None) -> str:
    if requested:
        if requested not in columns:
            raise ValueError(f"label column {requested!r} not in the data; columns: {list(columns)}")
        return requested
    for guess in _LABEL_GUESSES:
        if guess in columns:
            return guess
    raise ValueError(f"cannot tell the label column among {list(columns)}; pass --label-column")


def _encode_labels(
    raw: dict[str, list[Any]], num_labels: int | None, where: str
) -> tuple[dict[str, list[Any]], int, list[str] | None]:
    """Integer labels (strings mapped in sorted order), checked against the expected label count."""
    if num_labels == 1:
        return {k: [float(v) for v in values] for k, values in raw.items()}, 1, None
    train = raw["train"]
    names = None
    if all(isinstance(v, str) for v in train):
        names = sorted(set(train))
        found = len(names)
        encoded = {}
        for split, values in raw.items():
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"split {split!r} has labels {unknown} that the train split lacks")
            encoded[split] = [names.index(v) for v in values]
    else:
        encoded = {split: [int(v) for v in values] for split, values in raw.items()}
        found = max(max(values, default=0) for values in encoded.values()) + 1
        if min(min(values, default=0) for values in encoded.values()) < 0:
            raise ValueError(f"negative class labels in the data ({where})")
    if num_labels is not None and found > num_labels:
        seen = names or sorted({v for values in encoded.values() for v in values})
        raise ValueError(
            f"label-count mismatch: {where} expects {num_labels} labels but the data has {found} ({seen}); "
            "check --task / --num-labels / --label-column"
        )
    return encoded, num_labels or found, names


def load_local(
    path: str | os.PathLike,
    *,
    task: str | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    num_labels: int | None = None,
    cache: str | os.PathLike | None = None,
) -> TextCorpus:
    """A `TextCorpus` from local files; missing validation/test splits are carved out of train (stratified)."""
    spec = glue_task(task) if task else None
    if spec is not None and num_labels is not None and num_labels != spec.num_labels:
        raise ValueError(f"label-count mismatch: task {task} has {spec.num_labels} labels, --num-labels {num_labels}")
    splits = read_splits(path, task, cache)
    if spec is not None and spec.validation in splits:
        splits["validation"] = splits.pop(spec.validation)
    columns = splits["train"].column_names
    first, second = _columns(columns, text_columns, spec)
    label = _label_column(columns, label_column)
    raw_labels, texts, pairs = {}, {}, {}
    for name, data in splits.items():
        if name not in ("train", "validation", "test") or label not in data.column_names:
            continue
        values = data[label]
        keep = [i for i, v in enumerate(values) if v is not None and v != -1 and v != ""]
        if not keep:
            continue  # an unlabelled split (e.g. a GLUE test set)
        raw_labels[name] = [values[i] for i in keep]
        texts[name] = [str(data[first][i]) for i in keep]
        pairs[name] = None if second is None else [str(data[second][i]) for i in keep]
    expected = spec.num_labels if spec is not None else num_labels
    where = f"task {task}" if spec is not None else (f"--num-labels {num_labels}" if num_labels else str(path))
    labels, count, names = _encode_labels(raw_labels, expected, where)
    result = {n: TextSplit(texts[n], labels[n], pairs[n]) for n in labels}
    result = _carve(result, count == 1)
    metrics = (
        spec.metrics if spec is not None else (("pearson", "spearman") if count == 1 else ("accuracy", "macro_f1"))
    )
    notes = {"path": str(path), "columns": [first, second, label], "sizes": {k: len(v) for k, v in result.items()}}
    return TextCorpus(task or Path(path).stem, result, count, names, metrics, notes)


def _carve(splits: dict[str, TextSplit], regression: bool) -> dict[str, TextSplit]:
    """Give a corpus validation (and, for a lone file, test) splits cut from train with a fixed seed."""
    if "validation" in splits:
        return splits
    train = splits["train"]
    labels = [0] * len(train) if regression else train.labels
    lone = "test" not in splits
    fractions = [0.8, 0.1, 0.1] if lone else [0.9, 0.1]
    parts = stratified_split(labels, fractions, _CARVE_SEED)
    out = {**splits, "train": train.take(parts[0]), "validation": train.take(parts[1])}
    if lone:
        out["test"] = train.take(parts[2])
    return out
