"""``stylenat throughput`` prints one row per backend, with the ones that cannot run explained."""

import pytest
import torch

from stylenat import profiling, throughput
from stylenat.cli import main
from stylenat.profiling import Timing


def test_throughput_rows(capsys):
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "cpu,flex,cuda"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert float(rows["cpu"].split("|")[2]) > 0  # img/s measured
    assert float(rows["flex"].split("|")[2]) > 0  # inference works on the CPU
    assert "unavailable" not in rows["cpu"] and "runs on cuda tensors" in rows["cuda"]


def test_throughput_training_skips_flex_on_cpu(capsys):
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "cpu,flex", "--train"]) == 0
    out = capsys.readouterr().out
    assert "no backward on the CPU" in out


def test_throughput_reports_a_failing_backend_and_goes_on(capsys, monkeypatch):
    calls = []

    def out_of_memory_first(step, device, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory\nmore detail")
        return Timing(0.5, 0.01, 5, True)

    monkeypatch.setattr(throughput, "stable_seconds", out_of_memory_first)
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "reference,cpu"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "can't allocate memory" in rows["reference"] and "more detail" not in rows["reference"]
    assert float(rows["cpu"].split("|")[2]) == 4.0  # batch 2 / 0.5 s


def test_throughput_keeps_native_noise_off_and_shows_progress(capfd):
    assert main(["throughput", "--preset", "demo", "--batch", "1", "--repeats", "2", "--backends", "cpu"]) == 0
    out, err = capfd.readouterr()
    row, = (line for line in out.splitlines() if line.startswith("| cpu "))
    assert row.split("|")[4].strip().endswith(tuple(f"of {n}" for n in range(2, 31)) + ("(unsettled)",))
    assert "cpu: warming up" in err and "cpu: run 2:" in err  # progress, on stderr
    assert "profiler_start" not in err + out and "gpuGetDeviceCount" not in err + out


def test_stable_seconds_times_until_the_last_runs_agree(monkeypatch):
    durations = iter([9.0, 1.0, 2.0, 1.0, 1.0, 1.02, 5.0])  # warm-up, then the timed runs
    clock = [0.0]

    def step():
        clock[0] += next(durations)

    monkeypatch.setattr(profiling.time, "perf_counter", lambda: clock[0])
    timing = profiling.stable_seconds(step, torch.device("cpu"), window=3, tolerance=0.05)
    assert timing == Timing(seconds=1.0, spread=pytest.approx(0.02), runs=5, stable=True)
    durations = iter([1.0] + [1.0, 2.0] * 10)
    assert not profiling.stable_seconds(step, torch.device("cpu"), window=2, max_runs=6).stable


def test_median_seconds_runs_until_the_minimum_time_is_spent(monkeypatch):
    calls, clock = [0], [0.0]

    def step():  # every run takes 10 ms of the fake clock
        calls[0] += 1
        clock[0] += 0.01

    monkeypatch.setattr(profiling.time, "perf_counter", lambda: clock[0])
    assert profiling.median_seconds(step, torch.device("cpu"), repeats=3, warmup=2) == pytest.approx(0.01)
    assert calls[0] == 2 + 3  # the default asks for no minimum time
    calls[0] = 0
    profiling.median_seconds(step, torch.device("cpu"), repeats=3, warmup=2, min_seconds=0.095)
    assert calls[0] == 2 + 10


def test_throughput_compares_eager_and_compiled(capsys):
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--max-runs", "1",
                 "--backends", "cpu", "--compile", "aot_eager"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert float(rows["cpu"].split("|")[2]) > 0 and float(rows["cpu + compile"].split("|")[2]) > 0
    assert main(["throughput", "--preset", "demo", "--compile", "fastest"]) == 2
    assert "--compile must name a torch.compile backend" in capsys.readouterr().err
