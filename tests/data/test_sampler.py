"""InfiniteSampler: epochs advance, deterministic, DDP shards, exact save/restore."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stylenat.data import InfiniteSampler


def take(sampler: InfiniteSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_epoch_advances_every_pass():
    sampler = InfiniteSampler(10, seed=3)
    stream = take(sampler, 25)
    first, second, third = stream[:10], stream[10:20], stream[20:]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # a fresh permutation each epoch
    assert (sampler.epoch, sampler.position) == (2, 5)
    assert third == sampler.epoch_indices(2)[:5]


def test_deterministic_given_seed():
    assert take(InfiniteSampler(50, seed=7), 120) == take(InfiniteSampler(50, seed=7), 120)
    assert take(InfiniteSampler(50, seed=7), 50) != take(InfiniteSampler(50, seed=8), 50)
    assert take(InfiniteSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("size, world_size", [(12, 3), (10, 3), (7, 4), (2, 4)])
def test_shards_are_disjoint_and_cover_each_epoch(size, world_size):
    for epoch in (0, 1, 5):
        shards = [InfiniteSampler(size, rank=r, world_size=world_size, seed=1).epoch_indices(epoch)
                  for r in range(world_size)]
        per_rank = -(-size // world_size)
        assert all(len(s) == per_rank for s in shards)
        combined = [i for s in shards for i in s]
        assert set(combined) == set(range(size))  # covering
        assert len(combined) - len(set(combined)) == per_rank * world_size - size  # only the padding repeats


def test_state_restore_reproduces_the_remaining_order():
    reference = take(InfiniteSampler(10, seed=5), 40)
    sampler = InfiniteSampler(10, seed=5)
    assert take(sampler, 13) == reference[:13]
    state = sampler.state_dict()
    assert state == {"epoch": 1, "position": 3, "size": 10, "world_size": 1}
    resumed = InfiniteSampler(10, seed=5)
    resumed.load_state_dict(state)
    assert take(resumed, 27) == reference[13:]
    assert resumed.state_after(27) == resumed.state_dict() == {"epoch": 4, "position": 0, "size": 10, "world_size": 1}


def test_state_after_counts_consumed_not_prefetched():
    sampler = InfiniteSampler(10, seed=5)
    take(sampler, 16)  # a DataLoader ran ahead of the training loop
    assert sampler.state_after(4) == {"epoch": 0, "position": 4, "size": 10, "world_size": 1}


def test_changed_world_size_or_dataset_warns():
    sampler = InfiniteSampler(12, rank=0, world_size=2)
    with pytest.warns(UserWarning, match="world size 4, resuming with 2"):
        sampler.load_state_dict({"epoch": 3, "position": 2, "size": 12, "world_size": 4})
    assert (sampler.epoch, sampler.position) == (3, 4)
    with pytest.warns(UserWarning, match="dataset of 11 items, this one has 12: restarting epoch 3"):
        sampler.load_state_dict({"epoch": 3, "position": 2, "size": 11, "world_size": 2})
    assert (sampler.epoch, sampler.position) == (3, 0)


def test_is_endless_and_says_how_to_use_it_under_ddp():
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        len(InfiniteSampler(4))
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got 2"):
        InfiniteSampler(4, rank=2, world_size=2)


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sampler = InfiniteSampler(10, seed=2)  # rank and world size from torch.distributed
        torch.save((sampler.rank, sampler.world_size, take(sampler, 10)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rank_and_world_size_come_from_torch_distributed(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [(r, w) for r, w, _ in results] == [(0, 2), (1, 2)]
    first_epoch = [set(stream[:5]) for _, _, stream in results]
    assert not first_epoch[0] & first_epoch[1] and first_epoch[0] | first_epoch[1] == set(range(10))
    assert results[0][2][5:] == InfiniteSampler(10, seed=2, rank=0, world_size=2).epoch_indices(1)
