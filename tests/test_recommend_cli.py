"""`recommend` against brute force over its own curves, and `--param` on the plan commands."""
import json
import math

import pytest

from deploy_zoos import HELDOUT, evaluable_zoo
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.cli import main
from flexmerge_core.evaluation.statistics import average_interval
from flexmerge_core.pipeline import Pipeline, PlanSettings

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")
ALGORITHMS = ("ta", "ties", "emr")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny", num_tasks=4)[0]


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def recommend_json(zoo, capsys, *goal) -> dict:
    code, out, _ = run(capsys, "recommend", "--zoo", str(zoo.root), "--algorithms", ",".join(ALGORITHMS), *goal,
                       "--json")
    assert code == 0
    return json.loads(out)


def all_rows(doc):
    return [(name, row) for name, rows in doc["curves"].items() for row in rows]


def test_curves_carry_bytes_and_intervals(zoo, capsys):
    doc = recommend_json(zoo, capsys, "--within-points", "2")
    assert set(doc["curves"]) == set(ALGORITHMS)
    one_model = 4 * sum(math.prod(zoo.param_shapes[n]) for n in zoo.param_names)   # fp32 zoo
    for name in ALGORITHMS:
        pipeline = Pipeline(zoo, PlanSettings(name))
        assert [r["size"] for r in doc["curves"][name]] == sorted(pipeline.plan.achievable_sizes())
    for name, row in all_rows(doc):
        assert row["n"] == {t: HELDOUT for t in zoo.task_names}
        low, high = average_interval([(row["accuracy"][t], HELDOUT) for t in zoo.task_names])
        assert (row["ci_low"], row["ci_high"]) == (low, high) and low <= row["avg_accuracy"] <= high
        if name != "emr":   # standard storage: exactly size x one model's fp32 bytes
            assert row["bytes"] == round(row["size"] * one_model) and row["megabytes"] == row["bytes"] / 1e6
        assert row["bytes"] >= one_model


@pytest.mark.parametrize("points", ["0", "2", "5", "100"])
def test_within_points_is_the_brute_force_smallest(zoo, capsys, points):
    doc = recommend_json(zoo, capsys, "--within-points", points)
    target = sum(doc["finetuned"].values()) / len(doc["finetuned"])
    assert doc["finetuned_avg"] == pytest.approx(target)
    good = [(row["size"], -row["avg_accuracy"], name) for name, row in all_rows(doc)
            if row["avg_accuracy"] >= target - float(points) / 100 - 1e-9]
    size, neg_acc, name = min(good)
    best = doc["recommendation"]
    assert (best["size"], -best["avg_accuracy"], best["algorithm"]) == (size, neg_acc, name)


@pytest.mark.parametrize("fraction", [0.5, 1.0, 1.6, 2.5, 10.0])
def test_max_mb_is_the_brute_force_best(zoo, capsys, fraction):
    one_model_mb = min(row["megabytes"] for _, row in all_rows(recommend_json(zoo, capsys, "--within-points", "0")))
    max_mb = fraction * one_model_mb
    doc = recommend_json(zoo, capsys, "--max-mb", str(max_mb))
    fitting = [(-row["avg_accuracy"], row["size"], name) for name, row in all_rows(doc) if row["megabytes"] <= max_mb]
    if not fitting:
        assert doc["recommendation"] is None
        return
    neg_acc, size, name = min(fitting)
    best = doc["recommendation"]
    assert (-best["avg_accuracy"], best["size"], best["algorithm"]) == (neg_acc, size, name)


def test_knees_are_the_highest_points_above_the_chord(zoo, capsys):
    doc = recommend_json(zoo, capsys, "--within-points", "1")
    for name, rows in doc["curves"].items():
        xs = [r["size"] for r in rows]
        ys = [r["avg_accuracy"] for r in rows]
        x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]
        heights = [((y - (y0 + (x - x0) / (x1 - x0) * (y1 - y0))) / (max(ys) - min(ys)), -x) for x, y in zip(xs, ys)]
        top = max(heights)
        knee = doc["knees"][name]
        if top[0] <= 1e-9:
            assert knee is None
        else:
            assert knee == rows[heights.index(top)]


def test_recommend_text_names_the_pick_and_its_interval(zoo, capsys):
    code, out, _ = run(capsys, "recommend", "--zoo", str(zoo.root), "--algorithms", "ta", "--within-points", "100")
    assert code == 0 and "ta at" in out and "95% interval" in out and "knee of ta" in out


@pytest.mark.parametrize("command", ["plan", "curve", "export"])
def test_param_reaches_the_plan_settings(zoo, tmp_path, capsys, command, monkeypatch):
    seen = []
    original = Pipeline.__init__

    def spy(self, zoo_, settings, *args, **kwargs):
        seen.append(settings)
        original(self, zoo_, settings, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__init__", spy)
    extra = {"plan": [], "curve": ["--sizes", "2"], "export": ["--size", "2", "--out", str(tmp_path / "x.safetensors")]}
    code, _, err = run(capsys, command, "--zoo", str(zoo.root), "--algorithm", "ties", "--param", "keep=0.3",
                       "--param", "similarity_on=original", "--param", "lam=2", *extra[command])
    assert code == 0, err
    assert seen[0].hyperparameters == (("keep", 0.3), ("lam", 2.0), ("similarity_on", "original"))
    assert isinstance(seen[0].hyperparameters[1][1], float)
    assert seen[0].make_algorithm().hyperparameters == get_algorithm("ties", keep=0.3, lam=2.0,
                                                                     similarity_on="original").hyperparameters


def test_param_int_kind_and_recommend_spreads_params(zoo, capsys, monkeypatch):
    from flexmerge_core.algorithms.registry import REGISTRY, parse_options

    int_params = [(name, p) for name, cls in REGISTRY.items() for p in cls.params if p.kind is int]
    for name, p in int_params:
        assert parse_options(name, {p.name: str(int(p.default))}) == ((p.name, int(p.default)),)
        with pytest.raises(Exception, match=p.name):
            parse_options(name, {p.name: "1.5"})
    seen = {}

    def fake(zoo_, choices, **kwargs):
        seen.update({c.algorithm: c.hyperparameters for c in choices})
        return {"recommendation": None, "knees": {}, "finetuned_avg": 0.5}

    monkeypatch.setattr("flexmerge_core.pipeline.recommend", fake)
    code, out, err = run(capsys, "recommend", "--zoo", str(zoo.root), "--algorithms", "ta,ties", "--param", "keep=0.5",
                         "--within-points", "1")
    assert code == 0, err
    assert seen == {"ta": (), "ties": (("keep", 0.5),)}


@pytest.mark.parametrize("argv, culprit", [
    (["plan", "--algorithm", "ties", "--param", "keep=0"], "keep"),          # range (0, 1]
    (["plan", "--algorithm", "ties", "--param", "keep=1.5"], "keep"),
    (["plan", "--algorithm", "ties", "--param", "keep=abc"], "keep"),
    (["plan", "--algorithm", "ties", "--param", "similarity_on=neither"], "similarity_on"),
    (["plan", "--algorithm", "ta", "--param", "keep=0.5"], "keep"),          # not a TA option
    (["curve", "--algorithm", "ta", "--param", "bogus=1"], "bogus"),
    (["plan", "--algorithm", "ta", "--param", "lam"], "lam"),
    (["plan", "--algorithm", "ta", "--param", "lam=1", "--param", "lam=2"], "lam"),
    (["recommend", "--algorithms", "ta,ties", "--param", "bogus=1", "--within-points", "1"], "bogus"),
    (["recommend", "--within-points", "1", "--max-mb", "2"], "max-mb"),
    (["recommend", "--algorithms", "ta"], "within-points"),
    (["recommend", "--max-mb", "0"], "max-mb"),
    (["recommend", "--algorithms", "ta,ta", "--within-points", "1"], "ta"),
])
def test_bad_params_and_goals_exit_2_with_one_line(zoo, capsys, argv, culprit):
    command, *rest = argv
    code, out, err = run(capsys, command, "--zoo", str(zoo.root), *rest)
    assert code == 2 and out == "" and culprit in err
    assert err.startswith("error: ") and err.count("\n") == 1
