"""Seeded stratified splitting and subsampling of labelled examples (pure index arithmetic, no dependencies)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _by_class(labels: Sequence[Hashable], rng: np.random.Generator) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return {label: [members[i] for i in rng.permutation(len(members))] for label, members in sorted(groups.items())}


def stratified_split(labels: Sequence[Hashable], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Split example indices into len(fractions) parts with the same class mix; fractions must sum to 1.

    Each class is shuffled with `seed` and cut at the cumulative fractions, so the split is fixed by the seed.
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    parts: list[list[int]] = [[] for _ in fractions]
    for members in _by_class(labels, np.random.default_rng(seed)).values():
        cuts = np.round(np.cumsum(fractions) * len(members)).astype(int)
        start = 0
        for part, stop in zip(parts, cuts, strict=True):
            part.extend(members[start:stop])
            start = stop
    return [sorted(part) for part in parts]


def stratified_subsample(labels: Sequence[Hashable], size: int | None, seed: int) -> list[int]:
    """`size` indices with (about) the class mix of `labels`; all indices when size is None or too large.

    The classes are interleaved in proportion, so a smaller subsample is a prefix of a larger one.
    """
    if size is None or size >= len(labels):
        return list(range(len(labels)))
    if size < 1:
        raise ValueError(f"subsample size must be >= 1, got {size}")
    groups = _by_class(labels, np.random.default_rng(seed))
    total = len(labels)
    # Order every example by its position inside its class, scaled to the class share: a stratified interleave.
    keyed = [
        ((rank + 0.5) * total / len(members), label_index, index)
        for label_index, members in enumerate(groups.values())
        for rank, index in enumerate(members)
    ]
    keyed.sort()
    return sorted(index for _, _, index in keyed[:size])
