"""Image classification data in memory: preprocessed pixel tensors, labels and batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .splits import stratified_subsample


class ImageData:
    """Preprocessed images (N × C × H × W, float32) and integer labels."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels")
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return {"inputs": {"pixel_values": self.pixels[index]}, "labels": self.labels[index]}

    def take(self, indices: Sequence[int]) -> ImageData:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageData(self.pixels[index], self.labels[index])


@dataclass
class ImageCorpus:
    """Labelled image splits plus the task description."""

    name: str
    splits: dict[str, ImageData]
    num_labels: int
    label_names: list[str] | None = None
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    notes: dict[str, Any] = field(default_factory=dict)

    def subsample(self, sizes: dict[str, int | None], seed: int) -> ImageCorpus:
        splits = {
            name: data.take(stratified_subsample(data.labels.tolist(), sizes.get(name), seed))
            for name, data in self.splits.items()
        }
        return ImageCorpus(self.name, splits, self.num_labels, self.label_names, self.metrics, dict(self.notes))


def preprocess(
    images: Sequence[Any], size: int, channels: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """PIL images → normalised float tensor (N × channels × size × size): convert, resize (bilinear), scale."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for image in images:
        image = image.convert(mode).resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    pixels = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, channels, size, size)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t
