"""Kill harness, run as its own process: fork workers, SIGKILL them at random moments, check the files.

Why a separate process that forks: each kill needs a fresh victim, and a fresh `python -m
flexmerge_core` costs seconds of imports; a forked child of this already-imported process runs the
very same `cli.main(argv)` within milliseconds, so a ~30 s budget gives dozens of kills. The parent
never runs torch work itself (one thread), so forking is safe.

Workers: `export` (the CLI export: plan cache, merged-group cache, export file, recipe) and `cache`
(a stream of plan-style JSON entries and group entries, overwriting keys). Disk writes are slowed
(every fsync sleeps a few ms first, in the child only) so that kills often land between a temporary
file's write and its rename, the window atomic writes must protect.

Usage: kill_runner.py ZOO WORKDIR SECONDS SEED; prints one JSON line with the counts.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))           # tests/ (the badinputs package)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))           # the repository

import torch  # noqa: E402

torch.set_num_threads(1)

import open_clip.transformer  # noqa: E402,F401  (imported before forking: children start warm)
import flexmerge_core.curve  # noqa: E402,F401
import flexmerge_core.export  # noqa: E402,F401
import flexmerge_core.plan_cache  # noqa: E402,F401
from flexmerge_core.algorithms.base import MergeResult  # noqa: E402
from flexmerge_core.cache import JsonCache  # noqa: E402
from flexmerge_core.cli import main  # noqa: E402
from flexmerge_core.group_cache import GroupResultCache  # noqa: E402

from badinputs.integrity import differing_outputs, incomplete_cache_entries, temporary_files  # noqa: E402

FSYNC_DELAY_S = 0.004
OUTPUTS = ("out.safetensors", "out.recipe.json")


def _slow_disk() -> None:
    real_fsync = os.fsync

    def fsync(fd):
        time.sleep(FSYNC_DELAY_S)
        return real_fsync(fd)

    os.fsync = fsync


def _export_argv(zoo: str, out: Path) -> list[str]:
    return ["export", "--zoo", zoo, "--algorithm", "ties", "--size", "2", "--out", str(out)]


def _cache_writes(cache: Path, seed: int) -> int:
    """Overwrite a handful of JSON and group entries again and again (as concurrent sessions would)."""
    rng = random.Random(seed)
    entries, groups = JsonCache(cache / "stress-json"), GroupResultCache(cache / "stress-groups")
    for i in range(30):
        entries.put(f"entry{i % 5}", {"i": i, "values": [rng.random() for _ in range(4000)]})
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        groups.store(f"group{i % 5}", MergeResult(unified={"w": torch.randn(128, 128, generator=generator)},
                                                  members=(0, 1)))
    return 0


def _child(kind: str, zoo: str, work: Path, seed: int) -> None:
    os.environ["FLEXMERGE_CACHE"] = str(work / "cache")
    _slow_disk()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = main(_export_argv(zoo, work / "out.safetensors")) if kind == "export" else _cache_writes(work / "cache", seed)
    os._exit(code)


def _run(kind: str, zoo: str, work: Path, seed: int, kill_after: float | None) -> tuple[bool, float]:
    """Run one worker; SIGKILL it after `kill_after` seconds unless it finished. (killed?, seconds)"""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(kind, zoo, work, seed)
        finally:
            os._exit(70)
    if kill_after is not None:
        deadline = start + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return False, time.monotonic() - start
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed and os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} worker failed with exit status {os.waitstatus_to_exitcode(status)}")
    return killed, time.monotonic() - start


def main_loop(zoo: str, work: Path, seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    reference_dir = work / "reference"
    _, export_time = _run("export", zoo, reference_dir, seed, None)
    _, cache_time = _run("cache", zoo, reference_dir, seed, None)
    reference = {name: (reference_dir / name).read_bytes() for name in OUTPUTS}
    victim = work / "victim"
    counts = {"kills": 0, "kills_mid_write": 0, "partial_files": [], "runs_finished": 0, "rebuild_runs": 0,
              "rebuilds_ok": 0, "export_seconds": round(export_time, 3), "cache_seconds": round(cache_time, 3)}
    stop = time.monotonic() + seconds
    iteration = 0
    while time.monotonic() < stop:
        iteration += 1
        kind = "export" if iteration % 2 else "cache"
        if kind == "export" and rng.random() < 0.5:
            for name in OUTPUTS:
                (victim / name).unlink(missing_ok=True)     # the next run must write them again
        typical = export_time if kind == "export" else cache_time
        killed, _ = _run(kind, zoo, victim, seed + iteration, rng.uniform(0.0, 1.1 * typical))
        counts["kills"] += killed
        counts["runs_finished"] += not killed
        counts["kills_mid_write"] += killed and bool(temporary_files(victim))
        counts["partial_files"] += incomplete_cache_entries(victim / "cache") + differing_outputs(reference, victim)
        if iteration % 6 == 0:   # an uninterrupted run after kills rebuilds everything that is missing
            for name in OUTPUTS:
                (victim / name).unlink(missing_ok=True)
            _run("export", zoo, victim, seed, None)
            counts["rebuilds_ok"] += not differing_outputs(reference, victim) and all(
                (victim / name).exists() for name in OUTPUTS)
            counts["rebuild_runs"] += 1
    return counts


if __name__ == "__main__":
    zoo_arg, work_arg, seconds_arg, seed_arg = sys.argv[1:5]
    print(json.dumps(main_loop(zoo_arg, Path(work_arg), float(seconds_arg), int(seed_arg))))
