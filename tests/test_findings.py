"""Findings: the verdict rules on hand-made per-example scores, the five findings on a tiny zoo against
curves and paired tests computed here, and the `findings` command."""
import json

import numpy as np
import pytest
import torch

from deploy_zoos import evaluable_zoo
from flexmerge_core.cli import main
from flexmerge_core.evaluation.curve import CurveResult
from flexmerge_core.evaluation.scores import TaskScore
from flexmerge_core.evaluation.statistics import flips_along, holm, paired_test, rankings_with_ties
from flexmerge_core.evaluation.verdicts import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, VERDICTS, gain_finding,
                                                rank_finding, versus_finding)

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = ["gain_1x_to_2x", "rank_changes", "vs_baselines", "merge_order", "linkage"]


def curve(points: dict) -> CurveResult:
    """A CurveResult of hand-made accuracies: {budget: (size, [per-task lists of 0/1 scores])}."""
    rows, scores = [], {}
    for budget, (size, tasks) in points.items():
        task_scores = {f"t{i}": TaskScore("accuracy", float(np.mean(bits)), len(bits), True,
                                          torch.tensor(bits, dtype=torch.float32)) for i, bits in enumerate(tasks)}
        values = {t: s.value for t, s in task_scores.items()}
        rows.append({"size_budget": budget, "size": size, "avg_accuracy": float(np.mean(list(values.values()))),
                     "accuracy": values, "metric": {t: "accuracy" for t in values},
                     "higher_is_better": {t: True for t in values}, "ci_low": 0.0, "ci_high": 1.0})
        scores[budget] = task_scores
    return CurveResult(rows=rows, finetuned={}, scores=scores)


def right(n: int, first: int) -> list:
    return [1.0] * first + [0.0] * (n - first)


def test_gain_verdicts_follow_the_paired_test():
    up = curve({1.0: (1.0, [right(100, 60)]), 2.0: (2.0, [right(100, 80)])})
    down = curve({1.0: (1.0, [right(100, 80)]), 2.0: (2.0, [right(100, 60)])})
    flat = curve({1.0: (1.0, [right(100, 60)]), 2.0: (2.0, [right(100, 61)])})
    found = gain_finding(up, "ta")
    assert found["verdict"] == REPRODUCED and found["gain"] == pytest.approx(0.2)
    assert found["p_value"] == paired_test([np.array(right(100, 80)) == 1], [np.array(right(100, 60)) == 1]).p_value
    assert found["gain_ci"][0] < 0.2 < found["gain_ci"][1]
    assert gain_finding(down, "ta")["verdict"] == NOT_REPRODUCED
    assert gain_finding(flat, "ta")["verdict"] == INCONCLUSIVE


def test_rank_verdicts_need_a_significant_flip():
    strong, weak = right(200, 150), right(200, 100)
    flip = {"a": curve({1.0: (1.0, [strong]), 2.0: (2.0, [weak])}),
            "b": curve({1.0: (1.0, [weak]), 2.0: (2.0, [strong])})}
    found = rank_finding(flip, [1.0, 2.0])
    assert found["verdict"] == REPRODUCED and found["rankings"][1]["flips"] == [["a", "b"]]
    nudged = {"a": curve({1.0: (1.0, [right(200, 101)]), 2.0: (2.0, [weak])}),
              "b": curve({1.0: (1.0, [weak]), 2.0: (2.0, [right(200, 101)])})}
    assert rank_finding(nudged, [1.0, 2.0])["verdict"] == INCONCLUSIVE
    steady = {"a": curve({1.0: (1.0, [strong]), 2.0: (2.0, [strong])}),
              "b": curve({1.0: (1.0, [weak]), 2.0: (2.0, [weak])}),
              "mask": curve({1.0: (1.5, [strong]), 2.0: (2.0, [strong])})}    # cannot meet 1x: unranked there
    found = rank_finding(steady, [1.0, 2.0])
    assert found["verdict"] == NOT_REPRODUCED and found["rankings"][0]["groups"] == [["a"], ["b"]]
    assert found["rankings"][1]["groups"] == [["a", "mask"], ["b"]]


def test_versus_verdicts_use_holm_over_the_finding_and_skip_identical_deployments():
    same, good, bad = right(300, 200), right(300, 240), right(300, 160)
    ref = curve({1.0: (1.0, [same]), 2.0: (2.0, [good]), 3.0: (3.0, [same])})
    behind = curve({1.0: (1.0, [same]), 2.0: (2.0, [same]), 3.0: (3.0, [same])})
    ahead = curve({1.0: (1.0, [same]), 2.0: (2.0, [same]), 3.0: (3.0, [good])})
    found = versus_finding("x", "X", "claim", "ref", ref, {"behind": behind, "ahead": ahead}, [1.0, 2.0, 3.0])
    by_label = {a["label"]: a for a in found["alternatives"]}
    assert by_label["behind"]["verdict"] == REPRODUCED and by_label["behind"]["reference_ahead_at"] == [2.0]
    assert by_label["ahead"]["verdict"] == NOT_REPRODUCED and by_label["ahead"]["alternative_ahead_at"] == [3.0]
    assert found["verdict"] == NOT_REPRODUCED and found["tests"] == 3   # 1x and behind@3x are identical
    tested = [c for a in found["alternatives"] for c in a["comparisons"] if not c["identical"]]
    assert [c["p_holm"] for c in tested] == pytest.approx(holm([c["p_value"] for c in tested]))
    assert all(c["p_holm"] == 1.0 and c["ahead"] == "tie" for a in found["alternatives"] for c in a["comparisons"]
               if c["identical"])
    only_behind = versus_finding("x", "X", "claim", "ref", ref, {"behind": behind}, [1.0, 2.0, 3.0])
    assert only_behind["verdict"] == REPRODUCED
    even = versus_finding("x", "X", "claim", "ref", behind, {"same": behind}, [1.0, 2.0, 3.0])
    assert even["verdict"] == INCONCLUSIVE and even["tests"] == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    zoo, *_ = evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny", num_tasks=3)
    return zoo


@pytest.fixture(scope="module")
def doc(tiny):
    from flexmerge_core.findings import reproduce_findings

    return reproduce_findings(tiny, ("ta", "ties"))


def _fresh(zoo, budgets, **settings):
    """A curve of these plan settings, evaluated here without any cache."""
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    return Pipeline(zoo, PlanSettings(**settings)).curve(budgets, use_cache=False)


def _correct(result, budget):
    return [s.scores.numpy() == 1 for s in result.scores[budget].values()]


def test_five_findings_with_allowed_verdicts(doc, tiny):
    assert [f["id"] for f in doc["findings"]] == IDS
    assert all(f["verdict"] in VERDICTS and f["summary"] and f["claim"] for f in doc["findings"])
    assert doc["tasks"] == tiny.task_names and json.loads(json.dumps(doc)) == doc


def test_gain_and_rankings_agree_with_fresh_curves(doc, tiny):
    gain, ranks = doc["findings"][0], doc["findings"][1]
    grid = [1.0, 1.5, 2.0, 2.5, 3.0]
    fresh = {name: _fresh(tiny, grid, algorithm=name) for name in ("ta", "ties")}
    rows = {b: r for b, r in zip(grid, fresh["ta"].rows)}
    assert [p["avg_accuracy"] for p in gain["points"]] == pytest.approx([rows[1.0]["avg_accuracy"],
                                                                        rows[2.0]["avg_accuracy"]], abs=1e-12)
    assert [v for p in gain["points"] for v in (p["ci_low"], p["ci_high"])] == pytest.approx(
        [rows[b][k] for b in (1.0, 2.0) for k in ("ci_low", "ci_high")], abs=1e-12)
    assert gain["gain"] == pytest.approx(rows[2.0]["avg_accuracy"] - rows[1.0]["avg_accuracy"], abs=1e-12)
    test = paired_test(_correct(fresh["ta"], 2.0), _correct(fresh["ta"], 1.0))
    assert gain["p_value"] == test.p_value
    expected = INCONCLUSIVE if test.p_value >= 0.05 else REPRODUCED if test.favours == "a" else NOT_REPRODUCED
    assert gain["verdict"] == expected
    assert [s["size_budget"] for s in ranks["rankings"]] == grid
    groups = [rankings_with_ties({a: _correct(c, b) for a, c in fresh.items()}) for b in grid]
    assert [s["groups"] for s in ranks["rankings"]] == groups
    assert [s["flips"] for s in ranks["rankings"]] == [[list(f) for f in step] for step in flips_along(groups)]


@pytest.mark.parametrize("index,reference,alternatives", [
    (2, {}, {"Channel Merging": {"granularity": "parameter", "baseline": "channel-merging"},
             "whole-model clustering": {"granularity": "parameter", "baseline": "whole-model"}}),
    (3, {}, {o: {"order": o} for o in ("left-to-right", "right-to-left", "random")}),
    (4, {}, {lk: {"linkage": lk} for lk in ("max", "avg")}),
])
def test_versus_findings_agree_with_fresh_curves_at_every_integer_size(doc, tiny, index, reference, alternatives):
    finding = doc["findings"][index]
    sizes = [1.0, 2.0, 3.0]
    ref = _fresh(tiny, sizes, algorithm="ta", **reference)
    assert [a["label"] for a in finding["alternatives"]] == list(alternatives)
    tested = []
    for alternative in finding["alternatives"]:
        other = _fresh(tiny, sizes, algorithm="ta", **alternatives[alternative["label"]])
        assert [c["size_budget"] for c in alternative["comparisons"]] == sizes
        for c, ref_row, other_row in zip(alternative["comparisons"], ref.rows, other.rows):
            b = c["size_budget"]
            assert c["difference"] == pytest.approx(ref_row["avg_accuracy"] - other_row["avg_accuracy"], abs=1e-12)
            assert c["alternative"]["size"] == other_row["size"]
            assert c["ci_low"] <= c["difference"] <= c["ci_high"]
            if not c["identical"]:
                assert c["p_value"] == paired_test(_correct(ref, b), _correct(other, b)).p_value
                tested.append(c)
    assert [c["p_holm"] for c in tested] == pytest.approx(holm([c["p_value"] for c in tested]))
    for alternative in finding["alternatives"]:
        assert alternative["reference_ahead_at"] == [c["size_budget"] for c in alternative["comparisons"]
                                                     if c["ahead"] == finding["reference"]]
        ahead, behind = alternative["reference_ahead_at"], alternative["alternative_ahead_at"]
        assert alternative["verdict"] == (NOT_REPRODUCED if behind else REPRODUCED if ahead else INCONCLUSIVE)


def test_cli_findings_json_prints_the_five_findings(tiny, capsys):
    assert main(["findings", "--zoo", str(tiny.root), "--algorithms", "ta,ties", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in out["findings"]] == IDS and all(f["verdict"] in VERDICTS for f in out["findings"])
    assert main(["findings", "--zoo", str(tiny.root), "--algorithms", "ta,ties"]) == 0
    text = capsys.readouterr().out
    assert all(f["title"] in text and f"{f['title']}: {f['verdict'].upper()}" in text for f in out["findings"])


@pytest.mark.parametrize("extra,message", [
    (["--algorithms", "ta,nope"], "nope"),
    (["--algorithms", "ta"], "at least two algorithms"),
    (["--algorithms", "ta,ties", "--alpha", "2"], "alpha"),
    (["--algorithms", "ta,ties", "--algorithm", "emr"], "Channel Merging"),
])
def test_cli_findings_bad_input_is_one_line_and_exit_2(tiny, capsys, extra, message):
    assert main(["findings", "--zoo", str(tiny.root)] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_cli_findings_on_a_missing_zoo_is_one_line(tmp_path, capsys):
    assert main(["findings", "--zoo", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
