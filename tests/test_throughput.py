"""``stylenat throughput`` prints one row per backend, with the ones that cannot run explained."""

from stylenat.cli import main


def test_throughput_rows(capsys):
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "cpu,flex,cuda"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert float(rows["cpu"].split("|")[2]) > 0  # img/s measured
    assert float(rows["flex"].split("|")[2]) > 0  # inference works on the CPU
    assert "unavailable" not in rows["cpu"] and "CUDA kernels" in rows["cuda"]


def test_throughput_training_skips_flex_on_cpu(capsys):
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "cpu,flex", "--train"]) == 0
    out = capsys.readouterr().out
    assert "no backward on the CPU" in out
