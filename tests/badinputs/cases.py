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


def _import_case(name: str, arrange: Callable[[Path, Path], None], culprit: tuple[str, ...]) -> Case:
    """arrange(source, data) lays out the bad input; nothing may appear at the zoo's output folder."""
    from flexmerge_core.importers.research import import_research_folder

    def build(env: Env) -> Scenario:
        source, data, out = _source(env.tmp / "src"), env.tmp / "data", env.tmp / "imported"
        arrange(source, data)

        def nothing_written() -> None:
            assert not out.exists(), "a failed import left a zoo folder"

        return Scenario(call=lambda: import_research_folder(source, out, IMPORT_MODEL, data=data), culprit=culprit,
                        argv=["zoo", "import", str(source), "--out", str(out), "--model", IMPORT_MODEL,
                              "--data", str(data)], after=nothing_written)
    return Case(name, ZooError, build)


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

CASES = ZOO_CASES + IMPORT_CASES + OPTION_CASES + MACHINE_CASES
