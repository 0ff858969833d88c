"""Crash safety: SIGKILL a CLI export, a stream of cache writes and a zoo (re)publication at random moments.

After every kill no file may be visible under its final name unless it is complete (exports equal a
reference run byte for byte; cache entries pass their checksums; a zoo folder holds exactly the reference's files), and an uninterrupted run afterwards
rebuilds whatever is missing. The harness (badinputs/kill_runner.py) forks warm workers so that a
bounded time (~25 s of killing) gives dozens of kills; it slows fsync, and every other kill waits for a
write in progress, so many kills land between a temporary file's write and its rename. Prints `kill test: N kills, 0 partial files`.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from badinputs.integrity import differing_outputs, incomplete_cache_entries, temporary_files
from badinputs.zoos import write_template

RUNNER = Path(__file__).resolve().parent / "badinputs" / "kill_runner.py"
KILL_SECONDS = 25


class _SummaryLine:
    """A plugin registered at run time: writes its line in the terminal summary (shown without -s)."""

    def __init__(self, line: str):
        self.line = line

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.line)


@pytest.mark.slow
def test_killed_exports_and_cache_writes_never_leave_partial_files(tmp_path, request):
    zoo = write_template(tmp_path / "zoo")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(RUNNER), str(zoo), str(work), str(KILL_SECONDS), "7"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    partial = len(counts["partial_files"])
    request.config.pluginmanager.register(_SummaryLine(f"kill test: {counts['kills']} kills, {partial} partial files"))
    assert counts["partial_files"] == []
    assert counts["kills"] >= 8, counts                    # dozens on a quiet machine; fewer under heavy load
    assert counts["kills_mid_write"] >= 1, counts          # kills really hit the write-then-rename window
    assert counts["rebuild_runs"] >= 1 and counts["rebuilds_ok"] == counts["rebuild_runs"], counts


def test_the_checks_see_partial_files(tmp_path):
    """The kill test can fail: a truncated export or cache entry under its final name is reported,
    while a temporary (hidden) file holding anything is not."""
    from flexmerge_core.algorithms.base import MergeResult
    from flexmerge_core.cache import JsonCache
    from flexmerge_core.deployment.group_cache import GroupResultCache
    import torch

    reference = {"out.safetensors": b"0123456789"}
    (tmp_path / "out.safetensors").write_bytes(b"01234")
    assert differing_outputs(reference, tmp_path) == [str(tmp_path / "out.safetensors")]
    cache = tmp_path / "cache"
    JsonCache(cache / "plans").put("a", {"x": list(range(100))})
    GroupResultCache(cache / "groups").store("g", MergeResult(unified={"w": torch.ones(4, 4)}, members=(0, 1)))
    (cache / "plans" / ".b.json.123.tmp").write_bytes(b"{half")
    assert incomplete_cache_entries(cache) == [] and len(temporary_files(cache)) == 1
    entry = cache / "plans" / "a.json"
    entry.write_bytes(entry.read_bytes()[:-20])
    group = cache / "groups" / "g.safetensors"
    group.write_bytes(group.read_bytes()[:-8])
    assert sorted(incomplete_cache_entries(cache)) == sorted([str(group), str(entry)])


def test_published_files_and_folders_get_ordinary_modes(tmp_path):
    """Atomic writes build private temporaries (mkstemp: 0600, mkdtemp: 0700); what they publish must
    get the modes open()/mkdir() would give: an export shared with a colleague, a zoo folder."""
    import stat

    from flexmerge_core.cache import atomic_directory, atomic_write_bytes

    (tmp_path / "plain.bin").write_bytes(b"data")
    (tmp_path / "plain").mkdir()
    atomic_write_bytes(tmp_path / "export.safetensors", b"data")
    atomic_directory(tmp_path / "zoo", lambda folder: (folder / "zoo.json").write_text("{}"))
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("export.safetensors") == mode("plain.bin")
    assert mode("zoo") == mode("plain")


def test_the_next_run_rebuilds_corrupt_and_missing_entries(tmp_path, monkeypatch):
    """Entries damaged behind the cache's back (a disk error, a hand edit) and deleted ones are rebuilt
    by the next export, which comes out byte-identical; no damaged entry is left or trusted."""
    import contextlib
    import io

    from flexmerge_core.cli import main

    zoo = write_template(tmp_path / "zoo")
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLEXMERGE_CACHE", str(cache))
    out = tmp_path / "out.safetensors"
    argv = ["export", "--zoo", str(zoo), "--algorithm", "ties", "--size", "2", "--out", str(out)]

    def export() -> bytes:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(argv) == 0
        return out.read_bytes()

    first = export()
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert {p.parent.name for p in entries} >= {"plans", "groups"}
    for i, entry in enumerate(entries):
        if i % 2:
            entry.unlink()
        else:
            entry.write_bytes(entry.read_bytes()[: len(entry.read_bytes()) // 2])
    out.unlink()
    assert export() == first
    assert incomplete_cache_entries(cache) == [] and len([p for p in cache.rglob("*") if p.is_file()]) == len(entries)
