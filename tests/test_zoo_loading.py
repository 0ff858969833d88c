"""Zoo folders: writing, opening, validation errors naming the culprit, lazy and safe loading."""
import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.pipeline import resolve_zoo
from flexmerge_core.zoo import open_zoo, write_zoo
from flexmerge_core.zoo import checkpoint as checkpoint_module

CONFIG = dict(image_size=8, patch_size=4, width=8, layers=2, heads=2, mlp_ratio=2, output_dim=4)
ARCH = {"kind": "open_clip_vit", "config": CONFIG}


def _pretrained_state(seed=0):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    return {k: v.clone() for k, v in VisionTransformer(**CONFIG).state_dict().items()}


def _task(name, pretrained, seed, with_extras=True):
    g = torch.Generator().manual_seed(seed)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in pretrained.items()}
    task = {"name": name, "state_dict": state}
    if with_extras:
        task.update(head={"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)},
                    data=(torch.randn(5, 3, 8, 8, generator=g), torch.arange(5) % 3),
                    classes=["a", "b", "c"], finetuned_accuracy=0.5 + seed / 10)
    return task


@pytest.fixture
def pretrained():
    return _pretrained_state()


@pytest.fixture
def tasks(pretrained):
    return [_task(f"task{i}", pretrained, seed=i + 1) for i in range(3)]


@pytest.fixture
def zoo_dir(tmp_path, pretrained, tasks):
    return write_zoo(tmp_path / "zoo", ARCH, pretrained, tasks, recipe={"report": {"gap": 0.2}})


def _edit_manifest(root, edit):
    path = root / "zoo.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _rewrite_safetensors(path, edit):
    from safetensors.torch import load_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def _convert_to_torch(root):
    """Re-save every checkpoint of a zoo as a torch .pt state dict and point the manifest at them."""
    from safetensors.torch import load_file

    doc = json.loads((root / "zoo.json").read_text())
    for holder, key in [(doc, "pretrained")] + [(t, "checkpoint") for t in doc["tasks"]]:
        source = root / holder[key]
        target = source.with_suffix(".pt")
        torch.save(load_file(str(source)), target)
        source.unlink()
        holder[key] = str(target.relative_to(root))
    (root / "zoo.json").write_text(json.dumps(doc))


# -- round trip -------------------------------------------------------------------------------------

def test_round_trip_exposes_manifest_and_tensors(zoo_dir, pretrained, tasks):
    zoo = open_zoo(zoo_dir)
    assert zoo.task_names == ["task0", "task1", "task2"]
    assert zoo.param_names == list(pretrained)  # state_dict order (proj before conv1)
    assert zoo.param_shapes == {k: tuple(v.shape) for k, v in pretrained.items()}
    assert zoo.param_dtypes["proj"] == torch.float32
    assert zoo.finetuned_accuracy == pytest.approx({"task0": 0.6, "task1": 0.7, "task2": 0.8})
    assert zoo.recipe == {"report": {"gap": 0.2}}
    assert zoo.name == "zoo" and zoo.head_input == "raw"
    assert zoo.classes[1] == ["a", "b", "c"]
    assert torch.equal(zoo.pretrained_tensor("proj"), pretrained["proj"])
    assert torch.equal(zoo.task_tensor(2, "ln_pre.bias"), tasks[2]["state_dict"]["ln_pre.bias"])
    assert torch.equal(zoo.head(1)["weight"], tasks[1]["head"]["weight"])
    images, labels = zoo.heldout(0)
    assert torch.equal(images, tasks[0]["data"][0]) and labels.dtype == torch.int64


def test_task_vectors_equal_difference_of_state_dicts(zoo_dir, pretrained, tasks):
    zoo = open_zoo(zoo_dir)
    names = ["conv1.weight", "transformer.resblocks.1.mlp.c_fc.weight"]
    vectors = zoo.task_vectors(names, tasks=[2, 0])
    for name in names:
        expected = torch.stack([tasks[i]["state_dict"][name] - pretrained[name] for i in (2, 0)])
        assert vectors[name].dtype == torch.float32
        assert vectors[name].shape == (2, *pretrained[name].shape)
        torch.testing.assert_close(vectors[name], expected, rtol=0, atol=1e-7)
    assert zoo.task_vectors(["proj"])["proj"].shape[0] == 3


def test_torch_state_dicts_load_like_safetensors(zoo_dir, monkeypatch):
    reference = open_zoo(zoo_dir).task_vectors(["proj", "class_embedding"])
    _convert_to_torch(zoo_dir)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", spy)
    zoo = open_zoo(zoo_dir)
    assert zoo.root / zoo.manifest.pretrained == zoo_dir / "pretrained.pt"
    loaded = zoo.task_vectors(["proj", "class_embedding"])
    for name, value in reference.items():
        assert torch.equal(loaded[name], value)
    assert calls and all(c.get("weights_only") is True and c.get("mmap") is True for c in calls)


def test_build_encoder_carries_pretrained_weights(zoo_dir, pretrained):
    from open_clip.transformer import VisionTransformer

    reference = VisionTransformer(**CONFIG)
    reference.load_state_dict(pretrained)
    reference.eval()
    encoder = open_zoo(zoo_dir).build_encoder()
    assert not encoder.training
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(encoder(x), reference(x))


def test_subset_renumbers_tasks_and_shares_files(zoo_dir):
    zoo = open_zoo(zoo_dir)
    sub = zoo.subset(["task2", "task0"])
    assert sub.task_names == ["task0", "task2"]
    assert torch.equal(sub.task_vectors(["proj"])["proj"], zoo.task_vectors(["proj"], tasks=[0, 2])["proj"])
    assert sub.finetuned_accuracy == pytest.approx({"task0": 0.6, "task2": 0.8})
    assert sub.fingerprint != zoo.fingerprint
    with pytest.raises(InvalidArgumentError, match="nope"):
        zoo.subset(["task0", "nope"])


def test_fingerprint_is_stable_and_changes_with_content(zoo_dir, pretrained):
    first = open_zoo(zoo_dir).fingerprint
    assert open_zoo(zoo_dir).fingerprint == first
    _rewrite_safetensors(zoo_dir / "tasks" / "task1.safetensors",
                         lambda s: s.__setitem__("proj", s["proj"] + 1.0))
    second = open_zoo(zoo_dir).fingerprint
    assert second != first
    _edit_manifest(zoo_dir, lambda d: d["tasks"][0].__setitem__("finetuned_accuracy", 0.1))
    assert open_zoo(zoo_dir).fingerprint not in (first, second)


def test_unmerged_patterns_leave_parameters_out_of_merging(tmp_path, pretrained, tasks):
    root = write_zoo(tmp_path / "z", ARCH, pretrained, tasks, unmerged=[r"^ln_(pre|post)\."])
    zoo = open_zoo(root)
    assert zoo.unmerged_names == ["ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias"]
    assert zoo.param_names == [n for n in pretrained if not n.startswith(("ln_pre.", "ln_post."))]
    assert torch.equal(zoo.task_tensor(1, "ln_pre.weight"), tasks[1]["state_dict"]["ln_pre.weight"])
    with pytest.raises(InvalidArgumentError, match="ln_post.bias"):
        zoo.task_vectors(["ln_post.bias"])


def test_open_demo_builds_it_lazily(zoo_dir, monkeypatch):
    calls = []

    def ensure_demo_zoo(progress=None):
        calls.append(progress)
        return zoo_dir

    monkeypatch.setitem(sys.modules, "flexmerge_core.demo.vision",
                        types.SimpleNamespace(ensure_demo_zoo=ensure_demo_zoo))
    assert resolve_zoo("demo").root == zoo_dir.resolve()
    assert calls == [None]


# -- laziness and safety -----------------------------------------------------------------------------

def test_opening_reads_no_model_tensor_and_one_read_reads_one(zoo_dir, monkeypatch):
    """Opening reads only the held-out labels ([N] integers, checked against the heads), never a weight."""
    reads = []

    class CountingHandle:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, attr):
            return getattr(self._inner, attr)

        def get_tensor(self, name):
            reads.append(name)
            return self._inner.get_tensor(name)

    real_safe_open = checkpoint_module.safe_open
    monkeypatch.setattr(checkpoint_module, "safe_open",
                        lambda *a, **k: CountingHandle(real_safe_open(*a, **k)))
    zoo = open_zoo(zoo_dir)
    labels = [t for t in zoo.manifest.tasks if t.data is not None and (t.head or t.classes) is not None]
    assert reads == ["labels"] * len(labels) and zoo.tensors_read == len(labels)
    reads.clear()
    zoo.task_tensor(1, "transformer.resblocks.0.attn.in_proj_weight")
    assert reads == ["transformer.resblocks.0.attn.in_proj_weight"] and zoo.tensors_read == len(labels) + 1


def test_malicious_pickle_is_refused_without_running(zoo_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"proj": Exploit()}, zoo_dir / "tasks" / "evil.pt")
    _edit_manifest(zoo_dir, lambda d: d["tasks"][1].__setitem__("checkpoint", "tasks/evil.pt"))
    with pytest.raises(ZooError, match=r"evil\.pt.*task 'task1'"):
        open_zoo(zoo_dir)
    assert not marker.exists()


def test_legacy_non_mmap_torch_file_is_refused(zoo_dir):
    torch.save(_pretrained_state(), zoo_dir / "old.pt", _use_new_zipfile_serialization=False)
    _edit_manifest(zoo_dir, lambda d: d["tasks"][0].__setitem__("checkpoint", "old.pt"))
    with pytest.raises(ZooError, match=r"old\.pt.*task 'task0'"):
        open_zoo(zoo_dir)


# -- validation errors name the culprit ---------------------------------------------------------------

@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d.__setitem__("colour", "red"), "unknown key.*colour"),
    (lambda d: d["tasks"][0].__setitem__("finetuned_acc", 0.3), r"tasks\[0\].*unknown key.*finetuned_acc"),
    (lambda d: d.__setitem__("format", "other/2"), "unsupported format"),
    (lambda d: d["tasks"][2].__setitem__("name", "task0"), "duplicate task name 'task0'"),
    (lambda d: d["tasks"][1].__setitem__("name", "a/b"), "task name 'a/b'"),
    (lambda d: d["tasks"][1].__setitem__("name", "x..y"), r"task name 'x\.\.y'"),
    (lambda d: d.__setitem__("tasks", d["tasks"][:1]), "at least 2 tasks, found 1"),
    (lambda d: d["tasks"][1].__setitem__("checkpoint", "../outside.safetensors"), "inside the zoo folder"),
    (lambda d: d["tasks"][1].__setitem__("checkpoint", "tasks/gone.safetensors"),
     r"gone\.safetensors: file of task 'task1' not found"),
    (lambda d: d.__setitem__("head_input", "softmax"), "head_input"),
    (lambda d: d["tasks"][0].__setitem__("finetuned_accuracy", 1.5), "task 'task0'.*finetuned_accuracy"),
    (lambda d: d.__setitem__("unmerged", ["^nothing_matches$"]), "unmerged pattern '\\^nothing_matches\\$'"),
    (lambda d: d.__setitem__("unmerged", ["(unclosed"]), "not a valid regex"),
    (lambda d: d["architecture"]["config"].__setitem__("layers", 3), r"pretrained.*lacks tensor 'transformer\.resblocks\.2"),
    (lambda d: d["architecture"]["config"].__setitem__("width", 16), "shape"),
    (lambda d: d["architecture"].__setitem__("kind", "resnet"), "unknown architecture kind 'resnet'"),
    (lambda d: d["architecture"]["config"].__setitem__("depth", 3), "cannot be built"),
    (lambda d: d["tasks"][2].__setitem__("classes", ["a", "b"]), r"heads/task2\.safetensors.*3 outputs.*2 classes"),
])
def test_manifest_errors(zoo_dir, edit, pattern):
    _edit_manifest(zoo_dir, edit)
    with pytest.raises(ZooError, match=pattern):
        open_zoo(zoo_dir)


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("ln_post.bias"), r"task1\.safetensors: task 'task1' lacks tensor 'ln_post\.bias'"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(2)), r"task1\.safetensors: task 'task1' has tensor 'extra\.weight'"),
    (lambda s: s.__setitem__("proj", torch.zeros(8, 5)), r"task1\.safetensors: tensor 'proj' of task 'task1' has shape \[8, 5\]"),
    (lambda s: s.__setitem__("proj", s["proj"].half()), r"task1\.safetensors: tensor 'proj' of task 'task1' has dtype torch\.float16"),
])
def test_task_checkpoint_mismatch_names_file_task_and_tensor(zoo_dir, edit, pattern):
    _rewrite_safetensors(zoo_dir / "tasks" / "task1.safetensors", edit)
    with pytest.raises(ZooError, match=pattern):
        open_zoo(zoo_dir)


def test_non_finite_values_are_reported_when_read(zoo_dir):
    def poison(state):
        state["ln_pre.weight"][3] = float("nan")

    _rewrite_safetensors(zoo_dir / "tasks" / "task2.safetensors", poison)
    zoo = open_zoo(zoo_dir)  # headers are fine: values are only checked when read
    zoo.task_vectors(["proj"])
    for _ in range(2):   # a bad tensor is never remembered as checked
        with pytest.raises(ZooError, match=r"task2\.safetensors: non-finite .* tensor 'ln_pre\.weight' of task 'task2'"):
            zoo.task_vectors(["ln_pre.weight"])


def test_each_tensor_is_checked_for_non_finite_values_once(zoo_dir, monkeypatch):
    import flexmerge_core.zoo.checkpoint as checkpoint
    checks = []
    real = checkpoint.torch.isfinite
    monkeypatch.setattr(checkpoint.torch, "isfinite", lambda t: checks.append(1) or real(t))
    zoo = open_zoo(zoo_dir)
    zoo.task_vectors(["proj"])
    first = len(checks)
    zoo.task_vectors(["proj"])
    assert first > 0 and len(checks) == first


def test_bad_head_and_data_files_are_named(zoo_dir):
    _rewrite_safetensors(zoo_dir / "heads" / "task0.safetensors", lambda s: s.pop("bias"))
    with pytest.raises(ZooError, match=r"heads/task0\.safetensors: head of task 'task0'.*weight.*bias"):
        open_zoo(zoo_dir)
    _rewrite_safetensors(zoo_dir / "heads" / "task0.safetensors",
                         lambda s: s.update(weight=torch.zeros(3, 4), bias=torch.zeros(3)))
    _rewrite_safetensors(zoo_dir / "data" / "task1.safetensors", lambda s: s.update(labels=s["labels"][:2]))
    with pytest.raises(ZooError, match=r"data/task1\.safetensors: data of task 'task1'.*\[5, 3, 8, 8\] and \[2\]"):
        open_zoo(zoo_dir)


def test_missing_folder_manifest_and_corrupt_file(tmp_path, zoo_dir):
    with pytest.raises(ZooError, match="zoo folder not found"):
        open_zoo(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="manifest not found"):
        open_zoo(tmp_path / "empty")
    (zoo_dir / "pretrained.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ZooError, match=r"pretrained\.safetensors: cannot read safetensors file of pretrained"):
        open_zoo(zoo_dir)


def test_failed_write_leaves_no_zoo(tmp_path, pretrained, tasks):
    tasks[1]["state_dict"] = {k: v for k, v in tasks[1]["state_dict"].items() if k != "proj"}
    with pytest.raises(ZooError, match="task 'task1' lacks tensor 'proj'"):
        write_zoo(tmp_path / "z", ARCH, pretrained, tasks)
    assert list(tmp_path.iterdir()) == []


def test_half_precision_zoo_yields_float32_task_vectors(tmp_path, pretrained, tasks):
    half = {k: v.half() for k, v in pretrained.items()}
    for task in tasks:
        task["state_dict"] = {k: v.half() for k, v in task["state_dict"].items()}
    zoo = open_zoo(write_zoo(tmp_path / "z", ARCH, half, tasks))
    assert zoo.param_dtypes["proj"] == torch.float16
    vectors = zoo.task_vectors(["proj"], tasks=[1])["proj"]
    assert vectors.dtype == torch.float32
    expected = tasks[1]["state_dict"]["proj"].float() - half["proj"].float()
    assert torch.equal(vectors[0], expected)


def test_read_into_copies_what_read_gives_in_any_dtype_and_row_range(tmp_path):
    """pread copies (no mapped pages left resident) of whole tensors and row ranges, converted like .to."""
    g = torch.Generator().manual_seed(5)
    tensors = {"w16": torch.randn(6, 5, generator=g).half(), "wbf": torch.randn(4, 3, 2, generator=g).bfloat16(),
               "w32": torch.randn(7, generator=g), "scalar": torch.tensor(2.5)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    file = checkpoint_module.CheckpointFile(tmp_path / "m.safetensors", "pretrained")
    for name, tensor in tensors.items():
        whole = file.read_into(name, torch.empty(tensor.shape))
        assert whole.dtype == torch.float32 and torch.equal(whole, tensor.float())
        same = file.read_into(name, torch.empty(tensor.shape, dtype=tensor.dtype))
        assert torch.equal(same, tensor) and same.data_ptr() != file.read(name).data_ptr()
    rows = file.read_into("wbf", torch.empty(2, 3, 2), 1, 3)
    assert torch.equal(rows, tensors["wbf"][1:3].float())
    assert torch.equal(file.read_into("w32", torch.empty(3), 4, 7), tensors["w32"][4:7])
    bad = dict(tensors, w32=torch.tensor([1.0, float("nan")]))
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ZooError, match="non-finite.*'w32'"):
        checkpoint_module.CheckpointFile(tmp_path / "bad.safetensors", "pretrained").read_into("w32", torch.empty(2))


def test_inputs_the_adapter_knows_to_fit_build_no_module_at_open(zoo_dir, monkeypatch):
    """The held-out inputs check builds the model on the meta device only when the adapter cannot tell from the
    checkpoint's shapes (the forward's own exception words a misfit)."""
    from flexmerge_core.architectures.open_clip import OpenClipViT
    from flexmerge_core.zoo import loader

    asked, built = [], []
    real_construct = loader.construct
    monkeypatch.setattr(loader, "construct", lambda *a, **k: built.append(a) or real_construct(*a, **k))
    monkeypatch.setattr(OpenClipViT, "input_fits", lambda self, config, shapes, shape: asked.append(shape) or True)
    open_zoo(zoo_dir)
    assert asked == [(3, 8, 8)] and built == []   # one distinct input shape, asked once
    monkeypatch.setattr(OpenClipViT, "input_fits", lambda self, config, shapes, shape: False)
    open_zoo(zoo_dir)
    assert len(built) == 1
