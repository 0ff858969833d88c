"""Sizes that need no plan (1x / the smallest size, and Mx) give exactly what the plan gives, and the
streamed export writes exactly the bytes of the in-memory deployment."""
import numpy as np
import pytest
import torch

from deploy_zoos import evaluable_zoo, plan_for
from flexmerge_core.algorithms import ALGORITHM_NAMES
from flexmerge_core.deployment.deploy import build_deployment
from flexmerge_core.deployment.export import export, load_deployment, recipe_path, save_deployment
from flexmerge_core.evaluation.curve import compute_curve
from flexmerge_core.pipeline import Pipeline, PlanSettings
from flexmerge_core.planning.lazy_plan import LazyPlan
from flexmerge_core.planning.plan import plan_from_similarities

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


def _random_plan(num_tasks, storage, order, seed):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((3, num_tasks, 5))
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    sims = (vectors / norms) @ (vectors / norms).transpose(0, 2, 1)
    numels = [7, 3, 11]
    return numels, plan_from_similarities(sims, numels, storage, "min", order, seed, blocks=["a", "b", "c"])


@pytest.mark.parametrize("storage", ["standard", "mask"])
@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5])
@pytest.mark.parametrize("order", ["greedy", "random", "right-to-left"])
def test_direct_partitions_are_the_plans_partitions_without_building_it(storage, num_tasks, order):
    numels, plan = _random_plan(num_tasks, storage, order, seed=num_tasks)
    built = []
    lazy = LazyPlan(num_tasks, ["a", "b", "c"], numels, storage, "min", order, num_tasks,
                    lambda: built.append(1) or plan)
    assert lazy.min_size == plan.min_size and lazy.max_size == plan.max_size
    for budget in (0.25, plan.min_size, plan.max_size, plan.max_size + 0.5, 1e9):
        assert lazy.partition_at(budget) == plan.partition_at(budget), budget
    assert not built
    if plan.min_size < plan.max_size:   # anything in between needs the plan, built once
        middle = (plan.min_size + plan.max_size) / 2
        assert lazy.partition_at(middle) == plan.partition_at(middle)
        assert lazy.events == plan.events and built == [1]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    zoo, *_ = evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny", num_tasks=4, head_input="normalized",
                            unmerged=["^proj$"])
    return zoo


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_streamed_export_is_byte_identical_to_the_built_deployment(zoo, tmp_path, algorithm):
    spec, algo, plan = plan_for(zoo, algorithm)
    middle = (plan.min_size + plan.max_size) / 2
    for budget, dtype in ((1.0, None), (middle, None), (4.0, None), (middle, "fp16")):
        deployment = build_deployment(zoo, plan, algo, budget, spec=spec)
        if dtype is not None:
            deployment = deployment.with_dtype(torch.float16, dtype)
        expected = save_deployment(deployment, tmp_path / f"expected-{budget}.safetensors")
        out = tmp_path / f"streamed-{budget}-{dtype}.safetensors"
        recipe = export(zoo, spec, plan, algo, budget, out, dtype=dtype)
        assert out.read_bytes() == expected.read_bytes(), (budget, dtype)
        assert {k: recipe[k] for k in deployment.recipe} == deployment.recipe


@pytest.mark.parametrize("algorithm", ["ta", "emr"])
def test_pipeline_exports_and_curves_at_1x_and_mx_skip_the_plan(zoo, tmp_path, algorithm):
    spec, algo, plan = plan_for(zoo, algorithm)
    pipeline = Pipeline(zoo, PlanSettings(algorithm=algorithm))
    for budget in (0.5, 1.0, 4.0):
        fast = tmp_path / f"fast-{budget}.safetensors"
        slow = tmp_path / f"slow-{budget}.safetensors"
        pipeline.export(budget, fast)
        export(zoo, spec, plan, algo, budget, slow)
        assert fast.read_bytes() == slow.read_bytes()
        assert recipe_path(fast).read_text() == recipe_path(slow).read_text()
    sizes = [1.0, pipeline.plan.min_size, 4.0]
    rows = pipeline.curve(sizes, use_cache=False).rows
    assert not pipeline.plan.built
    assert rows == compute_curve(zoo, plan, algo, sizes, spec=spec, use_cache=False).rows


def test_a_pipeline_still_refuses_bad_plan_options_before_any_plan_is_built(zoo):
    from flexmerge_core.errors import InvalidArgumentError

    for settings in (PlanSettings(linkage="median"), PlanSettings(order="sideways"), PlanSettings(seed=-1)):
        with pytest.raises(InvalidArgumentError):
            Pipeline(zoo, settings)


def _rewritten(zoo, folder, edit):
    """The zoo (no heads) written anew with each tensor replaced by edit(role, name, tensor), role = a task
    id or 'pretrained'."""
    from flexmerge_core.zoo import open_zoo, write_zoo

    def state(role, read):
        return {n: edit(role, n, read(n)) for n in zoo.state_names}

    tasks = [{"name": name, "state_dict": state(t, lambda n, t=t: zoo.task_tensor(t, n)), "head": None}
             for t, name in enumerate(zoo.task_names)]
    return open_zoo(write_zoo(folder, zoo.manifest.to_json()["architecture"], state("pretrained", zoo.pretrained_tensor),
                              tasks, unmerged=["^proj$"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algorithm", ["avg", "ta"])
def test_tensorwise_export_of_a_half_precision_zoo_is_byte_identical(zoo, tmp_path, dtype, algorithm):
    """Merged one tensor at a time (pretrained read in half precision, added back in float32, cast back)."""
    from flexmerge_core.deployment.tensorwise import merges_tensorwise

    half = _rewritten(zoo, tmp_path / "half", lambda role, name, t: t.to(dtype))
    spec, algo, plan = plan_for(half, algorithm)
    assert merges_tensorwise(algo)
    for budget in (1.0, (plan.min_size + plan.max_size) / 2):
        expected = save_deployment(build_deployment(half, plan, algo, budget, spec=spec), tmp_path / "expected.safetensors")
        export(half, spec, plan, algo, budget, tmp_path / "streamed.safetensors")
        assert (tmp_path / "streamed.safetensors").read_bytes() == expected.read_bytes(), budget


def test_tensorwise_merges_fill_the_callers_buffer_and_leave_the_group_cache_alone(zoo, tmp_path):
    from flexmerge_core.cache import cache_root
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.deployment.tensorwise import TensorwiseMerge, merges_tensorwise
    from flexmerge_core.errors import InvalidArgumentError

    assert [n for n in ALGORITHM_NAMES if merges_tensorwise(get_algorithm(n))] == ["avg", "ta"]
    name, members = zoo.param_names[2], (0, 2, 3)
    buffer = torch.full((3, *zoo.param_shapes[name]), 7.0)
    vectors = zoo.task_vectors([name], tasks=members, into={name: buffer})[name]
    assert vectors.data_ptr() == buffer.data_ptr()
    assert torch.equal(vectors, torch.stack([zoo.task_tensor(t, name) - zoo.pretrained_tensor(name) for t in members]))
    with pytest.raises(InvalidArgumentError, match=f"buffer of '{name}'"):
        zoo.task_vectors([name], tasks=members, into={name: buffer[:2]})
    merge = TensorwiseMerge(zoo, get_algorithm("ta", lam=0.7))
    expected = zoo.pretrained_tensor(name) + 0.7 * torch.stack([zoo.task_tensor(t, name) for t in members]
                                                                ).sub(zoo.pretrained_tensor(name)).mean(0)
    torch.testing.assert_close(merge.stored(name, members), expected, rtol=0, atol=1e-6)
    spec, algo, plan = plan_for(zoo, "avg")
    export(zoo, spec, plan, algo, 1.0, tmp_path / "avg.safetensors")
    assert not (cache_root() / "groups").exists()
    with pytest.raises(ValueError, match="tensor by tensor"):
        TensorwiseMerge(zoo, get_algorithm("ties"))


@pytest.mark.parametrize("algorithm", ["avg", "emr"])
def test_cli_exports_and_curves_at_sizes_that_need_no_plan_run_no_similarity_pass(zoo, tmp_path, private_cache,
                                                                                   capsys, algorithm):
    from flexmerge_core.cli import main

    smallest = Pipeline(zoo, PlanSettings(algorithm=algorithm)).plan.min_size
    for size in ("1", f"{smallest!r}", "4"):
        assert main(["export", "--zoo", str(zoo.root), "--algorithm", algorithm, "--size", size,
                     "--out", str(tmp_path / f"{size}.safetensors")]) == 0
    assert main(["curve", "--zoo", str(zoo.root), "--algorithm", algorithm, "--sizes", f"1,{smallest!r},4",
                 "--json"]) == 0
    assert not (private_cache / "plans").exists()
    assert "similarity" not in capsys.readouterr().err
    assert main(["plan", "--zoo", str(zoo.root), "--algorithm", algorithm, "--json"]) == 0
    assert (private_cache / "plans").exists()   # where the plan would be


def _poked(name: str, roles, value: float):
    """An edit for _rewritten: entry 3 of tensor `name` of each of `roles` (task ids, 'pretrained') set to `value`."""
    def edit(role, own, t):
        if own == name and role in roles:
            t = t.clone()
            t.view(-1)[3] = value
        return t
    return edit


@pytest.mark.parametrize("role, value", [(2, float("nan")), (0, float("inf")), (3, -float("inf")),
                                         ("pretrained", float("nan"))])
def test_a_tensorwise_export_names_a_non_finite_value_as_every_other_read_does(zoo, tmp_path, role, value):
    from flexmerge_core.errors import ZooError

    name = zoo.param_names[4]
    bad = _rewritten(zoo, tmp_path / "bad", _poked(name, [role], value))
    for algorithm in ("avg", "ta"):
        pipeline = Pipeline(bad, PlanSettings(algorithm=algorithm))   # a plan would read every value first
        with pytest.raises(ZooError) as slow:
            build_deployment(bad, pipeline.plan, pipeline.algorithm, 1.0, spec=pipeline.spec)
        with pytest.raises(ZooError) as fast:
            pipeline.export(1.0, tmp_path / f"{algorithm}.safetensors")
        assert str(fast.value) == str(slow.value)
        assert f"'{name}'" in str(fast.value) and ("pretrained" if role == "pretrained" else f"task{role}") in str(fast.value)


def test_a_tensorwise_export_of_finite_values_that_overflow_writes_them_as_before(zoo, tmp_path):
    name = zoo.param_names[4]
    big = _rewritten(zoo, tmp_path / "big", _poked(name, range(len(zoo.task_names)), 3e38))
    pipeline = Pipeline(big, PlanSettings(algorithm="ta"))   # lam 1.5 x a mean of ~3e38 overflows float32
    expected = save_deployment(build_deployment(big, pipeline.plan, pipeline.algorithm, 1.0, spec=pipeline.spec),
                               tmp_path / "expected.safetensors")
    pipeline.export(1.0, tmp_path / "streamed.safetensors")
    assert torch.isinf(load_deployment(expected).task_state_dict(0)[name]).any()
    assert (tmp_path / "streamed.safetensors").read_bytes() == expected.read_bytes()
