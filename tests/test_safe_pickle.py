"""Structural reading of pickled torch checkpoints (flexmerge_core/importers/safe_pickle.py, issue 13 item 1).

Why: the task-vectors release pickles whole `src.modeling` modules that nobody outside its code base can
unpickle. These tests prove the reader gives torch's tensors bit for bit without that code, and that no
callable a file names ever runs (each malicious file would create a marker file if it did).
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from flexmerge_core.errors import ZooError
from flexmerge_core.importers.safe_pickle import StandIn, classification_head, load_structural, module_state_dict

MODELING = '''
import open_clip
import torch


class ImageEncoder(torch.nn.Module):
    """As in the task-vectors code: an open_clip CLIP without its text tower, plus its preprocessing."""

    def __init__(self):
        super().__init__()
        self.model = open_clip.model.CLIP(
            embed_dim=16, vision_cfg=dict(layers=2, width=32, head_width=16, patch_size=4, image_size=16, mlp_ratio=2),
            text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
        self.train_preprocess = open_clip.image_transform(16, is_train=True)
        self.val_preprocess = open_clip.image_transform(16, is_train=False)
        self.cache_dir = None
        delattr(self.model, "transformer")


class ClassificationHead(torch.nn.Linear):
    def __init__(self, normalize, weights, biases):
        super().__init__(weights.shape[1], weights.shape[0])
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(biases.clone())
'''

SAVE_RELEASE = '''
import json, sys
out = sys.argv[1]
sys.path.insert(0, out)
import torch
from safetensors.torch import save_file
from src.modeling import ClassificationHead, ImageEncoder

torch.manual_seed(0)
encoder = ImageEncoder()
torch.save(encoder, f"{out}/encoder.pt")
save_file(encoder.state_dict(), f"{out}/encoder.safetensors")
json.dump(list(encoder.state_dict()), open(f"{out}/encoder_keys.json", "w"))
head = ClassificationHead(True, torch.randn(5, 16), torch.randn(5))
torch.save(head, f"{out}/head.pt")
save_file({"weight": head.weight.detach(), "bias": head.bias.detach()}, f"{out}/head.safetensors")
'''

PROBE_MODULE = "safe_pickle_probe_models"
PROBE_SOURCE = '''
import copyreg
import torch


class Settings(dict):
    """A dict subclass holding a configuration (as EasyDict does)."""


class Point:
    def __init__(self, x):
        self.x = x

    def __reduce__(self):   # written as NEWOBJ by protocol 2, as a REDUCE of copyreg.__newobj__ by protocol 1
        return copyreg.__newobj__, (Point, self.x), {"x": self.x}


class Tower(torch.nn.Module):
    def __init__(self, raw_storage):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Linear(6, 4, bias=False)
        self.norm = torch.nn.LayerNorm(4)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Identity()])
        self.fp16 = torch.nn.Parameter(torch.randn(3, 5, generator=g).half())
        self.fp16.tag = "extra"
        self.bf16 = torch.nn.Parameter(torch.randn(2, 3, generator=g).to(torch.bfloat16), requires_grad=False)
        self.register_buffer("steps", torch.arange(5))
        self.register_buffer("mask", torch.ones(2, 2, dtype=torch.bool), persistent=False)
        self.register_buffer("window", self.fp16.data[1:, 2:])
        self.register_buffer("transposed", torch.randn(3, 4, generator=g).t())
        self.register_buffer("phase", torch.randn(3, dtype=torch.complex64, generator=g).conj())
        self.register_buffer("nothing", None)
        self.register_module("missing", None)
        self.settings = Settings(lr=0.1, tags=["a"])
        self.point = Point(3)
        self.kinds = {"a", "b"}
        self.blob, self.empty = b"\\x00\\xffbytes", b""
        self.where, self.kind = torch.device("cpu"), torch.float16
        self.span, self.z = slice(1, 5, 2), complex(1, 2)
        self.shape, self.frozen = torch.Size([2, 3]), frozenset({1})
        if raw_storage:   # torch's own reader of legacy files fails on an UntypedStorage
            self.raw = torch.arange(4, dtype=torch.int16).untyped_storage()
'''

FORMATS = {"zip": {}, "zip, pickle protocol 1": {"pickle_protocol": 1}, "zip, pickle protocol 4": {"pickle_protocol": 4},
           "legacy": {"_use_new_zipfile_serialization": False}}


def assert_same_tensor(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype, shape, layout and bits (NaN-safe: bytes are compared)."""
    assert (got.dtype, got.shape, got.stride(), got.storage_offset(), got.is_conj()) == \
           (want.dtype, want.shape, want.stride(), want.storage_offset(), want.is_conj())
    as_bytes = [t.resolve_conj().reshape(-1).view(torch.uint8) for t in (got, want)]
    assert torch.equal(*as_bytes)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A task-vectors style release saved by a process that had `src`, which is then deleted."""
    root = tmp_path_factory.mktemp("release")
    (root / "src").mkdir()
    (root / "src" / "__init__.py").write_text("")
    (root / "src" / "modeling.py").write_text(MODELING)
    subprocess.run([sys.executable, "-c", SAVE_RELEASE, str(root)], check=True, timeout=600)
    shutil.rmtree(root / "src")
    return root


def test_task_vectors_release_reads_without_its_code(release):
    with pytest.raises(ModuleNotFoundError, match="src"):
        torch.load(release / "encoder.pt", weights_only=False)
    encoder = load_structural(release / "encoder.pt")
    assert encoder.pickled_name == "src.modeling.ImageEncoder"
    assert encoder.model.pickled_name == "open_clip.model.CLIP"
    assert encoder.val_preprocess.transforms[0].interpolation.pickle_args == ("bicubic",)   # an enum, as data
    state = module_state_dict(encoder)
    expected = load_file(release / "encoder.safetensors")
    assert list(state) == json.loads((release / "encoder_keys.json").read_text())
    assert "model.attn_mask" not in state   # a non-persistent buffer
    for key, tensor in expected.items():
        assert_same_tensor(state[key], tensor)

    head = classification_head(load_structural(release / "head.pt"))
    expected = load_file(release / "head.safetensors")
    assert head["normalize"] is True
    assert_same_tensor(head["weight"], expected["weight"])
    assert_same_tensor(head["bias"], expected["bias"])


@pytest.fixture
def probe_module(tmp_path):
    """An importable module of test classes; removed from sys.path and sys.modules afterwards."""
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        yield __import__(PROBE_MODULE)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(PROBE_MODULE, None)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_classes_read_as_a_full_unpickle_gives(tmp_path, probe_module, fmt):
    path = tmp_path / "tower.pt"
    torch.save(probe_module.Tower(raw_storage=fmt != "legacy"), path, **FORMATS[fmt])
    sys.modules.pop(PROBE_MODULE)
    got = load_structural(path)
    assert PROBE_MODULE not in sys.modules and "torch.nn.modules.linear" in got.proj.pickled_name
    full = torch.load(path, weights_only=False)   # imports the module again

    state, expected = module_state_dict(got), full.state_dict()
    assert list(state) == list(expected) and "mask" not in state and "proj.bias" not in state
    for key in expected:
        assert_same_tensor(state[key], expected[key])
    assert state["window"].untyped_storage().data_ptr() == state["fp16"].untyped_storage().data_ptr()
    fp16, bf16 = got._parameters["fp16"], got._parameters["bf16"]
    assert isinstance(fp16, torch.nn.Parameter) and fp16.requires_grad and fp16.tag == "extra"
    assert not bf16.requires_grad
    assert got.pickled_name == f"{PROBE_MODULE}.Tower"
    settings = {"lr": 0.1, "tags": ["a"]}   # protocol 1 passes a dict subclass's items to copyreg._reconstructor
    assert (got.settings.pickle_args, got.settings.pickle_items) == \
           (((settings,), {}) if fmt == "zip, pickle protocol 1" else ((), settings))
    assert got.point.pickle_args == (3,) and vars(got.point) == {"x": 3}
    assert (got.kinds, got.blob, got.empty) == ({"a", "b"}, full.blob, b"")
    assert (got.where, got.kind, got.span, got.z) == (torch.device("cpu"), torch.float16, slice(1, 5, 2), 1 + 2j)
    assert (got.shape, got.frozen) == (torch.Size([2, 3]), frozenset({1}))
    if fmt != "legacy":
        assert got.raw.tolist() == full.raw.tolist()


class _Calls:
    """Pickles as a call of `func(*args)`, as a malicious file would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return {
        f"{os.system.__module__}.system": _Calls(os.system, f"touch {marker}"),
        "builtins.eval": _Calls(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Calls(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Calls(subprocess.call, ["touch", str(marker)]),
        "subprocess.Popen": _Calls(subprocess.Popen, ["touch", str(marker)]),
    }


def _refused(path, name, marker):
    with pytest.raises(ZooError) as caught:
        load_structural(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and f"pickle calls {name}," in message
    assert not marker.exists()


@pytest.mark.parametrize("name", list(_payloads("m")))
@pytest.mark.parametrize("where", ["top level", "in a dict in the module state"])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pickled_calls_are_refused_and_never_run(tmp_path, name, where, fmt):
    marker = tmp_path / "MARKER"
    payload = _payloads(marker)[name]
    if where != "top level":
        module = torch.nn.Linear(2, 2)
        module.config = {"hooks": [payload]}
        payload = module
    path = tmp_path / "evil.pt"
    torch.save(payload, path, **FORMATS[fmt])
    _refused(path, name, marker)


def test_a_bare_pickle_is_refused_before_it_runs(tmp_path):
    """Not a torch file: read as the first pickle of a legacy file, which must not run either."""
    marker, path = tmp_path / "MARKER", tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps(_Calls(os.system, f"touch {marker}"), protocol=2))
    _refused(path, f"{os.system.__module__}.system", marker)


def _torch_zip(path, data_pkl: bytes, storages=None):
    """A torch zip checkpoint around a hand-written data.pkl (and storages {key: bytes})."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def _text(value: str) -> bytes:
    raw = value.encode()
    return pickle.BINUNICODE + len(raw).to_bytes(4, "little") + raw


def test_hand_written_pickles_cannot_reach_code(tmp_path):
    marker = tmp_path / "MARKER"
    system = pickle.GLOBAL + f"{os.system.__module__}\nsystem\n".encode()
    stand_in = pickle.GLOBAL + b"src.modeling\nImageEncoder\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ
    # A StandIn whose attributes are named like pickle's hooks: BUILD and APPENDS must not look them up.
    hooks = (pickle.PROTO + b"\x02" + stand_in + pickle.EMPTY_DICT + _text("__setstate__") + system
             + pickle.SETITEM + _text("extend") + system + pickle.SETITEM + pickle.BUILD
             + pickle.EMPTY_DICT + pickle.BUILD + pickle.MARK + _text(f"touch {marker}") + pickle.APPENDS
             + pickle.STOP)
    obj = load_structural(_torch_zip(tmp_path / "hooks.pt", hooks))
    assert isinstance(obj, StandIn) and obj.pickle_list == [f"touch {marker}"] and not marker.exists()

    # Other ways of making objects give StandIns too: NEWOBJ_EX (protocol 4), INST (protocol 0), ADDITEMS.
    made = {
        pickle.PROTO + b"\x04" + _text("m") + _text("Cls") + pickle.STACK_GLOBAL + pickle.MARK + pickle.BININT1
        + b"\x07" + pickle.TUPLE + pickle.EMPTY_DICT + _text("k") + pickle.NONE + pickle.SETITEM + pickle.NEWOBJ_EX:
            ("m.Cls", (7,), {"k": None}),
        pickle.MARK + pickle.INST + b"m\nOld\n": ("m.Old", (), {}),
    }
    for body, (name, args, kwargs) in made.items():
        obj = load_structural(_torch_zip(tmp_path / "made.pt", body + pickle.STOP))
        assert (obj.pickled_name, obj.pickle_args, obj.pickle_kwargs) == (name, args, kwargs)
    body = pickle.PROTO + b"\x04" + pickle.EMPTY_SET + pickle.MARK + _text("a") + pickle.ADDITEMS + pickle.STOP
    assert load_structural(_torch_zip(tmp_path / "set.pt", body)) == {"a"}
    body = pickle.GLOBAL + b"m\nCls\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.BININT1 + b"\x05" + pickle.BUILD
    assert load_structural(_torch_zip(tmp_path / "state.pt", body + pickle.STOP)).pickle_state == 5


def _tensor_pickle(numel: int) -> bytes:
    """_rebuild_tensor_v2 of a float32 tensor of `numel` elements over storage "0" of one element."""
    storage = (pickle.MARK + _text("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n" + _text("0") + _text("cpu")
               + pickle.BININT1 + b"\x01" + pickle.TUPLE + pickle.BINPERSID)
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK + storage
            + pickle.BININT1 + b"\x00" + pickle.BININT1 + bytes([numel]) + pickle.TUPLE1 + pickle.BININT1 + b"\x01"
            + pickle.TUPLE1 + pickle.NEWFALSE + pickle.EMPTY_DICT + pickle.TUPLE + pickle.REDUCE + pickle.STOP)


def test_a_tensor_must_fit_in_its_storage(tmp_path):
    """torch would silently grow the storage of a tensor that overruns it; the reader refuses the file."""
    one_float = {"0": struct.pack("<f", 1.5)}
    assert torch.equal(load_structural(_torch_zip(tmp_path / "ok.pt", _tensor_pickle(1), one_float)),
                       torch.tensor([1.5]))
    with pytest.raises(ZooError, match="overruns its storage of 4 bytes"):
        load_structural(_torch_zip(tmp_path / "overrun.pt", _tensor_pickle(4), one_float))

    cases = {
        "sets the state of a function": pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.EMPTY_DICT
        + pickle.BUILD,
        "calls a str object": _text("os.system") + pickle.EMPTY_TUPLE + pickle.REDUCE,
        "sets items of a function": pickle.GLOBAL + b"collections\nOrderedDict\n" + _text("k") + _text("v")
        + pickle.SETITEM,
        "calls os x.system": _text("os\nx") + _text("system") + pickle.STACK_GLOBAL + pickle.EMPTY_TUPLE
        + pickle.REDUCE,
        "calls posix.system": pickle.MARK + pickle.GLOBAL + b"posix\nsystem\n" + _text("touch x") + pickle.OBJ,
        "appends to a dict": pickle.EMPTY_DICT + pickle.MARK + _text("x") + pickle.APPENDS,
        "adds items to a list": pickle.EMPTY_LIST + pickle.MARK + _text("x") + pickle.ADDITEMS,
    }
    for phrase, body in cases.items():
        path = _torch_zip(tmp_path / "crafted.pt", pickle.PROTO + b"\x04" + body + pickle.STOP)
        with pytest.raises(ZooError, match=f"pickle {phrase}") as caught:
            load_structural(path)
        assert "\n" not in str(caught.value)


def test_plain_and_wrapped_state_dicts(tmp_path):
    tensors = {"a.weight": torch.randn(2, 3), "a.bias": torch.arange(3)}
    for obj in (tensors, {"state_dict": tensors, "epoch": 3}, {"model": torch.nn.Linear(3, 2)}):
        torch.save(obj, tmp_path / "sd.pt")
        got = module_state_dict(load_structural(tmp_path / "sd.pt"))
        want = obj["model"].state_dict() if "model" in obj else tensors
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ZooError, match="holds no module or state dict"):
        module_state_dict({"epoch": 3})
    loop = torch.nn.Sequential(torch.nn.Linear(2, 2))
    loop[0]._modules["back"] = loop
    torch.save(loop, tmp_path / "loop.pt")
    with pytest.raises(ZooError, match=r"module 0\.back \(torch.nn.modules.container.Sequential\) contains itself"):
        module_state_dict(load_structural(tmp_path / "loop.pt"))
    torch.save(torch.nn.Linear(3, 2), tmp_path / "lin.pt")
    assert classification_head(load_structural(tmp_path / "lin.pt"))["normalize"] is None   # a plain Linear says nothing
    with pytest.raises(ZooError, match="not a linear classification head"):
        classification_head(load_structural(tmp_path / "sd.pt"))


def test_big_endian_records_are_byte_swapped_as_torch_does(tmp_path):
    source, swapped = tmp_path / "little.pt", tmp_path / "big.pt"
    torch.save({"w": torch.randn(4, 3), "h": torch.randn(5).half(), "i": torch.arange(6)}, source)
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(swapped, "w") as new:
        for item in old.infolist():
            data = b"big" if item.filename.endswith("/byteorder") else old.read(item)
            new.writestr(item, data)
    want = torch.load(swapped, weights_only=True)
    got = load_structural(swapped)
    assert not torch.equal(want["w"], torch.load(source)["w"])   # the flag did change how bytes are read
    for key in want:
        assert_same_tensor(got[key], want[key])


@pytest.mark.parametrize("damage", ["truncated", "truncated legacy", "flipped storage byte", "zip without data.pkl",
                                    "foreign persistent id", "not a checkpoint", "empty"])
def test_damaged_files_give_one_line_errors(tmp_path, damage):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(64, 64), path, **FORMATS["legacy" if damage == "truncated legacy" else "zip"])
    data = bytearray(path.read_bytes())
    if damage.startswith("truncated"):
        data = data[:len(data) // 2]
    elif damage == "zip without data.pkl":
        data = bytearray(_torch_zip(tmp_path / "other.zip", b"").read_bytes().replace(b"data.pkl", b"data.txt"))
    elif damage == "foreign persistent id":
        data = bytearray(_torch_zip(tmp_path / "other.zip", _text("x") + pickle.BINPERSID + pickle.STOP).read_bytes())
    elif damage == "flipped storage byte":
        with zipfile.ZipFile(path) as archive:
            start = archive.getinfo(next(n for n in archive.namelist() if "/data/" in n)).header_offset
        name_length, extra_length = struct.unpack("<HH", data[start + 26:start + 30])   # local file header
        data[start + 30 + name_length + extra_length + 10] ^= 0xFF
    elif damage == "not a checkpoint":
        data = bytearray(b"just some text\n")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ZooError) as caught:
        load_structural(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
