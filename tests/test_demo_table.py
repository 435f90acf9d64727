"""scripts/demo_table.py: the README's demo tables from a run's metric records."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "demo_table.py"


@pytest.fixture(scope="module")
def demo_table():
    spec = importlib.util.spec_from_file_location("demo_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(run_dir, name, records):
    (run_dir / f"metric-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_tables_from_the_records(tmp_path, demo_table, capsys):
    write(tmp_path, "fd_nat_digits1k", [{"metric": "fd_nat_digits1k", "value": v, "kimg": k}
                                        for k, v in ((2.0, 29.71), (4.0, 7.94))])
    write(tmp_path, "readable_nat_digits1k", [
        {"metric": "readable_nat_digits1k", "value": v, "kimg": k, "relative": v / 0.8, "reference_value": 0.8,
         "class_shares": [0.5, 0.25, 0.25], "reference_class_shares": [0.3, 0.3, 0.4]}
        for k, v in ((2.0, 0.1), (4.0, 0.72))])
    assert demo_table.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| kimg | 2 | 4 |",
        "| --- | --- | --- |",
        "| fd_nat_digits1k | 29.7 | 7.9 |",
        "| readable (reals: 80%) | 10% | 72% |",
        "| readable / reals' share | 0.12 | 0.90 |",
        "",
        "| class | 0 | 1 | 2 |",
        "| --- | --- | --- | --- |",
        "| samples at 4 kimg | 50.0% | 25.0% | 25.0% |",
        "| reals | 30.0% | 30.0% | 40.0% |",
    ]


def test_missing_records_are_named(tmp_path, demo_table):
    with pytest.raises(SystemExit, match=r"expected one metric-fd_\*.jsonl in .*, found \[\]"):
        demo_table.main([str(tmp_path)])
