"""The run's records (each step's checks, tables, failures and data), the command runner that holds every
command to its step's time limit, and the report files (report.md, report.json, log.txt)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
PROBES = Path(__file__).with_name("probes.py")
TAIL_LINES = 40
LOG_CHARS = 200_000  # of each command's output in log.txt (the device tool returns files up to 16 MB)


@dataclass(frozen=True)
class Profile:
    """What differs between the GPU run (:data:`GPU`) and the CPU rehearsal (:data:`DRY`)."""

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


class Interrupted(BaseException):
    """SIGTERM (e.g. a device tool's time limit): stop the running command, keep the report."""


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
        """Run one of :mod:`.probes` in a subprocess; its JSON result, or None (failure recorded)."""
        result = self.command(step, what, [PY, str(PROBES), *args], env=env,
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
