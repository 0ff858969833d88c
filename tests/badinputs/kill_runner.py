"""Kill harness, run as its own process: fork workers, SIGKILL them at random moments, check the files.

Why a separate process that forks: each kill needs a fresh victim, and a fresh `python -m
flexmerge_core` costs seconds of imports; a forked child of this already-imported process runs the
very same `cli.main(argv)` within milliseconds, so a ~30 s budget gives dozens of kills. The parent
never runs torch work itself (one thread), so forking is safe.

Workers: `export` (the CLI export: plan cache, merged-group cache, export file, recipe), `cache`
(a stream of plan-style JSON entries and group entries, overwriting keys) and `zoo` (write_zoo
republishing a whole zoo folder, as the demo builder and `zoo import` do). Disk writes are slowed
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
import flexmerge_core.evaluation.curve  # noqa: E402,F401
import flexmerge_core.deployment.export  # noqa: E402,F401
import flexmerge_core.planning.plan_cache  # noqa: E402,F401
from flexmerge_core.algorithms.base import MergeResult  # noqa: E402
from flexmerge_core.cache import JsonCache  # noqa: E402
from flexmerge_core.cli import main  # noqa: E402
from flexmerge_core.deployment.group_cache import GroupResultCache  # noqa: E402

from badinputs.integrity import (differing_folder, differing_outputs, incomplete_cache_entries,  # noqa: E402
                                 temporary_files)
from badinputs.zoos import write_template  # noqa: E402

FSYNC_DELAY_S = 0.01
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
    for i in range(20):
        entries.put(f"entry{i % 5}", {"i": i, "values": [rng.random() for _ in range(2000)]})
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
    if kind == "export":
        code = main(_export_argv(zoo, work / "out.safetensors"))
    elif kind == "cache":
        code = _cache_writes(work / "cache", seed)
    else:
        write_template(work / "zoo")
        code = 0
    os._exit(code)


def _kill_when_due(pid: int, work: Path, kill_after: float, mid_write: bool) -> None:
    """SIGKILL `pid` `kill_after` seconds from now; with mid_write, from then on wait for a new temporary
    file (a write in progress) and kill right then, or let a worker that writes nothing more finish."""
    trigger = time.monotonic() + kill_after
    give_up = trigger + kill_after + 1.0
    temporaries = None
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:   # peek, do not reap
        now = time.monotonic()
        if now >= trigger and not mid_write:
            os.kill(pid, signal.SIGKILL)
            return
        if now >= trigger:
            count = len(temporary_files(work))
            temporaries = count if temporaries is None else temporaries
            if count > temporaries:
                os.kill(pid, signal.SIGKILL)
                return
            if now >= give_up:
                return
        time.sleep(0.0005)


def _run(kind: str, zoo: str, work: Path, seed: int, kill_after: float | None = None,
         mid_write: bool = False) -> bool:
    """Run one worker (killed as _kill_when_due says when kill_after is given); True when SIGKILLed."""
    pid = os.fork()
    if pid == 0:
        try:
            _child(kind, zoo, work, seed)
        finally:
            os._exit(70)
    if kill_after is not None:
        _kill_when_due(pid, work, kill_after, mid_write)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed and os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} worker failed with exit status {os.waitstatus_to_exitcode(status)}")
    return killed


def _timed(kind: str, zoo: str, work: Path, seed: int) -> float:
    start = time.monotonic()
    _run(kind, zoo, work, seed)
    return time.monotonic() - start


def main_loop(zoo: str, work: Path, seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    reference_dir = work / "reference"
    typical = {kind: _timed(kind, zoo, reference_dir, seed) for kind in ("export", "cache", "zoo")}
    reference = {name: (reference_dir / name).read_bytes() for name in OUTPUTS}
    victim = work / "victim"
    counts = {"kills": 0, "kills_mid_write": 0, "partial_files": [], "runs_finished": 0, "rebuild_runs": 0,
              "rebuilds_ok": 0, "seconds_per_run": {k: round(v, 3) for k, v in typical.items()}}
    stop = time.monotonic() + seconds
    iteration = 0
    while time.monotonic() < stop:
        iteration += 1
        kind = ("export", "cache", "zoo")[iteration % 3]
        if kind == "export" and rng.random() < 0.5:
            for name in OUTPUTS:
                (victim / name).unlink(missing_ok=True)     # the next run must write them again
        mid_write = iteration % 2 == 0                      # every other kill waits for a write in progress
        temporaries_before = len(temporary_files(victim))
        killed = _run(kind, zoo, victim, seed + iteration, rng.uniform(0.0, 0.9 * typical[kind]), mid_write)
        counts["kills"] += killed
        counts["runs_finished"] += not killed
        counts["kills_mid_write"] += killed and len(temporary_files(victim)) > temporaries_before
        counts["partial_files"] += (incomplete_cache_entries(victim / "cache") + differing_outputs(reference, victim)
                                    + differing_folder(reference_dir / "zoo", victim / "zoo"))
        if iteration % 6 == 0:   # an uninterrupted run after kills rebuilds everything that is missing
            for name in OUTPUTS:
                (victim / name).unlink(missing_ok=True)
            _run("export", zoo, victim, seed)
            counts["rebuilds_ok"] += not differing_outputs(reference, victim) and all(
                (victim / name).exists() for name in OUTPUTS)
            counts["rebuild_runs"] += 1
    return counts


if __name__ == "__main__":
    zoo_arg, work_arg, seconds_arg, seed_arg = sys.argv[1:5]
    print(json.dumps(main_loop(zoo_arg, Path(work_arg), float(seconds_arg), int(seed_arg))))
