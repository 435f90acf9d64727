"""FID / KID of ``G_ema`` while training: a Lightning callback (StyleGAN's metrics at snapshot ticks).

    trainer:
      callbacks:
        - class_path: stylenat.training.metrics_callback.MetricsCallback
          init_args: {metrics: [fid], every_kimg: 500, ref: "ffhq:256:trainval70k"}

Progress is the LightningModule's ``cur_nimg`` (real images shown to D), not the global step. Each time it
passes a multiple of ``every_kimg`` thousand, ``num_samples_during`` images of ``pl_module.G_ema`` (seeds
``seed + i``, truncation ``truncation``) are measured against the reference statistics; at the end of
training, ``num_samples_final`` of them (unless the last periodic evaluation measured the same images). Every
rank takes part (the metrics package shares the sampling out under DDP and gathers the features). Each record
is logged to the trainer's loggers as ``metrics/<name>`` at the global step and appended (rank 0) to
``<run_dir>/metric-<name>.jsonl`` with its full protocol. With ``monitor_best``, whenever the first configured
metric of a periodic evaluation improves, ``<run_dir>/checkpoints/best.ckpt`` is written through
``trainer.save_checkpoint``. The best value and the run id that every record carries are part of the
callback's checkpointed state, so a resumed run keeps comparing against the best and an evaluation it redoes
supersedes the earlier record (:func:`stylenat.metrics.read_metric_records`).

Metric words: ``"fid"`` is the Fréchet distance (measured at every evaluation), ``"kid"`` the kernel
distance, both in the extractor's features; ``"readable"`` the share of samples a classifier extractor is
sure of, next to the reference images' share, with the class histogram (:mod:`stylenat.metrics.readability`;
logged as ``metrics/readable_<name>`` and ``metrics/readable_<name>_relative``). Only clean-fid's Inception
gives records called ``fid10k`` / ``kid10k`` (``fid10k_full`` against a full dataset); another extractor (for
offline CPU runs: ``extractor="package.module:function"``, see :func:`stylenat.metrics.build_extractor`)
labels them with its own name, e.g. ``fd_nat_digits10k``.

``protocol="stylenat-paper"`` measures as the paper did (:mod:`stylenat.metrics.protocols`): mode
``legacy_pytorch``, psi 1, against a seeded random 50k of ``ref_data``. G_ema is sampled with TF32 off
(restored afterwards), so a number logged here equals ``stylenat fid`` on the same checkpoint. When the
training data is a ``stylenat prepare`` zip whose resize filter differs from the reference statistics', a
warning says so once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from stylenat.data.prepare import prepared_filter
from stylenat.metrics import FeatureExtractor, ReferenceStats, evaluate_generator, metric_name
from stylenat.metrics import (build_extractor, build_reference, new_run_id, resolve_protocol,
                              warn_if_filters_differ)

METRIC_KINDS = {"fid": "fd", "kid": "kd", "readable": "readable"}
BEST_CHECKPOINT = Path("checkpoints") / "best.ckpt"


class MetricsCallback(Callback):
    """Measure ``pl_module.G_ema`` every ``every_kimg`` and at the end; log, record, keep the best.

    The LightningModule must have ``G_ema`` (a :class:`~stylenat.models.generator.Generator`) and
    ``cur_nimg`` (an int counter of real images shown).

    Args:
        metrics: ``"fid"``, ``"kid"`` and/or ``"readable"``; the first (a distance) is the one ``monitor_best``
            watches.
        every_kimg: evaluate each time ``cur_nimg`` passes a multiple of this many thousand images.
        num_samples_during: samples per periodic evaluation.
        num_samples_final: samples of the evaluation at the end of training (0: none).
        ref: clean-fid's named statistics ``NAME:RESOLUTION:SPLIT`` (Inception only, FID only).
        ref_data: a dataset (folder or zip) whose statistics are computed once and cached; exactly one
            of ``ref`` and ``ref_data``.
        protocol: None, or a fixed protocol (``"stylenat-paper"``) that sets ``mode``, ``truncation`` and the
            reference subset.
        ref_subset, ref_subset_seed: use a random ``ref_subset`` of the ``ref_data`` images drawn with this seed
            (default: all images; the protocol's 50k, seed 0).
        mode: clean-fid mode of the Inception extractor (default ``clean``, or the protocol's).
        extractor: None / ``"inception"``, a factory ``"package.module:function"``, or an extractor object.
        inception_weights: the Inception weights file or its folder (else looked up, then downloaded).
        seed: sample ``i`` uses seed ``seed + i``.
        truncation: psi applied to the samples (recorded with the metric; default 1).
        batch_size: images per generator / extractor batch.
        monitor_best: save ``<run_dir>/checkpoints/best.ckpt`` when the first metric improves.
        run_dir: folder of the JSONL records and of the best checkpoint (default: the trainer's log_dir).
    """

    def __init__(self, metrics: Sequence[str] = ("fid",), every_kimg: float = 500, num_samples_during: int = 10_000,
                 num_samples_final: int = 50_000, ref: str | None = None, ref_data: str | None = None,
                 protocol: str | None = None, ref_subset: int | None = None, ref_subset_seed: int | None = None,
                 mode: str | None = None, extractor: str | FeatureExtractor | None = None,
                 inception_weights: str | None = None, seed: int = 0, truncation: float | None = None,
                 batch_size: int = 32, monitor_best: bool = True, run_dir: str | None = None):
        super().__init__()
        metrics = list(metrics)
        if not metrics or any(m not in METRIC_KINDS for m in metrics) or len(set(metrics)) < len(metrics):
            raise ValueError(f"metrics must be distinct entries of {sorted(METRIC_KINDS)}, got {metrics}")
        if (ref is None) == (ref_data is None):
            raise ValueError("give exactly one of ref (named statistics such as 'ffhq:256:trainval70k') and ref_data "
                             f"(a dataset), got ref={ref!r}, ref_data={ref_data!r}")
        if metrics and metrics[0] == "readable":
            raise ValueError(f"the first metric is the distance monitor_best watches: list fid or kid before "
                             f"readable, got {metrics}")
        for needs_features in ("kid", "readable"):
            if needs_features in metrics and ref is not None:
                raise ValueError(f"{needs_features} needs the reference features, which clean-fid's named "
                                 "statistics lack: use ref_data")
        if every_kimg <= 0 or num_samples_during < 2 or num_samples_final < 0 or batch_size < 1:
            raise ValueError(f"need every_kimg > 0, num_samples_during >= 2, num_samples_final >= 0 and batch_size "
                             f">= 1, got {every_kimg}, {num_samples_during}, {num_samples_final}, {batch_size}")
        self.settings = resolve_protocol(protocol, mode=mode, truncation=truncation, ref=ref, ref_subset=ref_subset,
                                         ref_subset_seed=ref_subset_seed)
        self.metrics, self.every_kimg = metrics, every_kimg
        self.num_samples_during, self.num_samples_final = num_samples_during, num_samples_final
        self.ref, self.ref_data, self.mode = ref, ref_data, self.settings.mode
        self.extractor_spec, self.inception_weights = extractor, inception_weights
        self.seed, self.truncation, self.batch_size = seed, self.settings.truncation, batch_size
        self.monitor_best, self.run_dir = monitor_best, None if run_dir is None else Path(run_dir)
        self.best = math.inf
        self.run_id = new_run_id()
        self._tick = 0  # evaluations happen when cur_nimg // every_nimg passes this
        self._last_measured: tuple[int, int] | None = None  # (cur_nimg, num_samples) of the last evaluation
        self._extractor: FeatureExtractor | None = None
        self._reference: ReferenceStats | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metrics=self.metrics, ref=self.ref, ref_data=self.ref_data)

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST_CHECKPOINT

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.run_id = state_dict.get("run_id", self.run_id)  # checkpoints from before run ids had none

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.run_dir is None:  # every rank calls setup, and log_dir is broadcast from rank 0
            self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._tick = self._tick_of(pl_module)  # a resumed run starts from its restored cur_nimg

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        tick = self._tick_of(pl_module)
        if tick <= self._tick:
            return
        self._tick = tick
        records = self.evaluate(trainer, pl_module, self.num_samples_during)
        if self.monitor_best:
            name = metric_name(METRIC_KINDS[self.metrics[0]], records[0]["extractor"], self.num_samples_during,
                               self._reference.covers_dataset)
            value = next(r["value"] for r in records if r["metric"] == name)
            if value < self.best:
                self.best = value
                # every rank calls it; the strategy writes once. A full checkpoint (resumable), said explicitly
                # so Lightning does not announce its default on every save.
                trainer.save_checkpoint(self.best_path, weights_only=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.num_samples_final and self._last_measured != (int(pl_module.cur_nimg), self.num_samples_final):
            self.evaluate(trainer, pl_module, self.num_samples_final)

    def evaluate(self, trainer: Trainer, pl_module: LightningModule, num_samples: int) -> list[dict]:
        """Measure ``pl_module.G_ema`` on ``num_samples`` samples (on every rank); log and record the results."""
        G = pl_module.G_ema
        if self._extractor is None:  # built on first use: Inception loading and dataset statistics are slow
            self._extractor = build_extractor(self.extractor_spec, mode=self.mode, weights=self.inception_weights,
                                              device=pl_module.device)
            self._reference = build_reference(self.ref, self.ref_data, extractor=self._extractor,
                                              resolution=G.size, batch_size=self.batch_size,
                                              ref_subset=self.settings.ref_subset,
                                              ref_subset_seed=self.settings.ref_subset_seed)
            data_path = getattr(trainer.datamodule, "hparams", {}).get("path")
            if trainer.is_global_zero and data_path is not None:
                warn_if_filters_differ(prepared_filter(data_path), self._reference)
        was_training = G.training
        G.eval()  # no w_avg update, no style mixing
        try:
            records = evaluate_generator(lambda z: G(z, psi=self.truncation), self._reference,
                                         extractor=self._extractor, num_samples=num_samples, seed=self.seed,
                                         z_dim=G.z_dim, batch_size=self.batch_size, device=pl_module.device,
                                         truncation=self.truncation, kid="kid" in self.metrics,
                                         readable="readable" in self.metrics, cur_nimg=pl_module.cur_nimg,
                                         run_dir=self.run_dir, protocol=self.settings.protocol, run_id=self.run_id)
        finally:
            G.train(was_training)
        self._last_measured = (int(pl_module.cur_nimg), num_samples)
        logged = {f"metrics/{r['metric']}": r["value"] for r in records}
        logged.update({f"metrics/{r['metric']}_relative": r["relative"] for r in records
                       if r.get("relative") is not None})
        for logger in trainer.loggers:  # loggers write on rank 0 only
            logger.log_metrics(logged, step=trainer.global_step)
        return records

    def _tick_of(self, pl_module: LightningModule) -> int:
        return int(pl_module.cur_nimg) // max(1, round(self.every_kimg * 1000))
