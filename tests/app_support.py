"""Shared by the dashboard tests (tests/test_app_*.py, tests/browser/): a micro demo zoo to open.

Why the micro demo zoo: it is the real demo builder (a real ViT, really pretrained and fine-tuned)
at a size that builds in seconds, so the pages show real engine numbers without a long set-up.
It is kept in pytest's cache folder (rebuilt only when the demo recipe changes).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from flexmerge_core.demo.vision import MICRO, build_demo_zoo


def build_micro_zoo(folder: Path) -> Path:
    """Build (or reuse) the micro demo zoo in `folder`."""
    return build_demo_zoo(out=folder, config=MICRO)


def micro_zoo_for(request) -> Path:
    return build_micro_zoo(Path(request.config.cache.mkdir("flexmerge-micro-zoo")) / "zoo")


@pytest.fixture(scope="module")
def zoo_dir(request, tmp_path_factory):
    """The micro demo zoo, opened by the app (FLEXMERGE_ZOO) with a fresh engine cache (FLEXMERGE_CACHE)."""
    zoo = micro_zoo_for(request)
    saved = {k: os.environ.get(k) for k in ("FLEXMERGE_CACHE", "FLEXMERGE_ZOO")}
    os.environ["FLEXMERGE_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))
    os.environ["FLEXMERGE_ZOO"] = str(zoo)
    yield zoo
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
