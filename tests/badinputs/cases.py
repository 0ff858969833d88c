"""The corpus: each case builds a bad input in a temp folder and names the error it must produce.

A case's `build(env)` returns a Scenario: the library call that must raise, the CLI arguments that
must exit 2 with one `error: ...` line, the substrings that name the culprit, and, for zoo-level
cases, the folder to type into the app's zoo picker. Faults of the machine (full disk, read-only
cache) are simulated by a context manager active around every channel.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional
from unittest import mock

import torch

from flexmerge_core.errors import BudgetError, CacheError, InvalidArgumentError, ResourceError, ZooError

from .zoos import (copy_zoo, data_file, edit_manifest, edit_task, head_file, rewrite_tensors, task_file,
                   write_code_pickle)


@dataclass
class Env:
    """Where a case may write: its own temp folder; the shared valid zoo (read only); its cache."""

    tmp: Path
    template: Path
    cache: Path

    def zoo_copy(self, name: str = "zoo") -> Path:
        return copy_zoo(self.template, self.tmp / name)


@dataclass
class Scenario:
    call: Callable[[], object]                 # the library call that must raise the case's error
    argv: Optional[list[str]]                  # CLI arguments (None: the option has no CLI form)
    culprit: tuple[str, ...]                   # every one must appear in the library's message
    cli_culprit: Optional[tuple[str, ...]] = None   # when the CLI names the option differently
    app_zoo: Optional[Path] = None             # zoo-level cases: typed into the app's zoo picker
    fault: Optional[Callable[[], ContextManager]] = None
    after: Optional[Callable[[], None]] = None  # extra check once every channel ran (no side effects)


@dataclass(frozen=True)
class Case:
    name: str
    error: type
    build: Callable[[Env], Scenario]


# -- library entry points the scenarios call ---------------------------------------------------------

def plan_of(zoo_path, algorithm: str = "ta", granularity: str = "component", linkage: str = "min",
            seed: int = 0, tasks=None, cached: bool = False):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.planning.plan_cache import cached_plan
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(zoo_path)
    if tasks is not None:
        zoo = zoo.subset(tasks)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity)
    plan = (cached_plan if cached else build_plan)(zoo, spec, get_algorithm(algorithm), linkage, "greedy", seed)
    return zoo, spec, plan


def curve_of(zoo_path, sizes):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.evaluation.curve import compute_curve

    zoo, spec, plan = plan_of(zoo_path)
    return compute_curve(zoo, plan, get_algorithm("ta"), sizes, spec=spec, use_cache=False)


def export_of(zoo_path, size, out, task=None):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.deployment.export import export

    zoo, spec, plan = plan_of(zoo_path)
    return export(zoo, spec, plan, get_algorithm("ta"), size, out, task=task)


def plan_argv(zoo_path, *extra: str) -> list[str]:
    return ["plan", "--zoo", str(zoo_path), "--algorithm", "ta", *extra]


def file_hashes(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under `roots` (or of the file itself): the bytes a refused call must not touch."""
    import hashlib

    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return out


def unchanged(*roots: Path) -> Callable[[], None]:
    """An `after` check: the files under `roots` hold the same bytes as when the case was built."""
    before = file_hashes(*roots)
    assert before, f"nothing to protect under {roots}"

    def check() -> None:
        assert file_hashes(*roots) == before, f"a refused call changed or removed input files under {roots}"
    return check


# -- simulated machine faults ---------------------------------------------------------------------------

@contextlib.contextmanager
def full_disk():
    """Every fsync fails with ENOSPC, as a write to a full disk does (all atomic writes fsync)."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch.object(os, "fsync", no_space):
        yield


def _inside(path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` without write permission. Root ignores permission bits, so for root the refusal the
    kernel would give (EACCES on creating a file or folder inside) is simulated at the same calls."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
    real_mkstemp, real_mkdtemp, real_mkdir = tempfile.mkstemp, tempfile.mkdtemp, os.mkdir

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and _inside(dir, folder):
            raise denied
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and _inside(dir, folder):
            raise denied
        return real_mkdtemp(*args, dir=dir, **kwargs)

    def mkdir(path, *args, **kwargs):
        if _inside(path, folder) and not os.path.exists(path):
            raise denied
        return real_mkdir(path, *args, **kwargs)

    patches = [mock.patch.object(tempfile, "mkstemp", mkstemp), mock.patch.object(tempfile, "mkdtemp", mkdtemp),
               mock.patch.object(os, "mkdir", mkdir)] if os.geteuid() == 0 else []
    try:
        with contextlib.ExitStack() as stack:
            for p in patches:
                stack.enter_context(p)
            yield
    finally:
        folder.chmod(0o755)


# -- zoo-level cases: a valid zoo broken in one way --------------------------------------------------------

def _zoo_case(name: str, error: type, break_zoo: Callable[[Path], None], culprit: tuple[str, ...],
              action: str = "plan") -> Case:
    """A case whose bad input is a zoo folder: the library opens it and plans (or evaluates) it, the CLI
    runs `plan` (or `curve`), the app gets it through its zoo picker."""
    def build(env: Env) -> Scenario:
        root = env.zoo_copy(name)
        break_zoo(root)
        if action == "curve":
            return Scenario(call=lambda: curve_of(root, [1.0]), culprit=culprit, app_zoo=root,
                            argv=["curve", "--zoo", str(root), "--algorithm", "ta", "--sizes", "1"])
        return Scenario(call=lambda: plan_of(root), argv=plan_argv(root), culprit=culprit, app_zoo=root)

    return Case(name, error, build)


def _save(path: Path, **tensors: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def _set_value(path: Path, tensor: str, index: int, value: float) -> None:
    rewrite_tensors(path, lambda s: s[tensor].view(-1).__setitem__(index, value))


def _shape_mismatch(root: Path) -> None:
    rewrite_tensors(task_file(root, "beta"), lambda s: s.__setitem__(
        "transformer.resblocks.0.attn.in_proj_weight", torch.zeros(24, 4)))


def _dtype_mismatch(root: Path) -> None:
    rewrite_tensors(task_file(root, "beta"), lambda s: s.__setitem__("proj", s["proj"].half()))


def _truncate(root: Path) -> None:
    path = task_file(root, "beta")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_header(root: Path) -> None:
    path = task_file(root, "alpha")
    data = bytearray(path.read_bytes())
    data[8] = ord("x")  # the first byte of the JSON header
    path.write_bytes(bytes(data))


def _marker_of(root: Path) -> Path:
    return root.parent / "code-ran"


def _code_pickle(root: Path) -> None:
    write_code_pickle(root / "tasks" / "evil.pt", _marker_of(root))
    edit_task(root, 2, checkpoint="tasks/evil.pt")


def _code_pickle_case() -> Case:
    inner = _zoo_case("torch-pickle-with-code", ZooError, _code_pickle, ("evil.pt", "task 'gamma'")).build

    def build(env: Env) -> Scenario:
        scenario = inner(env)
        marker = _marker_of(env.tmp / "torch-pickle-with-code")

        def nothing_ran() -> None:
            assert not marker.exists(), "loading the checkpoint ran the code in its pickle"

        scenario.after = nothing_ran
        return scenario

    return Case("torch-pickle-with-code", ZooError, build)


def _empty_torch(root: Path) -> None:
    (root / "tasks" / "empty.pt").write_bytes(b"")
    edit_task(root, 1, checkpoint="tasks/empty.pt")


def _rename_task(index: int, name: str) -> Callable[[Path], None]:
    return lambda root: edit_task(root, index, name=name)


def _keep_tasks(count: int) -> Callable[[Path], None]:
    return lambda root: edit_manifest(root, lambda doc: doc.__setitem__("tasks", doc["tasks"][:count]))


def _write_head(root: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(5, 4), "bias": torch.zeros(5)}, str(head_file(root, "beta")))


def _labels_outside(root: Path) -> None:
    rewrite_tensors(data_file(root, "alpha"), lambda s: s["labels"].__setitem__(2, 7))


def _data_without_labels(root: Path) -> None:
    rewrite_tensors(data_file(root, "gamma"), lambda s: s.pop("labels"))


def _all_zero(root: Path) -> None:
    """Every fine-tuned checkpoint is a byte copy of the pretrained one."""
    for task in ("alpha", "beta", "gamma"):
        task_file(root, task).write_bytes((root / "pretrained.safetensors").read_bytes())


ZOO_CASES = [
    _zoo_case("mismatched-shape", ZooError, _shape_mismatch,
              ("'transformer.resblocks.0.attn.in_proj_weight' of task 'beta'", "shape")),
    _zoo_case("missing-tensor", ZooError,
              lambda r: rewrite_tensors(task_file(r, "gamma"), lambda s: s.pop("ln_post.weight")),
              ("task 'gamma'", "lacks tensor 'ln_post.weight'")),
    _zoo_case("extra-tensor", ZooError,
              lambda r: rewrite_tensors(task_file(r, "alpha"), lambda s: s.__setitem__("extra.bias", torch.zeros(2))),
              ("task 'alpha'", "'extra.bias'")),
    _zoo_case("different-dtype", ZooError, _dtype_mismatch, ("'proj' of task 'beta'", "dtype")),
    _zoo_case("nan-in-task-vector", ZooError,
              lambda r: _set_value(task_file(r, "beta"), "transformer.resblocks.0.mlp.c_fc.weight", 3, math.nan),
              ("'transformer.resblocks.0.mlp.c_fc.weight' of task 'beta'", "NaN")),
    _zoo_case("inf-in-task-vector", ZooError,
              lambda r: _set_value(task_file(r, "gamma"), "conv1.weight", 0, math.inf),
              ("'conv1.weight' of task 'gamma'", "Inf")),
    _zoo_case("nan-in-pretrained", ZooError,
              lambda r: _set_value(r / "pretrained.safetensors", "ln_pre.weight", 1, math.nan),
              ("'ln_pre.weight' of pretrained",)),
    _zoo_case("truncated-safetensors", ZooError, _truncate, ("beta.safetensors", "task 'beta'")),
    _zoo_case("corrupt-safetensors-header", ZooError, _corrupt_header, ("alpha.safetensors", "task 'alpha'")),
    _code_pickle_case(),
    _zoo_case("empty-checkpoint", ZooError, lambda r: task_file(r, "alpha").write_bytes(b""),
              ("alpha.safetensors", "task 'alpha'")),
    _zoo_case("empty-torch-file", ZooError, _empty_torch, ("empty.pt", "task 'beta'")),
    _zoo_case("empty-manifest", ZooError, lambda r: (r / "zoo.json").write_bytes(b""), ("zoo.json", "JSON")),
    _zoo_case("missing-checkpoint-file", ZooError, lambda r: task_file(r, "gamma").unlink(),
              ("gamma.safetensors", "not found")),
    _zoo_case("manifest-unknown-key", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__("extras", 1)),
              ("unknown key(s) extras",)),
    _zoo_case("task-unknown-key", ZooError, lambda r: edit_task(r, 1, finetuned_acc=0.5),
              ("tasks[1]", "finetuned_acc")),
    _zoo_case("duplicate-task-names", ZooError, _rename_task(2, "alpha"), ("duplicate task name 'alpha'",)),
    _zoo_case("task-name-with-slash", ZooError, _rename_task(0, "img/cls"), ("task name 'img/cls'",)),
    _zoo_case("task-name-with-backslash", ZooError, _rename_task(0, "img\\cls"), ("task name 'img\\cls'",)),
    _zoo_case("task-name-with-dotdot", ZooError, _rename_task(1, "..beta"), ("task name '..beta'",)),
    _zoo_case("path-escapes-zoo", ZooError, lambda r: edit_task(r, 0, checkpoint="../outside.safetensors"),
              ("'../outside.safetensors'", "inside the zoo folder")),
    _zoo_case("one-task", ZooError, _keep_tasks(1), ("at least 2 tasks, found 1",)),
    _zoo_case("zero-tasks", ZooError, _keep_tasks(0), ("at least 2 tasks, found 0",)),
    _zoo_case("unknown-architecture", ZooError,
              lambda r: edit_manifest(r, lambda d: d["architecture"].__setitem__("kind", "resnet")),
              ("architecture kind 'resnet'",)),
    _zoo_case("wrong-manifest-format", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__("format", "v0")),
              ("zoo.json", "format 'v0'")),
    _zoo_case("head-outputs-not-classes", ZooError, _write_head, ("head of task 'beta'", "5 outputs")),
    _zoo_case("data-without-labels", ZooError, _data_without_labels, ("data of task 'gamma'", "labels")),
    _zoo_case("labels-outside-head-classes", ZooError, _labels_outside,
              ("data of task 'alpha'", "label 7 outside"), action="curve"),
    _zoo_case("nan-in-heldout-images", ZooError,
              lambda r: _set_value(data_file(r, "gamma"), "images", 5, math.nan),
              ("'images' of data of task 'gamma'",), action="curve"),
    _zoo_case("pretrained-equals-finetuned", ZooError, _all_zero, ("every task vector is zero",)),
    _zoo_case("zoo-folder-missing", ZooError, shutil.rmtree, ("zoo-folder-missing", "zoo folder not found")),
    _zoo_case("head-with-wrong-keys", ZooError, lambda r: _save(head_file(r, "alpha"), w=torch.zeros(3, 4)),
              ("head of task 'alpha'", "'weight' and 'bias'")),
    _zoo_case("head-feature-size-mismatch", ZooError,
              lambda r: _save(head_file(r, "gamma"), weight=torch.zeros(3, 7), bias=torch.zeros(3)),
              ("head of task 'gamma'", "takes 7 features")),
    _zoo_case("float-labels", ZooError,
              lambda r: rewrite_tensors(data_file(r, "beta"), lambda s: s.__setitem__("labels", s["labels"].float())),
              ("data of task 'beta'", "int64 labels")),
    _zoo_case("unmerged-pattern-not-a-regex", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__(
        "unmerged", ["conv1.(weight"])), ("unmerged pattern 'conv1.(weight'", "regex")),
    _zoo_case("unmerged-pattern-excludes-everything", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__(
        "unmerged", [".*"])), ("'unmerged' patterns exclude every parameter",)),
    _zoo_case("finetuned-accuracy-out-of-range", ZooError, lambda r: edit_task(r, 2, finetuned_accuracy=93),
              ("task 'gamma'", "finetuned_accuracy")),
    _zoo_case("checkpoints-not-of-the-declared-architecture", ZooError, lambda r: edit_manifest(
        r, lambda d: d["architecture"]["config"].__setitem__("width", 12)), ("pretrained", "architecture")),
]


def _whole_zoo_as(dtype: torch.dtype) -> Callable[[Path], None]:
    """Every checkpoint of the zoo stored in `dtype` (a quantized or boolean zoo)."""
    def convert(root: Path) -> None:
        for path in [root / "pretrained.safetensors"] + [task_file(root, t) for t in ("alpha", "beta", "gamma")]:
            rewrite_tensors(path, lambda s: s.update({k: v.to(dtype) for k, v in s.items()}))
    return convert


def _images(transform: Callable[[torch.Tensor], torch.Tensor], task: str = "beta") -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        rewrite_tensors(data_file(root, task), lambda s: s.update(
            images=transform(s["images"]), labels=s["labels"][: len(transform(s["images"]))]))
    return edit


def _config(**changes) -> Callable[[Path], None]:
    return lambda root: edit_manifest(root, lambda d: d["architecture"]["config"].update(changes))


def _deep_json(root: Path) -> None:
    depth = 100_000
    (root / "zoo.json").write_text("[" * depth + "]" * depth)


SECOND_WAVE_ZOO_CASES = [
    # whole zoos that are not floating point (float16/bfloat16 zoos work: test_corpus.py)
    _zoo_case("int8-zoo", ZooError, _whole_zoo_as(torch.int8), ("pretrained.safetensors", "dtype int8")),
    _zoo_case("bool-zoo", ZooError, _whole_zoo_as(torch.bool), ("pretrained.safetensors", "dtype bool")),
    _zoo_case("float8-zoo", ZooError, _whole_zoo_as(torch.float8_e4m3fn), ("dtype float8_e4m3fn",)),
    # held-out data that does not fit the model: refused when the zoo opens (plan), not at evaluation
    _zoo_case("float64-heldout-images", ZooError, _images(lambda x: x.double()),
              ("data of task 'beta'", "float32 images")),
    _zoo_case("float16-heldout-images", ZooError, _images(lambda x: x.half()), ("data of task 'beta'", "float32")),
    _zoo_case("one-channel-heldout-images", ZooError, _images(lambda x: x[:, :1].contiguous()),
              ("data of task 'beta'", "[N, 1, 8, 8]", "cannot take")),
    _zoo_case("wrong-resolution-heldout-images", ZooError,
              _images(lambda x: torch.nn.functional.interpolate(x, size=(16, 16))),
              ("data of task 'beta'", "[N, 3, 16, 16]", "cannot take")),
    _zoo_case("zero-heldout-images", ZooError, _images(lambda x: x[:0]), ("data of task 'beta'", "no images")),
    _zoo_case("negative-label-at-open", ZooError,
              lambda r: rewrite_tensors(data_file(r, "gamma"), lambda s: s["labels"].__setitem__(0, -1)),
              ("data of task 'gamma'", "label -1 outside")),
    # hostile manifests
    _zoo_case("billion-layers", ZooError, _config(layers=10 ** 9), ("architecture 'open_clip_vit'", "modules")),
    _zoo_case("trillion-parameter-config", ZooError, _config(width=10 ** 6, heads=1),   # laid out on meta: no memory
              ("pretrained", "shape", "architecture 'open_clip_vit' expects")),
    _zoo_case("patch-size-zero", ZooError, _config(patch_size=0), ("architecture 'open_clip_vit'", "cannot be built")),
    _zoo_case("manifest-nested-100k-deep", ZooError, _deep_json, ("zoo.json", "nested too deeply")),
    _zoo_case("manifest-not-utf8", ZooError, lambda r: (r / "zoo.json").write_bytes(b'{"name": "caf\xe9"}'),
              ("zoo.json", "not UTF-8")),
    # names that would leave a folder, end a C string or split a line
    _zoo_case("zoo-name-escapes-folder", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__(
        "name", "../../../x")), ("zoo name '../../../x'",)),
    _zoo_case("task-name-with-nul", ZooError, _rename_task(1, "be\x00ta"), ("task name 'be\\x00ta'", "control")),
    _zoo_case("task-name-with-newline", ZooError, _rename_task(2, "gam\nma"), ("task name 'gam\\nma'", "control")),
    _zoo_case("zoo-name-with-escape-sequence", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__(
        "name", "zoo\x1b[2J")), ("zoo name", "control")),
    _zoo_case("hf-hub-architecture", ZooError, lambda r: edit_manifest(r, lambda d: d.__setitem__(
        "architecture", {"kind": "open_clip_model", "config": {"name": "hf-hub:laion/CLIP-ViT-B-32"}})),
              ("hf-hub:laion/CLIP-ViT-B-32", "offline")),
]


# -- option cases: a valid zoo, a bad option -------------------------------------------------------------

def _plan_at(env: Env, budget):
    def call():
        _, _, plan = plan_of(env.template, cached=True)
        return plan.partition_at(budget)
    return call


def _size_case(name: str, text: str, budget, culprit: str, cli_prefix: str = "--size:") -> Case:
    """A bad deployment size: partition_at refuses it; `export --size` refuses it before any work."""
    def build(env: Env) -> Scenario:
        return Scenario(call=_plan_at(env, budget), culprit=("size budget",), cli_culprit=(cli_prefix, culprit),
                        argv=["export", "--zoo", str(env.template), "--algorithm", "ta", f"--size={text}",
                              "--out", str(env.tmp / "out.safetensors")])
    return Case(name, BudgetError, build)


def _option_case(name: str, error: type, call: Callable[[Env], Callable[[], object]],
                 argv: Optional[Callable[[Env], list[str]]], culprit: tuple[str, ...]) -> Case:
    def build(env: Env) -> Scenario:
        return Scenario(call=call(env), argv=None if argv is None else argv(env), culprit=culprit)
    return Case(name, error, build)


def _algorithm(name: str, **options):
    from flexmerge_core.algorithms import get_algorithm

    return lambda env: (lambda: get_algorithm(name, **options))


def _subset(env: Env):
    from flexmerge_core.zoo import open_zoo

    return lambda: open_zoo(env.template).subset(["alpha", "delta"])


def _export_argv(env: Env, *extra: str) -> list[str]:
    return ["export", "--zoo", str(env.template), "--algorithm", "ta", "--size", "2", *extra]


def _out_is_folder(env: Env) -> Scenario:
    folder = env.tmp / "existing-folder"
    folder.mkdir()
    return Scenario(call=lambda: export_of(env.template, 2.0, folder), culprit=(str(folder), "cannot write"),
                    argv=_export_argv(env, "--out", str(folder)))


def _export_over_zoo_file(relative: str) -> Callable[[Env], Scenario]:
    """`export --out` naming a file of the zoo itself: refused, the zoo's bytes unchanged and it still opens."""
    def build(env: Env) -> Scenario:
        root = env.zoo_copy("export-over-zoo")
        out = root / relative
        protect = unchanged(root)

        def zoo_intact() -> None:
            from flexmerge_core.zoo import open_zoo

            protect()
            open_zoo(root)
        return Scenario(call=lambda: export_of(root, 2.0, out), culprit=(str(out), "overlaps the input"),
                        argv=["export", "--zoo", str(root), "--algorithm", "ta", "--size", "2", "--out", str(out)],
                        after=zoo_intact)
    return build


def _export_sibling_blocked(sibling: str, task: Optional[str]) -> Callable[[Env], Scenario]:
    """The recipe (or head) beside an export cannot be written (a folder has its name): the export is all
    of its files or none of them, so no model file is left behind."""
    def build(env: Env) -> Scenario:
        out = env.tmp / "merged.safetensors"
        blocker = env.tmp / f"merged.{sibling}"
        blocker.mkdir()
        (blocker / "keep.txt").write_text("someone's file")
        protect = unchanged(blocker)

        def nothing_published() -> None:
            protect()
            assert not out.exists(), "an export whose recipe or head failed left its model file behind"
            assert not (env.tmp / "merged.recipe.json").is_file() and not [
                p for p in env.tmp.iterdir() if p.name.startswith(".merged")], "temporaries left"
        extra = ["--task", task] if task else []
        return Scenario(call=lambda: export_of(env.template, 2.0, out, task=task),
                        culprit=(str(blocker), "cannot write"),
                        argv=_export_argv(env, "--out", str(out), *extra), after=nothing_published)
    return build


def _build_demo_seed(env: Env) -> Scenario:
    from flexmerge_core.demo.vision import build_demo_zoo

    out = env.tmp / "demo"
    return Scenario(call=lambda: build_demo_zoo(out=out, seed=-1), culprit=("seed", "-1"),
                    argv=["zoo", "build-demo", "--out", str(out), "--seed=-1"])


def _build_demo_over_folder(env: Env) -> Scenario:
    """`zoo build-demo --out` a folder of someone else's files: refused before any training, files kept."""
    from flexmerge_core.demo.vision import build_demo_zoo

    out = env.tmp / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not really a photo")
    return Scenario(call=lambda: build_demo_zoo(out=out), culprit=(str(out), "not empty", "--force"),
                    argv=["zoo", "build-demo", "--out", str(out)], after=unchanged(out))


def _environment_case(name: str, error: type, variable: str, value: str, culprit: tuple[str, ...]) -> Case:
    """A bad value in the environment: refused with one line naming the variable (planning reads both)."""
    def build(env: Env) -> Scenario:
        root = env.zoo_copy(name)
        def call():
            from flexmerge_core.pipeline import Pipeline, resolve_zoo

            pipeline = Pipeline(resolve_zoo(root), deploy_size=1.0)   # the memory guard
            pipeline.plan.achievable_sizes()   # the cached plan (1x alone would not need one)
            return pipeline

        return Scenario(call=call, argv=plan_argv(root), culprit=culprit, app_zoo=root,
                        fault=lambda: mock.patch.dict(os.environ, {variable: value}))
    return Case(name, error, build)


OPTION_CASES = [
    _size_case("size-zero", "0", 0.0, "0"),
    _size_case("size-negative", "-1.5", -1.5, "-1.5"),
    _size_case("size-nan", "nan", math.nan, "nan"),
    _size_case("size-infinite", "inf", math.inf, "inf"),
    _size_case("size-string", "big", "big", "'big'"),
    _size_case("size-list-for-export", "1,2", [1.0, 2.0], "'1,2'", cli_prefix="--size takes one number"),
    _option_case("sizes-list-with-word", BudgetError, lambda env: (lambda: curve_of(env.template, [1.0, "x"])),
                 lambda env: ["curve", "--zoo", str(env.template), "--algorithm", "ta", "--sizes", "1,x,2"],
                 ("'x'",)),
    _option_case("unknown-algorithm", InvalidArgumentError, _algorithm("fancy"),
                 lambda env: ["plan", "--zoo", str(env.template), "--algorithm", "fancy"],
                 ("unknown algorithm 'fancy'",)),
    _option_case("unknown-hyperparameter", InvalidArgumentError, _algorithm("ties", strength=2.0), None,
                 ("'strength'",)),
    _option_case("hyperparameter-out-of-range", InvalidArgumentError, _algorithm("ties", keep=1.5), None,
                 ("'keep'", "out of range")),
    _option_case("hyperparameter-not-a-number", InvalidArgumentError, _algorithm("dare_ta", p="high"), None,
                 ("'p'",)),
    _option_case("unknown-granularity", InvalidArgumentError,
                 lambda env: (lambda: plan_of(env.template, granularity="molecule")),
                 lambda env: plan_argv(env.template, "--granularity", "molecule"), ("'molecule'",)),
    _option_case("unknown-linkage", InvalidArgumentError,
                 lambda env: (lambda: plan_of(env.template, linkage="median")),
                 lambda env: plan_argv(env.template, "--linkage", "median"), ("'median'",)),
    _option_case("negative-seed", InvalidArgumentError, lambda env: (lambda: plan_of(env.template, seed=-1)),
                 lambda env: plan_argv(env.template, "--seed=-1"), ("seed", "-1")),
    _option_case("unknown-task-in-subset", InvalidArgumentError, _subset,
                 lambda env: plan_argv(env.template, "--tasks", "alpha,delta"), ("unknown task 'delta'",)),
    _option_case("export-unknown-task", InvalidArgumentError,
                 lambda env: (lambda: export_of(env.template, 2.0, env.tmp / "t.safetensors", task="delta")),
                 lambda env: _export_argv(env, "--out", str(env.tmp / "t.safetensors"), "--task", "delta"),
                 ("--task", "'delta'")),
    Case("export-out-is-a-folder", CacheError, _out_is_folder),
    Case("export-out-is-the-zoo-checkpoint", InvalidArgumentError, _export_over_zoo_file("pretrained.safetensors")),
    Case("export-out-is-the-zoo-manifest", InvalidArgumentError, _export_over_zoo_file("zoo.json")),
    Case("export-out-inside-the-zoo", InvalidArgumentError, _export_over_zoo_file("tasks/merged.safetensors")),
    Case("export-recipe-cannot-be-written", CacheError, _export_sibling_blocked("recipe.json", None)),
    Case("export-head-cannot-be-written", CacheError, _export_sibling_blocked("head.safetensors", "beta")),
    Case("build-demo-negative-seed", InvalidArgumentError, _build_demo_seed),
    Case("build-demo-over-a-folder-of-other-files", InvalidArgumentError, _build_demo_over_folder),
    _environment_case("cache-variable-empty", CacheError, "FLEXMERGE_CACHE", "", ("FLEXMERGE_CACHE", "empty")),
    _environment_case("memory-limit-overflows", InvalidArgumentError, "FLEXMERGE_MEMORY_LIMIT", "1e300G",
                      ("FLEXMERGE_MEMORY_LIMIT='1e300G'", "8 EiB")),
]


# -- machine cases: the cache cannot be written -------------------------------------------------------------

def _cache_case(name: str, fault: Callable[[Env], Callable[[], ContextManager]],
                culprit: Callable[[Env], tuple[str, ...]], cache: Callable[[Env], Path]) -> Case:
    """The plan cache cannot be written: the library (cached_plan), the CLI (plan) and the app (opening a
    fresh zoo builds and stores its plan) all report it instead of failing later or half-writing."""
    def build(env: Env) -> Scenario:
        env.cache = cache(env)
        root = env.zoo_copy(name)
        return Scenario(call=lambda: plan_of(root, cached=True), argv=plan_argv(root), culprit=culprit(env),
                        app_zoo=root, fault=fault(env))
    return Case(name, CacheError, build)


def _cache_root_file(env: Env) -> Path:
    path = env.tmp / "cache-is-a-file"
    path.write_text("not a folder")
    return path


CACHE_CASES = [
    _cache_case("read-only-cache", lambda env: (lambda: read_only(env.cache)),
                lambda env: (str(env.cache), "ermission denied"), lambda env: env.tmp / "read-only-cache"),
    _cache_case("full-disk", lambda env: full_disk, lambda env: (str(env.cache), "No space left on device"),
                lambda env: env.tmp / "cache"),
    _cache_case("cache-root-is-a-file", lambda env: contextlib.nullcontext,
                lambda env: (str(env.cache), "cannot create folder"), _cache_root_file),
]


# -- import cases: a research-layout folder with bad held-out data or hostile files (`zoo import`) ------------

IMPORT_MODEL = "ViT-B-32"   # only its layout and transforms are used: each case fails before weights are read


def _png(path: Path, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 10, 10)).save(path)


def _source(root: Path, tasks=("A", "B")) -> Path:
    for task in tasks:
        (root / task).mkdir(parents=True)
        (root / task / "finetuned.pt").write_bytes(b"")   # never read: the data is checked first
    return root


def _import_case(name: str, arrange: Callable[[Path, Path], None], culprit: tuple[str, ...],
                 error: type = ZooError, model: str = IMPORT_MODEL,
                 out: Callable[[Path, Path, Path], Path] = lambda tmp, source, data: tmp / "imported") -> Case:
    """arrange(source, data) lays out the bad input; nothing may appear at the zoo's output folder, and
    when the output is an input (or an existing folder) its bytes stay as they were."""
    from flexmerge_core.importers.research import import_research_folder

    def build(env: Env) -> Scenario:
        source, data = _source(env.tmp / "src"), env.tmp / "data"
        arrange(source, data)
        target = out(env.tmp, source, data)
        existed = target.exists()
        protect = unchanged(source, *([target] if existed and target != source else []))

        def nothing_written() -> None:
            protect()
            assert existed or not target.exists(), "a failed import left a zoo folder"

        return Scenario(call=lambda: import_research_folder(source, target, model, data=data), culprit=culprit,
                        argv=["zoo", "import", str(source), "--out", str(target), "--model", model,
                              "--data", str(data)], after=nothing_written)
    return Case(name, error, build)


def _empty_class_folders(source: Path, data: Path) -> None:
    for folder in ("A/c0", "A/c1", "B/c0"):
        (data / folder).mkdir(parents=True)


def _images_without_class_folders(source: Path, data: Path) -> None:
    _png(data / "A" / "picture.png")


def _undecodable_image(source: Path, data: Path) -> None:
    _png(data / "A" / "c0" / "good.png")
    (data / "A" / "c1").mkdir(parents=True)
    (data / "A" / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def _truncated_image(source: Path, data: Path) -> None:
    _png(data / "B" / "c0" / "cut.jpg", size=64)
    path = data / "B" / "c0" / "cut.jpg"
    path.write_bytes(path.read_bytes()[:60])


def _label_without_class_name(source: Path, data: Path) -> None:
    from safetensors.torch import save_file

    data.mkdir()
    save_file({"images": torch.zeros(3, 8, 8, 3, dtype=torch.uint8), "labels": torch.tensor([0, 1, 4])},
              str(data / "A.safetensors"))
    (data / "A.classes.txt").write_text("cat\ndog\n")


def _code_in_source_pickles(source: Path, data: Path) -> None:
    data.mkdir()
    for task in ("A", "B"):
        for name in ("finetuned.pt", "zeroshot.pt"):
            write_code_pickle(source / task / name, source.parent / "code-ran")


def _import_pickle_case() -> Case:
    inner = _import_case("import-torch-pickle-with-code", _code_in_source_pickles, ("zeroshot.pt", "--trust-pickle"))

    def build(env: Env) -> Scenario:
        scenario = inner.build(env)
        no_zoo = scenario.after

        def nothing_ran() -> None:
            no_zoo()
            assert not (env.tmp / "code-ran").exists(), "importing ran the code in a pickle"

        scenario.after = nothing_ran
        return scenario

    return Case(inner.name, ZooError, build)


def _fifo_image(source: Path, data: Path) -> None:
    _png(data / "A" / "c0" / "good.png")
    os.mkfifo(data / "A" / "c0" / "x.png")   # opening it would block until a writer appears


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bytes(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG whose header claims width x height (RGB) with `extra` chunks before one row of image data."""
    import struct
    import zlib

    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + header + extra + _png_chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1)))
            + _png_chunk(b"IEND", b""))


def _decompression_bomb(source: Path, data: Path) -> None:
    (data / "A" / "c0").mkdir(parents=True)
    (data / "A" / "c0" / "bomb.png").write_bytes(_png_bytes(30_000, 30_000))   # 900M pixels claimed


def _text_chunk_bomb(source: Path, data: Path) -> None:
    import zlib

    text = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 50_000_000))   # 50 MB of text, ~50 KB on disk
    (data / "A" / "c0").mkdir(parents=True)
    (data / "A" / "c0" / "text.png").write_bytes(_png_bytes(8, 8, text))


def _classes_not_utf8(source: Path, data: Path) -> None:
    _label_without_class_name(source, data)
    (data / "A.classes.txt").write_bytes("caf\u00e9\nna\u00efve\n".encode("latin-1"))


def _into_folder_of_other_files(tmp: Path, source: Path, data: Path) -> Path:
    folder = tmp / "my-documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    return folder


IMPORT_CASES = [
    _import_case("import-class-folders-without-images", _empty_class_folders, ("data/A", "no .png/.jpg/.jpeg")),
    _import_case("import-images-without-class-folders", _images_without_class_folders,
                 ("data/A", "one sub-folder per class")),
    _import_case("import-image-fails-to-decode", _undecodable_image, ("broken.png", "cannot read image")),
    _import_case("import-truncated-image", _truncated_image, ("cut.jpg", "cannot read image")),
    _import_case("import-label-without-class-name", _label_without_class_name,
                 ("A.safetensors", "label 4 has no class name")),
    _import_case("import-data-folder-missing", lambda source, data: None, ("data", "data folder not found")),
    _import_case("import-one-task-folder", lambda source, data: (source / "B" / "finetuned.pt").unlink(),
                 ("src", "at least 2 task folders", "found 1")),
    _import_pickle_case(),
    _import_case("import-fifo-named-png", _fifo_image, ("x.png", "not a regular file")),
    _import_case("import-png-decompression-bomb", _decompression_bomb, ("bomb.png", "decompression bomb")),
    _import_case("import-png-text-chunk-bomb", _text_chunk_bomb, ("text.png", "cannot read image")),
    _import_case("import-class-names-not-utf8", _classes_not_utf8, ("A.classes.txt", "not UTF-8")),
    _import_case("import-hf-hub-model", lambda source, data: data.mkdir(), ("hf-hub:org/model", "offline"),
                 model="hf-hub:org/model"),
    _import_case("import-out-is-the-source", lambda source, data: data.mkdir(), ("--out", "overlaps the input"),
                 error=InvalidArgumentError, out=lambda tmp, source, data: source),
    _import_case("import-out-inside-the-source", lambda source, data: data.mkdir(), ("--out", "overlaps the input"),
                 error=InvalidArgumentError, out=lambda tmp, source, data: source / "A" / "zoo"),
    _import_case("import-out-is-the-data", lambda source, data: _png(data / "A" / "c0" / "p.png"),
                 ("--out", "overlaps the input"), error=InvalidArgumentError, out=lambda tmp, source, data: data),
    _import_case("import-out-is-a-folder-of-other-files", lambda source, data: data.mkdir(),
                 ("my-documents", "not empty", "--force"), error=InvalidArgumentError, out=_into_folder_of_other_files),
]


def _memory_case(env: Env) -> Scenario:
    """The machine has less memory than the work needs: refused before loading, in every front end."""
    from flexmerge_core.resources import LIMIT_ENV, check_memory
    from flexmerge_core.zoo import open_zoo

    root = env.zoo_copy("not-enough-memory")
    return Scenario(call=lambda: check_memory(open_zoo(root), 2.0),
                    argv=["export", "--zoo", str(root), "--algorithm", "ta", "--size", "2",
                          "--out", str(env.tmp / "out.safetensors")],
                    culprit=("not enough memory", "zoo 'template'"), app_zoo=root,
                    fault=lambda: mock.patch.dict(os.environ, {LIMIT_ENV: "1K"}))


MACHINE_CASES = CACHE_CASES + [Case("not-enough-memory", ResourceError, _memory_case)]

CASES = ZOO_CASES + SECOND_WAVE_ZOO_CASES + IMPORT_CASES + OPTION_CASES + MACHINE_CASES
