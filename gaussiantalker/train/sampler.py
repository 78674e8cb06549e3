"""A resumable, seeded order of training frames.

The order is a pure function of (seed, stage, sample number): epoch ``e`` is a permutation drawn from a
generator seeded with ``(seed, stage, e)``, and batches are consecutive runs of it that continue into the
next epoch (every batch is full; no frame is dropped or repeated within an epoch, no batch is stale). So
the state is one number (samples consumed), and a data loader with worker processes may prefetch ahead
without disturbing what a checkpoint records.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

_STAGE_SALT = {"coarse": 1, "fine": 2}


class FrameOrder:
    """Indices ``0..n-1`` in epochs of seeded permutations.

    ``repeat``: how many times each frame appears in an epoch (default once each); an epoch is then a
    permutation of that multiset, ``sum(repeat)`` samples long."""

    def __init__(self, n: int, seed: int, stage: str, repeat: Sequence[int] | None = None) -> None:
        if n < 1:
            raise ValueError("the training split has no frames")
        if repeat is None:
            self._items = list(range(int(n)))
        else:
            if len(repeat) != int(n) or any(int(r) < 1 for r in repeat):
                raise ValueError(f"repeat must give every one of the {int(n)} frames a count >= 1")
            self._items = [i for i, r in enumerate(repeat) for _ in range(int(r))]
        self.n, self.seed, self.stage = len(self._items), int(seed), stage
        self._epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + _STAGE_SALT[self.stage] * 7919 + epoch)
                                              % (2 ** 63))
            self._perm = [self._items[i] for i in torch.randperm(self.n, generator=g).tolist()]
            self._epoch = epoch
        return self._perm

    def batch(self, start: int, size: int) -> list[int]:
        """Indices of samples ``start .. start+size-1``."""
        out = []
        for s in range(start, start + size):
            out.append(self._permutation(s // self.n)[s % self.n])
        return out


class BatchSampler:
    """Infinite batch sampler for ``torch.utils.data.DataLoader(batch_sampler=...)`` from sample ``start``.

    ``part=(lo, hi)``: yield only rows ``lo:hi`` of each global batch of ``batch_size`` (one rank's share in a
    data-parallel run: every rank walks the same global sequence and takes its own rows)."""

    def __init__(self, order: FrameOrder, batch_size: int, start: int = 0, part: tuple[int, int] | None = None) -> None:
        self.order, self.batch_size, self.start = order, int(batch_size), int(start)
        self.part = (0, self.batch_size) if part is None else (int(part[0]), int(part[1]))
        if not 0 <= self.part[0] < self.part[1] <= self.batch_size:
            raise ValueError(f"part {part} is not a non-empty row range of a batch of {self.batch_size}")

    def __iter__(self) -> Iterator[list[int]]:
        s = self.start
        lo, hi = self.part
        while True:
            yield self.order.batch(s + lo, hi - lo)
            s += self.batch_size


__all__ = ["BatchSampler", "FrameOrder"]
