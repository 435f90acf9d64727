#!/usr/bin/env python3
"""One-run GPU acceptance: everything a GPU machine must confirm, in order, in one report.

    python scripts/gpu_check.py --out DIR              # on a GPU machine: about 8 minutes on one H100
    python scripts/gpu_check.py --dry-run --out DIR    # the same steps on the CPU, tiny shapes (CI rehearsal)

Steps, each with its own time limit (every command runs as a subprocess in its own process group and is
killed at its step's limit, so a hang or a crash costs that step only, never the report):

1. env         GPU, driver, torch / triton / lightning / nvcc versions, commit, the packages the project needs
2. build       the CUDA kernels for the visible GPU only (TORCH_CUDA_ARCH_LIST from its capability, MAX_JOBS=16)
3. tests       the ``cuda``-marked tests, with JUnit XML so every failure is listed
4. bench       ``scripts/bench_natten.py`` over the GPU backends but the reference, and SDPA: bfloat16 (256 px
               stages at batch 8 and the 1024 px stages), flex on a subset (it compiles per shape), float32 when
               time allows
5. generator   ``stylenat throughput``: batch 1 and 32, bfloat16 and float32, eager (and compiled where the
               checkout has ``--compile``); one G+D training step at batch 8 in bfloat16
6. train       ``stylenat fit`` with the ffhq256 recipe on a synthetic 256 px dataset written here: bf16-mixed,
               the fastest backend, a checkpoint, a resume that continues, finite losses, the export loads,
               ``stylenat generate`` writes images
7. classifier  NAT-Mini trained for a few steps with its recipe (configs/imagenet_classifier.yaml)
8. summary     the backend ``auto`` should use per pass and dtype, and every failure with its log tail

``--dry-run`` runs the same steps on the CPU (CUDA hidden) with the demo preset at 32 px, tiny benchmark
shapes and a tiny NAT; what needs a GPU reports "skipped: no GPU".

DIR receives report.md and report.json (rewritten after every step), log.txt (the end of every command's output) and
samples.png (images of the generator trained in step 6): few files, so a device tool that returns only a
handful returns them all. Datasets, runs and JUnit files go to --work (default: a temporary folder).
Optional parts that other work adds (the ``triton`` backend, ``throughput --compile``, ``StyleNATGAN(compile=)``)
are found at run time and reported "skipped: not in this checkout" when absent. The parts live in
scripts/gpu_acceptance/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

from gpu_acceptance.records import DRY, GPU, Interrupted, Run
from gpu_acceptance.steps import STEP_NAMES, run_all


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
    args = parser.parse_args(argv)

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
