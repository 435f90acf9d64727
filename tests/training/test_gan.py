"""StyleNATGAN on CPU through a real Trainer: the recipe's pieces, gradient isolation of the two phases,
exact resume across the LR decay and lazy R1, checkpoints, exports and the configs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from stylenat.cli import main as cli_main
from stylenat.commands.lightning import generator_size, lightning_cli
from stylenat.data import StyleNATDataModule
from stylenat.checkpoints import load_generator
from stylenat.models.generator import PRESETS
from stylenat.training import (AtomicCheckpointIO, CPUThreads, KimgCheckpoint, StyleNATGAN, bcr_augment,
                               consistency_loss, d_logistic_loss, g_nonsaturating_loss, r1_penalty)
from stylenat.training.augment import random_cutout, random_translation
from stylenat.training.callbacks import TF32, crossed
from stylenat.training.gan import ema_decay, lr_factor, step_seed

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GAN_CONFIGS = ["demo.yaml", "ffhq256.yaml", "ffhq1024.yaml", "church256.yaml"]

# A generator and discriminator small enough for many CPU steps a second, on the digits at 16 px.
TINY_G = dict(size=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32,
              kernels=[[3], [3]], dilations=[[1], [1, 2]])
TINY_D = dict(size=16, channel_base=256, channel_max=32)
BATCH = 4


def make_gan(cls: type[StyleNATGAN] = StyleNATGAN, **overrides) -> StyleNATGAN:
    """The tiny GAN, initialised from seed 0, with a short run's schedule (``total_kimg``: 8 steps)."""
    torch.manual_seed(0)
    args = dict(generator="demo", generator_kwargs=TINY_G, discriminator="demo", discriminator_kwargs=TINY_D,
                lr_d=2e-3, r1_interval=3, ema_half_life_kimg=0.01, total_kimg=8 * BATCH / 1000,
                image_snapshot_kimg=None, export_snapshot_kimg=None)
    return cls(**{**args, **overrides})


def make_data() -> StyleNATDataModule:
    return StyleNATDataModule("digits", resolution=16, batch_size=BATCH, num_workers=0, xflip=False, seed=3)


def fit(root: Path, model: StyleNATGAN, max_steps: int = -1, ckpt_path: str | Path | None = None,
        callbacks: list[L.Callback] = (), **trainer_kwargs) -> L.Trainer:
    """Train ``model`` in ``root`` (``last.ckpt`` every 4 steps and at the end, in ``root/checkpoints``) on one
    thread (much faster than two on a busy CI machine); ``max_steps`` counts optimizer steps, two per GAN step."""
    trainer_kwargs.setdefault("logger", False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=max_steps, default_root_dir=root,
                        callbacks=[KimgCheckpoint(every_n_kimg=4 * BATCH / 1000), CPUThreads(1), *callbacks],
                        plugins=[AtomicCheckpointIO()],
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        **trainer_kwargs)
    trainer.fit(model, datamodule=make_data(), ckpt_path=ckpt_path)
    return trainer


# ---------------------------------------------------------------------------------------------
# Recipe pieces


def test_ema_decay_follows_the_global_batch():
    assert ema_decay(64, 10**6, 10.0) == pytest.approx(0.5 ** (64 / 10_000))
    assert ema_decay(32, 0, 10.0) ** 2 == pytest.approx(ema_decay(64, 0, 10.0))  # same half-life in images
    assert ema_decay(64, 0, 10.0, rampup=0.05) == 0.0  # ramp-up: the first step copies G
    assert ema_decay(64, 20_000, 10.0, rampup=0.05) == pytest.approx(0.5 ** (64 / 1000))
    assert ema_decay(64, 10**7, 10.0, rampup=0.05) == ema_decay(64, 0, 10.0)


def test_lr_schedule_and_step_seeds():
    assert [lr_factor(n, 49_600, 64_000) for n in (0, 49_600_000, 56_800_000, 64_000_000, 70_000_000)] == \
        [1.0, 1.0, 0.5, 0.0, 0.0]
    assert lr_factor(10**9, None, None) == 1.0
    assert step_seed(0, 0, 5) == step_seed(0, 0, 5)
    assert len({step_seed(0, 0, 5), step_seed(0, 1, 5), step_seed(0, 0, 6), step_seed(1, 0, 5)}) == 4
    assert crossed(960, 1024, 1) and not crossed(1024, 1088, 1) and not crossed(0, 10**6, None)


def test_losses():
    zero = torch.zeros(4, 1)
    assert d_logistic_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert g_nonsaturating_loss(zero).item() == pytest.approx(math.log(2))
    assert d_logistic_loss(torch.full((4, 1), 20.0), torch.full((4, 1), -20.0)).item() < 1e-8
    assert consistency_loss(torch.ones(4, 1), zero).item() == 1.0


def test_r1_penalty_is_the_squared_input_gradient_in_float32():
    weight = torch.randn(3 * 8 * 8)

    def discriminator(x):
        return (x.flatten(1) @ weight.to(x.dtype)).unsqueeze(1) ** 2 / 2  # input gradient: (w.x) w

    real = torch.randn(5, 3, 8, 8)
    expected = ((real.flatten(1) @ weight) ** 2 * weight.square().sum()).mean()
    assert r1_penalty(discriminator, real).item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = r1_penalty(discriminator, real.bfloat16())
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(r1_penalty(discriminator, real.bfloat16().float()).item(), rel=1e-5)


def test_bcr_augmentations():
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    a = bcr_augment(x)
    torch.manual_seed(1)
    assert torch.equal(a, bcr_augment(x)) and a.shape == x.shape and not torch.equal(a, x)
    ones = torch.ones(64, 3, 16, 16)
    shifted = random_translation(ones)
    assert shifted.min() == 0 and shifted.max() == 1  # zero fill
    blank = (shifted[:, 0] == 0)
    assert (blank.all(1).sum(1) <= 2).all() and (blank.all(2).sum(1) <= 2).all()  # at most 2 = 16/8 lines
    cut = (random_cutout(ones)[:, 0] == 0).flatten(1).sum(1)
    assert cut.max() == 64 and cut.min() >= 4 * 4  # an 8x8 square, at most half of it clipped per axis
    x.requires_grad_(True)
    bcr_augment(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_arguments_are_checked_up_front():
    with pytest.raises(ValueError, match=r"model.bcr_fake must be >= 0.*model.r1_interval must be >= 1"):
        make_gan(r1_interval=0, bcr_fake=-1)
    with pytest.raises(ValueError, match="decay_start_kimg and model.decay_end_kimg must both be null"):
        make_gan(decay_start_kimg=5.0, decay_end_kimg=None)
    with pytest.raises(ValueError, match="set model.style_mixing_prob, not model.generator_kwargs"):
        make_gan(generator_kwargs={**TINY_G, "style_mixing_prob": 0.5})
    with pytest.raises(ValueError, match="generator makes 16px images but the discriminator takes 32px"):
        make_gan(discriminator_kwargs={})
    with pytest.raises(ValueError, match="unknown generator preset 'ffhq512'"):
        make_gan(generator="ffhq512")


def test_data_resolution_must_match(tmp_path):
    trainer = L.Trainer(accelerator="cpu", max_steps=2, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    data = StyleNATDataModule("digits", resolution=32, batch_size=BATCH, num_workers=0)
    message = r"data.resolution is 32 but the generator \(model.generator='demo'\) makes 16px"
    with pytest.raises(ValueError, match=message):
        trainer.fit(make_gan(), datamodule=data)


# ---------------------------------------------------------------------------------------------
# Training through a Trainer


class Probe(StyleNATGAN):
    """Records the R1 steps, the batch the EMA decay is computed from, and which gradients each phase produced
    on the other network (whose gradients it clears first)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.leaks: list[str] = []
        self.r1_steps: list[int] = []
        self.ema_batches: list[int] = []

    def _update_ema(self, global_batch):
        self.ema_batches.append(global_batch)
        super()._update_ema(global_batch)

    def _d_step(self, real, opt_d):
        self.G.zero_grad(set_to_none=True)
        logs = super()._d_step(real, opt_d)
        self.leaks += [f"D step -> G.{n}" for n, p in self.G.named_parameters() if p.grad is not None]
        assert all(p.grad is not None for p in self.D.parameters())
        return logs

    def _r1_step(self, real, opt_d):
        self.r1_steps.append(self.cur_step)
        return super()._r1_step(real, opt_d)

    def _g_step(self, batch_size, opt_g):
        self.D.zero_grad(set_to_none=True)
        logs = super()._g_step(batch_size, opt_g)
        self.leaks += [f"G step -> D.{n}" for n, p in self.D.named_parameters() if p.grad is not None]
        assert all(p.grad is not None for p in self.G.parameters())
        return logs


def test_d_step_has_no_g_gradients_and_g_step_no_d_gradients(tmp_path):
    model = make_gan(Probe, total_kimg=4 * BATCH / 1000, r1_interval=2)
    fit(tmp_path, model)
    assert model.cur_step == 4 and model.r1_steps == [0, 2] and model.leaks == []
    assert all(p.requires_grad for p in [*model.G.parameters(), *model.D.parameters()])  # toggles undone
    assert not any(p.requires_grad for p in model.G_ema.parameters())


def test_a_few_steps_train_log_checkpoint_and_export(tmp_path):
    model = make_gan(Probe, image_snapshot_kimg=4 * BATCH / 1000, export_snapshot_kimg=4 * BATCH / 1000)
    initial = {k: v.clone() for k, v in model.G_ema.state_dict().items()}
    logged: list[dict[str, float]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    logger = TensorBoardLogger(tmp_path, name="", version="")
    fit(tmp_path, model, logger=logger, callbacks=[Record()])
    assert model.cur_nimg == 8 * BATCH and model.cur_step == 8
    for step in logged:
        assert all(math.isfinite(v) for v in step.values()), step
    assert {"Loss/G", "Loss/D", "Loss/bcr", "Logits/real", "Logits/fake", "Progress/kimg", "Progress/lr_g",
            "Progress/lr_d", "Progress/kimg_per_s", "Resources/peak_memory_gib"} <= set(logged[-1])
    assert model.r1_steps == [0, 3, 6] and "Loss/r1" in logged[0] and model.ema_batches == [BATCH] * 8
    assert logged[-1]["Progress/lr_d"] == pytest.approx(2e-3 * 3 / 4, rel=1e-6)  # logged as float32
    assert logged[-1]["Progress/lr_g"] == pytest.approx(5e-4, rel=1e-6)
    moved = [k for k, v in model.G_ema.state_dict().items() if not torch.equal(v, initial[k])]
    assert "mapping.w_avg" in moved and len(moved) > len(initial) // 2
    assert torch.equal(model.G_ema.mapping.w_avg, model.G.mapping.w_avg)
    assert not torch.equal(model.G_ema.synthesis.const, model.G.synthesis.const)  # an average, not a copy

    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith("events"))
    assert files == ["fakes000000.016.png", "fakes000000.032.png", "fakes_init.png", "generator.safetensors",
                     "hparams.yaml", "network-snapshot-000000.016.safetensors",
                     "network-snapshot-000000.032.safetensors", "reals.png"]  # every 16 images, distinct names
    assert Image.open(tmp_path / "fakes_init.png").size == (8 * 18 + 2, 8 * 18 + 2)  # 16 px tiles, 2 px gaps
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["cur_nimg"] == 8 * BATCH and checkpoint["hyper_parameters"]["generator"] == "demo"
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"G", "D", "G_ema"}
    assert len(checkpoint["optimizer_states"]) == 2 and "StyleNATDataModule" in checkpoint

    z = torch.randn(3, 32)
    expected = model.G_ema.cpu()(z, psi=0.7)
    for path in (tmp_path / "generator.safetensors", tmp_path / "checkpoints" / "last.ckpt"):
        generator, info = load_generator(path)
        assert info["cur_nimg"] == 8 * BATCH and info["preset"] == "demo"
        torch.testing.assert_close(generator(z, psi=0.7), expected, rtol=0, atol=0)


def test_r1_and_bcr_off(tmp_path):
    model = make_gan(Probe, r1_gamma=0.0, bcr_real=0.0, bcr_fake=0.0, total_kimg=3 * BATCH / 1000)
    trainer = fit(tmp_path, model)
    assert model.cur_step == 3 and model.r1_steps == []
    assert "Loss/r1" not in trainer.callback_metrics and "Loss/bcr" not in trainer.callback_metrics
    assert trainer.optimizers[1].param_groups[0]["lr"] == 2e-3  # no lazy-R1 adjustment
    assert trainer.optimizers[1].param_groups[0]["betas"] == (0.0, 0.99)


def test_bf16_mixed_precision(tmp_path):
    model = make_gan(total_kimg=2 * BATCH / 1000, r1_interval=1)
    trainer = fit(tmp_path, model, precision="bf16-mixed")
    assert model.cur_step == 2
    assert all(math.isfinite(float(v)) for v in trainer.callback_metrics.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def state(model: StyleNATGAN, trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """Every tensor of the networks and both optimizers."""
    tensors = dict(model.state_dict())
    for i, optimizer in enumerate(trainer.optimizers):
        for j, param_state in optimizer.state_dict()["state"].items():
            tensors.update({f"opt{i}.{j}.{k}": v for k, v in param_state.items()})
    return tensors


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    # 8 steps of 4 images: R1 at steps 0, 3, 6 and the LR decaying from 8 to 40 images, both across the split.
    options = dict(decay_start_kimg=0.008, decay_end_kimg=0.040, style_mixing_prob=0.5)
    straight = make_gan(**options)
    straight_trainer = fit(tmp_path / "straight", straight)

    first = make_gan(**options)
    fit(tmp_path / "split", first, max_steps=2 * 4)  # stops after 4 GAN steps; last.ckpt written at the end
    assert first.cur_step == 4
    resumed = make_gan(**options)
    torch.manual_seed(123)  # the global RNG state at resume does not matter
    resumed_trainer = fit(tmp_path / "split", resumed, ckpt_path=tmp_path / "split" / "checkpoints" / "last.ckpt")

    assert resumed.cur_step == 8 and resumed.cur_nimg == straight.cur_nimg == 8 * BATCH
    expected, got = state(straight, straight_trainer), state(resumed, resumed_trainer)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == []
    lr = 2e-3 * lr_factor(7 * BATCH, 0.008, 0.040)  # set from cur_nimg before the last step
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr / 4)
    assert resumed_trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(lr * 3 / 4)

    finished = make_gan(**options)
    fit(tmp_path / "split", finished, ckpt_path=tmp_path / "split" / "checkpoints" / "last.ckpt")
    assert finished.cur_step == 8  # resuming a finished run trains no further


def test_compiled_training_steps_equal_eager_ones(tmp_path):
    """compile=...: the same 3 steps (R1 and style mixing included) through torch.compile'd G and D give the
    same weights as eager ones, and the checkpoint keeps the plain G./D. keys."""
    options = dict(total_kimg=3 * BATCH / 1000, style_mixing_prob=0.5, r1_interval=2)
    eager, compiled = make_gan(**options), make_gan(**options, compile="aot_eager")
    fit(tmp_path / "eager", eager)
    fit(tmp_path / "compiled", compiled)
    expected, got = eager.state_dict(), compiled.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    with pytest.raises(ValueError, match="model.compile must be true, false or a torch.compile backend"):
        make_gan(compile="fastest")


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"cur_nimg": 1, "weights": torch.ones(1000)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"cur_nimg": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["cur_nimg"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("name", GAN_CONFIGS)
def test_gan_configs_parse(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stylenat"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: stylenat.training.gan.StyleNATGAN" in printed
    assert "use_distributed_sampler: false" in printed


@pytest.mark.parametrize("name", GAN_CONFIGS)
def test_gan_configs_show_the_presets_stage_attention(name):
    """Each GAN config spells out its preset's kernels and dilations per stage (no other way to get them), for
    the stages of its size (the demo runs the demo preset at 16 px: its first two neighborhood stages)."""
    init_args = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]
    preset, kwargs = PRESETS[init_args["generator"]], init_args["generator_kwargs"]
    stages = int(math.log2(kwargs.get("size", preset["size"]))) - 2  # 8 px, 16 px, ...
    assert len(kwargs["kernels"]) == len(kwargs["dilations"]) == stages
    assert kwargs["kernels"] == preset["kernels"][:stages]
    assert kwargs["dilations"] == preset["dilations"][:stages]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_config_links_and_a_stage_dilation_override(tmp_path):
    """One flag moves the run directory (the logger follows); data.resolution follows the generator; a dilation
    changed in the config reaches the built generator."""
    dilations = "[[1], [2]]"  # the 16 px stage: all heads at dilation 2 instead of the preset's split 1 | 2
    cli = lightning_cli(["--config", str(CONFIGS / "demo.yaml"), "--trainer.default_root_dir", str(tmp_path),
                         "--model.generator_kwargs.dilations", dilations], run=False)
    assert cli.trainer.default_root_dir == str(tmp_path) and cli.trainer.logger.save_dir == str(tmp_path)
    assert cli.datamodule.hparams.resolution == cli.model.G.size == cli.model.D.size == 16
    attn = cli.model.G.synthesis.stages[2].blocks[0].attn
    assert PRESETS["demo"]["dilations"][1] == [1, 2] and attn.pattern == [(7, 2)]
    assert cli.model.G_ema.synthesis.stages[2].blocks[0].attn.pattern == [(7, 2)]
    assert cli.model.G.synthesis.stages[1].blocks[0].attn.pattern == [(7, 1)]  # 8 px unchanged


@pytest.mark.parametrize("config, flag, source", [
    ("demo.yaml", "--data.resolution=64", "the generator"),
    ("demo.yaml", "--trainer.logger.init_args.save_dir=/tmp/elsewhere", "default_root_dir"),
    ("nat_digits.yaml", "--model.init_args.num_classes=3", "the data")])
def test_setting_a_linked_value_is_refused_naming_its_source(config, flag, source):
    with pytest.raises(ValueError, match=f"{flag[2:].split('=')[0]} is linked and cannot be set: it follows .*{source}"):
        lightning_cli(["--config", str(CONFIGS / config), flag], run=False)


def test_stylenat_fit_reports_a_linked_value_in_one_line(capsys):
    assert cli_main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--data.resolution", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("stylenat fit: error: data.resolution is linked and cannot be set: it follows the generator "
                   "(model.generator, model.generator_kwargs.size)")


def test_a_config_file_setting_a_linked_value_is_refused(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"data": {"init_args": {"resolution": 64}}}))
    with pytest.raises(ValueError, match="data.init_args.resolution is linked"):
        lightning_cli(["--config", str(CONFIGS / "demo.yaml"), f"--config={override}"], run=False)


def test_generator_size_names_an_unknown_preset():
    assert generator_size("ffhq1024", None) == 1024 and generator_size("demo", {"size": 64}) == 64
    with pytest.raises(ValueError, match="model.generator: unknown preset 'ffhq512'"):
        generator_size("ffhq512", {})


def tf32_flags() -> tuple[str, bool]:
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


def test_constructing_a_gan_leaves_tf32_alone():
    before = tf32_flags()
    make_gan(allow_tf32=True)
    make_gan(allow_tf32=False)
    assert tf32_flags() == before


@pytest.mark.parametrize("end", ["teardown", "on_exception"])
def test_tf32_callback_sets_the_run_on_cuda_and_restores(end, monkeypatch):
    before = tf32_flags()
    for enabled, expected in ((True, ("high", True)), (False, ("highest", False))):
        callback = TF32(enabled)
        cuda_module = SimpleNamespace(device=torch.device("cuda", 0))
        callback.setup(None, cuda_module, "fit")
        assert tf32_flags() == expected
        getattr(callback, end)(None, cuda_module, *(["fit"] if end == "teardown" else [RuntimeError()]))
        assert tf32_flags() == before
    callback = TF32(True)
    callback.setup(None, SimpleNamespace(device=torch.device("cpu")), "fit")
    assert tf32_flags() == before  # other devices: untouched


def test_a_fit_leaves_tf32_as_it_found_it(tmp_path):
    before = tf32_flags()
    gan = make_gan(total_kimg=BATCH / 1000)
    assert any(isinstance(c, TF32) for c in gan.configure_callbacks())
    fit(tmp_path, gan)
    assert tf32_flags() == before


def test_missing_dataset_fails_at_parse_time_naming_the_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["stylenat"])
    assert cli_main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--data.path", str(tmp_path / "missing.zip"),
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]) == 2
    assert "missing.zip' does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run was started


# ---------------------------------------------------------------------------------------------
# Real processes: a SIGKILL mid-run, and DDP


def write_run_config(root: Path) -> Path:
    """A config over ``configs/demo.yaml``: the tiny GAN, 40 steps of 4 images, last.ckpt every 5 steps."""
    config = {
        "trainer": {
            "default_root_dir": str(root),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"name": "", "version": ""}},
            "callbacks": [{"class_path": "stylenat.training.callbacks.KimgCheckpoint",
                           "init_args": {"every_n_kimg": 5 * BATCH / 1000}},
                          {"class_path": "stylenat.training.callbacks.CPUThreads"}],
            "enable_progress_bar": False,
        },
        "model": {"init_args": {"generator_kwargs": TINY_G, "discriminator_kwargs": TINY_D, "r1_interval": 3,
                                "total_kimg": 40 * BATCH / 1000, "image_snapshot_kimg": None,
                                "export_snapshot_kimg": None, "decay_start_kimg": 0.08, "decay_end_kimg": 0.2}},
        "data": {"init_args": {"batch_size": BATCH}},  # resolution 16: TINY_G's size, linked
    }
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stylenat_fit(config: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "stylenat.cli", "fit", "--config", str(CONFIGS / "demo.yaml"),
               "--config", str(config), *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_mid_run_then_resume_from_last_finishes_like_an_uninterrupted_run(tmp_path):
    straight = stylenat_fit(write_run_config(tmp_path / "straight"))
    killed_root = tmp_path / "killed"
    killed = stylenat_fit(write_run_config(killed_root))
    last = killed_root / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.communicate()[1][-3000:]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    saved = torch.load(last, weights_only=False)["cur_nimg"]
    assert 0 < saved < 40 * BATCH

    finish(stylenat_fit(write_run_config(killed_root), "--ckpt_path", "last"))
    finish(straight)
    expected = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(last, weights_only=False)
    assert resumed["cur_nimg"] == expected["cur_nimg"] == 40 * BATCH
    different = [k for k, v in expected["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert different == []
    assert load_generator(killed_root / "generator.safetensors")[1]["cur_nimg"] == 40 * BATCH


class DumpState(L.Callback):
    """Each rank saves its networks, counters, probe records and last fake logits to ``out_dir/rank<r>.pt``."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        torch.save({"state": {k: v.clone() for k, v in pl_module.state_dict().items()}, "cur_nimg": pl_module.cur_nimg,
                    "leaks": pl_module.leaks, "r1_steps": pl_module.r1_steps, "ema_batches": pl_module.ema_batches,
                    "fake_logits": float(trainer.callback_metrics["Logits/fake"])},
                   self.out_dir / f"rank{trainer.global_rank}.pt")


ISOLATED_ENV = "STYLENAT_TEST_ISOLATED"


def in_fresh_process(test_name: str, tmp_path: Path) -> bool:
    """True inside a fresh interpreter running only ``test_name``; otherwise starts one, checks it passed
    and returns False. Fork-based DDP cannot start from a process whose autograd engine already ran
    threads (torch's "Autograd and Fork" limitation), which earlier tests in the same session may do."""
    if os.environ.get(ISOLATED_ENV) == test_name:
        return True
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                             str(tmp_path / "isolated"), f"{__file__}::{test_name}"],
                            env={**os.environ, ISOLATED_ENV: test_name}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{test_name} failed in a fresh process:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    return False


@pytest.mark.timeout(600)
def test_ddp_two_cpu_ranks_stay_in_sync(tmp_path):
    if not in_fresh_process("test_ddp_two_cpu_ranks_stay_in_sync", tmp_path):
        return
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork_find_unused_parameters_true",
                        max_epochs=-1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[CPUThreads(1), DumpState(tmp_path)])
    trainer.fit(make_gan(Probe, total_kimg=3 * 2 * BATCH / 1000, r1_interval=2), datamodule=make_data())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in ranks:
        assert rank["cur_nimg"] == 3 * 2 * BATCH and rank["ema_batches"] == [2 * BATCH] * 3  # the global batch
        assert rank["r1_steps"] == [0, 2] and rank["leaks"] == []
    out_of_sync = [k for k, v in ranks[0]["state"].items() if not torch.equal(v, ranks[1]["state"][k])]
    assert out_of_sync == []
    assert ranks[0]["fake_logits"] != ranks[1]["fake_logits"]  # each rank drew its own latents
    assert load_generator(tmp_path / "generator.safetensors")[1]["cur_nimg"] == 3 * 2 * BATCH


@pytest.mark.timeout(600)
def test_ddp_without_find_unused_parameters_fails_with_the_fix(tmp_path):
    if not in_fresh_process("test_ddp_without_find_unused_parameters_fails_with_the_fix", tmp_path):
        return
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=-1, default_root_dir=tmp_path,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[CPUThreads(1)])
    with pytest.raises(Exception, match="use --trainer.strategy ddp_find_unused_parameters_true"):
        trainer.fit(make_gan(), datamodule=make_data())
