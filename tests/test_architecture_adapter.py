"""A model family the engine has never heard of, added by one adapter written in this file alone.

A tiny CNN (two convolutions, mean pool, linear projection; its forward returns (features, pooled)
so the adapter's `forward` has to pick the features) goes through zoo -> plan -> curve -> export
without any engine change. The expected numbers come from a plain forward of fresh modules here.
Entry-point discovery is tested with a real dist-info folder on sys.path.
"""
import json
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from flexmerge_core.architectures import registry
from flexmerge_core.architectures.base import ArchitectureAdapter, StageSplit
from flexmerge_core.architectures.registry import architecture_kinds, get_architecture, register_architecture
from flexmerge_core.cli import main
from flexmerge_core.errors import ZooError
from flexmerge_core.evaluation.curve import compute_curve
from flexmerge_core.evaluation.task_eval import Evaluators
from flexmerge_core.zoo import open_zoo, write_zoo

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")

KIND = "test_tiny_cnn"
CONFIG = {"channels": 3, "width": 6, "features": 5}
IMAGE = 6
CLASSES = 3
TASKS = 3


class TinyCNN(torch.nn.Module):
    def __init__(self, channels: int, width: int, features: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.proj = torch.nn.Linear(width, features)

    def forward(self, x):
        pooled = F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3))
        return self.proj(pooled), pooled


class TinyCNNAdapter(ArchitectureAdapter):
    """Three stages (conv1, conv2 + pool, proj); proj.bias is per task, never merged."""

    kind = KIND

    def check_config(self, config):
        unknown = sorted(set(config) - set(CONFIG))
        if unknown:
            raise ZooError(f"zoo.json: architecture '{KIND}' has unknown config key '{unknown[0]}'")
        return config

    def build(self, config):
        return TinyCNN(**config)

    def unmerged(self, config):
        return (r"^proj\.bias$",)

    def feature_dim(self, config, shapes):
        return shapes["proj.weight"][0]

    def stages(self, module):
        steps = [lambda x: F.relu(module.conv1(x)),
                 lambda x: F.relu(module.conv2(x)).mean(dim=(2, 3)),
                 module.proj]
        return StageSplit(num_stages=3, stage_of=lambda name: ("conv1", "conv2", "proj").index(name.split(".")[0]),
                          run=lambda x, stage: steps[stage](x))

    def forward(self, module, inputs):
        return module(inputs)[0]


register_architecture(TinyCNNAdapter())


def plain_logits(state, head, images):
    """The textbook forward: a fresh TinyCNN with `state` loaded strictly, then the linear head."""
    model = TinyCNN(**CONFIG).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        features, _ = model(images)
    return features @ head["weight"].t() + head["bias"]


def accuracy(state, head, images, labels):
    return int((plain_logits(state, head, images).argmax(-1) == labels).sum()) / len(labels)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """(zoo, {task: state}, {task: head}); labels are the fine-tuned predictions, every fourth one random."""
    torch.manual_seed(0)
    pretrained = TinyCNN(**CONFIG).state_dict()
    tasks, states, heads = [], {}, {}
    for t in range(TASKS):
        name = f"t{t}"
        state = {k: v + 0.3 * v.std().clamp_min(0.05) * torch.randn_like(v) for k, v in pretrained.items()}
        head = {"weight": torch.randn(CLASSES, CONFIG["features"]), "bias": 0.1 * torch.randn(CLASSES)}
        images = torch.randn(48, CONFIG["channels"], IMAGE, IMAGE)
        labels = plain_logits(state, head, images).argmax(-1)
        labels[::4] = torch.randint(0, CLASSES, (len(labels[::4]),))
        states[name], heads[name] = state, head
        tasks.append({"name": name, "state_dict": state, "head": head, "data": (images, labels)})
    root = write_zoo(tmp_path_factory.mktemp("zoo") / "cnn", {"kind": KIND, "config": CONFIG}, pretrained, tasks)
    return open_zoo(root), states, heads


def test_the_zoo_asks_the_adapter_for_layout_unmerged_parameters_and_feature_width(bundle, tmp_path):
    zoo, states, heads = bundle
    assert KIND in architecture_kinds() and zoo.architecture is get_architecture(KIND)
    assert zoo.param_names == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "proj.weight"]
    assert zoo.unmerged_names == ["proj.bias"]
    assert Evaluators(zoo, device="cpu").runner.num_stages == 3
    pretrained = TinyCNN(**CONFIG).state_dict()
    narrow = {"weight": torch.randn(CLASSES, CONFIG["features"] + 1), "bias": torch.zeros(CLASSES)}
    two = [{"name": name, "state_dict": pretrained} for name in "ab"]
    with pytest.raises(ZooError, match="takes 6 features, the encoder outputs 5"):
        write_zoo(tmp_path / "bad", {"kind": KIND, "config": CONFIG}, pretrained, [{**two[0], "head": narrow}, two[1]])
    with pytest.raises(ZooError, match="unknown config key 'depth'"):
        write_zoo(tmp_path / "bad", {"kind": KIND, "config": {**CONFIG, "depth": 2}}, pretrained, two)


def test_plan_curve_and_export_through_the_cli_match_a_plain_forward(bundle, tmp_path, capsys):
    zoo, states, heads = bundle
    assert main(["plan", "--zoo", str(zoo.root), "--algorithm", "ta", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["num_tasks"] == TASKS and plan["min_size"] == 1.0 and plan["events"]
    assert main(["curve", "--zoo", str(zoo.root), "--algorithm", "ta", "--sizes", "all", "--json"]) == 0
    curve = json.loads(capsys.readouterr().out)
    finetuned = {name: accuracy(states[name], heads[name], *zoo.heldout(t)) for t, name in enumerate(zoo.task_names)}
    assert curve["finetuned"] == finetuned
    top, bottom = curve["rows"][-1], curve["rows"][0]
    assert top["size"] == TASKS and top["accuracy"] == finetuned
    assert bottom["size"] == 1.0

    for t, name in enumerate(zoo.task_names):
        out = tmp_path / f"{name}.safetensors"
        assert main(["export", "--zoo", str(zoo.root), "--algorithm", "ta", "--size", "1", "--out", str(out),
                     "--task", name]) == 0
        exported = load_file(str(out))
        assert torch.equal(exported["proj.bias"], states[name]["proj.bias"])   # unmerged: the task's own
        assert accuracy(exported, heads[name], *zoo.heldout(t)) == bottom["accuracy"][name]
        assert any(not torch.equal(exported[n], states[name][n]) for n in zoo.param_names)   # 1x is merged


def test_staged_and_unstaged_evaluation_agree(bundle, monkeypatch):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan

    zoo, *_ = bundle
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    algorithm = get_algorithm("ties")
    plan = build_plan(zoo, spec, algorithm)
    staged = compute_curve(zoo, plan, algorithm, "all", spec=spec, use_cache=False, activation_budget=1 << 30)
    monkeypatch.setattr(TinyCNNAdapter, "stages", lambda self, module: None)
    whole = compute_curve(zoo, plan, algorithm, "all", spec=spec, use_cache=False)
    assert staged.rows == whole.rows and staged.finetuned == whole.finetuned
    evaluated = whole.stats["evaluated"]
    assert whole.stats["stages_run"] == evaluated == staged.stats["evaluated"]   # one stage per evaluation
    assert evaluated < staged.stats["stages_run"] < 3 * evaluated                # resumed from kept stage inputs


def _plugin(root, module_source: str):
    """A dist-info folder declaring `tiny_plugin:Adapter` in the group, and the module itself."""
    (root / "tiny_plugin.py").write_text(textwrap.dedent(module_source))
    info = root / "tiny_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\ntiny = tiny_plugin:Adapter\n")


@pytest.fixture
def fresh_registry(monkeypatch):
    """Entry points not yet read, and what a test registers dropped afterwards."""
    monkeypatch.setattr(registry._REGISTRY, "items", dict(registry._REGISTRY.items))
    monkeypatch.setattr(registry._REGISTRY, "entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "tiny_plugin", raising=False)


def test_an_installed_entry_point_is_discovered_on_the_first_unknown_kind(tmp_path, monkeypatch, fresh_registry):
    _plugin(tmp_path, """
        import torch
        from flexmerge_core.architectures.base import ArchitectureAdapter

        class Adapter(ArchitectureAdapter):
            kind = "tiny_plugin_linear"

            def build(self, config):
                return torch.nn.Linear(config["inputs"], config["outputs"])
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = get_architecture("tiny_plugin_linear")
    assert type(adapter).__module__ == "tiny_plugin" and "tiny_plugin_linear" in architecture_kinds()
    assert registry.state_layout("tiny_plugin_linear", {"inputs": 4, "outputs": 2}) == {
        "weight": ((2, 4), torch.float32), "bias": ((2,), torch.float32)}
    with pytest.raises(ZooError, match=r"unknown architecture kind 'nope' \(known: .*tiny_plugin_linear"):
        get_architecture("nope")


def test_an_entry_point_that_fails_to_load_is_named(tmp_path, monkeypatch, fresh_registry):
    _plugin(tmp_path, "raise ImportError('needs a missing library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_architecture(KIND) is not None   # a known kind never reads entry points
    with pytest.raises(ZooError, match=r"entry point 'tiny' \(tiny_plugin:Adapter\) failed to load: "
                                       r"ImportError: needs a missing library"):
        get_architecture("anything_else")
