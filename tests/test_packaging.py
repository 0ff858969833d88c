"""pyproject.toml: the `flexmerge` command behaves exactly like `python -m flexmerge_core`.

The installed command is checked when `pip install -e .` has run (the README's set-up does it);
its target function and the declared dependencies are checked either way.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_ONLY = {"pytest", "playwright"}
BAD_INPUT = ["zoo", "info", "--zoo", "/nonexistent-flexmerge-zoo"]
tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _module_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexmerge_core", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _requirement_name(line: str) -> str:
    return line.split("==")[0].strip().lower()


def test_dependencies_are_requirements_without_test_only_pins():
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert _pyproject()["project"]["dependencies"] == [p for p in pins if _requirement_name(p) not in TEST_ONLY]


def test_console_target_prints_the_module_help(monkeypatch, capsys):
    module, _, function = _pyproject()["project"]["scripts"]["flexmerge"].partition(":")
    target = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(sys, "argv", ["flexmerge", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        target()
    assert exit_info.value.code == 0
    expected = _module_run(["--help"])
    assert expected.returncode == 0
    assert capsys.readouterr().out == expected.stdout


def test_console_target_returns_two_with_one_line_and_sets_thread_policy(monkeypatch, capsys):
    module, _, function = _pyproject()["project"]["scripts"]["flexmerge"].partition(":")
    target = getattr(importlib.import_module(module), function)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(sys, "argv", ["flexmerge", *BAD_INPUT])
    assert target() == 2
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert capsys.readouterr().err == _module_run(BAD_INPUT).stderr


def _installed_command() -> Path:
    points = importlib.metadata.entry_points(group="console_scripts", name="flexmerge")
    if not points:
        pytest.skip("the flexmerge command is not installed here (run `pip install -e .`, or the README's set-up)")
    command = Path(sys.executable).with_name("flexmerge")
    if not command.exists():
        pytest.skip(f"flexmerge is installed, but not beside this interpreter ({command})")
    return command


@pytest.mark.parametrize("args", [["--help"], BAD_INPUT], ids=["help", "bad-input"])
def test_installed_command_equals_module(args):
    command = _installed_command()
    got = subprocess.run([str(command), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    expected = _module_run(args)
    assert (got.returncode, got.stdout, got.stderr) == (expected.returncode, expected.stdout, expected.stderr)
