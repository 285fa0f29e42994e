"""The training sampler: endless, seeded, rank-sharded and resumable block indices."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class InfiniteBlockSampler(DistributedSampler):
    """Endless, deterministic, rank-sharded block indices, starting ``start`` samples in.

    Epoch ``e`` is ``randperm(n_blocks)`` seeded with ``seed + e`` (or ``0..n_blocks-1`` without shuffle), cut to
    a multiple of ``world_size``; rank ``r`` takes every ``world_size``-th index from ``r``. ``start`` is
    converted to an epoch and offset arithmetically, so resuming far into training costs nothing.

    It subclasses ``DistributedSampler`` only so that Lightning leaves it in place instead of wrapping it in
    its own distributed sampler. It has no length (it never ends), so neither does the DataLoader.
    """

    def __init__(
        self, n_blocks: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        super().__init__(range(n_blocks), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.n_blocks, self.start = n_blocks, start
        self.per_rank = n_blocks // world_size  # samples per rank and epoch
        if self.per_rank == 0:
            raise ValueError(
                f"{n_blocks} training blocks cannot be split over {world_size} ranks. "
                f"Fix: use more data or a smaller data.seq_len."
            )

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self.epoch_indices(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's block indices for one epoch, in order."""
        if self.shuffle:
            order = torch.randperm(self.n_blocks, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.n_blocks)
        return order[: self.per_rank * self.num_replicas][self.rank :: self.num_replicas]

    def __len__(self) -> int:
        raise TypeError("InfiniteBlockSampler never ends and has no length")  # Lightning reads this as "infinite"

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch follows from the position, not from Lightning's epoch counter."""
