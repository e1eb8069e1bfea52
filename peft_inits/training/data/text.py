"""Text classification data in memory: labelled splits, tokenisation, and dynamically padded batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .splits import stratified_subsample


@dataclass
class TextSplit:
    """One split: texts (and second texts for sentence-pair tasks) with integer labels (float for regression)."""

    text: list[str]
    labels: list[Any]
    text_pair: list[str] | None = None

    def __len__(self) -> int:
        return len(self.text)

    def take(self, indices: Sequence[int]) -> TextSplit:
        pair = None if self.text_pair is None else [self.text_pair[i] for i in indices]
        return TextSplit([self.text[i] for i in indices], [self.labels[i] for i in indices], pair)


@dataclass
class TextCorpus:
    """Labelled splits plus what the task is: label names, number of labels (1 = regression) and metrics."""

    name: str
    splits: dict[str, TextSplit]
    num_labels: int
    label_names: list[str] | None = None
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def subsample(self, sizes: dict[str, int | None], seed: int) -> TextCorpus:
        """Stratified subsample of each split to at most `sizes[split]` examples (None: keep all)."""
        splits = {}
        for name, split in self.splits.items():
            size = sizes.get(name)
            labels = [0] * len(split) if self.is_regression else split.labels
            splits[name] = split.take(stratified_subsample(labels, size, seed))
        return TextCorpus(self.name, splits, self.num_labels, self.label_names, self.metrics, dict(self.notes))


class TokenData:
    """Tokenised examples of one split; `batch` pads to the longest example in the batch."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: torch.Tensor, pad_id: int) -> None:
        self.encodings, self.labels, self.pad_id = encodings, labels, pad_id

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        width = max(len(self.encodings["input_ids"][i]) for i in indices)
        inputs = {}
        for key, rows in self.encodings.items():
            pad = self.pad_id if key == "input_ids" else 0
            inputs[key] = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in indices], dtype=torch.long)
        return {"inputs": inputs, "labels": self.labels[list(indices)]}

    def by_length(self) -> TokenData:
        """The same examples ordered by length: evaluation pads far less (metrics do not depend on order)."""
        order = sorted(range(len(self)), key=lambda i: len(self.encodings["input_ids"][i]))
        encodings = {key: [rows[i] for i in order] for key, rows in self.encodings.items()}
        return TokenData(encodings, self.labels[order], self.pad_id)

    def token_count(self) -> int:
        return sum(len(row) for row in self.encodings["input_ids"])


def tokenize(split: TextSplit, tokenizer: Any, max_length: int, regression: bool = False) -> TokenData:
    """Tokenise a split with truncation to `max_length` tokens and no padding (batches pad themselves)."""
    kwargs = {"truncation": True, "max_length": max_length, "padding": False}
    encoded = (
        tokenizer(split.text, **kwargs) if split.text_pair is None else tokenizer(split.text, split.text_pair, **kwargs)
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    labels = torch.tensor(split.labels, dtype=torch.float32 if regression else torch.long)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenData({k: list(encoded[k]) for k in keys}, labels, pad_id)
