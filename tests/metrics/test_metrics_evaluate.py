"""End to end: a tiny generator against a folder of real images, checked against clean-fid itself."""

import json

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid
from metrics_helpers import RES, Z_DIM, TinyGenerator, TinyNet, random_images, tiny_extractor, write_pngs

from stylenat.metrics import (ReferenceStats, evaluate_features, evaluate_generator, kernel_distance,
                              path_reference_stats, to_uint8, z_from_seeds)

N = 48


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # clean-fid's sqrtm call
def test_generator_against_folder_matches_cleanfid(tmp_path):
    gen, ext = TinyGenerator(), tiny_extractor()
    real = write_pngs(tmp_path / "real", random_images(N, seed=0))  # N on both sides: KID uses every row
    with torch.no_grad():  # the same samples, saved as PNGs the way `generate` would
        fakes = to_uint8(gen(z_from_seeds(range(3, 3 + N), Z_DIM)))
    fake = write_pngs(tmp_path / "fake", fakes.permute(0, 2, 3, 1).numpy())

    reference = path_reference_stats(real, extractor=ext, resolution=RES, batch_size=16, verbose=False)
    run = tmp_path / "run"
    records = evaluate_generator(gen, reference, extractor=ext, num_samples=N, seed=3, z_dim=Z_DIM, batch_size=16,
                                 kid=True, kid_subsets=1, checkpoint="run/g.pt", cur_nimg=12_000, run_dir=run,
                                 verbose=False)

    cpu = torch.device("cpu")
    expected_fd = cleanfid.compute_fid(str(fake), str(real), mode="clean", custom_feat_extractor=TinyNet().eval(),
                                       num_workers=0, batch_size=16, device=cpu, verbose=False,
                                       use_dataparallel=False)
    fake_feats, real_feats = (cleanfid.get_folder_features(str(d), TinyNet().eval(), num_workers=0, device=cpu,
                                                           mode="clean", verbose=False) for d in (fake, real))
    expected_kd = cleanfid.kernel_distance(real_feats, fake_feats, num_subsets=1, max_subset_size=1000)
    fd, kd = records
    assert fd["metric"] == "fd_tiny48" and kd["metric"] == "kd_tiny48"
    assert fd["value"] > 0.01
    assert fd["value"] == pytest.approx(expected_fd, rel=1e-4)
    assert kd["value"] == pytest.approx(expected_kd, rel=1e-4, abs=1e-9)
    assert kd["value"] == pytest.approx(kernel_distance(real_feats, fake_feats, 1), rel=1e-4, abs=1e-9)

    for record in records:
        lines = (run / f"metric-{record['metric']}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [record]
    assert fd | {"wall_time_s": 0, "timestamp": 0} == {
        "metric": "fd_tiny48", "value": fd["value"], "extractor": "tiny", "mode": "clean", "protocol": None,
        "reference": reference.label, "reference_source": str(real), "reference_images": N,
        "reference_subset": None,
        "num_samples": N, "seed": 3, "truncation": 1.0, "checkpoint": "run/g.pt", "cur_nimg": 12_000,
        "kimg": 12.0, "world_size": 1, "run_id": fd["run_id"], "wall_time_s": 0, "timestamp": 0}
    assert len(fd["run_id"]) == 12 and kd["run_id"] == fd["run_id"]  # one evaluation, one run id
    assert kd["kid_subsets"] == 1 and kd["kid_subset_size"] == 1000


def fake_reference(features=None, extractor="tiny", mode="clean"):
    feats = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    mu, sigma = np.mean(feats, 0), np.cov(feats, rowvar=False)
    return ReferenceStats(mu, sigma, features, label="ffhq_256_trainval70k", extractor=extractor, mode=mode,
                          resolution=RES)


def test_records_append_one_line_per_evaluation(tmp_path):
    feats = np.random.default_rng(1).standard_normal((1000, 8)).astype(np.float32)
    for cur_nimg in (0, 4000):
        evaluate_features(feats, fake_reference(), extractor=tiny_extractor(), cur_nimg=cur_nimg, run_dir=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metric-fd_tiny1k.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in lines] == [0.0, 4.0]
    assert lines[0]["seed"] is None and lines[0]["reference"] == "ffhq_256_trainval70k"


def test_kid_without_reference_features_fails_before_sampling():
    called = []

    def generator(z):
        called.append(z)
        return torch.zeros(len(z), 3, RES, RES)

    with pytest.raises(ValueError, match="KID needs the reference features"):
        evaluate_generator(generator, fake_reference(), extractor=tiny_extractor(), num_samples=4, z_dim=Z_DIM,
                           kid=True, verbose=False)
    assert called == []


@pytest.mark.parametrize("extractor,mode", [("inception_v3", "clean"), ("tiny", "legacy_tensorflow")])
def test_reference_from_another_protocol_is_refused(extractor, mode):
    with pytest.raises(ValueError, match="hold .* features, but the extractor is tiny/clean"):
        evaluate_generator(TinyGenerator(), fake_reference(extractor=extractor, mode=mode),
                           extractor=tiny_extractor(), num_samples=4, z_dim=Z_DIM, verbose=False)
