"""The reference's training space and schedule: with ``pixel_space: imagenet`` the D step, bCR and R1 equal a
hand-written computation in ImageNet-normalised pixels; G_ema stays a [-1, 1] generator; D's lr during the
decay; checkpoints and exports kept at extra kimg marks; the paper configs use all of it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml

from stylenat.cli import main as cli_main
from stylenat.training.callbacks import CPUThreads, KimgCheckpoint, KimgSchedule, crossed_mark, kimg_label
from stylenat.training.ema import update_ema

from test_gan import BATCH, CONFIGS, make_data, make_gan

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reference_augment(x: torch.Tensor) -> torch.Tensor:
    """The reference's bCR chain (flip, translation with zero fill, brightness, saturation, contrast, cutout
    zeroing a half-size square), written out here with the draws in the order our augmentations make them."""
    B, C, H, W = x.shape
    flip = torch.rand(B, 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(3), x)
    s = int(H / 8 + 0.5)
    ty, tx = torch.randint(-s, s + 1, (B, 1, 1)), torch.randint(-s, s + 1, (B, 1, 1))
    out = torch.zeros_like(x)
    for b in range(B):
        dy, dx = int(ty[b]), int(tx[b])
        for i in range(H):
            for j in range(W):
                if 0 <= i - dy < H and 0 <= j - dx < W:
                    out[b, :, i, j] = x[b, :, i - dy, j - dx]
    x = out + (torch.rand(B, 1, 1, 1) - 0.5)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (torch.rand(B, 1, 1, 1) * 2) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (torch.rand(B, 1, 1, 1) + 0.5) + mean
    size = int(H / 2 + 0.5)
    top = torch.randint(0, H + 1 - size % 2, (B,)) - size // 2
    left = torch.randint(0, W + 1 - size % 2, (B,)) - size // 2
    keep = torch.ones(B, 1, H, W)
    for b in range(B):
        keep[b, :, max(int(top[b]), 0):max(int(top[b]) + size, 0), max(int(left[b]), 0):max(int(left[b]) + size, 0)] = 0
    return x * keep


def test_imagenet_d_step_equals_the_reference_space_computation():
    gan = make_gan(pixel_space="imagenet")
    real = torch.rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        fake = gan.G(torch.randn(BATCH, 32, generator=torch.Generator().manual_seed(2)), update_w_avg=False)

    d_state = copy.deepcopy(gan.D.state_dict())  # spectral norm's power iteration moves on every forward
    torch.manual_seed(7)
    terms = gan.d_loss_terms(gan.d_input(real), fake)
    penalty = gan.r1_term(real)

    gan.D.load_state_dict(d_state)
    torch.manual_seed(7)
    real_n = ((real + 1) / 2 - MEAN) / STD  # torchvision's Normalize after ToTensor, as the reference loads data
    real_pred, fake_pred = gan.D(real_n), gan.D(fake)
    d_loss = F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()
    bcr = 10 * F.mse_loss(gan.D(reference_augment(real_n)), real_pred) \
        + 10 * F.mse_loss(gan.D(reference_augment(fake)), fake_pred)
    real_n = real_n.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(gan.D(real_n).sum(), real_n)
    r1 = grad.pow(2).reshape(BATCH, -1).sum(1).mean()

    torch.testing.assert_close(terms["Loss/D"], d_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["Loss/bcr"], bcr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(penalty, r1, rtol=1e-5, atol=1e-6)

    # the [-1, 1] space gives other numbers: the test above would catch a missing map
    minus1_1 = make_gan(pixel_space="minus1_1")
    minus1_1.D.load_state_dict(gan.D.state_dict())
    assert abs(minus1_1.r1_term(real).item() - r1.item()) > 0.01 * r1.item()


def test_imagenet_g_ema_makes_minus1_1_images_and_averages_exactly():
    gan = make_gan(pixel_space="imagenet")
    z = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(gan.G_ema(z), 2 * (gan.G(z) * STD + MEAN) - 1, rtol=1e-5, atol=1e-5)
        reference = make_gan(pixel_space="imagenet").G  # the unfolded average, kept by hand
        reference.load_state_dict(gan.G.state_dict())
        for p in gan.G.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        update_ema(gan.G_ema, gan.G, 0.25, gan._fold)
        for p_ref, p in zip(reference.parameters(), gan.G.parameters()):
            p_ref.lerp_(p, 0.75)
        torch.testing.assert_close(gan.G_ema(z), 2 * (reference(z) * STD + MEAN) - 1, rtol=1e-5, atol=1e-5)


def test_d_lr_is_a_multiple_of_g_lr_during_the_decay():
    plain = make_gan(decay_start_kimg=1.0, decay_end_kimg=3.0)
    paper = make_gan(decay_start_kimg=1.0, decay_end_kimg=3.0, decay_lr_ratio=4.0)
    lazy = 3 / 4  # r1_interval 3
    assert plain.learning_rates(500) == paper.learning_rates(500) == pytest.approx((5e-4, 2e-3 * lazy))
    assert plain.learning_rates(2000) == pytest.approx((2.5e-4, 1e-3 * lazy))
    assert paper.learning_rates(2000) == pytest.approx((2.5e-4, 1e-3))  # 4 x G, no lazy-R1 factor
    assert paper.learning_rates(3000) == (0.0, 0.0)
    with pytest.raises(ValueError, match="model.decay_lr_ratio must be > 0"):
        make_gan(decay_lr_ratio=0.0)
    with pytest.raises(ValueError, match="model.pixel_space must be one of minus1_1, imagenet, got 'rgb'"):
        make_gan(pixel_space="rgb")


def test_kimg_marks():
    assert crossed_mark(60_159_936, 60_160_000, [60_160]) and not crossed_mark(60_160_000, 60_160_064, [60_160])
    schedule = KimgSchedule(every_kimg=None, marks_kimg=[0.010])
    schedule.start(0)
    schedule.step_begins(4)
    assert not schedule.due(8)
    schedule.step_begins(8)
    assert schedule.due(12) and schedule.at_mark(12)  # 10 images reached
    with pytest.raises(ValueError, match="marks_kimg must be > 0"):
        KimgCheckpoint(marks_kimg=[0])


def test_marks_keep_a_checkpoint_and_an_export(tmp_path):
    model = make_gan(pixel_space="imagenet", export_snapshot_kimg=None, export_marks_kimg=[3 * BATCH / 1000],
                     total_kimg=6 * BATCH / 1000)
    trainer = L.Trainer(accelerator="cpu", max_epochs=-1, default_root_dir=tmp_path, logger=False,
                        callbacks=[KimgCheckpoint(every_n_kimg=100, marks_kimg=[3 * BATCH / 1000]), CPUThreads(1)],
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(model, datamodule=make_data())
    kept = torch.load(tmp_path / "checkpoints" / f"kimg{kimg_label(3 * BATCH)}.ckpt", weights_only=False)
    assert kept["cur_nimg"] == 3 * BATCH  # the state at the mark, not overwritten by the later last.ckpt
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["cur_nimg"] == 6 * BATCH
    assert (tmp_path / f"network-snapshot-{kimg_label(3 * BATCH)}.safetensors").is_file()


@pytest.mark.parametrize("name", ["ffhq256.yaml", "ffhq1024.yaml", "church256.yaml"])
def test_paper_configs_use_the_reference_space_ema_and_decay(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stylenat"])
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert model["pixel_space"] == "imagenet" and model["ema_half_life_kimg"] == 20.0
    assert model["decay_lr_ratio"] == 4.0
    if name == "ffhq256.yaml":
        assert model["export_marks_kimg"] == [60160]
        marks = [c["init_args"].get("marks_kimg") for c in config["trainer"]["callbacks"]
                 if c["class_path"].endswith("KimgCheckpoint")]
        assert marks == [[60160]]
    else:  # unpublished recipes: the header says where each value comes from
        header = Path(CONFIGS / name).read_text().split("seed_everything")[0]
        assert "never published" in header and "StyleSwin" in header
