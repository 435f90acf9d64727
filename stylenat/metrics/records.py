"""Metric records: one JSON line per evaluation in ``<run_dir>/metric-<metric>.jsonl`` (StyleGAN's layout).

Every record carries the ``run_id`` of the run that measured it (a training run keeps its id across
resumes). An evaluation redone after a resume, at a ``cur_nimg`` that the same run already recorded, is
appended with ``"supersedes": true``; :func:`read_metric_records` gives the records that stand, one per
run, metric and ``cur_nimg``, the latest winning. The file itself is only ever appended to.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def new_run_id() -> str:
    """A fresh run id: 12 hex digits."""
    return uuid.uuid4().hex[:12]


def _key(record: dict) -> tuple | None:
    """What makes two records the same measurement; None for records of no particular training moment."""
    if record.get("run_id") is None or record.get("cur_nimg") is None:
        return None
    return record["run_id"], record["metric"], record["cur_nimg"]


def read_metric_records(path: str | Path) -> list[dict]:
    """The records of a ``metric-<name>.jsonl`` that stand: where one supersedes an earlier record of the same
    run, metric and ``cur_nimg``, only the later one, in the place of the earlier."""
    records: list[dict] = []
    where: dict[tuple, int] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        key = _key(record)
        if key is not None and key in where:
            records[where[key]] = record
        else:
            if key is not None:
                where[key] = len(records)
            records.append(record)
    return records


def append_metric_record(run_dir: str | Path, record: dict) -> Path:
    """Append ``record`` (JSON-serialisable, with a ``"metric"`` key) to ``metric-<metric>.jsonl``; marked
    ``"supersedes": true`` when the file already holds a record of the same run, metric and ``cur_nimg``.

    The whole line goes out in one write to a file opened for appending, then flush and fsync: two
    appenders on a local file system do not interleave inside a line, and a crash loses at most the
    record being written. Returns the file's path.
    """
    path = Path(run_dir) / f"metric-{record['metric']}.jsonl"
    key = _key(record)
    if key is not None and path.exists() and any(_key(r) == key for r in read_metric_records(path)):
        record = {**record, "supersedes": True}
    line = json.dumps(record, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.filename is None:  # a full disk fails in write/flush, which do not name the file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    return path
