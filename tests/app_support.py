"""Shared by the dashboard tests (tests/test_app_*.py, tests/browser/, conftest's `app_zoo`): a micro demo zoo to open.

Why the micro demo zoo: it is the real demo builder (a real ViT, really pretrained and fine-tuned)
at a size that builds in seconds, so the pages show real engine numbers without a long set-up.
It is kept in pytest's cache folder (rebuilt only when the demo recipe changes).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from flexmerge_core.demo.vision import MICRO, build_demo_zoo


def build_micro_zoo(folder: Path) -> Path:
    """Build (or reuse) the micro demo zoo in `folder`."""
    return build_demo_zoo(out=folder, config=MICRO)


def micro_zoo_for(request) -> Path:
    return build_micro_zoo(Path(request.config.cache.mkdir("flexmerge-micro-zoo")) / "zoo")



def micro_text_zoo_for(request) -> Path:
    """The micro text demo zoo (tiny Llama, rank-classification tasks), kept in pytest's cache folder."""
    from flexmerge_core.demo.text import MICRO as TEXT_MICRO, build_text_demo_zoo

    folder = Path(request.config.cache.mkdir("flexmerge-micro-text-zoo")) / "zoo"
    return build_text_demo_zoo(out=folder, config=TEXT_MICRO, workers=1)


@contextlib.contextmanager
def app_opens(zoo, cache):
    """The app opens `zoo` (FLEXMERGE_ZOO) with the engine cache `cache` (FLEXMERGE_CACHE) inside the block."""
    saved = {k: os.environ.get(k) for k in ("FLEXMERGE_CACHE", "FLEXMERGE_ZOO")}
    os.environ["FLEXMERGE_CACHE"], os.environ["FLEXMERGE_ZOO"] = str(cache), str(zoo)
    try:
        yield zoo
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def settled(at, timeout: float = 300):
    """Run the page, let the background evaluations it asked for finish, and run it again to show them
    (pages draw at once and evaluate in the background)."""
    from dashboard.background import background

    at.run()
    assert background().wait_idle(timeout), "background evaluations did not finish"
    return at.run()
