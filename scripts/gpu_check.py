#!/usr/bin/env python3
"""One-run GPU acceptance: everything a GPU machine must confirm, in order, in one report.

    python scripts/gpu_check.py --out DIR              # on a GPU machine: about 8 minutes on one H100
    python scripts/gpu_check.py --dry-run --out DIR    # the same steps on the CPU, tiny shapes (CI rehearsal)

Steps, each with its own time limit (every command runs as a subprocess in its own process group and is
killed at its step's limit, so a hang or a crash costs that step only, never the report):

1. env         GPU, driver, torch / triton / lightning / nvcc versions, commit, the packages the project needs
2. build       the CUDA kernels for the visible GPU only (TORCH_CUDA_ARCH_LIST from its capability, MAX_JOBS=16)
3. tests       the ``cuda``-marked tests, with JUnit XML so every failure is listed
4. bench       ``scripts/bench_natten.py`` over the GPU backends: bfloat16 (256 px stages at batch 8 and the
               1024 px stages), flex on a subset (it compiles per shape), float32 when time allows
5. generator   ``stylenat throughput``: batch 1 and 32, bfloat16 and float32, eager (and compiled where the
               checkout has ``--compile``); one G+D training step at batch 8 in bfloat16
6. train       ``stylenat fit`` with the ffhq256 recipe on a synthetic 256 px dataset written here: bf16-mixed,
               the fastest backend, a checkpoint, a resume that continues, finite losses, the export loads,
               ``stylenat generate`` writes images
7. classifier  NAT-Mini trained for a few steps with its recipe (configs/nat_mini.yaml)
8. summary     the backend ``auto`` should use per pass and dtype, and every failure with its log tail

``--dry-run`` runs the same steps on the CPU (CUDA hidden) with the demo preset at 32 px, tiny benchmark
shapes and a tiny NAT; what needs a GPU reports "skipped: no GPU".

DIR receives report.md and report.json (rewritten after every step), log.txt (every command's output) and
samples.png (images of the generator trained in step 6): few files, so a device tool that returns only a
handful returns them all. Datasets, runs and JUnit files go to --work (default: a temporary folder).
Optional parts that other work adds (the ``triton`` backend, ``throughput --compile``, ``StyleNATGAN(compile=)``)
are found at run time and reported "skipped: not in this checkout" when absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TAIL_LINES = 40
LOG_CHARS = 200_000  # of each command's output in log.txt (the device tool returns files up to 16 MB)
# The order in which candidate GPU backends are listed; any other backend a checkout adds comes after.
BACKEND_ORDER = ("cuda", "triton", "flex", "reference")


# ---------------------------------------------------------------------------------------------
# What differs between a GPU run and the CPU rehearsal


@dataclass(frozen=True)
class Profile:
    device: str
    bench_args: tuple[str, ...]          # shapes and repeats of scripts/bench_natten.py
    bench_flex_args: tuple[str, ...]     # flex compiles once per shape: a subset of the shapes
    bench_dtypes: tuple[str, ...]        # the first always, the others when time allows
    preset: str                          # generator / discriminator preset of steps 5 and 6
    resolution: int
    dtypes: tuple[str, ...]              # autocast dtypes of step 5; the first also times training
    precision: str                       # Lightning precision of steps 6 and 7
    batches: tuple[int, ...]             # inference batches of step 5
    train_batch: int
    repeats: int
    image_grids: bool                    # step 6 writes its sample grids (64 images each)
    samples: int                         # images of ``stylenat generate``
    fit_steps: tuple[int, int]           # steps before the checkpoint, steps after the resume
    workers: int
    classifier_resolution: int
    classifier_overrides: dict
    classifier_batch: int
    images_per_class: int
    classes: int = 4


GPU = Profile(device="cuda", bench_args=("--batch-scale", "2", "--highres", "--repeats", "3"),
              bench_flex_args=("--batch-scale", "2", "--highres", "--repeats", "3", "--quick"),
              bench_dtypes=("bfloat16", "float32"), preset="ffhq256", resolution=256,
              dtypes=("bfloat16", "float32"), precision="bf16-mixed", batches=(1, 32), train_batch=8, repeats=3,
              image_grids=True, samples=8, fit_steps=(32, 24), workers=4, classifier_resolution=224,
              classifier_overrides={}, classifier_batch=16, images_per_class=16)
# The rehearsal: float32 (bfloat16 is emulated, several times slower, on most CPUs), one benchmark shape, the demo
# generator, no sample grids: about two minutes on an idle 2-core machine.
DRY = Profile(device="cpu", bench_args=("--sizes", "16", "--quick", "--repeats", "1"), bench_flex_args=(),
              bench_dtypes=("float32",), preset="demo", resolution=32, dtypes=("float32",), precision="32-true",
              batches=(1,), train_batch=2, repeats=1, image_grids=False, samples=4, fit_steps=(2, 1), workers=0,
              classifier_resolution=32,
              classifier_overrides={"depths": [1, 1, 1], "num_heads": [1, 2, 4], "embed_dim": 32,
                                    "mlp_ratio": 2.0, "kernel_size": 3, "img_size": 32},
              classifier_batch=8, images_per_class=8)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class CommandResult:
    rc: Optional[int]  # None: killed at the step's time limit
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


@dataclass
class StepRecord:
    name: str
    title: str
    limit_s: float = 0.0
    status: str = "not run"
    seconds: float = 0.0
    checks: list[dict] = field(default_factory=list)    # {"name", "status", "detail"}
    tables: list[dict] = field(default_factory=list)    # {"title", "lines"}: markdown tables
    failures: list[dict] = field(default_factory=list)  # {"what", "detail", "log_tail"}
    data: dict = field(default_factory=dict)
    skipped: Optional[str] = None                       # the whole step: why
    timed_out: bool = False
    deadline: float = field(default=0.0, repr=False)

    def passed(self, name: str, detail: str = "") -> None:
        self.checks.append({"name": name, "status": "passed", "detail": detail})

    def skip(self, name: str, reason: str) -> None:
        self.checks.append({"name": name, "status": f"skipped: {reason}", "detail": ""})

    def fail(self, name: str, detail: str, log_tail: str = "") -> None:
        self.checks.append({"name": name, "status": "failed", "detail": detail})
        self.failures.append({"what": name, "detail": detail, "log_tail": log_tail})

    def expect(self, name: str, ok: bool, detail: str, log_tail: str = "") -> bool:
        if ok:
            self.passed(name, detail)
        else:
            self.fail(name, detail, log_tail)
        return ok

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def finish(self) -> None:
        if self.skipped:
            self.status = f"skipped: {self.skipped}"
        elif self.timed_out:
            self.status = f"timed out at its {self.limit_s:.0f} s limit"
        elif self.failures:
            self.status = "failed"
        else:
            self.status = "passed"


# ---------------------------------------------------------------------------------------------
# Running commands


class Run:
    """One acceptance run: the steps' records, their commands and the report files."""

    def __init__(self, out: Path, work: Path, profile: Profile, dry_run: bool, budget: float,
                 commit: Optional[str] = None):
        self.out, self.work, self.profile, self.dry_run, self.budget = out, work, profile, dry_run, budget
        self.commit = commit
        self.steps: list[StepRecord] = []
        self.started = datetime.now(timezone.utc)
        self.log = (out / "log.txt").open("w", encoding="utf-8")
        pythonpath = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONUNBUFFERED": "1"}
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the rehearsal runs on the CPU even on a GPU machine
        self.counter = 0

    def step(self, name: str) -> Optional[StepRecord]:
        return next((s for s in self.steps if s.name == name), None)

    def data(self, step: str, key: str, default: Any = None) -> Any:
        record = self.step(step)
        return record.data.get(key, default) if record else default

    @property
    def has_gpu(self) -> bool:
        return bool(self.data("env", "gpu"))

    def command(self, step: StepRecord, what: str, argv: list[str], env: Optional[dict] = None,
                timeout: Optional[float] = None, check: bool = True) -> Optional[CommandResult]:
        """Run ``argv`` in the repository, output to log.txt, killed (with its children) at the step's limit
        or ``timeout``. A non-zero exit or a kill is recorded as a failure of ``what`` when ``check``.
        Returns None (and records a skip) when the step has no time left to start it."""
        left = step.time_left() if timeout is None else min(timeout, step.time_left())
        if left < 1:
            step.skip(what, "the step's time limit was reached")
            step.timed_out = True
            return None
        self.counter += 1
        log_path = self.work / "logs" / f"{self.counter:02d}-{step.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with log_path.open("w", encoding="utf-8", errors="replace") as log:
            # its own process group (killed as one at the limit), in this session (ended with it)
            process = subprocess.Popen(argv, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)
            try:
                rc: Optional[int] = process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                rc = None
            except BaseException:  # interrupted: take the command down too
                _kill_group(process)
                raise
        result = CommandResult(rc, log_path.read_text(encoding="utf-8", errors="replace"),
                               time.monotonic() - start)
        shown = " ".join(argv).replace(str(REPO) + "/", "")
        status = f"exit {rc}" if rc is not None else f"killed after {result.seconds:.0f} s (time limit)"
        self.log.write(f"\n===== [{step.name}] {what}: {shown}\n===== {status}, {result.seconds:.1f} s\n")
        self.log.write(result.output[-LOG_CHARS:])  # the full log stays in --work
        self.log.flush()
        if rc is None:
            step.timed_out = True
            step.fail(what, f"killed at the time limit after {result.seconds:.0f} s", result.tail())
        elif rc != 0 and check:
            step.fail(what, f"exit code {rc}", result.tail())
        return result

    def probe(self, step: StepRecord, what: str, *args: str, timeout: Optional[float] = None,
              env: Optional[dict] = None) -> Optional[dict]:
        """Run one of this script's probes in a subprocess; its JSON result, or None (failure recorded)."""
        result = self.command(step, what, [PY, str(Path(__file__).resolve()), "--probe", *args], env=env,
                              timeout=timeout)
        if result is None or not result.ok:
            return None
        lines = result.output.strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            step.fail(what, "the probe printed no JSON result", result.tail())
            return None

    def write_report(self) -> None:
        report = {
            "started": self.started.isoformat(timespec="seconds"),
            "dry_run": self.dry_run,
            "budget_s": self.budget,
            "elapsed_s": round((datetime.now(timezone.utc) - self.started).total_seconds(), 1),
            "steps": [{k: v for k, v in asdict(s).items() if k not in ("deadline",)} for s in self.steps],
        }
        _write_atomic(self.out / "report.json", json.dumps(report, indent=1, default=str))
        _write_atomic(self.out / "report.md", render_markdown(report))


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename, so a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates it 0600
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Steps


def step_env(run: Run, step: StepRecord) -> None:
    info = run.probe(step, "environment probe", "env")
    if info is None:
        return
    if run.commit:  # given on the command line: a device machine's copy of the checkout may have no .git
        info["commit"] = run.commit
    step.data.update(info)
    gpu = info.get("gpu")
    if gpu:
        step.passed("GPU", f"{gpu['name']}, {gpu['memory_gib']} GiB, compute capability "
                           f"{'.'.join(map(str, gpu['capability']))}, {gpu['multiprocessors']} SMs, driver "
                           f"{info.get('driver') or '?'}")
    elif run.dry_run:
        step.skip("GPU", "no GPU (dry run: CUDA hidden)")
    else:
        step.fail("GPU", "no GPU visible to torch (torch.cuda.is_available() is False); on a machine without "
                         "one, run with --dry-run")
    step.passed("versions", ", ".join(f"{k} {info.get(k) or '-'}" for k in
                                      ("python", "torch", "torch_cuda", "triton", "lightning", "nvcc")))
    step.passed("commit", info.get("commit") or "unknown")
    for part, error in info["errors"].items():
        step.fail(f"probe: {part}", error)
    missing = info.get("requirements_missing")
    if missing is not None:
        step.expect("packages", not missing,
                    "every requirement of pyproject.toml (and its test extra) is installed" if not missing else
                    "missing or mismatched: " + "; ".join(missing) + ". Carry their wheels (scripts/gpu_wheels.sh, "
                    "README 'GPU acceptance').")
    if "backends" in info and "throughput_compile" in info:
        step.passed("optional parts of this checkout",
                    f"backends {', '.join(info['backends'])}; stylenat throughput --compile: "
                    f"{'yes' if info['throughput_compile'] else 'no'}; StyleNATGAN(compile=...): "
                    f"{'yes, default ' + info['gan_compile'] if info['gan_compile'] is not None else 'no'}")


def step_build(run: Run, step: StepRecord) -> None:
    env = dict(run.env)
    if run.has_gpu:
        major, minor = run.data("env", "gpu")["capability"]
        env.update(TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", MAX_JOBS="16", NATTEN_OPS_VERBOSE="1")
        run.env["TORCH_CUDA_ARCH_LIST"] = env["TORCH_CUDA_ARCH_LIST"]  # later steps find the same build
        built = run.probe(step, "CUDA kernels", "build", "cuda", env=env)
        what = f"CUDA kernels (sm_{major}{minor}, MAX_JOBS=16)"
    else:
        step.skip("CUDA kernels", "no GPU")
        built = run.probe(step, "CPU kernels", "build", "cpu", env=env)  # what the rehearsal's steps use
        what = "CPU kernels"
    if built is None:
        return
    step.passed(what, f"{built['seconds']:.0f} s{' (cached)' if built['cached'] else ''}: {built['module']}")
    step.data.update(seconds=built["seconds"], backends=built["backends"])
    lines = [f"| backend | na2d forward + backward, {run.profile.dtypes[0]}, head_dim 32 |", "|---|---|"]
    lines += [f"| {name} | {reason or 'available'} |" for name, reason in built["backends"].items()]
    step.tables.append({"title": f"natten_ops backends on {run.profile.device}", "lines": lines})


def candidate_backends(run: Run) -> list[str]:
    """The backends that can train on this device, in BACKEND_ORDER (all but the CPU's on a GPU)."""
    reasons = run.data("build", "backends")
    if reasons is None:  # the build step did not say: every backend the checkout names, the others report
        names = run.data("env", "backends") or list(BACKEND_ORDER)
        names = [n for n in names if (n == "cpu") == (run.profile.device == "cpu") or n == "reference"]
    else:
        names = [n for n, reason in reasons.items() if reason is None]
    order = {name: i for i, name in enumerate(("cpu",) + BACKEND_ORDER)}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def step_tests(run: Run, step: StepRecord) -> None:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if re.search(r"mark\.cuda\b", p.read_text(encoding="utf-8", errors="replace")))
    if not files:
        step.fail("cuda-marked tests", "no test file under tests/ uses pytest.mark.cuda")
        return
    junit = run.work / "junit-cuda.xml"
    junit.unlink(missing_ok=True)
    result = run.command(step, "pytest -m cuda", [PY, "-m", "pytest", "-m", "cuda", "-v", "-rfE", "-p",
                                                  "no:cacheprovider", "--continue-on-collection-errors",
                                                  f"--junitxml={junit}", "--timeout=60", *files],
                         check=False)
    if result is None:
        return
    cases = parse_junit(junit) if junit.exists() else parse_pytest_lines(result.output)  # killed: no JUnit
    counts = {status: sum(c["status"] == status for c in cases) for status in ("passed", "failed", "skipped")}
    step.data.update(files=files, counts=counts, failed_backends=failed_backends(cases, run.data("env", "backends")))
    step.data["complete"] = result.rc is not None and junit.exists()
    summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped in {len(files)} files"
    if not cases:
        if result.rc is not None:
            step.fail("pytest -m cuda", f"exit code {result.rc} and no JUnit report", result.tail())
        return
    for case in cases:
        if case["status"] == "failed":
            step.fail(case["id"], case["message"], case["text"])
    if result.rc == 0:
        step.passed("pytest -m cuda", summary)
    elif result.rc is not None and counts["failed"] == 0:
        step.fail("pytest -m cuda", f"exit code {result.rc} ({summary})", result.tail())
    else:  # failures are listed one by one above; a kill is recorded by Run.command
        step.checks.append({"name": "pytest -m cuda", "status": "counts", "detail": summary})
    if not run.has_gpu and counts["passed"] == counts["failed"] == 0:
        step.skipped = f"no GPU ({summary}: the rehearsal collected and ran them)"


def parse_junit(path: Path) -> list[dict]:
    """Each test case of a JUnit XML file: id, status (passed / failed / skipped), message, text tail."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        skipped = next((c for c in case if c.tag == "skipped"), None)
        if problem is not None:
            text = "\n".join((problem.text or "").rstrip().splitlines()[-TAIL_LINES:])
            cases.append({"id": test_id, "status": "failed", "message": (problem.get("message") or "")[:500],
                          "text": text})
        else:
            cases.append({"id": test_id, "status": "skipped" if skipped is not None else "passed",
                          "message": (skipped.get("message") or "")[:200] if skipped is not None else "",
                          "text": ""})
    return cases


def parse_pytest_lines(output: str) -> list[dict]:
    """The test cases ``pytest -v`` reported before it was stopped (``path::name[params] PASSED``), as
    :func:`parse_junit` gives them; a failure's text is not known yet."""
    cases = []
    for match in re.finditer(r"^(\S+\.py)::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", output, re.MULTILINE):
        path, name, outcome = match.groups()
        status = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "failed"}.get(outcome, "skipped")
        module = path[:-3].replace("/", ".")
        cases.append({"id": f"{module}::{name}", "status": status, "message": outcome, "text": ""})
    return cases


def failed_backends(cases: list[dict], backends: Optional[list[str]]) -> list[str]:
    """Backends that a failed test case names: a word of its module (``test_cuda``) or of its parameters
    (``[triton-float16]``); not of its function name, where ``reference`` means the ground truth."""
    names = backends or list(BACKEND_ORDER)
    failed = set()
    for case in cases:
        if case["status"] == "failed":
            module, _, function = case["id"].lower().partition("::")
            parameters = function.partition("[")[2]
            words = set(re.split(r"[^a-z0-9]+", module.rpartition(".")[2] + " " + parameters))
            failed |= {n for n in names if n in words}
    return sorted(failed)


def step_bench(run: Run, step: StepRecord) -> None:
    backends = candidate_backends(run)
    compiled = [b for b in backends if b == "flex"]  # torch.compile per shape: a subset of the shapes
    eager = [b for b in backends if b not in compiled]
    if run.profile.device == "cuda":
        eager.append("sdpa")
    else:  # the CPU profiler's memory pass over the reference's backward alone takes a minute or more
        eager = [b for b in eager if b != "reference"]
        step.skip("reference", "dry run: its CPU memory profile takes minutes")
    first, *others = run.profile.bench_dtypes
    rows = bench(run, step, f"{first}, every shape", eager, first, run.profile.bench_args)
    if not compiled:
        step.skip(f"{first}, flex", "dry run: flex compiles for minutes on a CPU and has no CPU backward"
                  if run.dry_run else "flex cannot run here (see the build step)")
    elif step.time_left() < 30:
        step.skip(f"{first}, flex", f"{step.time_left():.0f} s left in the step")
    else:
        rows += bench(run, step, f"{first}, flex on a subset (one compile per shape)", compiled, first,
                      run.profile.bench_flex_args)
    for dtype in others:  # rows measured before the step's limit are kept
        if step.time_left() < 30:
            step.skip(f"{dtype}, every shape", f"{step.time_left():.0f} s left in the step")
        else:
            rows += bench(run, step, f"{dtype}, every shape", eager, dtype, run.profile.bench_args)
    step.data["rows"] = rows
    step.data["ranking"] = rank_backends(rows, run.data("tests", "failed_backends", []))
    if not rows:
        step.fail("benchmark", "no benchmark row was measured")


def bench(run: Run, step: StepRecord, what: str, backends: list[str], dtype: str, extra: tuple[str, ...]) -> list[dict]:
    argv = [PY, "scripts/bench_natten.py", "--device", run.profile.device, "--dtype", dtype,
            "--backends", ",".join(backends), *extra]
    result = run.command(step, what, argv)
    if result is None:
        return []
    rows = parse_bench(result.output, dtype)
    table = [line for line in result.output.splitlines() if line.startswith("|")]
    if table:
        step.tables.append({"title": f"bench_natten.py, {what}", "lines": table})
    if result.ok:
        step.passed(what, f"{len(rows)} rows")
    elif rows:
        step.checks[-1]["detail"] += f" ({len(rows)} rows measured before that are kept)"
    return rows


def parse_bench(output: str, dtype: str) -> list[dict]:
    """bench_natten.py's table as records: shape, pass, dtype and {backend: milliseconds or None}."""
    header, rows = None, []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| B |"):
            header = cells
        elif header and line.startswith("|") and not line.startswith("|---") and len(cells) == len(header):
            record = dict(zip(header, cells))
            times = {}
            for name, value in record.items():
                if name.endswith(" ms"):
                    times[name[:-3]] = float(value) if _is_number(value) else None
            rows.append({"shape": [int(record[k]) for k in ("B", "heads", "H=W", "D", "k", "d")],
                         "pass": record["pass"], "dtype": dtype, "ms": times})
    return rows


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def rank_backends(rows: list[dict], failed: list[str]) -> dict:
    """Per dtype and pass: neighborhood-attention backends ranked by the geometric mean, over the shapes that all
    of them ran, of their time over the fastest one's (1.0 = fastest everywhere). ``sdpa`` (dense attention, a
    roofline) is not a candidate; backends that failed a GPU test are listed apart."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dtype"], row["pass"]), []).append(row)
    ranking = {}
    for (dtype, pass_), group in groups.items():
        merged: dict[tuple, dict] = {}
        for row in group:  # the same shape may come from two invocations (flex runs apart)
            merged.setdefault(tuple(row["shape"]), {}).update({b: t for b, t in row["ms"].items() if t is not None})
        names = sorted({b for times in merged.values() for b in times if b != "sdpa"})
        common = [times for times in merged.values() if all(b in times for b in names)]
        if not names or not common:
            continue
        scores = {b: math.exp(sum(math.log(t[b] / min(t[c] for c in names)) for t in common) / len(common))
                  for b in names}
        order = sorted(names, key=scores.get)
        ranking[f"{dtype} {pass_}"] = {"order": [b for b in order if b not in failed],
                                       "failed_tests": [b for b in order if b in failed],
                                       "score": {b: round(scores[b], 3) for b in order}, "shapes": len(common)}
    return ranking


def best_backend(run: Run) -> str:
    """The fastest backend for bf16 training by the benchmark, else the first candidate, else ``auto``."""
    ranking = run.data("bench", "ranking") or {}
    for key in (f"{run.profile.dtypes[0]} fwd+bwd", "float32 fwd+bwd", "bfloat16 fwd+bwd"):
        if ranking.get(key, {}).get("order"):
            return ranking[key]["order"][0]
    candidates = [b for b in candidate_backends(run) if b != "reference"]
    return candidates[0] if candidates else "auto"


def step_generator(run: Run, step: StepRecord) -> None:
    profile = run.profile
    backends = [b for b in candidate_backends(run) if b != "reference"]
    if not backends:
        step.fail("backends", "no backend other than the reference can run on this device")
        return
    base = [PY, "-m", "stylenat.cli", "throughput", "--preset", profile.preset, "--device", profile.device,
            "--repeats", str(profile.repeats)]
    # Most important first: a step cut at its limit loses the least. flex compiles once per attention shape
    # (minutes for the whole generator): it is timed last, when time is left; the reference at batch 1 only.
    eager = [b for b in backends if b != "flex"] or backends
    first_dtype, batches = profile.dtypes[0], sorted(profile.batches, reverse=True)
    plan = [(dtype, batch) for dtype in profile.dtypes for batch in batches]
    rows: list[dict] = []
    for index, (dtype, batch) in enumerate(plan):
        chosen = eager + (["reference"] if (dtype, batch) == (first_dtype, 1) else [])
        rows += throughput(run, step, f"inference, batch {batch}, {dtype}", base + [
            "--batch", str(batch), "--dtype", dtype, "--backends", ",".join(chosen)])
        if index == 0:
            rows += throughput(run, step, f"training (G+D step), batch {profile.train_batch}, {dtype}", base + [
                "--batch", str(profile.train_batch), "--dtype", dtype, "--train", "--backends", ",".join(eager)])
    compile_flag = run.data("env", "throughput_compile")
    if not compile_flag:
        step.skip("compiled", "not in this checkout (stylenat throughput has no --compile flag)"
                  if compile_flag is not None else "unknown (the environment probe did not run)")
    elif run.dry_run:
        step.skip("compiled", "dry run: torch.compile of the generator takes minutes on a CPU")
    else:
        best = best_backend(run)
        for dtype, batch in plan:
            what = f"inference, batch {batch}, {dtype}, compiled"
            if step.time_left() < 60:
                step.skip(what, f"{step.time_left():.0f} s left in the step (a compile takes about a minute)")
                continue
            rows += throughput(run, step, what, base + ["--batch", str(batch), "--dtype", dtype, "--compile",
                                                        "--backends", best])
    if "flex" in backends and "flex" not in eager:
        what = f"inference, batch {batches[0]}, {first_dtype}, flex"
        if step.time_left() < 45:
            step.skip(what, f"{step.time_left():.0f} s left in the step (flex compiles for each attention shape)")
        else:
            rows += throughput(run, step, what, base + ["--batch", str(batches[0]), "--dtype", first_dtype,
                                                        "--backends", "flex"])
    step.data["rows"] = rows
    lines = ["| what | backend | img/s | ms / batch | peak MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['backend']} | {r['img_s']} | {r['ms']} | {r['peak_mb']} |" for r in rows]
    step.tables.append({"title": f"stylenat throughput, {profile.preset}, {profile.device}", "lines": lines})


def throughput(run: Run, step: StepRecord, what: str, argv: list[str]) -> list[dict]:
    result = run.command(step, what, argv)
    if result is None:
        return []
    rows = []
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "backend":
            rows.append({"what": what, "backend": cells[0], "img_s": cells[1], "ms": cells[2], "peak_mb": cells[3]})
    measured = [r for r in rows if _is_number(r["img_s"])]
    if result.ok:
        step.expect(what, bool(measured), f"{len(measured)} of {len(rows)} backends measured",
                    "" if measured else result.tail())
    return rows


def step_train(run: Run, step: StepRecord) -> None:
    profile = run.profile
    data = synthetic_dataset(run, step)
    if data is None:
        return
    root = run.work / "gan"
    shutil.rmtree(root, ignore_errors=True)
    backend = best_backend(run)
    first, second = _fit_steps(run, profile)
    batch = profile.train_batch
    kimg = [first * batch / 1000, (first + second) * batch / 1000]
    step.data.update(backend=backend, steps=[first, first + second], batch=batch)
    model = {"generator_kwargs": {"backend": backend} if backend != "auto" else {}, "total_kimg": kimg[0],
             "image_snapshot_kimg": kimg[0] if profile.image_grids else None, "export_snapshot_kimg": None}
    trainer = {"devices": 1, "strategy": "auto", "precision": profile.precision, "default_root_dir": str(root),
               "log_every_n_steps": 1, "enable_progress_bar": False,
               "logger": _tensorboard(root),
               "callbacks": [{"class_path": "stylenat.training.callbacks.KimgCheckpoint",
                              "init_args": {"every_n_kimg": kimg[0]}}]}
    if profile.device == "cpu":
        trainer["accelerator"] = "cpu"
        model.update(generator=profile.preset, discriminator=profile.preset)
    override = {"trainer": trainer, "model": {"init_args": model},
                "data": {"init_args": {"path": str(data), "resolution": profile.resolution, "batch_size": batch,
                                       "num_workers": profile.workers}}}
    first_config, second_config = root.with_suffix(".yaml"), root.with_name("gan-resume.yaml")
    _write_yaml(first_config, override)
    _write_yaml(second_config, {"model": {"init_args": {"total_kimg": kimg[1]}}})
    fit = [PY, "-m", "stylenat.cli", "fit", "--config", "configs/ffhq256.yaml", "--config", str(first_config)]
    what = f"fit {first} steps (batch {batch}, {profile.precision}, backend {backend})"
    result = run.command(step, what, fit, timeout=step.time_left() - 0.35 * step.limit_s)  # the rest: resume, checks
    if result is None or not result.ok:
        return
    step.passed(what, f"{result.seconds:.0f} s")
    checkpoint = root / "checkpoints" / "last.ckpt"
    if not step.expect("checkpoint written", checkpoint.exists(), str(checkpoint.relative_to(root)), result.tail()):
        return
    first_checkpoint = root / "first.ckpt"
    shutil.copyfile(checkpoint, first_checkpoint)
    resume_start = time.time()
    what = f"resume to {first + second} steps (--ckpt_path last)"
    result = run.command(step, what, fit + ["--config", str(second_config), "--ckpt_path", "last"],
                         timeout=step.time_left() - 20)
    if result is None or not result.ok:
        return
    step.passed(what, f"{result.seconds:.0f} s")
    export = root / "generator.safetensors"
    seen = run.probe(step, "inspect the run", "gan-run", str(root), str(resume_start), profile.device)
    if seen is None:
        return
    expected = [first * batch, (first + second) * batch]
    saved = [seen["first_checkpoint"], seen["checkpoint"]]
    step.expect("checkpoint", saved[0]["cur_nimg"] == expected[0],
                f"after {first} steps: {saved[0]} (expected cur_nimg {expected[0]})")
    restored = "Restored all states from the checkpoint" in result.output
    kimg_after = seen["scalars"].get("Progress/kimg", {}).get("first_since")
    step.expect("resume continues", restored and saved[1]["cur_nimg"] == expected[1]
                and kimg_after is not None and kimg_after > kimg[0],
                f"Lightning restored the checkpoint: {restored}; then {saved[1]} (expected cur_nimg {expected[1]}); "
                f"the first kimg logged after the resume is {kimg_after and round(kimg_after, 6)} (> {kimg[0]}: it "
                "continued, not restarted)",
                result.tail())
    losses = {tag: s for tag, s in seen["scalars"].items() if tag.startswith("Loss/")}
    step.expect("losses finite", bool(losses) and all(s["finite"] for s in losses.values()),
                ", ".join(f"{tag}: {s['count']} values, last {s['last']:.4g}{'' if s['finite'] else ' NOT FINITE'}"
                          for tag, s in sorted(losses.items())) or "no Loss/* scalar was logged")
    for tag, key in (("Progress/kimg_per_s", "kimg_per_s"), ("Resources/peak_memory_gib", "peak_memory_gib")):
        step.data[key] = seen["scalars"].get(tag, {}).get("last")
    loaded = seen["export"]
    step.expect("export loads", bool(loaded) and loaded["finite"] and loaded["shape"][-1] == profile.resolution
                and loaded["cur_nimg"] == expected[1], f"{export.name}: {loaded}")
    images = run.work / "generated"
    shutil.rmtree(images, ignore_errors=True)
    result = run.command(step, "stylenat generate", [PY, "-m", "stylenat.cli", "generate", "--ckpt", str(export),
                                                     "--seeds", f"0-{profile.samples - 1}", "--grid", "--outdir",
                                                     str(images), "--device", profile.device])
    if result is not None and result.ok:
        written = sorted(p.name for p in images.glob("*.png"))
        grid = images / "grid.png"
        if grid.exists():
            shutil.copyfile(grid, run.out / "samples.png")
        step.expect("stylenat generate", sum(n.startswith("seed") for n in written) == profile.samples
                    and grid.exists(), f"{len(written)} images: {', '.join(written[:3])}, ... (grid: samples.png)")
    compiled_fit(run, step, fit, root)


def compiled_fit(run: Run, step: StepRecord, fit: list[str], root: Path) -> None:
    """A few more steps with ``model.compile`` where StyleNATGAN has that option and time is left."""
    what, default = "fit with model.compile", run.data("env", "gan_compile")
    if default is None:
        step.skip(what, "not in this checkout (StyleNATGAN has no compile option)")
    elif default not in ("False", "True"):
        step.skip(what, f"StyleNATGAN's compile option defaults to {default}, not a bool: unknown how to switch it on")
    elif run.dry_run:
        step.skip(what, "dry run: torch.compile of G and D takes minutes on a CPU")
    elif step.time_left() < 60:
        step.skip(what, f"{step.time_left():.0f} s left in the step (compiling G and D takes a minute or more)")
    else:
        config, folder, steps = root.with_name("gan-compiled.yaml"), f"{root}-compiled", 8
        _write_yaml(config, {"model": {"init_args": {"compile": True, "image_snapshot_kimg": None,
                                                     "total_kimg": steps * run.profile.train_batch / 1000}},
                             "trainer": {"default_root_dir": folder, "logger": _tensorboard(folder)}})
        result = run.command(step, f"{what} ({steps} steps)", fit + ["--config", str(config)])
        if result is not None and result.ok:
            step.passed(f"{what} ({steps} steps)", f"{result.seconds:.0f} s, compile included")


def synthetic_dataset(run: Run, step: StepRecord) -> Optional[Path]:
    """The folder of class sub-folders that steps 6 and 7 train on, written once per run."""
    profile, data = run.profile, run.work / "data"
    if not data.with_suffix(".done").exists():
        made = run.probe(step, "synthetic dataset", "dataset", str(data), str(profile.resolution),
                         str(profile.classes), str(profile.images_per_class))
        if made is None:
            return None
        data.with_suffix(".done").write_text(json.dumps(made))
    return data


def _fit_steps(run: Run, profile: Profile) -> tuple[int, int]:
    """Steps before and after the resume: the profile's, or as many (16 to 100 in all) as fit into this step's
    time less a minute (two start-ups, the checks) at half the training speed measured in step 5 (fit also runs
    bCR, lazy R1 and the EMA)."""
    first, second = profile.fit_steps
    if profile.device == "cpu":
        return first, second
    for row in run.data("generator", "rows", []):
        if row["what"].startswith("training") and row["backend"] == best_backend(run) and _is_number(row["img_s"]):
            seconds = run.step("train").limit_s - 60
            total = int(seconds * 0.5 * float(row["img_s"]) / profile.train_batch)
            total = max(16, min(100, total))
            first = max(8, int(total * 0.6) // 2 * 2)
            return first, total - first
    return first, second


def step_classifier(run: Run, step: StepRecord) -> None:
    profile = run.profile
    data = synthetic_dataset(run, step)
    if data is None:
        return
    root = run.work / "classifier"
    shutil.rmtree(root, ignore_errors=True)
    backend = best_backend(run)
    overrides = dict(profile.classifier_overrides, **({"backend": backend} if backend != "auto" else {}))
    trainer = {"devices": 1, "strategy": "auto", "precision": profile.precision, "max_epochs": 2,
               "default_root_dir": str(root),
               "log_every_n_steps": 1, "enable_progress_bar": False,
               "logger": _tensorboard(root)}
    if profile.device == "cpu":
        trainer["accelerator"] = "cpu"
    override = {"trainer": trainer,
                "model": {"init_args": {"num_classes": profile.classes, "model_overrides": overrides,
                                        "warmup_epochs": 1}},
                "data": {"init_args": {"path": str(data), "val_path": None, "val_fraction": 0.25,
                                       "resolution": profile.classifier_resolution,
                                       "batch_size": profile.classifier_batch, "num_workers": profile.workers}}}
    config = root.with_suffix(".yaml")
    _write_yaml(config, override)
    what = f"fit NAT-Mini 2 epochs ({profile.classifier_resolution} px, {profile.precision}, backend {backend})"
    result = run.command(step, what, [PY, "-m", "stylenat.cli", "fit", "--config", "configs/nat_mini.yaml",
                                      "--config", str(config)])
    if result is None or not result.ok:
        return
    step.passed(what, f"{result.seconds:.0f} s")
    scalars = run.probe(step, "logged scalars", "scalars", str(root), "0") or {}
    loss, top1 = scalars.get("train/loss"), scalars.get("val/top1")
    step.expect("losses finite", bool(loss) and loss["finite"] and loss["count"] > 0,
                f"train/loss: {loss and loss['count']} values, last {loss and loss['last']}")
    step.expect("validated", bool(top1), f"val/top1 {top1 and top1['last']}")
    checkpoints = sorted(str(p.relative_to(root)) for p in root.rglob("*.ckpt"))
    step.expect("checkpoint", any(p.endswith("last.ckpt") for p in checkpoints), ", ".join(checkpoints) or "none")


def step_summary(run: Run, step: StepRecord) -> None:
    ranking = run.data("bench", "ranking") or {}
    tests_complete = run.data("tests", "complete", False)
    lines = ["| dtype, pass | auto should use | then | failed its GPU tests | shapes compared |",
             "|---|---|---|---|---|"]
    for key, entry in sorted(ranking.items()):
        order = entry["order"]
        then = ", ".join(f"{b} ({entry['score'][b]:.2f}x)" for b in order[1:]) or "-"
        lines.append(f"| {key} | {order[0] if order else '-'} | {then} | {', '.join(entry['failed_tests']) or '-'} "
                     f"| {entry['shapes']} |")
    if ranking:
        step.tables.append({"title": "natten_ops na2d: the backend auto should use (time / fastest, geometric mean "
                                     "over the shapes every candidate ran)", "lines": lines})
        training = ranking.get(f"{run.profile.dtypes[0]} fwd+bwd") or next(iter(ranking.values()))
        suggestion = tuple(training["order"] + (["reference"] if "reference" not in training["order"] else []))
        step.data["auto_order"] = list(suggestion)
        step.passed("auto order", f"AUTO_ORDER['{run.profile.device}'] = {suggestion}"
                    + ("" if tests_complete else " (unverified: the GPU tests did not complete)"))
    else:
        step.skip("auto order", "no benchmark ranking")
    failures = [(s.name, f) for s in run.steps if s is not step for f in s.failures]
    step.data["failures"] = len(failures)
    step.data["steps"] = {s.name: s.status for s in run.steps if s is not step}


STEPS: list[tuple[str, str, Callable[[Run, StepRecord], None], float, float, float]] = [
    # name, title, function, GPU limit (s), reserve (s: the least it gets), dry-run limit (s)
    ("env", "Environment", step_env, 45, 15, 180),
    ("build", "CUDA extension build", step_build, 180, 60, 300),
    ("tests", "cuda-marked tests", step_tests, 120, 45, 300),
    ("bench", "Operator benchmark", step_bench, 75, 35, 300),
    ("generator", "Generator throughput", step_generator, 75, 40, 300),
    ("train", "Training end to end (ffhq256 recipe)", step_train, 120, 90, 400),
    ("classifier", "NAT-Mini classifier training", step_classifier, 60, 40, 300),
    ("summary", "Summary", step_summary, 5, 5, 10),
]
STEP_NAMES = [s[0] for s in STEPS]


def step_limit(chosen: list[tuple], index: int, left: float) -> float:
    """The GPU time limit of step ``chosen[index]`` with ``left`` seconds of the budget remaining: its own limit,
    less what the later steps' reserves need, never under its own reserve."""
    later = sum(step[4] for step in chosen[index + 1:])
    return max(chosen[index][4], min(chosen[index][3], left - later))


class Interrupted(BaseException):
    """SIGTERM (e.g. a device tool's time limit): stop the running command, keep the report."""


def _interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_all(run: Run, selected: list[str], injected: dict[str, str], limits: dict[str, float]) -> None:
    chosen = [s for s in STEPS if s[0] in selected]
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupted)
    for index, (name, title, function, gpu_limit, reserve, dry_limit) in enumerate(chosen):
        limit = dry_limit if run.dry_run else step_limit(chosen, index, run.budget - (time.monotonic() - start))
        step = StepRecord(name, title, limit_s=round(limits.get(name, limit), 1))
        run.steps.append(step)
        step.status = "running"
        run.write_report()
        began = time.monotonic()
        step.deadline = began + step.limit_s
        try:
            if name in injected:
                inject(run, step, injected[name])
            elif name not in ("env", "summary") and not run.dry_run and run.step("env") and not run.has_gpu:
                step.skipped = "no GPU (see the env step)"
            else:
                function(run, step)
        except Exception:  # a bug of this script in one step must not lose the others
            step.fail("step", "gpu_check.py raised", traceback.format_exc(limit=-8))
        except (Interrupted, KeyboardInterrupt) as err:
            step.fail("step", f"gpu_check.py was interrupted ({type(err).__name__} {err}); the later steps did not run")
            raise
        finally:
            step.seconds = round(time.monotonic() - began, 1)
            step.finish()
            run.write_report()
            print(f"[gpu_check] {name}: {step.status} ({step.seconds:.0f} s)", flush=True)


def inject(run: Run, step: StepRecord, how: str) -> None:
    """Tests only: make a step fail or hang, to show the report survives both."""
    code = {"fail": "print('injected failure'); raise SystemExit(3)",
            "hang": "import time; print('injected hang', flush=True); time.sleep(3600)"}[how]
    run.command(step, f"injected {how}", [PY, "-c", code])


# ---------------------------------------------------------------------------------------------
# The report


def render_markdown(report: dict) -> str:
    steps = report["steps"]
    env = next((s["data"] for s in steps if s["name"] == "env"), {})
    gpu = env.get("gpu") or {}
    lines = [f"# GPU acceptance{' (dry run on the CPU)' if report['dry_run'] else ''}: "
             f"{gpu.get('name', 'no GPU')}, {report['started'][:10]}", "",
             f"- started {report['started']}, {report['elapsed_s']:.0f} s so far ("
             + ("dry run: each step has its own limit)" if report["dry_run"] else f"budget {report['budget_s']:.0f} s)"),
             f"- commit {env.get('commit', 'unknown')}; torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), "
             f"triton {env.get('triton')}, lightning {env.get('lightning')}, nvcc {env.get('nvcc')}, "
             f"driver {env.get('driver')}, Python {env.get('python', '?')}",
             "- command: `python scripts/gpu_check.py" + (" --dry-run" if report["dry_run"] else "") + " --out DIR`",
             *([] if report["dry_run"] else
               [f"- commit this report as `docs/gpu/{report['started'][:10]}-{_slug(gpu.get('name', 'gpu'))}.md`"]),
             "", "| step | status | seconds | limit |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['limit_s']:.0f} |" for s in steps]
    summary = next((s for s in steps if s["name"] == "summary"), None)
    ordered = ([summary] if summary else []) + [s for s in steps if s is not summary]
    for step in ordered:
        lines += ["", f"## {step['title']} ({step['name']}): {step['status']}", ""]
        for check in step["checks"]:
            detail = f": {check['detail']}" if check["detail"] else ""
            lines.append(f"- **{check['name']}** {check['status']}{detail}")
        for table in step["tables"]:
            lines += ["", f"{table['title']}:", "", *table["lines"]]
        if step["name"] == "summary":
            failures = [(s["name"], f) for s in steps if s is not step for f in s["failures"]]
            lines += ["", f"Failures: {len(failures) or 'none'}"]
            for name, failure in failures:
                lines += ["", f"### [{name}] {failure['what']}: {failure['detail']}"]
                if failure["log_tail"]:
                    lines += ["", "```", failure["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100-80gb-hbm3``: the GPU's part of the report's file name."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-").split("-")
    return "-".join(w for w in words if w != "nvidia") or "gpu"


# ---------------------------------------------------------------------------------------------
# Probes: small jobs run in a subprocess (``--probe NAME ARGS``), each printing one JSON line


def probe_env() -> dict:
    """Versions, the GPU, and what this checkout offers; a part that fails is reported in ``errors``."""
    import importlib.metadata as metadata

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "gpu": None, "errors": {}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": list(torch.cuda.get_device_capability(0)),
                       "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
    for name in ("triton", "lightning"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    info["driver"] = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).strip() or None
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]).strip()
    dirty = _output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).strip()
    info["commit"] = (commit + (" (with uncommitted changes)" if dirty else "")) if commit else None
    for part in (_requirements_info, _natten_ops_info, _options_info):
        try:
            info.update(part())
        except Exception as err:  # still report the rest (the GPU above all)
            info["errors"][part.__name__.strip("_")] = f"{type(err).__name__}: {err}"
    return info


def _requirements_info() -> dict:
    return {"requirements_missing": missing_requirements()}


def _natten_ops_info() -> dict:
    from natten_ops import BACKENDS, _build

    home = _build.cuda_home()
    nvcc = _output([str(home / "bin" / "nvcc"), "--version"]) if home else ""
    return {"backends": list(BACKENDS), "nvcc": _first_match(nvcc, r"release ([\d.]+)")}


def _options_info() -> dict:
    """The optional parts that other work adds: ``stylenat throughput --compile`` (read off its ``--help``, so
    wherever the command lives) and ``StyleNATGAN(compile=...)``."""
    import inspect

    from stylenat.training.gan import StyleNATGAN

    usage = _output([sys.executable, "-m", "stylenat.cli", "throughput", "--help"])
    if "--backends" not in usage:
        raise RuntimeError(f"stylenat throughput --help printed no usage: {usage[-300:]!r}")
    parameter = inspect.signature(StyleNATGAN.__init__).parameters.get("compile")
    return {"throughput_compile": "[--compile]" in usage,  # a plain flag (one that takes a value shows a metavar)
            "gan_compile": None if parameter is None else repr(parameter.default)}


def missing_requirements() -> list[str]:
    """pyproject.toml's requirements (with their extras' and the test extra's) not installed in a matching version."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    try:
        import tomllib
    except ImportError:  # Python 3.10
        return []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"].get("test", [])]
    missing, seen = [], set()
    while todo:
        requirement = todo.pop()
        if requirement.name.lower() in seen:
            continue
        seen.add(requirement.name.lower())
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{requirement.name} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement.name} {version} (needs {requirement.specifier})")
        for extra in requirement.extras:  # e.g. jsonargparse[signatures]: its extra's requirements too
            for text in metadata.requires(requirement.name) or []:
                needed = Requirement(text)
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}) and \
                        not needed.marker.evaluate({"extra": ""}):
                    needed.marker = None
                    todo.append(needed)
    return sorted(missing)


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _first_match(text: str, pattern: str) -> Optional[str]:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def probe_build(kind: str) -> dict:
    from natten_ops import _build

    extension = _build.cuda_extension() if kind == "cuda" else _build.CPU_EXTENSION
    cached = _build.module_path(extension).exists()
    start = time.perf_counter()
    _build.load_cuda() if kind == "cuda" else _build.load_cpu()
    seconds = time.perf_counter() - start
    import torch

    import natten_ops

    dtype = torch.bfloat16 if kind == "cuda" else torch.float32
    backends = {name: natten_ops.unavailable_reason(name, "na2d", kind, dtype, needs_grad=True, head_dim=32)
                for name in natten_ops.BACKENDS}
    return {"seconds": round(seconds, 1), "cached": cached, "module": str(_build.module_path(extension)),
            "backends": backends}


def probe_dataset(folder: str, resolution: str, classes: str, per_class: str) -> dict:
    """Smooth random images (bicubic-upsampled noise, one tint per class) in class sub-folders."""
    import numpy as np
    from PIL import Image

    root, size = Path(folder), int(resolution)
    rng = np.random.default_rng(0)
    for label in range(int(classes)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        tint = rng.uniform(0.3, 1.0, size=3)
        for index in range(int(per_class)):
            small = (rng.uniform(0, 255, size=(8, 8, 3)) * tint).astype(np.uint8)
            Image.fromarray(small).resize((size, size), Image.BICUBIC).save(root / f"class{label}" / f"{index:03d}.png")
    return {"images": int(classes) * int(per_class), "resolution": size}


def probe_gan_run(root: str, since: str, device: str) -> dict:
    """Step 6's run folder: the counters of the checkpoints before (first.ckpt) and after the resume
    (checkpoints/last.ckpt), its scalars (see :func:`probe_scalars`) and the export run on ``device``."""
    import torch

    from stylenat.models import load_generator

    folder = Path(root)
    counters = {}
    for key, path in (("first_checkpoint", folder / "first.ckpt"), ("checkpoint", folder / "checkpoints" / "last.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # written by this run
        counters[key] = {name: checkpoint.get(name) for name in ("cur_nimg", "cur_step", "global_step")}
    generator, info = load_generator(folder / "generator.safetensors", device=device)
    with torch.no_grad():
        images = generator(torch.randn(2, generator.z_dim, device=device))
    export = {"preset": info["preset"], "cur_nimg": info.get("cur_nimg"), "shape": list(images.shape),
              "finite": bool(torch.isfinite(images).all())}
    return {**counters, "scalars": probe_scalars(root, since), "export": export}


def probe_scalars(folder: str, since: str) -> dict:
    """Every scalar tag of the TensorBoard event files under ``folder``: count, all finite, the first value
    logged at or after the wall time ``since``, the last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events: dict[str, list] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend(accumulator.Scalars(tag))
    result = {}
    for tag, values in events.items():
        values.sort(key=lambda e: e.wall_time)
        later = [e.value for e in values if e.wall_time >= float(since)]
        result[tag] = {"count": len(values), "finite": all(math.isfinite(e.value) for e in values),
                       "first_since": later[0] if later else None, "last": values[-1].value}
    return result


PROBES = {"env": probe_env, "build": probe_build, "dataset": probe_dataset, "gan-run": probe_gan_run,
          "scalars": probe_scalars}


def _tensorboard(folder: str | Path) -> dict:
    """A TensorBoard logger writing straight into ``folder`` (no version sub-folder)."""
    return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(folder), "name": "", "version": ""}}


def _write_yaml(path: Path, content: dict) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))


# ---------------------------------------------------------------------------------------------


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in STEP_NAMES or not value:
            raise SystemExit(f"gpu_check.py: {what} takes STEP=VALUE with STEP one of {STEP_NAMES}, got {item!r}")
        pairs[name] = value
    return pairs


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for report.md, report.json, log.txt and samples.png")
    parser.add_argument("--work", help="folder for datasets, runs and logs (default: a new temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, tiny shapes and models")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole GPU run (default 480); each step gets at most its own limit "
                             "and leaves the later steps their minimum")
    parser.add_argument("--commit", help="the commit under test, for the report (default: git rev-parse HEAD; "
                                         "device machines get a copy of the working tree without .git)")
    parser.add_argument("--steps", default=",".join(STEP_NAMES),
                        help=f"comma list of steps (default: all of {STEP_NAMES}); env and summary always run")
    parser.add_argument("--inject", action="append", default=[], help=argparse.SUPPRESS)      # tests: STEP=fail|hang
    parser.add_argument("--step-limit", action="append", default=[], help=argparse.SUPPRESS)  # tests: STEP=SECONDS
    parser.add_argument("--probe", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)         # internal
    args = parser.parse_args(argv)

    if args.probe:
        name, *rest = args.probe
        print(json.dumps(PROBES[name](*rest), default=str))
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    selected = ["env", "summary"] + [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(STEP_NAMES))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {STEP_NAMES}")
    injected = _pairs(args.inject, "--inject")
    if any(v not in ("fail", "hang") for v in injected.values()):
        parser.error("--inject takes STEP=fail or STEP=hang")
    limits = {k: float(v) for k, v in _pairs(args.step_limit, "--step-limit").items()}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(out, work, DRY if args.dry_run else GPU, args.dry_run, args.budget, args.commit)
    print(f"[gpu_check] {'dry run, ' if args.dry_run else ''}report: {out / 'report.md'}, work: {work}", flush=True)
    try:
        run_all(run, selected, injected, limits)
    except (Interrupted, KeyboardInterrupt):
        print(f"[gpu_check] interrupted; the report so far: {out / 'report.md'}", flush=True)
        return 130
    finally:
        run.log.close()
    failed = [s.name for s in run.steps if s.failures]
    print("\n".join(["", "| step | status | seconds |", "|---|---|---|"]
                    + [f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in run.steps]))
    for step in run.steps:
        for check in step.checks:
            if check["status"] == "failed" or step.name == "summary":
                print(f"[{step.name}] {check['name']}: {check['status']}: {check['detail'][:300]}")
    print(f"[gpu_check] done: failures in {failed or 'no step'}; {out / 'report.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
