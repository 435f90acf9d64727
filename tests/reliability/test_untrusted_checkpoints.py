"""Files from users are data, never code: a checkpoint whose pickle would run code (``__reduce__`` calling
``open(marker, "w")``) is refused on every path that reads one, and the marker file never appears, even with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (which makes torch unpickle anything when the caller leaves
``weights_only`` unset)."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import pytest
import torch

from stylenat.cli import main
from stylenat.models.nat import create_model
from stylenat.models.safe_load import UnsafeCheckpointError, load_torch_file
from stylenat.training.callbacks import use_safe_checkpoint_io

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means the pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(autouse=True)
def torch_forced_to_unpickle_anything(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the checkpoint's pickle ran code"


def lightning_shaped(marker: Path, path: Path) -> Path:
    """A torch.save zip that looks like one of our training checkpoints, with the payload in a corner."""
    torch.save({"state_dict": {"G_ema.x": torch.zeros(1)}, "hyper_parameters": {"generator": "demo"},
                "loops": {"fit_loop": Payload(marker)}}, path)
    return path


def raw_pickle(marker: Path, path: Path) -> Path:
    """A bare pickle (not torch's zip format): torch used to report "Invalid magic number" after running it."""
    path.write_bytes(pickle.dumps({"g_ema": Payload(marker)}))
    return path


MAKERS = {"ckpt": (lightning_shaped, "last.ckpt"), "pickle": (raw_pickle, "weights.pt")}


def test_torch_itself_would_run_it(tmp_path):
    """The premise: with the variable set and weights_only left unset, torch.load runs the payload."""
    marker = tmp_path / "ran"
    torch.load(lightning_shaped(marker, tmp_path / "x.ckpt"))
    assert marker.exists()


@pytest.mark.parametrize("kind", MAKERS)
def test_load_torch_file_refuses_in_one_line(marker, tmp_path, kind):
    make, name = MAKERS[kind]
    path = make(marker, tmp_path / name)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_torch_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", MAKERS)
@pytest.mark.parametrize("command", [
    ["generate", "--ckpt", "{ckpt}", "--seeds", "0", "--outdir", "{out}"],
    ["fid", "--ckpt", "{ckpt}", "--ref-data", "{out}", "--num", "2"],
    ["attention-map", "--ckpt", "{ckpt}", "--resolution", "8", "--query", "1,1", "--outdir", "{out}"],
    ["convert", "{ckpt}", "{out}/out.safetensors"],
    ["evaluate-classifier", "--ckpt", "{ckpt}", "--data", "{out}"],
])
def test_commands_refuse_a_malicious_checkpoint(marker, tmp_path, capsys, kind, command):
    make, name = MAKERS[kind]
    ckpt = make(marker, tmp_path / name)
    argv = [a.format(ckpt=ckpt, out=tmp_path / "out") for a in command] + ["--device", "cpu"] * (command[0] != "convert")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stylenat {command[0]}: error: {ckpt}") and "refused" in err and "\n" not in err
    assert not (tmp_path / "out" / "out.safetensors").exists()


def test_create_model_pretrained_refuses_it(marker, tmp_path):
    with pytest.raises(UnsafeCheckpointError):
        create_model("nat_mini", num_classes=10, pretrained=raw_pickle(marker, tmp_path / "nat.pth"))


@pytest.mark.parametrize("ckpt_path", ["last", "file"])
def test_resume_never_runs_a_planted_checkpoint(marker, tmp_path, ckpt_path, monkeypatch, capsys):
    """``stylenat fit --ckpt_path last`` (resolved to the run's checkpoints/last.ckpt) and ``--ckpt_path FILE``
    (which LightningCLI reads first): the file is read as data before anything else and refused in one line."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    planted = lightning_shaped(marker, run_dir / "checkpoints" / "last.ckpt")  # where the config's ModelCheckpoint writes
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(CONFIGS / "nat_digits.yaml"), "--trainer.default_root_dir", str(run_dir),
                 "--trainer.logger", "false", "--trainer.max_epochs", "1",
                 "--ckpt_path", "last" if ckpt_path == "last" else str(planted)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"stylenat fit: error: checkpoint {planted}") and "refused" in err


def test_the_resume_loader_refuses_it_even_past_the_cli(marker, tmp_path):
    """Lightning's own resume path (the checkpoint plugin the CLI installs) refuses it too."""
    planted = lightning_shaped(marker, tmp_path / "last.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        use_safe_checkpoint_io(L.Trainer(logger=False, enable_checkpointing=False)).strategy.load_checkpoint(planted)


def test_our_own_checkpoints_still_load(tmp_path):
    """The allow-list is enough for what Lightning and the reference checkpoints hold."""
    import argparse

    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"lr": 1e-3, "betas": [0.0, 0.99]},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
                "args": argparse.Namespace(size=256)}, path)
    loaded = load_torch_file(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2)) and loaded["args"].size == 256
