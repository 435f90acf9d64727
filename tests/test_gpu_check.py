"""scripts/gpu_check.py: the dry run rehearses every step on the CPU, the report survives a failing and a
hanging step, and the parsing behind the summary (benchmark tables, JUnit, backend ranking) is right."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when the script runs
from gpu_acceptance import parse  # noqa: E402
from gpu_acceptance import steps as gpu_steps  # noqa: E402


def run_check(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "work"),
                             *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    report = json.loads((out / "report.json").read_text())
    return result, report, (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dry_run_rehearses_every_step(tmp_path):
    result, report, markdown = run_check(tmp_path, timeout=1100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == gpu_steps.STEP_NAMES and report["dry_run"]
    for name, step in steps.items():
        assert step["status"] == "passed" or step["status"].startswith("skipped: no GPU"), (name, step["status"])
        assert f"({name}): {step['status']}" in markdown
    assert steps["tests"]["status"].startswith("skipped: no GPU")  # collected and run; each test skips
    assert steps["tests"]["data"]["counts"]["skipped"] > 0 and steps["tests"]["data"]["counts"]["failed"] == 0
    checks = {(s["name"], c["name"]): c["status"] for s in report["steps"] for c in s["checks"]}
    assert checks[("build", "CUDA kernels")] == "skipped: no GPU"
    for name in ("checkpoint", "resume continues", "losses finite", "export loads", "stylenat generate"):
        assert checks[("train", name)] == "passed", name
    assert checks[("classifier", "losses finite")] == "passed"
    assert steps["bench"]["data"]["rows"] and steps["generator"]["data"]["rows"]
    assert steps["summary"]["data"]["auto_order"][0] == "cpu"
    assert (tmp_path / "out" / "samples.png").is_file() and (tmp_path / "out" / "log.txt").is_file()


@pytest.mark.timeout(300)
def test_report_is_written_when_steps_fail_or_hang(tmp_path):
    result, report, markdown = run_check(tmp_path, "--steps", "env,tests,summary", "--inject", "env=fail",
                                         "--inject", "tests=hang", "--step-limit", "tests=3", timeout=240)
    assert result.returncode == 1
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["env", "tests", "summary"]
    assert steps["env"]["status"] == "failed"
    assert "injected failure" in steps["env"]["failures"][0]["log_tail"]
    assert steps["tests"]["status"] == "timed out at its 3 s limit" and steps["tests"]["seconds"] < 60
    assert "injected hang" in steps["tests"]["failures"][0]["log_tail"]
    assert steps["summary"]["status"] == "passed" and steps["summary"]["data"]["failures"] == 2
    assert "Failures: 2" in markdown and "injected failure" in markdown and "injected hang" in markdown


def command_lines() -> list[str]:
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(path.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            pass
    return lines


@pytest.mark.timeout(300)
def test_sigterm_stops_the_running_command_and_keeps_the_report(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "work" / "logs"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work",
                                str(tmp_path / "work"), "--steps", "tests", "--inject", "env=fail", "--inject",
                                "tests=hang"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not any("injected hang" in p.read_text() for p in logs.glob("*-tests.log")):
        assert time.monotonic() < deadline and process.poll() is None, "the injected hang never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130, process.stdout.read()
    steps = {s["name"]: s for s in json.loads((out / "report.json").read_text())["steps"]}
    assert list(steps) == ["env", "tests"]  # the summary did not run
    assert steps["tests"]["status"] == "failed"
    assert "interrupted (Interrupted SIGTERM)" in steps["tests"]["failures"][-1]["detail"]
    assert not any("injected hang" in line and "time.sleep" in line for line in command_lines())


BENCH_OUTPUT = textwrap.dedent("""\
    # natten_ops 0.1.0, torch 2.11.0, device cuda (NVIDIA H100 80GB HBM3), dtype bfloat16
    | B | heads | H=W | D | k | d | pass | cuda ms | reference ms | sdpa ms | cuda MB | reference MB | sdpa MB | cuda GFLOP/s | x vs reference | x vs sdpa | cuda 1-thread ms | 2-thread speed-up |
    |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
    | 8 | 16 | 16 | 32 | 7 | 2 | fwd | 1.00 | 10.00 | 0.50 | 2 | 106 | 1 | 24.2 | 10.0 | 0.5 | 1.90 | 1.9 |
    # reference failed on (8, 16, 32, 32, 7, 4): CUDA out of memory
    | 8 | 16 | 32 | 32 | 7 | 4 | fwd | 2.00 | - | 1.00 | 8 | - | 4 | 26.1 | - | 0.5 | 3.90 | 1.9 |
    | 8 | 16 | 32 | 32 | 7 | 4 | fwd+bwd | 8.00 | 40.00 | 3.00 | 32 | 825 | 9 | 19.7 | 5.0 | 0.4 | 15.0 | 1.9 |
    """)


def test_parse_bench_keeps_missing_cells_as_none_and_only_backend_columns():
    rows = parse.parse_bench(BENCH_OUTPUT, "bfloat16")
    assert [r["shape"] for r in rows] == [[8, 16, 16, 32, 7, 2], [8, 16, 32, 32, 7, 4], [8, 16, 32, 32, 7, 4]]
    assert rows[1] == {"shape": [8, 16, 32, 32, 7, 4], "pass": "fwd", "dtype": "bfloat16",
                       "ms": {"cuda": 2.0, "reference": None, "sdpa": 1.0}}


def test_step_limits_keep_the_gpu_run_within_its_budget():
    table, budget = gpu_steps.STEPS, 480.0
    used = 0.0
    for index in range(len(table)):  # every step runs to its limit
        used += gpu_steps.step_limit(table, index, budget - used)
    assert used <= budget
    fast = [gpu_steps.step_limit(table, index, budget - 10 * index) for index in range(len(table))]
    assert fast == [step[3] for step in table]  # quick steps leave the later ones their full limits


def test_rank_backends_over_common_shapes_and_apart_from_failed_tests():
    rows = parse.parse_bench(BENCH_OUTPUT, "bfloat16")
    rows.append({"shape": [8, 16, 16, 32, 7, 2], "pass": "fwd", "dtype": "bfloat16", "ms": {"flex": 4.0}})  # run apart
    ranking = parse.rank_backends(rows, failed=[])
    forward = ranking["bfloat16 fwd"]
    # only the 16 px shape has every candidate (reference is missing at 32 px); sdpa is a roofline, not a candidate
    assert forward == {"order": ["cuda", "flex", "reference"], "failed_tests": [],
                       "score": {"cuda": 1.0, "flex": 4.0, "reference": 10.0}, "shapes": 1}
    assert ranking["bfloat16 fwd+bwd"]["order"] == ["cuda", "reference"]
    failed = parse.rank_backends(rows, failed=["cuda"])["bfloat16 fwd"]
    assert failed["order"] == ["flex", "reference"] and failed["failed_tests"] == ["cuda"]


def test_junit_failures_name_their_backend(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest">
          <testcase classname="tests.ops.test_cuda" name="test_deterministic"/>
          <testcase classname="tests.ops.test_cuda" name="test_gradcheck[size0-7-2]">
            <failure message="AssertionError: dq differs">line 1\nline 2</failure></testcase>
          <testcase classname="tests.ops.test_backends" name="test_matches_reference[triton-float16]">
            <error message="RuntimeError: launch failed">trace</error></testcase>
          <testcase classname="tests.ops.test_triton_cuda" name="test_side_by_side_with_cuda">
            <failure message="AssertionError">trace</failure></testcase>
          <testcase classname="tests.ops.test_cuda" name="test_past_32_bit_indexing">
            <skipped message="needs an NVIDIA GPU"/></testcase>
        </testsuite></testsuites>"""))
    cases = parse.parse_junit(junit)
    assert [c["status"] for c in cases] == ["passed", "failed", "failed", "failed", "skipped"]
    assert cases[1]["message"] == "AssertionError: dq differs" and cases[1]["text"].endswith("line 2")
    assert parse.failed_backends(cases, ["reference", "cpu", "cuda", "flex", "triton"]) == ["cuda", "triton"]
    assert parse.failed_backends(cases[3:4], ["cuda", "triton"]) == ["triton"]  # test_triton_cuda: triton's tests


def test_pytest_progress_lines_stand_in_for_a_missing_junit_report():
    output = textwrap.dedent("""\
        tests/ops/test_cuda.py::test_fused_matches_reference[1-2-9-9-16-7-1-True] PASSED [  1%]
        tests/ops/test_triton.py::test_forward[float16] FAILED [  2%]
        tests/ops/test_cuda.py::test_past_32_bit_indexing SKIPPED (needs an NVIDIA GPU) [  3%]
        """)
    cases = parse.parse_pytest_lines(output)
    assert [(c["id"], c["status"]) for c in cases] == [
        ("tests.ops.test_cuda::test_fused_matches_reference[1-2-9-9-16-7-1-True]", "passed"),
        ("tests.ops.test_triton::test_forward[float16]", "failed"),
        ("tests.ops.test_cuda::test_past_32_bit_indexing", "skipped")]
    assert parse.failed_backends(cases, ["reference", "cuda", "triton"]) == ["triton"]
