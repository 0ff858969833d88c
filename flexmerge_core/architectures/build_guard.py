"""A bound on building a module from a manifest's config: the memory guard, applied while it is built.

Why: a zoo.json with `"layers": 10**9` made even the meta-device layout (no tensor memory) build a
billion Python module objects until the kernel killed the process. A config's size is only known by
building it, so every build runs under `bounded_build`: torch's global registration hooks add up each
parameter's and buffer's bytes (what the real build will allocate) and count the modules, and the build
is stopped as soon as the bytes exceed the memory this machine has, or the modules exceed
MAX_MODULES. Measured (2 shared cores): the meta layout of ViT-bigG-14, the largest CLIP, has 535
modules and builds in 0.06 s; a tiny ViT of 2,000 layers (22,007 modules) took 9.4 s and 350 MB.
So 10,000 modules (about 20x ViT-bigG-14, 5x a 126-layer LLM) bound a build to a few seconds.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from flexmerge_core.errors import ResourceError, ZooError
from flexmerge_core.machine import LIMIT_ENV, available_memory, gigabytes

MAX_MODULES = 10_000

_active = threading.local()   # the build running in this thread (hooks are process-wide)
_installed = threading.Lock()
_hooks: list = []


class _Budget:
    def __init__(self, label: str, limit: int | None):
        self.label, self.limit = label, limit
        self.bytes = self.modules = 0

    def module(self) -> None:
        self.modules += 1
        if self.modules > MAX_MODULES:
            raise ZooError(f"zoo.json: {self.label} builds more than {MAX_MODULES} modules; no supported model "
                           f"comes near that (is a size in its config, e.g. 'layers', out of range?)")

    def tensor(self, tensor) -> None:
        if tensor is None:
            return
        self.bytes += tensor.numel() * tensor.element_size()
        if self.limit is not None and self.bytes > self.limit:
            raise ResourceError(f"not enough memory for {self.label} of zoo.json: its parameters need more than "
                                f"{gigabytes(self.bytes)}, {gigabytes(self.limit)} available (is a size in its "
                                f"config out of range? or set {LIMIT_ENV} if this is wrong)")


def _on_module(module, name, submodule):
    budget = getattr(_active, "budget", None)
    if budget is not None:
        budget.module()


def _on_tensor(module, name, tensor):
    budget = getattr(_active, "budget", None)
    if budget is not None:
        budget.tensor(tensor)


def _install_hooks() -> None:
    """Once per process: the hooks cost one attribute lookup per registration outside a guarded build."""
    from torch.nn.modules import module as nn_module

    with _installed:
        if not _hooks:
            _hooks.append(nn_module.register_module_module_registration_hook(_on_module))
            _hooks.append(nn_module.register_module_parameter_registration_hook(_on_tensor))
            _hooks.append(nn_module.register_module_buffer_registration_hook(_on_tensor))


@contextlib.contextmanager
def bounded_build(label: str) -> Iterator[None]:
    """Stop a module build in this thread once it outgrows the machine (see the module docstring)."""
    _install_hooks()
    previous = getattr(_active, "budget", None)
    _active.budget = _Budget(label, available_memory())
    try:
        yield
    finally:
        _active.budget = previous
