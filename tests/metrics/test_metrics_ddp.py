"""Two gloo ranks on CPU: sharded sampling and dataset features gather to the single-process result."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from metrics_helpers import RES, Z_DIM, TinyGenerator, random_images, tiny_extractor, write_pngs

from stylenat.metrics import (ImageFiles, dataset_features, evaluate_generator, generator_features,
                              path_reference_stats)

WORLD = 2
NUM_SAMPLES = 11  # uneven shards: 6 + 5
NUM_REAL = 13     # 7 + 6


def compute(folder, run_dir, verbose=False):
    ext = tiny_extractor()
    gen = generator_features(TinyGenerator(), ext, num_samples=NUM_SAMPLES, seed=2, z_dim=Z_DIM, batch_size=4,
                             verbose=verbose)
    data = dataset_features(ImageFiles(folder), ext, batch_size=3, verbose=verbose)
    stream = dataset_features((img for img in ImageFiles(folder)), ext, batch_size=3, verbose=verbose)
    reference = path_reference_stats(folder, extractor=ext, resolution=RES, verbose=verbose)
    records = evaluate_generator(TinyGenerator(), reference, extractor=ext, num_samples=NUM_SAMPLES, seed=2,
                                 z_dim=Z_DIM, batch_size=4, kid=True, kid_subsets=3, run_dir=run_dir,
                                 verbose=verbose)
    return dict(gen=gen, data=data, stream=stream, ref_mu=reference.mu, values=[r["value"] for r in records])


def fails_on_rank_1(z):
    if dist.get_rank() == 1:
        raise ValueError("broken on rank 1")
    return TinyGenerator()(z)


def worker(rank, tmp_path, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=rank, world_size=WORLD)
    try:
        results = compute(folder, tmp_path / "run", verbose=rank == 0)
        try:  # a failure on one rank must reach every rank instead of leaving them waiting in a collective
            generator_features(fails_on_rank_1, tiny_extractor(), num_samples=4, z_dim=Z_DIM, verbose=False)
        except (ValueError, RuntimeError) as e:
            results["error"] = f"{type(e).__name__}: {e}"
        np.savez(tmp_path / f"rank{rank}.npz", **results)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_ranks_match_one(tmp_path, monkeypatch):
    folder = write_pngs(tmp_path / "real", random_images(NUM_REAL, seed=3))
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path / "single-cache"))
    expected = compute(folder, tmp_path / "single")
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path / "ddp-cache"))  # the ranks compute the statistics too
    mp.spawn(worker, args=(tmp_path, folder), nprocs=WORLD, join=True)
    assert len(list((tmp_path / "ddp-cache" / "stats").glob("*.npz"))) == 1
    for rank in range(WORLD):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-7, err_msg=f"rank {rank}: {key}")
    assert str(np.load(tmp_path / "rank0.npz")["error"]).startswith("RuntimeError: another rank failed")
    assert str(np.load(tmp_path / "rank1.npz")["error"]) == "ValueError: broken on rank 1"
    for metric in ("fd_tiny11", "kd_tiny11"):
        records = [json.loads(line) for line in (tmp_path / "run" / f"metric-{metric}.jsonl").read_text().splitlines()]
        assert len(records) == 1 and records[0]["world_size"] == WORLD  # only rank 0 writes
