"""Budgets in bytes: what `export --budget-mb --dtype` reports is what the file holds, and it is the
largest deployment that fits; fp16/bf16 exports hold the fp32 deployment rounded to that dtype.

Bytes reported as `bytes` are the merged-parameter storage (every tensor of the file but its `tasks/`
entries, i.e. heads and unmerged per-task tensors); `file_tensor_bytes` is every tensor of the file.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from deploy_zoos import evaluable_zoo, plan_for
from flexmerge_core.cli import main
from flexmerge_core.deployment.deploy import build_deployment
from flexmerge_core.deployment.export import load_deployment, recipe_path, save_deployment
from flexmerge_core.pipeline import reproduce_export

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny", num_tasks=4)[0]


def tensor_bytes(path, merged_only: bool) -> int:
    """Independent count: numel * itemsize of every tensor in the file (merged storage: no tasks/ keys)."""
    return sum(v.numel() * v.element_size() for k, v in load_file(str(path)).items()
               if not (merged_only and k.startswith("tasks/")))


def run_json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("algorithm,dtype", [("ta", "fp32"), ("ta", "fp16"), ("ties", "bf16"),
                                             ("consensus", "fp16"), ("emr", "bf16"), ("emr", "fp32")])
def test_export_budget_mb_writes_the_largest_deployment_that_fits(zoo, tmp_path, capsys, algorithm, dtype):
    spec, algo, plan = plan_for(zoo, algorithm)
    one_model = sum(torch.zeros(zoo.param_shapes[n]).numel() for n in zoo.param_names) * DTYPES[dtype].itemsize
    budget_mb = 2.3 * one_model / 1e6
    out = tmp_path / "d.safetensors"
    doc = run_json(capsys, "export", "--zoo", str(zoo.root), "--algorithm", algorithm, "--budget-mb", str(budget_mb),
                   "--dtype", dtype, "--out", str(out), "--json")
    assert doc["bytes"] == tensor_bytes(out, merged_only=True) <= budget_mb * 1e6
    assert doc["file_tensor_bytes"] == tensor_bytes(out, merged_only=False) > doc["bytes"]
    assert doc["megabytes"] == doc["bytes"] / 1e6 and doc["budget_met"] is True
    floating = {v.dtype for k, v in load_file(str(out)).items() if v.is_floating_point() and not k.endswith("scales")}
    assert floating == {DTYPES[dtype]}
    # the next larger achievable deployment, written the same way, does not fit
    sizes = sorted(plan.achievable_sizes())
    larger = sizes[sizes.index(doc["size"]) + 1]
    bigger = build_deployment(zoo, plan, algo, larger, spec=spec).with_dtype(DTYPES[dtype], dtype)
    assert tensor_bytes(save_deployment(bigger, tmp_path / "bigger.safetensors"), merged_only=True) > budget_mb * 1e6


def test_half_precision_export_is_the_deployment_rounded_and_reproduces(zoo, tmp_path, capsys):
    spec, algo, plan = plan_for(zoo, "ta")
    out = tmp_path / "half.safetensors"
    assert main(["export", "--zoo", str(zoo.root), "--algorithm", "ta", "--size", "1.7", "--dtype", "fp16",
                 "--out", str(out)]) == 0
    assert "MB" in capsys.readouterr().out
    reference = build_deployment(zoo, plan, algo, 1.7, spec=spec)
    loaded = load_deployment(out)
    assert loaded.recipe["dtype"] == "fp16" and json.loads(recipe_path(out).read_text())["dtype"] == "fp16"
    for t in range(len(zoo.task_names)):
        expected, got = reference.encoder_state_dict(t), loaded.encoder_state_dict(t)
        assert all(torch.equal(got[n], expected[n].to(torch.float16)) for n in expected)
    again = tmp_path / "again.safetensors"
    reproduce_export(recipe_path(out), again)
    assert again.read_bytes() == out.read_bytes()


def test_plan_and_curve_show_megabytes(zoo, capsys):
    spec, algo, plan = plan_for(zoo, "ta")
    one_model = sum(torch.zeros(zoo.param_shapes[n]).numel() for n in zoo.param_names) * 2
    doc = run_json(capsys, "plan", "--zoo", str(zoo.root), "--algorithm", "ta", "--dtype", "bf16",
                   "--budget-mb", str(1.5 * one_model / 1e6), "--json")
    assert doc["model_bytes"] == one_model and doc["dtype"] == "bf16"
    # standard storage: one model's bytes per model unit; the largest achievable size <= 1.5
    assert doc["budget"]["size"] == max(s for s in plan.achievable_sizes() if s <= 1.5)
    assert doc["budget"]["bytes"] == round(doc["budget"]["size"] * one_model)
    assert [e["step"] for e in doc["events"]] == list(range(len(plan.events)))
    curve = run_json(capsys, "curve", "--zoo", str(zoo.root), "--algorithm", "ta", "--budget-mb",
                     f"{one_model * 1.2 / 1e6},{one_model * 3 / 1e6}", "--dtype", "bf16", "--json")
    for row, units in zip(curve["rows"], (1.2, 3)):
        assert row["size"] == max(s for s in plan.achievable_sizes() if s <= units)
        assert row["bytes"] == round(row["size"] * one_model) and row["megabytes"] == row["bytes"] / 1e6
        assert row["budget_mb"] == pytest.approx(units * one_model / 1e6)
    plain = run_json(capsys, "curve", "--zoo", str(zoo.root), "--algorithm", "ta", "--sizes", "2", "--json")
    assert not {"bytes", "megabytes", "budget_mb"} & set(plain["rows"][0])


@pytest.mark.parametrize("argv", [
    ["export", "--size", "2", "--budget-mb", "1"],
    ["export", "--budget-mb", "-1"],
    ["export", "--budget-mb", "x"],
    ["export", "--size", "2", "--dtype", "fp8"],
    ["curve", "--sizes", "2", "--budget-mb", "1"],
])
def test_bad_byte_budgets_exit_2_with_one_line(zoo, tmp_path, capsys, argv):
    command, *rest = argv
    extra = ["--out", str(tmp_path / "x.safetensors")] if command == "export" else []
    try:
        code = main([command, "--zoo", str(zoo.root), "--algorithm", "ta", *rest, *extra])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "x.safetensors").exists()
