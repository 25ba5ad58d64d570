"""The `hf-longssm` entry point: one command, its subcommands mapped in one place."""

import re
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from hf_longssm import cli


ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_python_m_hf_longssm_help_lists_every_command():
    result = run_module("hf_longssm", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: hf-longssm" in result.stdout
    for name in ("train", "eval", "demo"):
        assert f"    {name} " in result.stdout


def test_python_m_hf_longssm_cli_is_the_same_command():
    result = run_module("hf_longssm.cli")
    assert result.returncode == 2
    assert "usage: hf-longssm" in result.stderr and "give a command: train, eval, extend, demo" in result.stderr


def test_no_command_prints_the_usage_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: hf-longssm")


def test_an_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "a", "b"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'finetune'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "module"),
    [("train", "train"), ("eval", "eval"), ("evaluate", "eval"), ("demo", "demo"), ("convert", "convert")],
)
def test_a_command_runs_its_module_main_with_the_remaining_arguments(monkeypatch, command, module):
    calls = []
    monkeypatch.setattr(import_module(f"hf_longssm.cli.{module}"), "main", lambda argv: calls.append(argv) or "result")
    assert cli.main([command, "--output_dir", "x"]) is None  # the console script exits with this: status 0
    assert calls == [["--output_dir", "x"]]


def test_the_console_script_is_cli_main():
    declared = re.search(r'^hf-longssm = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    module, function = declared.group(1).split(":")
    assert getattr(import_module(module), function) is cli.main
