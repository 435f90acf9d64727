"""``InfiniteSampler``: the endless, distributed, resumable index stream GAN training reads.

Epoch ``e`` is one pass over the data: a permutation drawn from ``(seed, e)``, padded by wrapping to a
multiple of the world size, rank ``r`` taking every ``world_size``-th index from position ``r`` (the
layout of torch's ``DistributedSampler``). Unlike the reference code, whose sampler sat in epoch 0
forever under DDP, the epoch advances by itself at the end of every pass.

State is ``(epoch, position)``: the next index is ``epoch_indices(epoch)[position]``. ``state_dict``
reports how far the sampler has *handed out* indices; DataLoader workers prefetch, so a trainer that
knows how many samples it has *consumed* since the state was loaded asks ``state_after(n)`` instead
(``StyleNATDataModule`` does).

The sampler has no ``set_epoch`` on purpose: Lightning calls that with its own epoch counter, which
stays 0 for an endless stream. Under DDP, give the Trainer ``use_distributed_sampler=False`` so Lightning
does not wrap it (it shards itself).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _distributed_default(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


class InfiniteSampler(Sampler[int]):
    """Yields dataset indices in ``[0, size)`` forever, one rank's share of each epoch after another.

    Args:
        size: dataset length (count mirrored copies: ``len(dataset)``).
        shuffle: a fresh permutation per epoch; False gives ``0..size-1`` every epoch.
        seed: the same seed gives the same stream on every run.
        rank, world_size: this process's shard; default to ``torch.distributed`` when initialized,
            else 0 and 1.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = _distributed_default(rank, world_size)
        self.epoch = self.position = 0
        self._start = (0, 0)  # (epoch, position) at construction or the last load_state_dict

    @property
    def samples_per_epoch(self) -> int:
        """Indices this rank yields per epoch: ``ceil(size / world_size)``."""
        return math.ceil(self.size / self.world_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order (``samples_per_epoch`` of them)."""
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = list(range(self.size))
        total = self.samples_per_epoch * self.world_size
        order = (order * math.ceil(total / self.size))[:total]  # pad by wrapping
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        """Continue from the current ``(epoch, position)``, forever."""
        while True:
            indices = self.epoch_indices(self.epoch)
            while self.position < len(indices):
                self.position += 1
                yield indices[self.position - 1]
            self.epoch, self.position = self.epoch + 1, 0

    def __len__(self) -> int:
        raise TypeError("InfiniteSampler is endless and has no length. Under DDP it shards itself: "
                        "pass use_distributed_sampler=False to the Lightning Trainer")

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "size", "world_size"}`` after the indices handed out so far."""
        return self._state(self.epoch, self.position)

    def state_after(self, num_samples: int) -> dict[str, int]:
        """The state once ``num_samples`` indices past construction or the last load are consumed."""
        return self._state(self._start[0], self._start[1] + num_samples)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``. A different world size maps the position through the global sample count;
        a different dataset size restarts the saved epoch from its beginning. Both warn."""
        epoch, position = state["epoch"], state["position"]
        if state["size"] != self.size:
            warnings.warn(f"data order saved for a dataset of {state['size']} items, this one has {self.size}: "
                          f"restarting epoch {epoch} from its beginning", stacklevel=2)
            position = 0
        elif state["world_size"] != self.world_size:
            warnings.warn(f"data order saved with world size {state['world_size']}, resuming with "
                          f"{self.world_size}: continuing epoch {epoch} at the same global sample count",
                          stacklevel=2)
            position = min(position * state["world_size"] // self.world_size, self.samples_per_epoch)
        self.epoch, self.position = epoch, position
        self._start = (epoch, position)

    def _state(self, epoch: int, position: int) -> dict[str, int]:
        epoch, position = epoch + position // self.samples_per_epoch, position % self.samples_per_epoch
        return {"epoch": epoch, "position": position, "size": self.size, "world_size": self.world_size}
