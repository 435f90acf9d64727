"""Classifier training: a short real Lightning run on digits (loss, accuracy, optimizer groups, the per-step
LR schedule, EMA evaluation), the recipe pieces on their own, feature/weight export, every classifier config
parsing, and (slow) the digits config end to end to >= 97% test accuracy."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from stylenat.cli import main
from stylenat.commands.lightning import lightning_cli
from stylenat.data import ClassificationDataModule
from stylenat.models.nat import create_model
from stylenat.training.callbacks import CPUThreads
from stylenat.training.classifier import ImageClassifier, mix_batch, param_groups, warmup_cosine
from stylenat.training.ema import ModelEMA

CONFIGS = Path(__file__).parents[2] / "configs"
TINY = {"depths": [1, 1], "num_heads": [1, 2], "embed_dim": 32, "mlp_ratio": 2.0, "kernel_size": 3, "img_size": 32}


def tiny_classifier(**kwargs) -> ImageClassifier:
    return ImageClassifier("nat_mini", num_classes=10, model_overrides=TINY, drop_path_rate=0.0, **kwargs)


def accuracy(net: nn.Module, loader) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) over ``loader``."""
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (net(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


class Trace(L.Callback):
    """Records the learning rate each training step ran with, and its loss."""

    def __init__(self):
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())


# 3 epochs of 23 batches of (up to) 64 digits: 69 optimizer steps, the first 23 (one epoch) warming up
STEPS, WARMUP, LR, MIN_LR = 69, 23, 3e-3, 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny NAT trained briefly on digits through a real Trainer, with an EMA (decay 0.5) to validate with."""
    torch.manual_seed(0)
    classifier = tiny_classifier(lr=LR, min_lr=MIN_LR, warmup_epochs=1, ema_decay=0.5)
    data = ClassificationDataModule("digits", resolution=32, batch_size=64, num_workers=0)
    trace = Trace()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[trace, CPUThreads(1)],
                        default_root_dir=tmp_path_factory.mktemp("fit"))
    trainer.fit(classifier, data)
    return trainer, classifier, data, trace


def test_short_run_learns(trained):
    trainer, _, _, trace = trained
    assert len(trace.losses) == STEPS and all(math.isfinite(loss) for loss in trace.losses)
    assert sum(trace.losses[-5:]) < 0.75 * sum(trace.losses[:5])
    assert trainer.callback_metrics["val/top1"] > 0.5  # chance is 0.1
    assert {"train/loss", "train/top1", "train/top5", "val/loss", "val/top5"} <= trainer.callback_metrics.keys()


def test_optimizer_groups_skip_rpb_norms_and_biases(trained):
    trainer, classifier, _, _ = trained
    decay, no_decay = trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == classifier.hparams.weight_decay and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in classifier.model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert skipped | decayed == set(names.values()) and not skipped & decayed
    assert {name for name in names.values() if name.endswith(".rpb")} <= skipped
    assert all(name.endswith((".bias", ".rpb")) or "norm" in name for name in skipped)
    assert "levels.0.blocks.0.attn.qkv.weight" in decayed and "patch_embed.proj.0.weight" in decayed


def test_lr_warms_up_per_step_then_follows_the_cosine(trained):
    _, _, _, trace = trained
    expected = [LR * warmup_cosine(step, WARMUP, STEPS, MIN_LR / LR) for step in range(STEPS)]
    assert trace.lrs == pytest.approx(expected, rel=1e-6)
    assert trace.lrs[0] == pytest.approx(LR / WARMUP) and max(trace.lrs) == pytest.approx(LR)


def test_validation_uses_the_ema_weights(trained):
    trainer, classifier, data, _ = trained
    assert classifier.eval_model is classifier.ema.module
    assert not torch.equal(classifier.ema.module.head.weight, classifier.model.head.weight)
    ema_accuracy = accuracy(classifier.ema.module, data.val_dataloader())
    assert trainer.callback_metrics["val/top1"].item() == pytest.approx(ema_accuracy, abs=1e-6)


def test_training_step_with_mixup_cutmix_and_label_smoothing(tmp_path):
    torch.manual_seed(0)
    classifier = tiny_classifier(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    trace = Trace()
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[trace, CPUThreads(1)], default_root_dir=tmp_path)
    trainer.fit(classifier, ClassificationDataModule("digits", resolution=32, batch_size=32, num_workers=0))
    assert len(trace.losses) == 2 and all(math.isfinite(loss) for loss in trace.losses)

def test_class_count_mismatch_with_the_data_fails_early(tmp_path):
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    classifier = ImageClassifier("nat_mini", num_classes=12, model_overrides=TINY)
    with pytest.raises(ValueError, match="model.num_classes is 12 but the data has 10"):
        trainer.fit(classifier, ClassificationDataModule("digits", resolution=32, num_workers=0))

def test_param_groups_cover_every_parameter_once():
    model = create_model("dinat_mini", num_classes=10, **TINY, layer_scale=1e-5)
    decay, no_decay = param_groups(model, 0.05)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    rpb = {id(p) for name, p in model.named_parameters() if name.endswith(".rpb")}
    gammas = {id(p) for name, p in model.named_parameters() if name.endswith(("gamma1", "gamma2"))}
    assert rpb and gammas and (rpb | gammas) <= {id(p) for p in no_decay["params"]}


def test_warmup_cosine_values():
    factors = [warmup_cosine(step, 4, 12, min_ratio=0.1) for step in range(14)]
    assert factors[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert factors[8] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert factors[12:] == pytest.approx([0.1, 0.1])      # the floor, also past the end
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))  # non-increasing after the warm-up
    assert warmup_cosine(0, 0, 10) == 1.0


def constant_batch(size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` is the constant ``i`` with label ``i``; so mixed pixels and targets tell their sources."""
    images = torch.arange(size, dtype=torch.float32).view(size, 1, 1, 1).expand(size, 3, 16, 16).clone()
    return images, torch.arange(size)


def test_mixup_mixes_images_and_targets_alike():
    torch.manual_seed(0)
    images, labels = constant_batch()
    mixed, targets = mix_batch(images, labels, num_classes=6, mixup_alpha=0.8)
    lam = targets[0, 0].item()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    one_hot = F.one_hot(labels, 6).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_pastes_a_box_and_targets_match_its_area(seed):
    torch.manual_seed(seed)
    images, labels = constant_batch()
    mixed, targets = mix_batch(images, labels, num_classes=4, cutmix_alpha=1.0)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    for i in range(4):
        pasted = mixed[i] == 3 - i  # the partner in the reversed batch
        assert (pasted | (mixed[i] == i)).all()
        rows, cols = pasted[0].any(1), pasted[0].any(0)
        assert pasted[0].sum() == rows.sum() * cols.sum()  # one rectangle
        assert targets[i, 3 - i].item() == pytest.approx(pasted.float().mean().item())


def test_mix_batch_switches_between_mixup_and_cutmix_and_is_off_at_zero():
    images, labels = constant_batch()
    same, one_hot = mix_batch(images, labels, num_classes=4)
    assert same is images and torch.equal(one_hot, F.one_hot(labels, 4).float())
    torch.manual_seed(0)
    kinds = set()
    for _ in range(20):
        mixed, _ = mix_batch(images, labels, num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0)
        kinds.add("cutmix" if torch.isin(mixed, images[:, :1, :1, :1]).all() else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_model_ema_averages_parameters_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model)
    start = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics
    ema.update(model, decay=0.75)
    for average, old, new in zip(ema.module.parameters(), start, model.parameters()):
        torch.testing.assert_close(average, 0.75 * old + 0.25 * new)
    for copied, buffer in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(copied, buffer)
    before = [p.clone() for p in ema.module.parameters()]
    ema.update(model, decay=1.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), before))
    ema.update(model, decay=0.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="decay"):
        ema.update(model, decay=1.5)


def test_model_ema_stays_frozen_and_in_eval_mode():
    parent = nn.ModuleDict({"model": nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))})
    parent["ema"] = ModelEMA(parent["model"])
    parent.train()
    assert parent["model"].training and not any(m.training for m in parent["ema"].modules())
    assert not any(p.requires_grad for p in parent["ema"].parameters())
    x = torch.randn(4, 3)
    torch.testing.assert_close(parent["ema"](x), parent["ema"](x))  # no dropout


def test_features_and_exported_weights_come_from_the_ema(tmp_path):
    torch.manual_seed(0)
    classifier = tiny_classifier(ema_decay=0.9).eval()
    with torch.no_grad():
        for p in classifier.model.parameters():
            p.add_(0.1)  # the trained model now differs from its average
    images = torch.randn(2, 3, 32, 32)
    features = classifier.features(images)
    assert features.shape == (2, classifier.model.num_features)
    torch.testing.assert_close(classifier.ema.module.head(features), classifier.ema.module(images))
    path = classifier.export_weights(tmp_path / "nat.safetensors")
    loaded = create_model("nat_mini", num_classes=10, pretrained=path, **TINY).eval()
    torch.testing.assert_close(loaded(images), classifier.ema(images))


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"num_classes": 1}, "model.num_classes"),
    ({"model_overrides": {"num_classes": 5}}, "model.model_overrides.num_classes"),
    ({"lr": 1e-3, "min_lr": 1e-2}, "model.min_lr"),
    ({"mixup_alpha": -1.0}, "model.mixup_alpha"),
    ({"label_smoothing": 1.0}, "model.label_smoothing"),
    ({"ema_decay": 1.0}, "model.ema_decay"),
])
def test_bad_options_name_their_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag.replace(".", r"\.")):
        ImageClassifier("nat_mini", **kwargs)


def classifier_configs() -> list[Path]:
    """Every config whose model is the ImageClassifier."""
    return [path for path in sorted(CONFIGS.glob("*.yaml"))
            if yaml.safe_load(path.read_text())["model"]["class_path"].endswith(".ImageClassifier")]


def test_classifier_configs_exist():
    names = {path.stem for path in classifier_configs()}
    assert names == {"nat_digits", "imagenet_classifier"}  # one ImageNet config; the variant is a flag


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("path", classifier_configs(), ids=lambda path: path.stem)
def test_classifier_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(path.read_text())
    assert printed["model"]["init_args"]["model"] == written["model"]["init_args"]["model"]
    assert printed["trainer"]["default_root_dir"] == written["trainer"]["default_root_dir"]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("variant", ["nat_tiny", "dinat_base"])
def test_imagenet_config_takes_the_variant_as_a_flag(variant, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "imagenet_classifier.yaml"), "--model.model", variant,
              "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert printed["model"] == variant and printed["drop_path_rate"] is None  # the variant's own rate
    assert variant in (CONFIGS / "imagenet_classifier.yaml").read_text()  # listed in the file's table


def test_num_classes_follows_the_data(tmp_path):
    """configs/nat_digits.yaml sets no num_classes: the CLI links it from the data (10 digits)."""
    cli = lightning_cli(["--config", str(CONFIGS / "nat_digits.yaml"), "--trainer.default_root_dir", str(tmp_path)],
                        run=False)
    assert "num_classes" not in yaml.safe_load((CONFIGS / "nat_digits.yaml").read_text())["model"]["init_args"]
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes == 10
    assert cli.model.model.head.out_features == 10


@pytest.mark.slow
def test_digits_config_reaches_97_percent(tmp_path):
    """``stylenat fit --config configs/nat_digits.yaml`` as a user runs it; then the last checkpoint (the final
    epoch's weights, no selection) is scored on the digits test split."""
    command = [sys.executable, "-m", "stylenat.cli", "fit", "--config", str(CONFIGS / "nat_digits.yaml"),
               "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    subprocess.run(command, check=True, timeout=840)
    (checkpoint,) = tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    classifier = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    data = ClassificationDataModule("digits", resolution=32, batch_size=128, num_workers=0)
    data.setup("validate")
    assert len(data.val_dataset) == 359
    assert accuracy(classifier.eval_model, data.val_dataloader()) >= 0.97
