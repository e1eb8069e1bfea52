"""Image classification data from a local folder, read with Hugging Face `datasets` (no hub access).

`--data PATH` may be an image folder (`PATH/<class>/*.png`, or `PATH/train/<class>/...` with validation/test
folders, the `imagefolder` layout) or a folder written by `datasets.DatasetDict.save_to_disk` with `image` and
`label` columns. Images are decoded, resized and normalised once and kept in memory (fine up to CIFAR-sized sets).
Missing validation/test splits are carved out of train (stratified, fixed seed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .cache import cache_dir
from .hf import require_datasets
from .images import ImageCorpus, ImageData, preprocess
from .splits import stratified_split

_CARVE_SEED = 20241017
_SPLITS = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation", "test": "test"}


def load_image_folder(
    path: str | os.PathLike,
    *,
    size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_labels: int | None = None,
    cache: str | os.PathLike | None = None,
) -> ImageCorpus:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder: pass an image folder or a save_to_disk dataset folder")
    ds = require_datasets()
    if (path / "dataset_dict.json").is_file():
        raw = dict(ds.load_from_disk(str(path)))
    else:
        raw = dict(ds.load_dataset("imagefolder", data_dir=str(path), cache_dir=str(cache_dir(cache) / "hf-datasets")))
    raw = {_SPLITS[name]: data for name, data in raw.items() if name in _SPLITS}
    if "train" not in raw:
        raise ValueError(f"{path} has no train split")
    features = raw["train"].features
    label_feature = features.get("label")
    names = list(getattr(label_feature, "names", []) or []) or None
    splits: dict[str, ImageData] = {}
    for name, data in raw.items():
        labels = torch.tensor(data["label"], dtype=torch.long)
        splits[name] = ImageData(preprocess(data["image"], size, channels, mean, std), labels)
    found = len(names) if names else int(max(int(s.labels.max()) for s in splits.values())) + 1
    if num_labels is not None and num_labels != found:
        raise ValueError(
            f"label-count mismatch: --num-labels {num_labels} but {path} has {found} classes"
            + (f" ({', '.join(names)})" if names else "")
        )
    splits = _carve(splits)
    notes = {"path": str(path), "sizes": {k: len(v) for k, v in splits.items()}}
    return ImageCorpus(path.name, splits, found, names, notes=notes)


def _carve(splits: dict[str, ImageData]) -> dict[str, ImageData]:
    if "validation" in splits:
        return splits
    train = splits["train"]
    lone = "test" not in splits
    parts = stratified_split(train.labels.tolist(), [0.8, 0.1, 0.1] if lone else [0.9, 0.1], _CARVE_SEED)
    out = {**splits, "train": train.take(parts[0]), "validation": train.take(parts[1])}
    if lone:
        out["test"] = train.take(parts[2])
    return out
