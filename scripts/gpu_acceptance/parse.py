"""Reading what the commands print: JUnit XML and ``pytest -v`` lines, bench_natten.py's table, and the
backend ranking behind the summary's ``auto`` order. Pure functions, tested in tests/test_gpu_check.py."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from gpu_acceptance.records import TAIL_LINES

# The order in which candidate GPU backends are listed; any other backend a checkout adds comes after.
BACKEND_ORDER = ("cuda", "triton", "flex", "reference")


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
    """Backends that a failed test case names: the subject of its module (``test_cuda``, ``test_triton_cuda``:
    the word after ``test_``) or a word of its parameters (``[triton-float16]``); not its function name,
    where ``reference`` means the ground truth."""
    names = backends or list(BACKEND_ORDER)
    failed = set()
    for case in cases:
        if case["status"] == "failed":
            module, _, function = case["id"].lower().partition("::")
            subject = module.rpartition(".")[2].removeprefix("test_").partition("_")[0]
            words = {subject} | set(re.split(r"[^a-z0-9]+", function.partition("[")[2]))
            failed |= {n for n in names if n in words}
    return sorted(failed)


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
                backend = name[:-3]
                if name.endswith(" ms") and " " not in backend:  # not "cpu 1-thread ms", the scaling column
                    times[backend] = float(value) if is_number(value) else None
            rows.append({"shape": [int(record[k]) for k in ("B", "heads", "H=W", "D", "k", "d")],
                         "pass": record["pass"], "dtype": dtype, "ms": times})
    return rows


def is_number(text: str) -> bool:
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
