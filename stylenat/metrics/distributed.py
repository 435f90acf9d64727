"""Sharding work across DDP ranks and gathering the features back, in sample order.

Every rank computes its own shard and then all ranks meet in the same collectives, so nobody waits
while another computes alone. Without an initialised process group everything degrades to one rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_local_leader() -> bool:
    """True on one rank per machine (``LOCAL_RANK`` 0, as set by torchrun and Lightning; else rank 0)."""
    rank, _ = rank_and_world()
    return int(os.environ.get("LOCAL_RANK", rank)) == 0


def shard(num_items: int, rank: int, world_size: int) -> range:
    """Contiguous share of ``range(num_items)`` for ``rank``; the last ranks get fewer (maybe none)."""
    per_rank = -(-num_items // world_size)
    return range(min(rank * per_rank, num_items), min((rank + 1) * per_rank, num_items))


def all_ranks_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (a collective: every rank must call it)."""
    _, world = rank_and_world()
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


T = TypeVar("T")


def own_share(work: Callable[[], T]) -> T:
    """Run this rank's share of the work; if it fails on any rank, every rank raises.

    Without this, a rank that hits a bad image would leave the others waiting in the next collective
    until the process group's timeout. (A collective: every rank must call it.)
    """
    try:
        result, error = work(), None
    except Exception as e:  # re-raised below, on this rank and (as a RuntimeError) on the others
        result, error = None, e
    if not all_ranks_agree(error is None):
        raise error or RuntimeError("another rank failed while computing its share; see that rank's log")
    return result


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_rows(rows: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``rows`` ``[n_rank, ...]`` (n may differ between ranks), in rank order."""
    device = _collective_device()
    world = dist.get_world_size()
    count = torch.tensor([len(rows)], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    padded = torch.zeros((int(max(counts).item()), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[:len(rows)] = rows.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [g[:int(c.item())].cpu() for g, c in zip(gathered, counts, strict=True)]


def gather_features(indices: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Assemble every rank's ``features`` ``[n, D]`` (rows at global ``indices`` ``[n]``) into ``[N, D]``.

    A collective: every rank calls it (with n = 0 if it had no work) and gets the full array. The
    indices of all ranks together must be exactly ``0 .. N-1``.
    """
    indices, features = np.asarray(indices, np.int64), np.asarray(features, np.float32)
    _, world = rank_and_world()
    if world > 1:
        indices = torch.cat(_all_gather_rows(torch.as_tensor(indices, dtype=torch.int64))).numpy()
        features = torch.cat(_all_gather_rows(torch.as_tensor(features, dtype=torch.float32))).numpy()
    if not np.array_equal(np.sort(indices), np.arange(len(indices))):
        raise RuntimeError(f"gathered sample indices are not a permutation of 0..{len(indices) - 1}")
    out = np.empty_like(features)
    out[indices] = features
    return out
