"""Fixtures of the bad-input corpus and its closing summary line (printed with or without -s)."""
from __future__ import annotations

import pytest

from . import tally
from .zoos import write_template


@pytest.fixture(scope="session")
def template_zoo(tmp_path_factory):
    """One valid zoo shared by every case (cases that break a zoo break a copy)."""
    return write_template(tmp_path_factory.mktemp("badinputs") / "template")


def pytest_terminal_summary(terminalreporter):
    if tally.OUTCOMES:
        terminalreporter.write_line(tally.summary_line())
