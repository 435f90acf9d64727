"""MetricsCallback: a real (tiny) Trainer run, and the best-checkpoint logic on scripted metric values."""

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from stylenat.models.generator import create_generator
from stylenat.training import metrics_callback
from stylenat.training.metrics_callback import MetricsCallback

sys.path.insert(0, str(Path(__file__).parents[1] / "metrics"))
from metrics_helpers import TinyClassifier, random_images, tiny_extractor, write_pngs  # noqa: E402  (the metrics tests' tiny net)


def tiny_factory(mode, device):
    """An extractor factory as a YAML config names it: ``extractor: "package.module:function"``."""
    return TinyClassifier(mode)


@pytest.fixture(autouse=True)
def offline(offline_metrics):
    """See ``offline_metrics`` in tests/conftest.py."""


class DummyGAN(LightningModule):
    """What the callback needs of the GAN module: ``G_ema`` and ``cur_nimg`` (here: 8 images a step)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.G_ema = create_generator("demo")
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.cur_nimg = 0

    def training_step(self, batch, batch_idx):
        self.cur_nimg += len(batch[0])
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)


def test_trainer_run_logs_records_and_keeps_the_best(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    real = write_pngs(tmp_path / "real", random_images(16, seed=0, res=32))
    callback = MetricsCallback(metrics=["fid", "kid", "readable"], every_kimg=0.016, num_samples_during=8, num_samples_final=12,
                               ref_data=str(real), extractor=f"{__name__}:tiny_factory", batch_size=8)
    module = DummyGAN()
    w_avg = module.G_ema.mapping.w_avg.clone()
    trainer = Trainer(max_steps=4, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="run"),
                      callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, DataLoader(TensorDataset(torch.zeros(32, 1)), batch_size=8))

    run_dir = Path(trainer.log_dir)
    during = [json.loads(line) for line in (run_dir / "metric-fd_tiny8.jsonl").read_text().splitlines()]
    assert [r["cur_nimg"] for r in during] == [16, 32]  # every 16 images, counted by cur_nimg
    assert during[0]["value"] == during[1]["value"] > 0  # G_ema did not change
    assert (during[0]["seed"], during[0]["truncation"], during[0]["extractor"]) == (0, 1.0, "tiny")
    assert len((run_dir / "metric-kd_tiny8.jsonl").read_text().splitlines()) == 2
    readable = [json.loads(line) for line in (run_dir / "metric-readable_tiny8.jsonl").read_text().splitlines()]
    assert [r["cur_nimg"] for r in readable] == [16, 32] and len(readable[0]["class_shares"]) == 4
    final, = [json.loads(line) for line in (run_dir / "metric-fd_tiny12.jsonl").read_text().splitlines()]
    assert final["cur_nimg"] == 32 and final["num_samples"] == 12

    events = EventAccumulator(str(run_dir)).Reload()
    assert [e.value for e in events.Scalars("metrics/fd_tiny8")] == pytest.approx([r["value"] for r in during])
    assert [e.step for e in events.Scalars("metrics/fd_tiny8")] == [2, 4]
    assert "metrics/kd_tiny12" in events.Tags()["scalars"]
    assert [e.value for e in events.Scalars("metrics/readable_tiny8")] == pytest.approx([r["value"] for r in readable])
    assert readable[0]["reference_value"] > 0  # so the ratio to the reals is logged too
    assert events.Scalars("metrics/readable_tiny8_relative")[0].value == pytest.approx(readable[0]["relative"])

    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)
    assert "optimizer_states" in best  # a full, resumable checkpoint, asked for so Lightning stays quiet about it
    assert not [r.getMessage() for r in caplog.records if "weights_only" in r.getMessage()]
    assert best["callbacks"][callback.state_key] == {"best": during[0]["value"], "run_id": callback.run_id}
    assert {r["run_id"] for r in during} == {callback.run_id}
    assert torch.equal(module.G_ema.mapping.w_avg, w_avg)  # sampled in eval mode: no w_avg update
    assert module.G_ema.training  # and put back in the mode it was in


def test_best_checkpoint_only_when_the_metric_improves(monkeypatch, tmp_path):
    """Scripted values 5, 7, 3 save at 5 and 3; a callback restored from that state does not save at 4."""
    values = iter([5.0, 7.0, 3.0, 4.0])

    def fake_evaluate(generator, reference, *, num_samples, **kwargs):
        return [{"metric": f"fd_tiny{num_samples}", "value": next(values), "extractor": "tiny"}]

    monkeypatch.setattr(metrics_callback, "evaluate_generator", fake_evaluate)
    monkeypatch.setattr(metrics_callback, "build_reference",
                        lambda *args, **kwargs: SimpleNamespace(covers_dataset=False))
    saved, logged = [], []
    trainer = SimpleNamespace(global_step=0, datamodule=None, is_global_zero=True,
                              save_checkpoint=lambda path, weights_only: saved.append((path, callback.best)),
                              loggers=[SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics))])
    module = SimpleNamespace(G_ema=create_generator("demo"), cur_nimg=0, device=torch.device("cpu"))

    callback = MetricsCallback(every_kimg=1, num_samples_during=10, ref_data="unused", extractor=tiny_extractor(),
                               run_dir=str(tmp_path))
    callback.on_train_start(trainer, module)
    for cur_nimg in (500, 1000, 1500, 2000, 2500, 3000):  # evaluations at 1000, 2000 and 3000
        module.cur_nimg = cur_nimg
        callback.on_train_batch_end(trainer, module, None, None, 0)
    assert saved == [(tmp_path / "checkpoints" / "best.ckpt", 5.0), (tmp_path / "checkpoints" / "best.ckpt", 3.0)]
    assert logged == [{"metrics/fd_tiny10": v} for v in (5.0, 7.0, 3.0)]

    resumed = MetricsCallback(every_kimg=1, num_samples_during=10, ref_data="unused", extractor=tiny_extractor(),
                              run_dir=str(tmp_path))
    resumed.load_state_dict(callback.state_dict())
    resumed.on_train_start(trainer, module)  # cur_nimg 3000: the next evaluation comes at 4000
    module.cur_nimg = 3999
    resumed.on_train_batch_end(trainer, module, None, None, 0)
    module.cur_nimg = 4000
    resumed.on_train_batch_end(trainer, module, None, None, 0)
    assert len(saved) == 2 and resumed.best == 3.0 and len(logged) == 4


@pytest.mark.parametrize("total_nimg, num_samples_final, expected", [
    (2000, 10, [(1000, 10), (2000, 10)]),  # the periodic evaluation at the end already measured these samples
    (2000, 20, [(1000, 10), (2000, 10), (2000, 20)]),  # more samples at the end: measured again
    (2500, 10, [(1000, 10), (2000, 10), (2500, 10)]),  # the end falls between evaluations
])
def test_final_evaluation_is_not_a_repeat_of_the_last_one(monkeypatch, tmp_path, total_nimg, num_samples_final,
                                                          expected):
    measured = []

    def fake_evaluate(generator, reference, *, num_samples, cur_nimg, **kwargs):
        measured.append((cur_nimg, num_samples))
        return [{"metric": f"fd_tiny{num_samples}", "value": 1.0, "extractor": "tiny"}]

    monkeypatch.setattr(metrics_callback, "evaluate_generator", fake_evaluate)
    monkeypatch.setattr(metrics_callback, "build_reference",
                        lambda *args, **kwargs: SimpleNamespace(covers_dataset=False))
    trainer = SimpleNamespace(global_step=0, datamodule=None, is_global_zero=True,
                              save_checkpoint=lambda path, weights_only: None, loggers=[])
    module = SimpleNamespace(G_ema=create_generator("demo"), cur_nimg=0, device=torch.device("cpu"))
    callback = MetricsCallback(every_kimg=1, num_samples_during=10, num_samples_final=num_samples_final,
                               ref_data="unused", extractor=tiny_extractor(), run_dir=str(tmp_path))
    callback.on_train_start(trainer, module)
    for cur_nimg in range(500, total_nimg + 1, 500):
        module.cur_nimg = cur_nimg
        callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_train_end(trainer, module)
    assert measured == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(metrics=["fid", "is"], ref_data="d"), "metrics must be distinct entries"),
    (dict(metrics=[], ref_data="d"), "metrics must be distinct entries"),
    (dict(), "exactly one of ref"),
    (dict(ref="ffhq:256:trainval70k", ref_data="d"), "exactly one of ref"),
    (dict(metrics=["fid", "kid"], ref="ffhq:256:trainval70k"), "kid needs the reference features"),
    (dict(metrics=["fid", "readable"], ref="ffhq:256:trainval70k"), "readable needs the reference features"),
    (dict(metrics=["readable", "fid"], ref_data="d"), "list fid or kid before readable"),
    (dict(ref_data="d", every_kimg=0), "every_kimg > 0"),
])
def test_option_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetricsCallback(**kwargs)


def test_stylenat_paper_protocol_in_training(tmp_path):
    real = write_pngs(tmp_path / "real", random_images(16, seed=0, res=32))
    callback = MetricsCallback(every_kimg=0.016, num_samples_during=8, num_samples_final=0, protocol="stylenat-paper",
                               ref_data=str(real), ref_subset=8, extractor=f"{__name__}:tiny_factory", batch_size=8,
                               run_dir=str(tmp_path / "run"), monitor_best=False)
    assert (callback.mode, callback.truncation) == ("legacy_pytorch", 1.0)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, callbacks=[callback], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DummyGAN(), DataLoader(TensorDataset(torch.zeros(16, 1)), batch_size=8))
    record, = [json.loads(line) for line in (tmp_path / "run" / "metric-fd_tiny8.jsonl").read_text().splitlines()]
    assert (record["protocol"], record["mode"], record["truncation"]) == ("stylenat-paper", "legacy_pytorch", 1.0)
    assert record["reference_images"] == 8 and record["reference_subset"]["seed"] == 0
    with pytest.raises(ValueError, match=r"give the dataset \(ref_data\) instead of named statistics \(ref\)"):
        MetricsCallback(protocol="stylenat-paper", ref="ffhq:256:trainval70k")
    with pytest.raises(ValueError, match="measures in mode legacy_pytorch, not clean: drop mode"):
        MetricsCallback(protocol="stylenat-paper", ref_data="d", mode="clean")
