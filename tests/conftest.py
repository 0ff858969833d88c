"""Suite-wide set-up and the fixtures several test files share.

No test may read or write the repository's own cache/ folder.

Why: a developer's warm cache (a built demo zoo, cached curves) would make tests pass or fail for
reasons outside the test, and tests must never leave entries behind. Every test starts with
FLEXMERGE_CACHE pointing at one throw-away folder for the session; tests that need an isolated cache
still override it themselves (monkeypatch restores this session value afterwards).
Demo zoos are built in the test process (FLEXMERGE_DEMO_WORKERS=1): the tiny test builds would spend
more time starting worker processes than training; one test builds with workers on purpose.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    _SESSION_CACHE = tempfile.mkdtemp(prefix="flexmerge-test-cache-")
    os.environ["FLEXMERGE_CACHE"] = _SESSION_CACHE
    os.environ["FLEXMERGE_DEMO_WORKERS"] = "1"


def pytest_unconfigure(config):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core machine: one torch thread is much faster (and deterministic)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every cache write of a test goes to its own temp folder."""
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def app_zoo(request, tmp_path_factory):
    """The micro demo zoo, opened by the app (FLEXMERGE_ZOO) with a fresh engine cache (FLEXMERGE_CACHE)."""
    from app_support import app_opens, micro_zoo_for

    with app_opens(micro_zoo_for(request), tmp_path_factory.mktemp("engine-cache")) as zoo:
        yield zoo


@pytest.fixture(scope="session")
def llama_source(tmp_path_factory):
    """A tiny Llama (sharded save_pretrained) + 3 full fine-tunes + text data specs (tests/lm_zoos.py)."""
    from lm_zoos import full_finetunes, llama_config

    return full_finetunes(tmp_path_factory.mktemp("llama-src"), llama_config(), shard=True)


@pytest.fixture(scope="session")
def t5_source(tmp_path_factory):
    """A tiny T5 (tied embeddings, one file) + 3 full fine-tunes + text data specs."""
    from lm_zoos import full_finetunes, t5_config

    return full_finetunes(tmp_path_factory.mktemp("t5-src"), t5_config(), shard=False)


@pytest.fixture(scope="session")
def lora_source(tmp_path_factory):
    """The tiny Llama + 3 PEFT LoRA adapters + text data specs."""
    from lm_zoos import lora_adapters

    return lora_adapters(tmp_path_factory.mktemp("lora-src"))


@pytest.fixture
def app_page_as_main(tmp_path, monkeypatch):
    """`__main__` is an app page (as under Streamlit) whose running creates the returned marker file:
    spawned worker processes must not execute it again."""
    import sys
    import types

    marker = tmp_path / "page-ran"
    page = types.ModuleType("__main__")
    page.__file__ = str(tmp_path / "page.py")
    (tmp_path / "page.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setitem(sys.modules, "__main__", page)
    return marker
