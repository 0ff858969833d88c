"""Task kinds: a metric other than accuracy (MSE on a tiny regression task, lower is better), defined and
registered here, flows through curves, the CLI, Compare's rankings and charts, and export; manifests
without a kind open as image classification and an unknown kind is refused.
"""
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from deploy_zoos import TINY_VIT, evaluable_zoo, plan_for, reference_logits
from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.tasks import HeldOut, TaskFiles, TaskKind, get_task_kind, register_task_kind
from flexmerge_core.zoo import open_zoo, write_zoo

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")

REPO = Path(__file__).resolve().parents[1]
HELDOUT = 24


class SquaredError(TaskKind):
    """Images in, a 1-output linear head, float targets; per-example squared error."""

    name = "test_regression"
    metric = "MSE"
    higher_is_better = False

    def validate(self, files: TaskFiles) -> None:
        if files.head is not None and (files.head.shapes.get("weight", ())[:1] != (1,)
                                       or files.head.shapes.get("bias") != (1,)):
            raise ZooError(f"{files.head.path}: head of task '{files.task}' needs weight [1, D] and bias [1]")
        if files.data is not None and set(files.data.names) != {"images", "targets"}:
            raise ZooError(f"{files.data.path}: data of task '{files.task}' must hold 'images' and 'targets'")

    def load(self, zoo, task_id: int):
        files = zoo.task_files(task_id)
        if files.data is None:
            return None
        return HeldOut(files.data.read("images"), files.data.read("targets"), zoo.head(task_id))

    def score(self, outputs, targets, head):
        prediction = (outputs.float() @ head["weight"].t() + head["bias"])[:, 0]
        return (prediction - targets) ** 2


register_task_kind(SquaredError())


def regression_zoo(folder, num_tasks=3, seed=0):
    """Like deploy_zoos.evaluable_zoo, with regression tasks: targets are the fine-tuned model's own
    outputs plus noise, so the fine-tuned models' MSE is small and merging raises it."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    pretrained = {k: v.clone() for k, v in VisionTransformer(**TINY_VIT).state_dict().items()}
    shared = {k: torch.randn_like(v) for k, v in pretrained.items()}
    tasks, states, heads = [], {}, {}
    for t in range(num_tasks):
        name = f"reg{t}"
        state = {k: v + 0.05 * shared[k] + 0.2 * v.std().clamp_min(0.02) * torch.randn_like(v)
                 for k, v in pretrained.items()}
        head = {"weight": torch.randn(1, TINY_VIT["output_dim"]), "bias": torch.randn(1)}
        images = torch.randn(HELDOUT, 3, TINY_VIT["image_size"], TINY_VIT["image_size"])
        targets = reference_logits(TINY_VIT, state, head, images)[:, 0] + 0.1 * torch.randn(HELDOUT)
        states[name], heads[name] = state, head
        tasks.append({"name": name, "kind": "test_regression", "state_dict": state, "head": head,
                      "data": {"images": images, "targets": targets}})
    path = write_zoo(folder, {"kind": "open_clip_vit", "config": TINY_VIT}, pretrained, tasks)
    return open_zoo(path), states, heads


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return regression_zoo(tmp_path_factory.mktemp("zoo") / "regression")


def brute_force_mse(zoo, state, head, task_id):
    """A plain forward of a fresh module: mean squared error of the head's single output."""
    images, targets = zoo.heldout(task_id)
    prediction = reference_logits(TINY_VIT, state, head, images)[:, 0]
    return float(((prediction - targets) ** 2).double().mean())


def test_a_registered_kind_is_looked_up_and_a_taken_name_is_refused():
    assert get_task_kind("test_regression").metric == "MSE"
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_task_kind(SquaredError())
    with pytest.raises(ZooError, match=r"unknown task kind 'nope' \(known: .*image_classification"):
        get_task_kind("nope")


def test_curve_values_are_the_brute_force_mse_and_mx_is_the_finetuned_models(bundle):
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.curve import compute_curve

    zoo, states, heads = bundle
    assert zoo.task_kind(0).name == "test_regression"
    spec, algo, plan = plan_for(zoo, "ta")
    result = compute_curve(zoo, plan, algo, [1.0, 2.0, 3.0], spec=spec)
    m = len(zoo.task_names)
    for t, name in enumerate(zoo.task_names):
        assert result.finetuned[name] == pytest.approx(brute_force_mse(zoo, states[name], heads[name], t), rel=1e-5)
    for row in result.rows:
        deployment = build_deployment(zoo, plan, algo, row["size_budget"], spec=spec)
        for t, name in enumerate(zoo.task_names):
            expected = brute_force_mse(zoo, deployment.encoder_state_dict(t), heads[name], t)
            assert row["accuracy"][name] == pytest.approx(expected, rel=1e-5)
        assert row["metric"] == {name: "MSE" for name in zoo.task_names}
        assert row["n"] == {name: HELDOUT for name in zoo.task_names}
        assert row["higher_is_better"] == {name: False for name in zoo.task_names}
        assert row["avg_accuracy"] == pytest.approx(sum(row["accuracy"].values()) / m)
        normalized = [result.finetuned[n] / row["accuracy"][n] for n in zoo.task_names]   # lower is better
        assert row["avg_normalized_accuracy"] == pytest.approx(sum(normalized) / m)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(welch_t_interval(
            [result.scores[row["size_budget"]][n].scores.double().numpy() for n in zoo.task_names]), rel=1e-9)
        assert row["ci_low"] < row["avg_accuracy"] < row["ci_high"]
    low, full = result.rows[0], result.rows[-1]
    assert full["size"] == m and full["accuracy"] == result.finetuned and full["avg_normalized_accuracy"] == 1.0
    assert low["avg_accuracy"] > full["avg_accuracy"] and low["avg_normalized_accuracy"] < 1.0   # merging costs


def welch_t_interval(per_task, confidence=0.95):
    """By hand: mean of per-task means +- t * sqrt(sum s_k^2 / n_k) / K, Welch-Satterthwaite dof."""
    from scipy import stats

    k = len(per_task)
    parts = [float(x.var(ddof=1)) / len(x) for x in per_task]
    dof = sum(parts) ** 2 / sum(p ** 2 / (len(x) - 1) for p, x in zip(parts, per_task))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * sum(parts) ** 0.5 / k
    mean = sum(float(x.mean()) for x in per_task) / k
    return mean - half, mean + half


def test_per_example_scores_are_kept_in_the_eval_cache(bundle, private_cache):
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.evaluate import evaluate_deployment
    from flexmerge_core.evaluation.scores import TaskScore
    from flexmerge_core.evaluation.task_eval import deployment_eval_key, eval_cache

    zoo, states, heads = bundle
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, 1.0, spec=spec)
    result = evaluate_deployment(zoo, deployment)
    assert result.metric == {n: "MSE" for n in zoo.task_names} and result.n == {n: HELDOUT for n in zoo.task_names}
    assert result.higher_is_better == {n: False for n in zoo.task_names}
    entry = eval_cache().get(deployment_eval_key(zoo, deployment, 0))
    assert entry["scores"]["encoding"] == "float32"
    score = TaskScore.from_json(entry)
    images, targets = zoo.heldout(0)
    prediction = reference_logits(TINY_VIT, deployment.encoder_state_dict(0), heads["reg0"], images)[:, 0]
    torch.testing.assert_close(score.scores, (prediction - targets) ** 2, rtol=1e-5, atol=1e-6)
    assert score.value == result.accuracy["reg0"] and score.n == HELDOUT


def test_scores_encode_compactly_and_round_trip():
    from flexmerge_core.evaluation.scores import decode_scores, encode_scores

    bits = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    doc = encode_scores(bits)
    assert doc["encoding"] == "bits" and len(doc["data"]) == 4          # 9 bits: 2 bytes, 4 base64 characters
    assert torch.equal(decode_scores(doc, 9), bits)
    errors = torch.tensor([0.25, 1e-7, 3.5])
    assert encode_scores(errors)["encoding"] == "float32"
    assert torch.equal(decode_scores(encode_scores(errors), 3), errors)
    with pytest.raises(ValueError):
        decode_scores(doc, 17)


def test_cli_curve_json_carries_the_metric_beside_the_existing_keys(bundle, capsys):
    from flexmerge_core.cli import main

    zoo, *_ = bundle
    assert main(["curve", "--zoo", str(zoo.root), "--algorithm", "ta", "--sizes", "1,3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"rows", "finetuned"} and set(out["finetuned"]) == set(zoo.task_names)
    assert list(out["rows"][0]) == ["size_budget", "size", "avg_accuracy", "avg_normalized_accuracy", "accuracy",
                                    "metric", "n", "higher_is_better", "ci_low", "ci_high"]
    assert out["rows"][1]["accuracy"] == out["finetuned"]


def test_rankings_put_the_lowest_error_first_and_charts_name_the_metric(bundle):
    from dashboard import charts
    from dashboard.metric_axis import axis_for
    from dashboard.rankings import ranking_table
    from flexmerge_core.evaluation.curve import compute_curve
    from flexmerge_core.evaluation.paired import rank
    from flexmerge_core.evaluation.statistics import rankings_with_ties

    zoo, *_ = bundle
    budgets = [1.0, 2.0, 3.0]
    results = {}
    for name in ("avg", "ta"):
        spec, algo, plan = plan_for(zoo, name)
        results[name] = compute_curve(zoo, plan, algo, budgets, spec=spec)
    curves = {a: r.rows for a, r in results.items()}
    axis = axis_for(curves["ta"])
    assert (axis.name, axis.higher_is_better, axis.percent) == ("MSE", False, False)
    values = {a: {r["size_budget"]: axis.average(r) for r in rows} for a, rows in curves.items()}
    rankings = {b: rank({a: r.scores[b] for a, r in results.items()}) for b in budgets}
    table = ranking_table(values, rankings, budgets, fmt=axis.format)
    for i, budget in enumerate(budgets[:2]):
        best = min(values, key=lambda a: (values[a][budget], a))
        assert table["#1"][i].startswith(f"{best} ({axis.format(values[best][budget])})")
        errors = {a: [r.scores[budget][t].scores.numpy() for t in zoo.task_names] for a, r in results.items()}
        assert rankings[budget] == rankings_with_ties(errors, higher_is_better=False)
    assert values["avg"][1.0] != values["ta"][1.0]
    figure = charts.curve_figure({a: charts.curve_points(rows, axis) for a, rows in curves.items()}, axis=axis)
    assert "MSE" in figure.layout.yaxis.title.text and "lower is better" in figure.layout.yaxis.title.text
    assert figure.data[0].y[0] == curves["avg"][0]["avg_accuracy"]   # drawn as is, not in %
    bars = charts.task_figure(zoo.task_names, axis.task_values(curves["ta"][0], None), None, 1.0, axis)
    assert "MSE" in bars.layout.yaxis.title.text and bars.layout.yaxis.range is None


def test_mixed_metrics_are_drawn_as_normalised_scores():
    from dashboard.metric_axis import axis_for

    row = {"size": 1.0, "avg_accuracy": 0.7, "avg_normalized_accuracy": 0.8, "accuracy": {"a": 0.6, "b": 0.2},
           "metric": {"a": "accuracy", "b": "MSE"}, "higher_is_better": {"a": True, "b": False}}
    axis = axis_for([row])
    assert axis.normalized and axis.higher_is_better and "normalised score" in axis.title
    assert axis.average(row) == 80.0
    assert axis.task_values(row, {"a": 0.8, "b": 0.1}) == {"a": pytest.approx(75.0), "b": pytest.approx(50.0)}


def test_compare_page_labels_and_ranks_by_the_metric(bundle, monkeypatch):
    from streamlit.testing.v1 import AppTest

    zoo, *_ = bundle
    monkeypatch.setenv("FLEXMERGE_ZOO", str(zoo.root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    at.switch_page("pages/2_Compare.py")
    at.run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    assert all("MSE (lower is better)" in s["layout"]["yaxis"]["title"]["text"] for s in specs) and specs
    curves = {t["name"]: dict(zip(t["x"], t["y"])) for t in specs[0]["data"] if t.get("fill") != "toself"}
    bands = [t["name"] for t in specs[0]["data"] if t.get("fill") == "toself"]
    assert bands == [f"{a} (95% interval)" for a in curves]      # the t intervals of the MSE averages
    rankings = next(d.value for d in at.dataframe if "ranking changed" in d.value.columns)
    first = rankings.iloc[0]                                     # the smallest budget every algorithm meets
    ranked = [cell.split(" (")[0] for k in range(1, len(curves) + 1) if first.get(f"#{k}")
              for cell in first[f"#{k}"].split(" = ")]           # one rank's algorithms are joined by " = "
    at_budget = {a: curves[a].get(1.0) for a in ranked}
    assert [at_budget[a] for a in ranked] == sorted(at_budget[a] for a in ranked)   # lowest MSE first


def test_export_carries_the_regression_heads_and_reproduces_the_curve(bundle, tmp_path):
    from flexmerge_core.deployment.export import export, head_path, load_deployment
    from flexmerge_core.evaluation.curve import compute_curve
    from safetensors.torch import load_file

    zoo, states, heads = bundle
    spec, algo, plan = plan_for(zoo, "ta")
    export(zoo, spec, plan, algo, 2.0, tmp_path / "all.safetensors")
    deployment = load_deployment(tmp_path / "all.safetensors")
    export(zoo, spec, plan, algo, 2.0, tmp_path / "reg1.safetensors", task="reg1")
    assert torch.equal(load_file(head_path(tmp_path / "reg1.safetensors"))["weight"], heads["reg1"]["weight"])
    row = compute_curve(zoo, plan, algo, [2.0], spec=spec).rows[0]
    for t, name in enumerate(zoo.task_names):
        assert torch.equal(deployment.heads[t]["bias"], heads[name]["bias"])
        mse = brute_force_mse(zoo, deployment.encoder_state_dict(t), deployment.heads[t], t)
        assert row["accuracy"][name] == pytest.approx(mse, rel=1e-5)


def test_a_manifest_without_kind_opens_as_image_classification_and_an_unknown_kind_is_refused(tmp_path):
    zoo, *_ = evaluable_zoo(tmp_path / "z", num_tasks=2, heldout=8)
    doc = json.loads((zoo.root / "zoo.json").read_text())
    assert all("kind" not in task for task in doc["tasks"])
    assert [zoo.task_kind(t).name for t in range(2)] == ["image_classification"] * 2
    assert zoo.task_kind(0).metric == "accuracy" and zoo.task_kind(0).higher_is_better

    doc["tasks"][1]["kind"] = "no_such_kind"
    (zoo.root / "zoo.json").write_text(json.dumps(doc))
    with pytest.raises(ZooError) as refused:
        open_zoo(zoo.root)
    message = str(refused.value)
    assert "\n" not in message and "task 'task1'" in message and "unknown task kind 'no_such_kind'" in message

    doc["tasks"][1]["kind"] = "test_regression"                 # known kind, but the files are image classification's
    (zoo.root / "zoo.json").write_text(json.dumps(doc))
    with pytest.raises(ZooError, match="head of task 'task1' needs weight"):
        open_zoo(zoo.root)


def test_installed_plugins_are_loaded_from_the_entry_point_group(monkeypatch):
    from flexmerge_core.tasks import registry

    class Plugin(SquaredError):
        name = "plugin_regression"

    class Point:
        name = "plugin_regression"

        def load(self):
            return Plugin

    groups = []
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: groups.append(group) or [Point()])
    monkeypatch.setattr(registry._REGISTRY, "entry_points_loaded", False)
    monkeypatch.setattr(registry._REGISTRY, "items", dict(registry._REGISTRY.items))   # the plug-in leaves with the test
    kind = get_task_kind("plugin_regression")
    assert groups == ["flexmerge.task_kinds"] and isinstance(kind, Plugin) and kind.metric == "MSE"
