"""The embedded image default: scikit-learn's 8×8 handwritten digits (1,797 images), split by class.

No pretrained ViT exists offline, so the protocol is made honest instead of pretending: a tiny ViT is pretrained on
digits 0–4 only, then each method adapts it to the *unseen* classes 5–9 (relabelled 0–4, with a fresh head).
Classes 0–4: 90/10 pretrain/held-out split. Classes 5–9: fixed stratified 60/20/20 train/validation/test split.
"""

from __future__ import annotations

import torch

from .images import ImageCorpus, ImageData
from .splits import stratified_split

SPLIT_SEED = 20241017
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
ADAPT_CLASSES = (5, 6, 7, 8, 9)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("the digits default needs scikit-learn (pip install scikit-learn), or pass --data") from exc
    bunch = load_digits()
    pixels = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N × 1 × 8 × 8 in [0, 1]
    return (pixels - 0.5) / 0.5, torch.tensor(bunch.target, dtype=torch.long)


def _classes(classes: tuple[int, ...], fractions: list[float], names: list[str]) -> ImageCorpus:
    pixels, labels = _digits()
    chosen = torch.isin(labels, torch.tensor(classes))
    pixels, labels = pixels[chosen], labels[chosen] - min(classes)
    parts = stratified_split(labels.tolist(), fractions, SPLIT_SEED)
    splits = {name: ImageData(pixels[part], labels[part]) for name, part in zip(names, parts, strict=True)}
    notes = {
        "protocol": f"digits {classes[0]}-{classes[-1]} (relabelled 0-{len(classes) - 1})",
        "sizes": {name: len(data) for name, data in splits.items()},
        "split_seed": SPLIT_SEED,
    }
    return ImageCorpus(
        f"digits{classes[0]}-{classes[-1]}", splits, len(classes), [str(c) for c in classes], notes=notes
    )


def pretrain_corpus() -> ImageCorpus:
    """Digits 0–4: 'train' and 'validation' (held out) for pretraining."""
    return _classes(PRETRAIN_CLASSES, [0.9, 0.1], ["train", "validation"])


def adapt_corpus() -> ImageCorpus:
    """Digits 5–9 (labels 0–4): 'train', 'validation', 'test' for adaptation."""
    return _classes(ADAPT_CLASSES, [0.6, 0.2, 0.2], ["train", "validation", "test"])
