"""The bad-input corpus: every case gives its documented error, one clear line, through every front end.

For each case: the library raises exactly the case's `flexmerge_core.errors` type with a one-line
message naming the culprit; the CLI exits 2 with exactly one line on stderr, `error: ...`, naming it,
and no traceback; zoo-level and cache cases typed into the app's zoo picker show the message in an
`st.error` element, with no exception. Outcomes feed the closing `bad inputs: ...` summary line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from flexmerge_core.cli import main
from flexmerge_core.errors import FlexMergeError

from . import tally
from .cases import CASES, Env, plan_of

REPO = Path(__file__).resolve().parents[2]


def _names_culprit(message: str, culprit) -> bool:
    return all(part in message for part in culprit)


def _library_outcome(case, scenario) -> tuple[str, str]:
    try:
        scenario.call()
    except FlexMergeError as exc:
        message = str(exc)
        if type(exc) is not case.error:
            return tally.UNCLEAR, f"library raised {type(exc).__name__}, documented {case.error.__name__}: {message}"
        if "\n" in message or not _names_culprit(message, scenario.culprit):
            return tally.UNCLEAR, f"library message {message!r} does not name {scenario.culprit}"
        return tally.CLEAR, message
    except Exception:  # anything undocumented is a crash: the corpus exists to find these
        return tally.CRASH, "library: " + traceback.format_exc()
    return tally.UNCLEAR, "library call raised nothing"


def visible_stderr_line(stderr: str) -> str | None:
    """The one line a terminal shows, or None when stderr holds more than one line.

    Progress bars redraw with carriage returns and are erased before the error is printed, so the
    visible text of the single line is what follows its last carriage return."""
    if stderr.count("\n") != 1 or not stderr.endswith("\n"):
        return None
    return stderr[:-1].split("\r")[-1]


def _cli_outcome(scenario) -> tuple[str, str]:
    if scenario.argv is None:
        return tally.CLEAR, "no CLI form"
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(scenario.argv)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code
    except Exception:
        return tally.CRASH, "CLI: " + traceback.format_exc()
    stderr = err.getvalue()
    line = visible_stderr_line(stderr)
    culprit = scenario.cli_culprit or scenario.culprit
    if "Traceback" in stderr:
        return tally.CRASH, f"CLI printed a traceback: {stderr}"
    if code != 2 or line is None or not line.startswith("error: ") or not _names_culprit(line, culprit):
        return tally.UNCLEAR, f"CLI exit {code}, stderr {stderr!r} (wanted one 'error: ...' naming {culprit})"
    return tally.CLEAR, line


def _app_outcome(app, scenario) -> tuple[str, str]:
    if scenario.app_zoo is None:
        return tally.CLEAR, "no app form"
    app.sidebar.text_input(key="zoo_input").set_value(str(scenario.app_zoo)).run()
    if app.exception:
        return tally.CRASH, f"app raised: {[e.message for e in app.exception]}"
    errors = [e.value for e in app.error]
    if not any(_names_culprit(e, scenario.culprit) for e in errors):
        return tally.UNCLEAR, f"app showed errors {errors}, none naming {scenario.culprit}"
    return tally.CLEAR, errors[0]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One Streamlit session of the Overview page; each case types its zoo into the sidebar picker."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.query_params["zoo"] = str(tmp_path_factory.mktemp("app") / "no-zoo-yet")
    at.run()
    assert not at.exception and any("not found" in e.value for e in at.error)
    return at


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_gives_its_documented_error_everywhere(case, tmp_path, template_zoo, monkeypatch, request):
    env = Env(tmp=tmp_path, template=template_zoo, cache=tmp_path / "cache")
    scenario = case.build(env)
    monkeypatch.setenv("FLEXMERGE_CACHE", str(env.cache))
    session = request.getfixturevalue("app") if scenario.app_zoo is not None else None
    fault = scenario.fault or contextlib.nullcontext
    with fault():
        outcomes = {"library": _library_outcome(case, scenario), "cli": _cli_outcome(scenario)}
        if session is not None:
            outcomes["app"] = _app_outcome(session, scenario)
    for outcome, _ in outcomes.values():
        tally.record(case.name, outcome)
    if scenario.after is not None:
        scenario.after()
    bad = {channel: detail for channel, (outcome, detail) in outcomes.items() if outcome != tally.CLEAR}
    assert not bad, bad


def test_corpus_is_large_and_covers_every_front_end():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


# -- the real process: exit status and stderr as a shell sees them ---------------------------------------

REAL_PROCESS_CASES = ("nan-in-task-vector", "torch-pickle-with-code")  # a progress bar erased; no code run


def test_real_cli_process_exits_2_with_one_error_line(tmp_path, template_zoo):
    """Cases through `python -m flexmerge_core` itself (run side by side), not the in-process main."""
    cases = {c.name: c for c in CASES}
    runs = []
    for name in REAL_PROCESS_CASES:
        env = Env(tmp=tmp_path / name, template=template_zoo, cache=tmp_path / name / "cache")
        env.tmp.mkdir()
        scenario = cases[name].build(env)
        process = subprocess.Popen([sys.executable, "-m", "flexmerge_core", *scenario.argv], cwd=REPO,
                                   env={**os.environ, "FLEXMERGE_CACHE": str(env.cache)},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # bytes: keep carriage returns
        runs.append((name, scenario, process))
    for name, scenario, process in runs:
        stdout, stderr = (stream.decode() for stream in process.communicate(timeout=300))
        line = visible_stderr_line(stderr)
        assert process.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr and line is not None and line.startswith("error: "), (name, stderr)
        assert _names_culprit(line, scenario.cli_culprit or scenario.culprit), (name, line)
        assert stdout == "", (name, stdout)
        if scenario.after is not None:
            scenario.after()


# -- documented graceful behaviour (not errors) ----------------------------------------------------------

def test_size_above_m_is_a_budget_that_keeps_every_task_separate(tmp_path, template_zoo, monkeypatch):
    """ALGORITHMS.md section 3: a size is a budget and S >= M gives no merges. So a budget above M is
    not bad input: the export holds the M fine-tuned models (size M) and says which budget it met."""
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, _, plan = plan_of(template_zoo, cached=True)
    part = plan.partition_at(10.0)
    assert (part.num_events, part.size, part.budget_met) == (0, 3.0, True)
    out = tmp_path / "big.safetensors"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["export", "--zoo", str(template_zoo), "--algorithm", "ta", "--size", "10", "--out", str(out)])
    recipe = json.loads(out.with_suffix(".recipe.json").read_text())
    assert code == 0 and recipe["budget"] == 10.0 and recipe["size"] == 3.0


def test_one_zero_task_vector_is_fine_when_others_are_not(tmp_path, template_zoo, monkeypatch):
    """ALGORITHMS.md section 2: one task equal to the pretrained model has similarity 0 with every other
    task; only a zoo where every task vector is zero is refused (case pretrained-equals-finetuned)."""
    from .zoos import copy_zoo, task_file

    root = copy_zoo(template_zoo, tmp_path / "zoo")
    task_file(root, "beta").write_bytes((root / "pretrained.safetensors").read_bytes())
    zoo, _, plan = plan_of(root)
    beta_alone = [e for e in plan.events if (1,) in (e.group_a, e.group_b)]
    assert len(beta_alone) == len(plan.blocks)          # beta joins a group once per block
    assert all(e.similarity <= 0.0 for e in beta_alone)  # min linkage over pairs that include a 0


def test_export_page_reports_a_full_disk_and_missing_memory(tmp_path, template_zoo, monkeypatch):
    """The machine cases at the moment the app writes: the Export page's button shows the one-line error
    (the Overview page meets them earlier, when it stores the plan; see the corpus cases)."""
    from streamlit.testing.v1 import AppTest

    from flexmerge_core.resources import LIMIT_ENV

    from .cases import full_disk
    from .zoos import copy_zoo

    zoo = copy_zoo(template_zoo, tmp_path / "export-page-zoo")
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO / "pages" / "3_Export.py"), default_timeout=300)
    at.query_params["zoo"] = str(zoo)
    at.run()
    assert not at.exception and not at.error
    with full_disk():
        at.button(key="export_write_deployment").click().run()
    assert not at.exception and any("No space left on device" in e.value for e in at.error), at.error
    monkeypatch.setenv(LIMIT_ENV, "1K")
    at.button(key="export_write_deployment").click().run()
    assert not at.exception and any("not enough memory" in e.value for e in at.error), at.error
    assert not list((tmp_path / "cache").glob("exports/*/*.safetensors"))


def test_cache_entries_swapped_on_disk_are_rebuilt_not_trusted(tmp_path, template_zoo, monkeypatch):
    """Valid eval and merged-group entries exchanged on disk (as a sync tool or a user might): each is
    bound to its key, so a swapped one is a miss that is rebuilt; the numbers stay the uncached ones."""
    import itertools

    from flexmerge_core.pipeline import Pipeline, PlanSettings, resolve_zoo

    cache = tmp_path / "cache"
    monkeypatch.setenv("FLEXMERGE_CACHE", str(cache))
    zoo = resolve_zoo(template_zoo)

    def rows():
        return Pipeline(zoo, PlanSettings(algorithm="ties")).curve([1.0, 2.0, 3.0]).rows

    reference = rows()
    for folder in ("eval", "groups"):
        entries = sorted((cache / folder).iterdir())
        assert len(entries) >= 2, folder
        for a, b in itertools.pairwise(entries):   # rotate every entry's bytes onto its neighbour's name
            data_a, data_b = a.read_bytes(), b.read_bytes()
            a.write_bytes(data_b)
            b.write_bytes(data_a)
    assert rows() == reference


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_zoos_compute_in_float32_and_export_in_their_dtype(dtype, tmp_path, template_zoo, monkeypatch):
    """Decision for class 3: float16/bfloat16 zoos work (merging and evaluation in float32, exports in the
    zoo's dtype); int8/bool/float8 zoos are refused at open (corpus cases). Reference: the same zoo with
    its half-precision values widened to float32. Unmerged (size M) the two evaluate the very same values,
    so their accuracies are equal; merged blocks are rounded to the zoo's dtype once merged (the deployed
    model is a half-precision model), so there the exports agree to that precision."""
    import torch
    from safetensors.torch import load_file

    from .cases import curve_of, export_of
    from .zoos import copy_zoo, rewrite_tensors, task_file

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    half, widened = copy_zoo(template_zoo, tmp_path / "half"), copy_zoo(template_zoo, tmp_path / "widened")
    for root, final in ((half, getattr(torch, dtype)), (widened, torch.float32)):
        for path in [root / "pretrained.safetensors"] + [task_file(root, t) for t in ("alpha", "beta", "gamma")]:
            rewrite_tensors(path, lambda s: s.update({k: v.to(getattr(torch, dtype)).to(final) for k, v in s.items()}))
    rows = curve_of(half, [1.0, 2.0, 3.0]).rows
    assert [r["size_budget"] for r in rows] == [1.0, 2.0, 3.0] and all(0 <= r["avg_accuracy"] <= 1 for r in rows)
    assert rows[-1] == curve_of(widened, [3.0]).rows[0]
    export_of(half, 2.0, tmp_path / "half.safetensors", task="beta")
    export_of(widened, 2.0, tmp_path / "widened.safetensors", task="beta")
    exported, reference = load_file(str(tmp_path / "half.safetensors")), load_file(str(tmp_path / "widened.safetensors"))
    assert {t.dtype for t in exported.values()} == {getattr(torch, dtype)}
    assert all(torch.allclose(exported[n].float(), reference[n], rtol=1e-2, atol=1e-2) for n in reference)


# -- the process's own streams: a real `python -m flexmerge_core`, as a shell runs it -----------------------

def _cli_process(template_zoo, tmp_path, shell_tail: str) -> subprocess.CompletedProcess:
    command = f"{sys.executable} -m flexmerge_core plan --zoo {template_zoo} --algorithm ta --json {shell_tail}"
    return subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, timeout=300,
                          env={**os.environ, "FLEXMERGE_CACHE": str(tmp_path / "cache")})


def test_output_streams_that_fail_give_no_traceback(tmp_path, template_zoo):
    """A reader that went away (`| head`, here `| true`: gone before the plan is printed, so the write
    surely meets a closed pipe) ends the command quietly (status 141, as SIGPIPE would); a full disk
    (`> /dev/full`) or a closed stdout (`>&-`) is one `error:` line and exit 2."""
    cases = {"| true": (141, ""), "> /dev/full": (2, "No space left on device"),
             ">&-": (2, "standard output is closed")}
    for tail, (status, line) in cases.items():
        run = _cli_process(template_zoo, tmp_path, f"{tail}; exit ${{PIPESTATUS[0]}}")
        stderr = run.stderr.decode()
        assert run.returncode == status and "Traceback" not in stderr and "Exception ignored" not in stderr, (tail, stderr)
        if line:
            assert visible_stderr_line(stderr) == f"error: cannot write to standard output: {line}", (tail, stderr)
        else:
            assert stderr.split("\r")[-1].strip() == "" and "error" not in stderr, (tail, stderr)   # only the erased bar
