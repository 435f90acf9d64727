"""The README's demo tables from a run's metric records: Fréchet distance and readability per evaluation, and
the class histogram of the last one next to the reals'.

    python scripts/demo_table.py runs/demo

Reads ``metric-fd_<extractor><n>.jsonl`` and ``metric-readable_<extractor><n>.jsonl`` (written by
:class:`stylenat.training.metrics_callback.MetricsCallback` with ``metrics: [fid, readable]``) and prints
Markdown. Readable: the share of samples the classifier assigns to one class with probability >= 0.9; the
reals' share is measured the same way on the reference images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    """The records of one ``metric-*.jsonl`` file, in file order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def one_file(run_dir: Path, prefix: str) -> Path:
    files = sorted(run_dir.glob(f"metric-{prefix}_*.jsonl"))
    if len(files) != 1:
        raise SystemExit(f"error: expected one metric-{prefix}_*.jsonl in {run_dir}, found {[f.name for f in files]}")
    return files[0]


def markdown_tables(fd: list[dict], readable: list[dict]) -> str:
    """Markdown: per evaluation (records of the same evaluations, in order) kimg, FD, readable share and that
    share relative to the reals'; then the class histogram of the last evaluation next to the reals'."""
    if [r["kimg"] for r in fd] != [r["kimg"] for r in readable]:
        raise SystemExit("error: the fd and readable records come from different evaluations (kimg differ)")
    last = readable[-1]
    rows = [
        ["kimg", *[f"{r['kimg']:g}" for r in fd]],
        ["---"] * (len(fd) + 1),
        [fd[0]["metric"], *[f"{r['value']:.1f}" for r in fd]],
        [f"readable (reals: {last['reference_value']:.0%})", *[f"{r['value']:.0%}" for r in readable]],
        ["readable / reals' share", *[f"{r['relative']:.2f}" for r in readable]],
        [],
        ["class", *[str(c) for c in range(len(last["class_shares"]))]],
        ["---"] * (len(last["class_shares"]) + 1),
        [f"samples at {last['kimg']:g} kimg", *[f"{s:.1%}" for s in last["class_shares"]]],
        ["reals", *[f"{s:.1%}" for s in last["reference_class_shares"]]],
    ]
    return "\n".join("| " + " | ".join(row) + " |" if row else "" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run directory (e.g. runs/demo)")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        raise SystemExit(f"error: run_dir {args.run_dir} is not a directory")
    fd = read_records(one_file(args.run_dir, "fd"))
    readable = read_records(one_file(args.run_dir, "readable"))
    print(markdown_tables(fd, readable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
