"""Plans built from zoo files: streaming, end-to-end agreement with in-memory references, cache and CLI."""
import json
import weakref

import numpy as np
import pytest
import torch

from flexmerge_core.planning import plan_cache
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.planning.blocks import build_blocks
from flexmerge_core.cli import main
from flexmerge_core.planning.plan import build_plan, plan_from_similarities
from plan_zoos import NARROW_VIT_B_32, block_rows, random_zoo, textbook_cosine
from test_plan import event_tuples, naive_plan


class TaskVectorMeter:
    """Wraps zoo.task_vectors: records each request and the peak of task-vector elements alive at once."""

    def __init__(self, zoo):
        self.requests, self.live, self.peak = [], 0, 0
        self._inner = zoo.task_vectors
        zoo.task_vectors = self

    def _release(self, numel):
        self.live -= numel

    def __call__(self, names, tasks=None, **options):
        out = self._inner(names, tasks, **options)
        self.requests.append(tuple(names))
        for tensor in out.values():
            self.live += tensor.numel()
            weakref.finalize(tensor, self._release, tensor.numel())
        self.peak = max(self.peak, self.live)
        return out


def test_vit_b_32_shaped_plan_streams_one_block_at_a_time(tmp_path):
    zoo, states, pretrained = random_zoo(tmp_path / "zoo", NARROW_VIT_B_32, num_tasks=8)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    assert sum("resblocks.11." in p for p in zoo.param_names) > 0 and len(spec.blocks) > 12 * 4
    meter = TaskVectorMeter(zoo)
    reads_before = zoo.tensors_read
    plan = build_plan(zoo, spec, get_algorithm("ta"))

    # raw task vectors (TA) stream tensor by tensor, in model order: never two blocks alive, each tensor once
    assert [n for request in meter.requests for n in request] == [p for block in spec.blocks for p in block.params]
    assert meter.peak <= max(block.numel for block in spec.blocks) * 8
    assert zoo.tensors_read - reads_before == len(zoo.param_names) * 9        # each tensor read once
    assert len(plan.events) == len(spec.blocks) * 7 and plan.min_size == 1.0
    assert plan.model_params == sum(np.prod(zoo.param_shapes[p]) for p in zoo.param_names)
    sims = np.stack([textbook_cosine(block_rows(states, pretrained, b.params)) for b in spec.blocks])
    expected = plan_from_similarities(sims, [b.numel for b in spec.blocks])
    assert [(e.block, e.group_a, e.group_b) for e in plan.events] == \
        [(e.block, e.group_a, e.group_b) for e in expected.events]
    np.testing.assert_allclose([e.similarity for e in plan.events], [e.similarity for e in expected.events],
                               rtol=0, atol=1e-6)



def test_ties_plan_reads_the_zoo_three_times_with_exact_thresholds(tmp_path):
    zoo, states, pretrained = random_zoo(tmp_path / "zoo", NARROW_VIT_B_32, num_tasks=8)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    meter = TaskVectorMeter(zoo)
    algorithm = get_algorithm("ties", keep=0.2)
    plan = build_plan(zoo, spec, algorithm)

    # the thresholds' two radix passes (the count rides on the first) and the similarity pass, each in model order
    order = [p for block in spec.blocks for p in block.params]
    assert [n for request in meter.requests for n in request] == order * 3
    rows = torch.from_numpy(np.concatenate([block_rows(states, pretrained, b.params) for b in spec.blocks], 1)).float()
    position = rows.shape[1] - int(rows.shape[1] * 0.2)  # the k-th smallest magnitude, 1-indexed
    assert torch.equal(algorithm._thresholds, rows.abs().kthvalue(position, dim=1).values)
    trimmed = torch.where(rows.abs() >= algorithm._thresholds[:, None], rows, 0.0).double().numpy()
    starts = np.cumsum([0] + [b.numel for b in spec.blocks])
    sims = np.stack([textbook_cosine(trimmed[:, a:b]) for a, b in zip(starts[:-1], starts[1:])])
    expected = plan_from_similarities(sims, [b.numel for b in spec.blocks])
    assert [(e.block, e.group_a, e.group_b) for e in plan.events] == \
        [(e.block, e.group_a, e.group_b) for e in expected.events]

def test_uni_plan_from_files_equals_naive_loop_on_merged_vectors(tmp_path):
    zoo, states, pretrained = random_zoo(tmp_path / "zoo", num_tasks=4, seed=2)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "layer")
    rows = [block_rows(states, pretrained, b.params) for b in spec.blocks]

    def uni(b, a, c):       # task arithmetic's merged vector is lambda * mean: same direction as the mean
        u, v = rows[b][list(a)].mean(0), rows[b][list(c)].mean(0)
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8))

    plan = build_plan(zoo, spec, get_algorithm("ta"), linkage="uni")
    expected = naive_plan(len(spec.blocks), 4, uni)
    assert [t[:3] for t in event_tuples(plan)] == [t[:3] for t in expected]
    np.testing.assert_allclose([e.similarity for e in plan.events], [t[3] for t in expected], atol=1e-6)


def test_uni_plan_with_tsv_merges_the_task_vectors_not_their_factors(tmp_path):
    zoo, _, _ = random_zoo(tmp_path / "zoo", num_tasks=4, seed=2)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "layer")
    tsv = get_algorithm("tsv")
    blocks = [zoo.task_vectors(b.params) for b in spec.blocks]

    def merged(b, group):   # tsv's merge on the raw rows (it factorises them itself); a singleton is its row
        rows = {n: t[list(group)] for n, t in blocks[b].items()}
        out = tsv.merge(rows, list(group)).unified if len(group) > 1 else {n: t[0] for n, t in rows.items()}
        return torch.cat([t.reshape(-1) for t in out.values()]).double().numpy()

    def uni(b, a, c):
        u, v = merged(b, a), merged(b, c)
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8))

    plan = build_plan(zoo, spec, tsv, linkage="uni")
    expected = naive_plan(len(spec.blocks), 4, uni)
    assert [t[:3] for t in event_tuples(plan)] == [t[:3] for t in expected]
    np.testing.assert_allclose([e.similarity for e in plan.events], [t[3] for t in expected], atol=1e-5)


def test_mask_algorithm_storage_reaches_the_plan(tmp_path):
    zoo, _, _ = random_zoo(tmp_path / "zoo", num_tasks=4)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "layer")

    class MaskTa:           # the plan only reads `storage` and the similarity hooks of an algorithm
        storage, similarity_needs_prepare, raw_similarity = "mask", False, False

        @staticmethod
        def similarity_block(block):
            return block

    plan = build_plan(zoo, spec, MaskTa())
    assert plan.storage == "mask" and plan.min_size == pytest.approx(2 + 4 / 32)


def test_plan_cache_reuses_and_keys_by_options(tmp_path, monkeypatch):
    zoo, _, _ = random_zoo(tmp_path / "zoo", num_tasks=3)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "layer")
    cache = plan_cache.JsonCache(tmp_path / "plans")
    first = plan_cache.cached_plan(zoo, spec, get_algorithm("ta"), cache=cache)
    monkeypatch.setattr(plan_cache, "build_plan", lambda *a, **k: pytest.fail("cache miss"))
    assert plan_cache.cached_plan(zoo, spec, get_algorithm("ta"), cache=cache) == first
    key, ta = plan_cache.plan_cache_key, get_algorithm("ta")
    keys = [key(zoo, spec, ta, "min", "greedy", 0), key(zoo, spec, ta, "max", "greedy", 0),
            key(zoo, spec, get_algorithm("ties"), "min", "greedy", 0),
            key(zoo, spec, get_algorithm("ta", lam=1.0), "min", "greedy", 0),
            key(zoo, spec, ta, "min", "random", 0), key(zoo, spec, ta, "min", "random", 1),
            key(zoo.subset(["task0", "task2"]), spec, ta, "min", "greedy", 0),
            key(zoo, build_blocks(zoo.param_names, zoo.param_shapes, "component"), ta, "min", "greedy", 0)]
    assert len(set(keys)) == len(keys)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_plan_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, _, _ = random_zoo(tmp_path / "zoo", num_tasks=4)
    code, out, _ = run_cli(capsys, "plan", "--zoo", str(zoo.root), "--algorithm", "ta", "--granularity", "layer",
                           "--linkage", "avg", "--json")
    assert code == 0
    doc = json.loads(out)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "layer")
    expected = build_plan(zoo, spec, get_algorithm("ta"), linkage="avg")
    assert doc["num_tasks"] == 4 and doc["model_params"] == expected.model_params
    assert doc["min_size"] == expected.min_size == 1.0
    assert doc["events"] == [{"step": e.step, "block": e.block, "group_a": list(e.group_a),
                              "group_b": list(e.group_b), "similarity": e.similarity,
                              "size_after": e.size_after} for e in expected.events]
    assert list((tmp_path / "cache" / "plans").glob("*.json"))
    code, out, _ = run_cli(capsys, "plan", "--zoo", str(zoo.root), "--algorithm", "ta", "--tasks", "task0,task3")
    assert code == 0 and "2 tasks" in out and "task0 | task3" in out


@pytest.mark.parametrize("argv, culprit", [
    (["--algorithm", "nope"], "nope"),
    (["--algorithm", "ta", "--seed", "-1"], "seed"),
    (["--algorithm", "ta", "--tasks", "task9"], "task9"),
    (["--algorithm", "ta", "--linkage", "single"], "single"),
])
def test_cli_plan_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, argv, culprit):
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, _, _ = random_zoo(tmp_path / "zoo", num_tasks=2)
    try:
        code, out, err = run_cli(capsys, "plan", "--zoo", str(zoo.root), *argv)
    except SystemExit as exc:
        code, (out, err) = exc.code, capsys.readouterr()
    assert code == 2 and out == "" and culprit in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_plan_missing_zoo_exits_2(tmp_path, capsys):
    code, out, err = run_cli(capsys, "plan", "--zoo", str(tmp_path / "absent"), "--algorithm", "ta")
    assert code == 2 and "absent" in err and err.count("\n") == 1
