"""A seeded, shardable, resumable stream of sample indices.

Pass ``c`` (0, 1, 2, ...) over a set of ``n`` samples is ``randperm(n)`` from a generator
seeded with ``(seed, c)``, cut to a multiple of ``world``, dealt round-robin to the ranks
and cut to a multiple of ``batch`` per rank (each pass is a whole number of steps, so a
primary "epoch" is one pass). The stream is a pure function of ``(seed, rank, position)``,
so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["StreamSampler"]


class StreamSampler(Sampler[int]):
    """Infinite index stream for one rank, starting ``start_batch`` batches in."""

    def __init__(
        self, n: int, batch: int, *, seed: int, rank: int = 0, world: int = 1, start_batch: int = 0
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        if batch < 1 or start_batch < 0:
            raise ValueError(f"need batch >= 1 and start_batch >= 0, got {batch}, {start_batch}")
        per_rank = n // world
        if per_rank < batch:
            raise ValueError(
                f"a set of {n} samples gives {per_rank} per rank ({world} ranks), fewer than "
                f"one batch of {batch}"
            )
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.steps_per_pass = per_rank // batch
        self.start_batch = start_batch

    def _pass(self, c: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        perm = torch.randperm(self.n, generator=gen)[: self.n - self.n % self.world]
        return perm[self.rank :: self.world][: self.steps_per_pass * self.batch]

    def __iter__(self) -> Iterator[int]:
        c, offset = divmod(self.start_batch, self.steps_per_pass)
        offset *= self.batch
        while True:
            yield from self._pass(c)[offset:].tolist()
            c, offset = c + 1, 0
