"""Metric records: one JSON line per evaluation in ``<run_dir>/metric-<metric>.jsonl`` (StyleGAN's layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def append_metric_record(run_dir: str | Path, record: dict) -> Path:
    """Append ``record`` (JSON-serialisable, with a ``"metric"`` key) to ``metric-<metric>.jsonl``.

    The whole line goes out in one write to a file opened for appending, then flush and fsync: two
    appenders on a local file system do not interleave inside a line, and a crash loses at most the
    record being written. Returns the file's path.
    """
    path = Path(run_dir) / f"metric-{record['metric']}.jsonl"
    line = json.dumps(record, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return path
