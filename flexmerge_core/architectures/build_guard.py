"""A bound on building a module from a manifest's config, enforced while it is built.

Why: a zoo.json with `"layers": 10**9` made even the meta-device layout (no tensor memory) build a
billion Python module objects until the kernel killed the process. A config's size is only known by
building it, so every build runs under `bounded_build`: torch's global module-registration hook counts
the modules and stops the build once they exceed MAX_MODULES. Tensor bytes need no bound here: the
layout is built on the meta device (no memory), a config whose tensors are larger than the files is
refused by the shape check against the checkpoints, and real builds come after the memory guard
(resources.check_memory). Measured (2 shared cores): the meta layout of ViT-bigG-14, the largest
CLIP, has 535 modules and builds in 0.06 s; a tiny ViT of 2,000 layers (22,007 modules) took 9.4 s
and 350 MB. So 10,000 modules (about 20x ViT-bigG-14, 5x a 126-layer LLM) bound a build to seconds.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from flexmerge_core.errors import ZooError

MAX_MODULES = 10_000

_active = threading.local()   # the build running in this thread (the hook is process-wide)
_install_lock = threading.Lock()
_hooks: list = []


class _Count:
    def __init__(self, label: str):
        self.label, self.modules = label, 0

    def add(self) -> None:
        self.modules += 1
        if self.modules > MAX_MODULES:
            raise ZooError(f"zoo.json: {self.label} builds more than {MAX_MODULES} modules; no supported model "
                           f"comes near that (is a size in its config, e.g. 'layers', out of range?)")


def _on_module(module, name, submodule) -> None:
    count = getattr(_active, "count", None)
    if count is not None:
        count.add()


def _install_hook() -> None:
    """Once per process: outside a guarded build the hook costs one attribute lookup per registration."""
    from torch.nn.modules import module as nn_module

    with _install_lock:
        if not _hooks:
            _hooks.append(nn_module.register_module_module_registration_hook(_on_module))


@contextlib.contextmanager
def bounded_build(label: str) -> Iterator[None]:
    """Stop a module build in this thread once it has more than MAX_MODULES modules."""
    _install_hook()
    previous = getattr(_active, "count", None)
    _active.count = _Count(label)
    try:
        yield
    finally:
        _active.count = previous
