"""Suite-wide set-up: no test may read or write the repository's own cache/ folder.

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

_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    _SESSION_CACHE = tempfile.mkdtemp(prefix="flexmerge-test-cache-")
    os.environ["FLEXMERGE_CACHE"] = _SESSION_CACHE
    os.environ["FLEXMERGE_DEMO_WORKERS"] = "1"


def pytest_unconfigure(config):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
