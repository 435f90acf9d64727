"""The ``stylenat`` command layer: every subcommand registered one way, and ``--help`` without torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stylenat.cli import build_parser, main
from stylenat.commands import COMMAND_MODULES, Command, load_command

ROOT = Path(__file__).resolve().parents[1]


def python(*code_lines: str) -> str:
    """Run ``code_lines`` in a fresh interpreter (the repository first on the path); return its stdout."""
    result = subprocess.run([sys.executable, "-c", "\n".join(code_lines)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_help_and_every_subcommand_parser_build_without_torch():
    out = python(
        "import contextlib, io, json, sys",
        "from stylenat.cli import build_parser, main",
        "with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):",
        "    main(['--help'])",
        "build_parser()",
        "heavy = sorted(m for m in ('torch', 'lightning', 'numpy', 'natten_ops') if m in sys.modules)",
        "print(json.dumps({'help': text.getvalue(), 'heavy': heavy}))",
    )
    result = json.loads(out)
    assert result["heavy"] == []
    for name in COMMAND_MODULES:
        assert f"    {name}" in result["help"]


def test_every_registered_module_exposes_a_command():
    assert set(COMMAND_MODULES) >= {"fit", "validate", "test", "prepare", "generate", "fid", "attention-map",
                                    "throughput", "info"}
    for name in COMMAND_MODULES:
        command = load_command(name)
        assert isinstance(command, Command) and command.help
    assert [load_command(n).passthrough for n in ("fit", "validate", "test", "generate")] == [True, True, True, False]


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_version(capsys):
    import stylenat

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"stylenat {stylenat.__version__}"


@pytest.mark.parametrize("name", ["generate", "fid", "attention-map", "prepare", "throughput"])
def test_subcommand_help_lists_its_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: stylenat {name}" in capsys.readouterr().out


def test_fit_help_is_lightning_cli_and_names_overwrite(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stylenat"])  # LightningCLI compares its arguments with sys.argv
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.devices" in out and "--overwrite" in out
