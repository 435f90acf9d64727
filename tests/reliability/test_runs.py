"""Runs never clobber each other: ``stylenat fit`` locks its run directory, refuses to start over an earlier run
unless asked, checks what it resumes from, cleans up after killed writes; snapshots and metric records stay
distinct."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stylenat.cli import main
from stylenat.metrics import append_metric_record, read_metric_records
from stylenat.training.callbacks import kimg_label
from stylenat.training.runs import LOCK_NAME, RunLock, earlier_run_outputs

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
BATCH = 4
STEPS = 2  # a whole run: 8 images


@pytest.fixture(autouse=True)
def command_line(monkeypatch):
    """As if run as ``stylenat``: LightningCLI compares its arguments with sys.argv."""
    monkeypatch.setattr(sys, "argv", ["stylenat"])


def tiny_config(run_dir: Path, **model) -> Path:
    """Over ``configs/demo.yaml``: a tiny GAN on 16px digits, ``STEPS`` steps of ``BATCH``, last.ckpt each step,
    snapshots every step (sub-kimg intervals), no metrics; everything in ``run_dir``."""
    config = {
        "trainer": {
            "default_root_dir": str(run_dir),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"name": "", "version": ""}},  # save_dir follows default_root_dir
            "callbacks": [{"class_path": "stylenat.training.callbacks.KimgCheckpoint",
                           "init_args": {"every_n_kimg": BATCH / 1000}},
                          {"class_path": "stylenat.training.callbacks.CPUThreads"}],
            "enable_progress_bar": False, "enable_model_summary": False,
        },
        "model": {"init_args": {
            "generator_kwargs": dict(size=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32,
                                     kernels=[[3], [3]], dilations=[[1], [1, 2]]),
            "discriminator_kwargs": dict(size=16, channel_base=256, channel_max=32),
            "total_kimg": STEPS * BATCH / 1000, "image_snapshot_kimg": BATCH / 1000,
            "export_snapshot_kimg": BATCH / 1000, **model}},
        "data": {"init_args": {"batch_size": BATCH}},  # data.resolution follows the generator (a link)
    }
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(run_dir: Path, *extra: str, **model) -> int:
    return main(["fit", "--config", str(DEMO), "--config", str(tiny_config(run_dir, **model)), *extra])


def one_error_line(capsys) -> str:
    """The command's error: exactly one line ``stylenat fit: error: ...`` on stderr, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("stylenat fit: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert fit(run_dir) == 0
    return run_dir


def test_a_run_writes_distinct_sub_kimg_snapshots_and_releases_its_lock(finished_run):
    names = sorted(p.name for p in finished_run.iterdir())
    assert {"fakes000000.004.png", "fakes000000.008.png", "network-snapshot-000000.004.safetensors",
            "network-snapshot-000000.008.safetensors", "config.yaml", "generator.safetensors"} <= set(names)
    assert LOCK_NAME not in names
    assert kimg_label(12_000) == "000012" and kimg_label(1_234_567) == "001234.567"


def test_fresh_fit_into_an_earlier_run_refuses_unless_overwrite(finished_run, capsys):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    assert fit(finished_run) == 2
    line = one_error_line(capsys)
    assert f"{finished_run} already holds a run (checkpoints/last.ckpt, config.yaml" in line
    assert "--ckpt_path last" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()} == before  # nothing touched

    assert fit(finished_run, "--overwrite", rng_seed=1) == 0
    assert (finished_run / "generator.safetensors").read_bytes() != before["generator.safetensors"]
    assert "overwrite" not in (finished_run / "config.yaml").read_text()  # a saved config cannot overwrite


def test_second_fit_on_a_directory_a_live_process_holds_refuses(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "\n".join([
        "import sys, time",
        "from stylenat.training.runs import RunLock",
        f"RunLock({str(run_dir)!r}).acquire()",
        "print('locked', flush=True)",
        "time.sleep(120)"])], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert fit(run_dir) == 2
        line = one_error_line(capsys)
        assert f"{run_dir} is in use by another stylenat run (pid {holder.pid} on {socket.gethostname()}" in line
        assert not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert fit(run_dir) == 0  # the holder died: its lock is stale and taken over
    assert "took over the stale lock of a run that is gone (pid " in capsys.readouterr().err


def test_lock_is_exclusive_within_a_process_and_left_stale_by_a_dead_owner(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(Exception, match=f"pid {os.getpid()} on"):
        RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))  # killed without release
    with RunLock(tmp_path) as again:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert again._fd is None


def test_ckpt_path_last_without_a_checkpoint_stops(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert fit(run_dir, "--ckpt_path", "last") == 2
    line = one_error_line(capsys)
    assert f"--ckpt_path last: no last checkpoint in {run_dir / 'checkpoints'}" in line
    assert earlier_run_outputs(run_dir) == []  # no fresh run was started


def test_resuming_a_finished_run_says_so_and_writes_nothing(finished_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()}
    assert fit(finished_run, "--ckpt_path", "last") == 0
    assert f"{finished_run}: already finished at 0.008 kimg" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()} == before


def test_resume_removes_stale_temporaries_of_killed_writes(finished_run):
    stale = [finished_run / ".generator.safetensors.k1ll3d.tmp", finished_run / "checkpoints" / ".last.ckpt.x9.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert fit(finished_run, "--ckpt_path", "last", total_kimg=3 * BATCH / 1000) == 0
    assert not any(path.exists() for path in stale)
    assert torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)["cur_nimg"] == 3 * BATCH


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "garbage appended", "not a checkpoint"])
def test_a_damaged_last_checkpoint_is_one_line_naming_it(finished_run, damage, capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"zero-byte": b"", "truncated": data[: len(data) // 2],
                      "garbage appended": data + os.urandom(200_000), "not a checkpoint": b"hello\n" * 50}[damage])
    assert fit(finished_run, "--ckpt_path", "last", total_kimg=3 * BATCH / 1000) == 2
    line = one_error_line(capsys)
    assert f"checkpoint {last}" in line
    assert ("is empty (0 bytes)" if damage == "zero-byte" else "is truncated or not a checkpoint") in line


def test_a_truncated_checkpoint_given_by_path_is_one_line_too(finished_run, capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # LightningCLI reads a --ckpt_path file before anything else
    assert fit(finished_run, "--ckpt_path", str(last)) == 2
    assert f"checkpoint {last} (1000 bytes) is truncated or not a checkpoint" in one_error_line(capsys)


def test_missing_data_and_config_are_one_line(tmp_path, capsys):
    assert fit(tmp_path / "run", "--data.path", str(tmp_path / "nowhere")) == 2
    assert f"dataset path '{tmp_path / 'nowhere'}' does not exist" in one_error_line(capsys)
    assert main(["fit", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert f"missing.yaml" in one_error_line(capsys)
    assert main(["fit"]) == 2
    assert "stylenat fit --config configs/demo.yaml" in one_error_line(capsys)
    assert fit(tmp_path / "run", "--data.resolution", "32") == 2  # linked to the generator: refused up front
    assert "data.resolution is linked and cannot be set" in one_error_line(capsys)


def test_a_full_disk_says_so_with_the_path(tmp_path, monkeypatch, capsys):
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    run_dir = tmp_path / "run"
    assert fit(run_dir) == 2
    line = one_error_line(capsys)
    assert f"no space left on device writing {run_dir / 'checkpoints' / 'last.ckpt'}" in line
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == []  # the temporary file went too


def test_metric_records_carry_a_run_id_and_a_redone_evaluation_supersedes(tmp_path):
    def record(run_id, cur_nimg, value):
        return {"metric": "fd_tiny8", "value": value, "run_id": run_id, "cur_nimg": cur_nimg}

    for args in [("a", 2000, 5.0), ("a", 4000, 4.0), ("a", 4000, 3.5), ("b", 4000, 9.0), ("a", 6000, 3.0)]:
        append_metric_record(tmp_path, record(*args))
    lines = [json.loads(line) for line in (tmp_path / "metric-fd_tiny8.jsonl").read_text().splitlines()]
    assert [r.get("supersedes", False) for r in lines] == [False, False, True, False, False]
    standing = read_metric_records(tmp_path / "metric-fd_tiny8.jsonl")
    assert [(r["run_id"], r["cur_nimg"], r["value"]) for r in standing] == [
        ("a", 2000, 5.0), ("a", 4000, 3.5), ("b", 4000, 9.0), ("a", 6000, 3.0)]


def test_the_metrics_callback_keeps_its_run_id_across_a_resume():
    from stylenat.training.metrics_callback import MetricsCallback

    first = MetricsCallback(ref_data="digits", extractor="inception")
    resumed = MetricsCallback(ref_data="digits", extractor="inception")
    assert first.run_id != resumed.run_id
    resumed.load_state_dict(first.state_dict())
    assert resumed.run_id == first.run_id


def test_a_full_disk_while_appending_a_record_names_the_file(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(builtins, "open", Full)
    with pytest.raises(OSError) as err:
        append_metric_record(tmp_path, {"metric": "fd_x", "value": 1.0})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "metric-fd_x.jsonl")


def test_fit_prints_no_notices_that_need_no_action(tmp_path, recwarn, caplog):
    caplog.set_level(logging.INFO)
    assert fit(tmp_path / "run") == 0
    shown = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    noise = ("eval mode", "litlogger", "LeafSpec", "weights_only")
    assert [m for m in shown if any(n in m for n in noise)] == []
    assert any("GPU available" in m for m in shown)  # Lightning's other messages still come through
