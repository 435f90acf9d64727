"""stylenat.breakdown and scripts/profile_cpu.py: the components add up to the profiled time, attention and
the other generator parts show up, and backward work lands on the component whose forward made it."""

import runpy
import sys
from pathlib import Path

import pytest
import torch

from stylenat import breakdown
from stylenat.breakdown import generator_breakdown, module_categories, training_breakdown
from stylenat.models import create_discriminator, create_generator
from stylenat.training.gan import PHASE_SCOPES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _adds_up(result: breakdown.Breakdown) -> None:
    # Every op's self time is counted once: the rows add up to the wall time of the profiled run (the
    # whole run sits in one profiler scope; only the profiler's own bookkeeping is outside it).
    assert result.total_ms == pytest.approx(result.wall_ms, rel=0.1)
    assert sum(result.share(row.category) for row in result.rows) == pytest.approx(1.0)


def test_generator_sampling_breakdown():
    result = generator_breakdown("demo", batch=2)
    _adds_up(result)
    rows = {row.category: row for row in result.rows}
    for category in (breakdown.ATTENTION_KERNELS, breakdown.ATTENTION_LINEARS, breakdown.MLP, breakdown.ADAIN,
                     breakdown.TOKEN_UPSAMPLE, breakdown.TO_RGB, breakdown.FIR, breakdown.MAPPING,
                     breakdown.FULL_ATTENTION):
        assert rows[category].forward_ms > 0, category
    assert all(row.backward_ms == 0 for row in result.rows)  # sampling runs no backward
    assert result.share(breakdown.ATTENTION_KERNELS) > 0.01
    assert breakdown.DISCRIMINATOR not in rows


def test_training_breakdown_splits_forward_backward_and_the_phases():
    # Two profiled steps after one warm-up, R1 due at the second (step 2), bCR on.
    result = training_breakdown(REPO / "configs" / "demo.yaml", steps=2,
                                overrides=dict(r1_interval=2, bcr_real=1.0, bcr_fake=1.0))
    _adds_up(result)
    rows = {row.category: row for row in result.rows}
    # Backward ops follow their forward op's component, natten_ops' backward kernels included.
    for category in (breakdown.DISCRIMINATOR, breakdown.ATTENTION_KERNELS, breakdown.MLP, breakdown.ADAIN,
                     breakdown.ATTENTION_LINEARS):
        assert rows[category].forward_ms > 0 and rows[category].backward_ms > 0, category
    r1, bcr, ema = (breakdown.PHASES[PHASE_SCOPES[phase]] for phase in ("R1", "bCR", "G_ema"))
    assert rows[r1].backward_ms > 0 and rows[bcr].backward_ms > 0 and rows[ema].total_ms > 0
    assert rows[breakdown.OPTIMIZER].total_ms > 0


def test_d_is_one_component_and_the_generator_fir_filters_their_own():
    G, D = create_generator("demo"), create_discriminator("demo")
    assert set(module_categories(D).values()) == {breakdown.DISCRIMINATOR}
    assert breakdown.FIR in module_categories(G).values()


def test_profile_cpu_script_prints_the_table(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["profile_cpu.py", "--preset", "demo", "--batch", "1"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "profile_cpu.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("# demo sampling, batch 1") and f"| {breakdown.ATTENTION_KERNELS} |" in out
    assert "| **all** |" in out and "load average" in out


@pytest.mark.parametrize("config, message", [("no/such.yaml", "no such file 'no/such.yaml'"),
                                             ("configs/nat_digits.yaml", "is not a GAN config")])
def test_profile_cpu_script_names_a_bad_config(config, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["profile_cpu.py", "--train", config])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "profile_cpu.py"), run_name="__main__")
    assert done.value.code == 2
    assert message in capsys.readouterr().err
