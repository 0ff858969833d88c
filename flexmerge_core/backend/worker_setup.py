"""How every worker process of the engine is set up: one torch thread, deterministic kernels, bare __main__.

Why one thread: small jobs on several processes keep the cores busier than torch's threads inside one
process (measured on the demo build), and one thread makes a job compute the same bits wherever it runs,
so results do not depend on the worker count or the machine's cores.
Why a bare __main__: a spawned worker first re-runs the parent's __main__ file (multiprocessing's
preparation step). Under Streamlit that file is an app page, which would run again inside every
worker; every job is an importable function, so workers start from an empty __main__ instead.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types
from typing import Iterator

import torch


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def use_single_thread() -> tuple:
    """One torch thread and deterministic kernels; returns the settings it replaced."""
    import torch.utils.deterministic as det

    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False  # deterministic mode's NaN-filling of new tensors cost ~10% here
    return saved


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Runs a job in this process under the workers' settings, restored afterwards."""
    import torch.utils.deterministic as det

    saved = use_single_thread()
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        det.fill_uninitialized_memory = saved[2]


@contextlib.contextmanager
def bare_main() -> Iterator[None]:
    """Workers spawned inside this block start from an empty __main__ (see the module docstring)."""
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved
