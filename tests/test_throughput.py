"""``stylenat throughput`` prints one row per backend, with the ones that cannot run explained."""

from stylenat import throughput
from stylenat.cli import main


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

    def out_of_memory_first(step, device, repeats, warmup=1):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory\nmore detail")
        return 0.5

    monkeypatch.setattr(throughput, "median_seconds", out_of_memory_first)
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "reference,cpu"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "can't allocate memory" in rows["reference"] and "more detail" not in rows["reference"]
    assert float(rows["cpu"].split("|")[2]) == 4.0  # batch 2 / 0.5 s


def test_throughput_compares_eager_and_compiled(capsys):
    assert main(["throughput", "--preset", "demo", "--batch", "2", "--repeats", "1", "--backends", "cpu",
                 "--compile", "aot_eager"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert float(rows["cpu"].split("|")[2]) > 0 and float(rows["cpu + compile"].split("|")[2]) > 0
    assert main(["throughput", "--preset", "demo", "--compile", "fastest"]) == 2
    assert "--compile must name a torch.compile backend" in capsys.readouterr().err
