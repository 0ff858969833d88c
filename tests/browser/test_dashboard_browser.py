"""The dashboard in a real headless Chromium: every page loads, the size slider updates the charts fast.

Starts `streamlit run app.py` on a free 127.0.0.1 port with a temporary cache holding the micro demo
zoo (or the zoo folder in $FLEXMERGE_BROWSER_ZOO), drives Debian's Chromium through Playwright,
saves screenshots under test-artifacts/ and prints the measured slider latency. When Chromium or
Playwright is not usable here the test is skipped with the reason, never passed silently.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("FLEXMERGE_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 1800}   # tall: Streamlit scrolls inside the page, full_page cannot
SLOW_EVALUATION = REPO / "tests" / "browser" / "slow_evaluation"
EVAL_DELAY_S = 15   # long enough that the curve is still being evaluated after the slider was measured
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
sys.path.insert(0, str(REPO / "tests"))

from app_support import micro_text_zoo_for, micro_zoo_for  # noqa: E402

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"Playwright is not installed: {exc}")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (scripts/ensure_browser.sh installs it with apt)")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        except Exception as exc:  # any launch failure means no browser here, not a dashboard bug
            pytest.skip(f"Chromium at {CHROMIUM} cannot be launched: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@contextlib.contextmanager
def _serve(env: dict, work: Path, name: str) -> Iterator[str]:
    """The URL of `streamlit run app.py` on a free port with this environment; its log is kept as
    test-artifacts/<name>.log."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(log_path, ARTIFACTS / f"{name}.log")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """(url, zoo label) of a streamlit server on the micro zoo with a fresh engine cache. Set
    $FLEXMERGE_BROWSER_ZOO to a zoo folder (e.g. a built demo zoo) to run the same checks and take
    screenshots on it by hand; its first page loads then evaluate from a cold cache (minutes)."""
    own_zoo = os.environ.get("FLEXMERGE_BROWSER_ZOO")
    work = tmp_path_factory.mktemp("streamlit")
    env = dict(os.environ, FLEXMERGE_ZOO=own_zoo or str(micro_zoo_for(request)), FLEXMERGE_CACHE=str(work / "cache"))
    with _serve(env, work, "streamlit") as url:
        yield url, Path(own_zoo).name if own_zoo else "micro"


@pytest.fixture(scope="module")
def slow_server(request, tmp_path_factory):
    """The URL of a server on the micro zoo (fresh cache) whose every evaluation of a new size first
    waits EVAL_DELAY_S seconds (tests/browser/slow_evaluation/sitecustomize.py)."""
    work = tmp_path_factory.mktemp("streamlit-slow")
    path = os.pathsep.join([str(SLOW_EVALUATION), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, FLEXMERGE_ZOO=str(micro_zoo_for(request)), FLEXMERGE_CACHE=str(work / "cache"),
               PYTHONPATH=path, FLEXMERGE_TEST_EVAL_DELAY=str(EVAL_DELAY_S))
    with _serve(env, work, "streamlit-slow") as url:
        yield url


def _open(browser, url: str, expect: str):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    _wait_idle(page, expect)
    return page


PAGE_TIMEOUT_MS = 900_000 if os.environ.get("FLEXMERGE_BROWSER_ZOO") else 180_000   # a cold real zoo evaluates long


def _wait_idle(page, expect: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Until the script run has finished, `expect` (a CSS selector of the page's main content) is
    on screen, every element is fresh and every Plotly chart has drawn."""
    page.wait_for_function(
        """(expect) => { const app = document.querySelector('[data-testid="stApp"]');
                   return app && app.getAttribute('data-test-script-state') === 'notRunning' &&
                          document.querySelector(expect) !== null &&
                          document.querySelectorAll('[data-stale="true"]').length === 0 &&
                          [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                              .every(c => c.querySelector('.js-plotly-plot .main-svg')); }""",
        arg=expect, timeout=timeout_ms, polling=100)
    page.wait_for_timeout(500)   # let Plotly finish drawing before screenshots


def _assert_no_exception(page, name: str) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), timeout=120_000)
    print(f"screenshot: {path.relative_to(REPO)}")
    return path


_SHOWN = """() => {
  const metric = label => { const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(e => e.innerText.includes(label)); return m ? m.innerText.split('\\n').pop().trim() : null; };
  const curve = [...document.querySelectorAll('.js-plotly-plot')]
      .find(p => p.data && p.data.some(t => (t.name || '').startsWith('current size')));
  const point = curve && curve.data.find(t => t.name.startsWith('current size'));
  return {budget: metric('Budget asked'), size: metric('Size achieved'),
          marker: point ? point.name : null, x: point ? point.x[0] : null};
}"""


_KEY_CLOCK = """() => { window.__flexmerge = {};
  document.addEventListener('keydown', () => { window.__flexmerge.down = performance.now(); }, true); }"""


def _press_and_measure(page, key: str) -> tuple[float, float]:
    """Press a key on the focused slider and wait until the metrics AND the curve's current-point
    marker show the new budget (checked every animation frame). Returns (ms from the keydown event
    to that frame, timed inside the page; ms as seen by this test process, which adds Playwright's
    own messaging)."""
    before = page.evaluate(_SHOWN)
    start = time.perf_counter()
    page.keyboard.press(key)
    page.wait_for_function(
        f"""(before) => {{ const now = ({_SHOWN})();
             const done = now.budget !== before.budget && now.marker !== null &&
                          now.marker.includes('budget ' + now.budget) &&
                          Math.abs(now.x - parseFloat(now.size)) < 5e-4;
             if (done) window.__flexmerge.drawn = performance.now();
             return done; }}""",
        arg=before, polling="raf", timeout=60_000)
    seen = 1000 * (time.perf_counter() - start)
    return page.evaluate("() => window.__flexmerge.drawn - window.__flexmerge.down"), seen


def test_every_page_renders(browser, server):
    url, label = server
    chart, metric = ".js-plotly-plot .main-svg", '[data-testid="stMetric"]'
    for name, path, expect in [("overview", "", chart), ("explore", "/Explore", '[data-testid="stSlider"]'),
                               ("compare", "/Compare", chart), ("export", "/Export", metric)]:
        page = _open(browser, url + path, expect)
        _assert_no_exception(page, name)
        assert page.locator('[data-testid="stHeading"], h1').count() > 0, f"{name}: no heading rendered"
        _screenshot(page, f"browser-{label}-{name}")
        page.close()


def test_overview_on_the_text_demo(browser, server, request):
    """The same server opens the micro text demo zoo (tiny Llama, rank classification) by the `zoo` query
    parameter: the Overview renders its charts, labelled with the tasks' metric."""
    from urllib.parse import quote

    url, _ = server
    page = _open(browser, f"{url}/?zoo={quote(str(micro_text_zoo_for(request)))}", ".js-plotly-plot .main-svg")
    _assert_no_exception(page, "overview on demo-text")
    assert page.locator('[data-testid="stHeading"], h1').count() > 0, "overview on demo-text: no heading"
    assert "accuracy (%)" in page.locator(".js-plotly-plot").first.inner_text()
    _screenshot(page, "browser-demo-text-micro-overview")
    page.close()


def test_findings_page_shows_five_verdicts(browser, server):
    url, label = server
    page = _open(browser, url + "/Findings", '[data-testid="stButton"]')
    page.get_by_role("button", name="Reproduce the findings").click()
    _wait_idle(page, ".js-plotly-plot .main-svg")
    _assert_no_exception(page, "findings")
    verdicts = page.locator('[data-testid="stAlert"]').all_inner_texts()
    assert len([v for v in verdicts if v.split(":")[0] in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE")]) == 5
    assert page.locator(".js-plotly-plot").count() == 3       # differences by size: baselines, orders, linkages
    _screenshot(page, f"browser-{label}-findings")
    page.close()


def test_slider_updates_charts_quickly(browser, server):
    url, label = server
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url + "/Explore")
    _wait_idle(page, '[data-testid="stSlider"]')
    page.evaluate(_KEY_CLOCK)
    thumb = page.locator('[data-testid="stSlider"] input[type="range"]').first
    thumb.focus()
    # First pass: sizes not seen yet (evaluated on demand). Second pass: the same sizes, now known.
    first = [_press_and_measure(page, "ArrowLeft")[0] for _ in range(4)]
    for _ in range(4):
        _press_and_measure(page, "ArrowRight")
    _wait_idle(page, '[data-testid="stSlider"]')
    thumb.focus()
    known = [_press_and_measure(page, key) for key in ["ArrowLeft"] * 4 + ["ArrowRight"] * 4]
    _assert_no_exception(page, "explore after slider moves")
    _screenshot(page, f"browser-{label}-explore-after-slider")
    in_page, seen = [k[0] for k in known], [k[1] for k in known]
    print(f"slider latency, new sizes, keydown to charts drawn (ms): {[round(x) for x in first]}")
    print(f"slider latency, known sizes, keydown to charts drawn (ms): {[round(x) for x in in_page]} "
          f"median {statistics.median(in_page):.0f}, min {min(in_page):.0f}, max {max(in_page):.0f} "
          f"(goal < 150 ms)")
    print(f"  the same as seen by the test process through Playwright (ms): {[round(x) for x in seen]} "
          f"median {statistics.median(seen):.0f}")
    page.close()


_LIVE = """() => {
  const metric = label => { const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(e => e.innerText.includes(label)); return m ? m.innerText.split('\\n').pop().trim() : null; };
  const ready = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
      .map(e => e.innerText).find(t => t.includes('sizes ready'));
  const clusters = [...document.querySelectorAll('.js-plotly-plot .gtitle')]
      .some(t => t.textContent.startsWith('Task groups per block'));
  return {budget: metric('Budget asked'), accuracy: metric('Average accuracy'), ready: ready || null,
          clusters};
}"""


def _ready(page) -> tuple[int, int]:
    """(evaluated, all) sizes of the overview curve, from the page's caption (gone once all are)."""
    ready = page.evaluate(_LIVE)["ready"]
    assert ready is not None, "every size was evaluated already: the delay is too short for this test"
    done, total = ready.split("(")[1].split(" sizes ready")[0].split(" of ")
    return int(done), int(total)


def _await_accuracy(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_function(f"() => {{ const now = ({_LIVE})(); return now.accuracy && now.accuracy !== 'pending'; }}",
                           timeout=timeout_ms, polling=100)


def test_explore_draws_before_evaluating_and_known_sizes_stay_fast_while_it_does(browser, slow_server):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(slow_server + "/Explore")
    page.wait_for_function(f"() => {{ const now = ({_LIVE})(); return now.clusters && now.accuracy === 'pending'; }}",
                           timeout=PAGE_TIMEOUT_MS, polling=100)
    assert _ready(page)[0] == 0, "the first chart is drawn before the first evaluation finishes"
    _assert_no_exception(page, "explore while evaluating")
    _screenshot(page, "browser-micro-explore-pending")

    _await_accuracy(page)                     # the size on screen (2x) jumps the queue
    page.evaluate(_KEY_CLOCK)
    page.locator('[data-testid="stSlider"] input[type="range"]').first.focus()
    busy_before = _ready(page)
    # a step of 0.05 from 2x: on the micro zoo these sizes share 2x's partition, so their accuracies are known
    known = [_press_and_measure(page, key)[0] for key in ["ArrowRight"] * 3 + ["ArrowLeft"] * 3]
    busy_after, total = _ready(page)
    _assert_no_exception(page, "explore after slider moves while evaluating")
    _screenshot(page, "browser-micro-explore-while-evaluating")
    print(f"slider latency while evaluations run, known sizes, keydown to charts drawn (ms): "
          f"{[round(x) for x in known]} median {statistics.median(known):.0f} (goal <= 100 ms); "
          f"curve sizes ready {busy_before[0]} -> {busy_after} of {total}")
    assert busy_after < total, "the moves were measured while the curve was still being evaluated"
    page.close()
