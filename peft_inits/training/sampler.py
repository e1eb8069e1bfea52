"""Data order as a pure function of the step: resuming at step k needs only k, never a saved iterator."""

from __future__ import annotations

import torch


class StepSampler:
    """Indices of the batch of any optimisation step.

    Epoch e is a permutation seeded by (seed, e); step s takes the next `global_batch` indices of its epoch (the
    incomplete tail of an epoch is dropped). With several processes each takes an interleaved share of the global
    batch, so the union over processes is the same as a single-process run's batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        global_batch = batch_size * world
        if size < global_batch:
            raise ValueError(
                f"the training set has {size} examples, fewer than one batch of {global_batch}; "
                "lower --batch-size or add data"
            )
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.steps_per_epoch = size // global_batch
        self._cache: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.size, generator=generator))
        return self._cache[1]

    def indices(self, step: int) -> list[int]:
        """Indices (into the dataset) of this process's share of the batch of 0-based step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        global_batch = self.batch_size * self.world
        chunk = self._permutation(epoch)[position * global_batch : (position + 1) * global_batch]
        return chunk[self.rank :: self.world].tolist()

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch
