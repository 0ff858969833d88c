"""The memory guard: byte parsing, available memory from /proc and cgroup files, the estimate against
the real stored tensors, and refusal before anything is loaded (library, CLI, studio)."""
import contextlib
import io
import math

import pytest
from safetensors.torch import load_file

from flexmerge_core.errors import InvalidArgumentError, ResourceError
from flexmerge_core.machine import available_memory, parse_bytes
from flexmerge_core.resources import LIMIT_ENV, SAFETY_MARGIN, check_memory, estimate_memory
from flexmerge_core.zoo import open_zoo

from badinputs.zoos import TASKS, write_template


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return write_template(tmp_path_factory.mktemp("resources") / "zoo")


@pytest.mark.parametrize("text, expected", [("1500", 1500), ("512M", 512 << 20), ("2G", 2 << 30),
                                            ("1.5g", int(1.5 * (1 << 30))), ("4GB", 4 << 30), ("3k", 3072)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "nanM", ""])
def test_parse_bytes_refuses_non_sizes(text):
    with pytest.raises(InvalidArgumentError, match=LIMIT_ENV):
        parse_bytes(text)


def test_available_memory_is_the_least_of_meminfo_cgroup_and_limit(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000 kB\nMemFree:         900 kB\nMemAvailable:    1000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("5\n")
    assert available_memory(meminfo, cgroup) == 1000 * 1024
    (cgroup / "memory.max").write_text("2000000\n")
    (cgroup / "memory.current").write_text("1500000\n")
    assert available_memory(meminfo, cgroup) == 500_000
    monkeypatch.setenv(LIMIT_ENV, "1K")
    assert available_memory(meminfo, cgroup) == 1024
    assert available_memory(tmp_path / "absent", tmp_path / "absent") == 1024
    monkeypatch.delenv(LIMIT_ENV)
    assert available_memory(tmp_path / "absent", tmp_path / "absent") is None


def test_available_memory_of_this_machine_is_positive():
    free = available_memory()
    assert free is None or free > 0


def test_estimate_matches_sums_over_the_checkpoint_files(zoo_dir):
    """Reference: the byte sums computed from the loaded pretrained tensors themselves."""
    from flexmerge_core.planning.blocks import build_blocks

    zoo = open_zoo(zoo_dir)
    tensors = load_file(str(zoo_dir / "pretrained.safetensors"))
    numel = sum(t.numel() for t in tensors.values())
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    largest = max(sum(tensors[n].numel() for n in block.params) for block in spec.blocks)
    m = len(TASKS)
    planning = 3 * m * largest * 4
    only_planning = estimate_memory(zoo)
    assert (only_planning.planning, only_planning.deployment) == (planning, 0)
    assert only_planning.needed == int(SAFETY_MARGIN * planning)
    at_two = estimate_memory(zoo, 2.0)
    assert at_two.encoder == numel * 4
    assert at_two.deployment == 2 * numel * 4 + numel * 4
    assert at_two.needed == int(SAFETY_MARGIN * max(planning, 2 * numel * 4 + 2 * numel * 4))
    assert estimate_memory(zoo, 50.0).deployment == (m + 1) * numel * 4           # at most M models stored
    assert estimate_memory(zoo, "all").deployment == (2 * m - 1 + 1) * numel * 4    # a curve: 2M-1 groups/block


def test_estimate_bounds_the_tensors_a_real_deployment_stores(zoo_dir, tmp_path, monkeypatch):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.planning.plan import build_plan

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo = open_zoo(zoo_dir)
    spec = build_blocks(zoo.param_names, zoo.param_shapes)
    algorithm = get_algorithm("ta")
    plan = build_plan(zoo, spec, algorithm)
    for budget in (1.0, 2.0, 3.0):
        deployment = build_deployment(zoo, plan, algorithm, budget, spec=spec)
        stored = sum(t.numel() * t.element_size() for block in deployment.entries for e in block
                     for t in e.tensors.values())
        stored += sum(t.numel() * t.element_size() for t in deployment.pretrained.values())
        assert stored <= estimate_memory(zoo, budget).deployment


def test_check_memory_refuses_with_a_message_naming_zoo_size_and_need(zoo_dir, monkeypatch):
    zoo = open_zoo(zoo_dir)
    monkeypatch.setenv(LIMIT_ENV, "10K")
    with pytest.raises(ResourceError, match=r"deployment at size 2x of zoo 'zoo' \(3 tasks\): needs about "
                                            r"[0-9.]+ MB, 0\.01 MB available") as info:
        check_memory(zoo, 2.0)
    assert "\n" not in str(info.value)
    with pytest.raises(ResourceError, match="planning of zoo 'zoo'"):
        check_memory(zoo)
    monkeypatch.setenv(LIMIT_ENV, "64G")
    assert check_memory(zoo, 2.0).needed > 0
    assert check_memory(zoo, math.nan).deployment == 0   # a bad size is left to the budget check


def test_cli_refuses_before_loading_any_tensor(zoo_dir, tmp_path, monkeypatch):
    from flexmerge_core.cli import main
    from flexmerge_core.zoo import loader

    reads = []
    real_read = loader.CheckpointFile.read
    monkeypatch.setattr(loader.CheckpointFile, "read", lambda self, name: reads.append(name) or real_read(self, name))
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(LIMIT_ENV, "1K")
    for argv in (["plan"], ["curve", "--sizes", "1"], ["export", "--size", "2", "--out", str(tmp_path / "o.safetensors")]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, "--zoo", str(zoo_dir), "--algorithm", "ta"])
        assert code == 2 and err.getvalue().startswith("error: not enough memory") and err.getvalue().count("\n") == 1
    # opening the zoo reads only the held-out labels (checked against the heads), never a weight
    assert set(reads) <= {"labels"} and not (tmp_path / "cache").exists() and not (tmp_path / "o.safetensors").exists()


def test_studio_refuses_plans_curves_and_exports_that_do_not_fit(zoo_dir, tmp_path, monkeypatch):
    from flexmerge_core.resources import estimate_memory as estimate
    from flexmerge_core.studio import PlanChoice, Studio

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo = open_zoo(zoo_dir)
    monkeypatch.setenv(LIMIT_ENV, "1K")
    with pytest.raises(ResourceError, match="planning"):
        Studio(zoo).explorer(PlanChoice())
    assert not (tmp_path / "cache").exists()
    # enough to plan and to build one model, not to hold all three (a curve starts from all M)
    monkeypatch.setenv(LIMIT_ENV, str(estimate(zoo, 1.0).needed))
    explorer = Studio(zoo).explorer(PlanChoice())
    with pytest.raises(ResourceError, match="curve over all sizes"):
        explorer.curve([1.0])
    with pytest.raises(ResourceError, match="size 3x"):
        explorer.export_file(3.0)
    assert explorer.export_file(1.0).exists()
