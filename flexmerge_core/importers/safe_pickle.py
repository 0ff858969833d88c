"""Reading pickled torch checkpoints without importing or running anything named in them.

Why: releases such as the task vectors store whole pickled modules (`torch.save(encoder)`) whose
classes (`src.modeling.ImageEncoder`) exist only in their authors' code base, and unpickling runs
whatever callables the file names. This reader parses the pickle itself: tensors are rebuilt from the
checkpoint's storages by a short allow-list of checked functions, every other class becomes a
`StandIn` holding its pickled name, arguments and state as plain data, and a pickle that calls
anything else is refused. Nothing is imported on the file's behalf and no code from it runs.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch.storage import TypedStorage, _get_dtype_from_pickle_storage_type

from flexmerge_core.errors import ZooError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C   # first pickle of a torch file saved without the zip format
_LEGACY_PROTOCOL = 1001
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# Names from these modules are refused even when they look like classes (subprocess.Popen,
# types.CodeType, ...): no checkpoint needs them, so the user hears about it instead of getting a StandIn.
_REFUSED_MODULES = ("builtins", "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "shutil",
                    "socket", "ctypes", "types", "code", "codeop", "pickle", "_pickle", "marshal", "io", "_io",
                    "pty", "multiprocessing", "threading", "_thread", "signal", "operator", "functools",
                    "inspect", "tempfile", "pathlib", "webbrowser", "asyncio", "copyreg", "codecs", "_codecs",
                    "pdb", "timeit", "torch._C", "torch.ops", "torch.hub")
_DTYPES = {f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


class StandIn:
    """An object of a class the reader did not import: the class's dotted name and the object's data.

    `pickled_name` is e.g. "src.modeling.ImageEncoder"; the pickled `__dict__` state (`_parameters`,
    `_buffers`, `_modules`, other attributes) is this object's `__dict__`. The slots keep what the
    pickle passed on creation, a non-dict state, and what it added as dict or list items.
    Nothing here runs code from the file: the reader never looks up a method on a StandIn.
    """
    __slots__ = ("__dict__", "pickled_name", "pickle_args", "pickle_kwargs", "pickle_state",
                 "pickle_items", "pickle_list")

    def __init__(self, pickled_name: str, args: tuple, kwargs: dict | None = None):
        self.pickled_name, self.pickle_args, self.pickle_kwargs = pickled_name, args, kwargs or {}
        self.pickle_state, self.pickle_items, self.pickle_list = None, {}, []

    def __getattr__(self, name):
        """As torch.nn.Module does: `encoder.model.visual` finds submodules, parameters and buffers."""
        for group in ("_parameters", "_buffers", "_modules"):
            members = self.__dict__.get(group)
            if isinstance(members, dict) and name in members:
                return members[name]
        raise AttributeError(f"{self!r} has no attribute {name!r}")

    def __repr__(self):
        return f"<StandIn {self.pickled_name}>"


class GlobalRef:
    """A class or function the pickle names but the reader neither imports nor calls (e.g. a function in a
    list of transforms); `makes_objects` if it looks like a class, so that creating one gives a StandIn."""
    __slots__ = ("qualname", "makes_objects")

    def __init__(self, qualname: str, makes_objects: bool):
        self.qualname, self.makes_objects = qualname, makes_objects

    def __repr__(self):
        return f"<GlobalRef {self.qualname}>"


class _Refused(Exception):
    """The pickle asks for something that would run code; `load_structural` names the file."""


def _new(cls, args, kwargs=None) -> StandIn:
    if not isinstance(cls, GlobalRef):
        raise _Refused(f"creates an object of a {type(cls).__name__}")
    if not cls.makes_objects:
        raise _Refused(f"calls {cls.qualname}")
    if type(args) is not tuple or not (kwargs is None or type(kwargs) is dict):
        raise ValueError(f"malformed arguments for {cls.qualname}")
    return StandIn(cls.qualname, args, kwargs)


def _set_state(inst: StandIn, state) -> None:
    """BUILD: a dict state (or pickle's (dict, slots) pair) becomes attributes, anything else is kept aside."""
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    if all(part is None or isinstance(part, dict) for part in parts):
        for part in parts:
            inst.__dict__.update(part or {})
    else:
        inst.pickle_state = state


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"malformed arguments for {what}")


def _ints(values) -> bool:
    return isinstance(values, (tuple, list)) and all(type(v) is int and v >= 0 for v in values)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch's own rebuild, given only a storage of this checkpoint, sizes that fit in it and no hooks."""
    _check(isinstance(storage, TypedStorage) and type(offset) is int and offset >= 0 and _ints(size)
           and _ints(stride) and len(size) == len(stride) and isinstance(requires_grad, bool)
           and (metadata is None or isinstance(metadata, dict) and all(
               type(k) is str and type(v) is bool for k, v in metadata.items())), "a tensor")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
    nbytes = storage._untyped_storage.nbytes()
    if (last + 1) * storage.dtype.itemsize > nbytes:   # torch would silently grow the storage
        raise ValueError(f"a tensor of size {tuple(size)} overruns its storage of {nbytes} bytes")
    # The file's backward hooks would be callables from the pickle: they are never attached.
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), requires_grad,
                                           OrderedDict(), metadata)


def _parameter(data, requires_grad=True):
    _check(isinstance(data, torch.Tensor) and isinstance(requires_grad, bool), "a parameter")
    return torch.nn.Parameter(data, requires_grad)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return _parameter(data, requires_grad)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """A parameter with extra Python attributes; names torch.nn.Parameter defines (`data`, `grad`, ...) are
    refused, as setting them would run their setters."""
    param = _parameter(data, requires_grad)
    parts = state if isinstance(state, tuple) else (state,)
    _check(len(parts) <= 2 and all(part is None or isinstance(part, dict) for part in parts), "a parameter's state")
    for part in parts:
        for key, value in (part or {}).items():
            _check(type(key) is str and not hasattr(torch.nn.Parameter, key), f"a parameter's attribute {key!r}")
            param.__dict__[key] = value
    return param


def _ordered_dict(items=()):
    _check(isinstance(items, (list, tuple)), "an OrderedDict")
    return OrderedDict(items)


def _size(dims):
    _check(isinstance(dims, (tuple, list)) and all(type(d) is int for d in dims), "a torch.Size")
    return torch.Size(dims)


def _device(kind, index=None):
    _check(type(kind) is str and (index is None or type(index) is int), "a torch.device")
    return torch.device(kind) if index is None else torch.device(kind, index)


def _set(items=()):
    _check(isinstance(items, (list, tuple, set, frozenset)), "a set")
    return set(items)


def _frozenset(items=()):
    return frozenset(_set(items))


def _slice(*bounds):
    _check(1 <= len(bounds) <= 3 and all(b is None or type(b) is int for b in bounds), "a slice")
    return slice(*bounds)


def _complex(real=0.0, imag=0.0):
    _check(all(type(x) in (int, float) for x in (real, imag)), "a complex number")
    return complex(real, imag)


def _encode(text, encoding):
    """How pickle protocol 2 writes bytes: `_codecs.encode(text, "latin1")`."""
    _check(type(text) is str and encoding in ("latin1", "latin-1"), "bytes")
    return text.encode("latin-1")


def _bytes():
    """How pickle protocol 2 writes empty bytes: `bytes()`."""
    return b""


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocols 0 and 1): an object of `cls`; `base` is never called."""
    return _new(cls, () if state is None else (state,))


def _newobj(cls, *args):
    return _new(cls, args)


_CALLS = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.Size": _size,
    "torch.device": _device,
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.slice": _slice,
    "builtins.complex": _complex,
    "_codecs.encode": _encode,
    "builtins.bytes": _bytes,
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
}
_CALL_IDS = frozenset(map(id, _CALLS.values()))


def _storage_dtype(module: str, name: str):
    """The dtype a storage class (torch.FloatStorage, torch.UntypedStorage, ...) stands for, else None."""
    if module not in ("torch", "torch.cuda", "torch.storage") or not name.endswith("Storage"):
        return None
    if name == "UntypedStorage":
        return torch.uint8
    try:
        return _get_dtype_from_pickle_storage_type(name)
    except KeyError:
        return None


class _Unpickler(pickle._Unpickler):
    """Python's own unpickler with every opcode that can call, import or set attributes replaced.

    REDUCE, NEWOBJ(_EX), INST and OBJ reach only the allow-listed functions above or make StandIns;
    BUILD, APPEND(S), SETITEM(S) and ADDITEMS touch only plain containers and StandIns, never looking
    up a method on an object from the file. `fetch(key, dtype, nbytes)` gives the bytes of a storage.
    """
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, fetch=None):
        super().__init__(file, encoding="utf-8")   # as torch.load
        self._fetch, self._roots = fetch, {}

    def find_class(self, module, name):
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)   # protocols < 3 write __builtin__, copy_reg
        qualname = f"{module}.{name}"
        for found in (_CALLS.get(qualname), _DTYPES.get(qualname), _storage_dtype(module, name)):
            if found is not None:
                return found
        refused = any(module == m or module.startswith(m + ".") for m in _REFUSED_MODULES)
        looks_like_class = name.rpartition(".")[2].lstrip("_")[:1].isupper()
        return GlobalRef(qualname, looks_like_class and not refused)

    def persistent_load(self, pid):
        """Storages ('storage', dtype, key, location, numel[, view]) on the CPU; legacy files also name
        module classes ('module', class, source file, source). A storage is read once, however many
        tensors share it."""
        _check(isinstance(pid, tuple) and len(pid) > 0, "a persistent id")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) == 4 and isinstance(pid[1], GlobalRef):
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6) or self._fetch is None:
            raise ValueError(f"unexpected persistent id {str(pid)[:80]}")
        dtype, key, numel = pid[1], pid[2], pid[4]
        _check(isinstance(dtype, torch.dtype) and type(key) is str and type(numel) is int and numel >= 0,
               "a storage")
        nbytes = numel * dtype.itemsize
        root = self._roots.get(key)
        if root is None:
            root = self._roots[key] = self._fetch(key, dtype, nbytes)
        elif root.nbytes() != nbytes:
            raise ValueError(f"storage {key} is referenced with {nbytes} and {root.nbytes()} bytes")
        if len(pid) == 6 and pid[5] is not None:
            raise ValueError("storage views (files of torch < 1.0) are not supported")
        return TypedStorage(wrap_storage=root, dtype=dtype, _internal=True)

    def _make(self, target, args, kwargs=None):
        if isinstance(target, GlobalRef):
            return _new(target, args, kwargs)
        if id(target) not in _CALL_IDS:
            raise _Refused(f"calls a {type(target).__name__} object")
        _check(type(args) is tuple and not kwargs, target.__name__)
        return target(*args)

    def _load_reduce_or_newobj(self):   # both leave (callable, args) on the stack
        args = self.stack.pop()
        self.stack[-1] = self._make(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = dispatch[pickle.NEWOBJ[0]] = _load_reduce_or_newobj

    def _load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        self.stack[-1] = self._make(self.stack[-1], args, kwargs)
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex

    def _instantiate(self, klass, args):   # INST and OBJ
        self.append(self._make(klass, tuple(args)))

    def _load_build(self):
        state, inst = self.stack.pop(), self.stack[-1]
        if type(inst) is not StandIn:
            raise _Refused(f"sets the state of a {type(inst).__name__} object")
        _set_state(inst, state)
    dispatch[pickle.BUILD[0]] = _load_build

    def _extend(self, items):
        target = self.stack[-1]
        if type(target) is list:
            target.extend(items)
        elif type(target) is StandIn:
            target.pickle_list.extend(items)
        else:
            raise _Refused(f"appends to a {type(target).__name__} object")

    def _load_append(self):
        self._extend([self.stack.pop()])
    dispatch[pickle.APPEND[0]] = _load_append

    def _load_appends(self):
        self._extend(self.pop_mark())
    dispatch[pickle.APPENDS[0]] = _load_appends

    def _set_items(self, items):
        target = self.stack[-1]
        mapping = target.pickle_items if type(target) is StandIn else target
        _check(len(items) % 2 == 0, "SETITEMS")
        if type(mapping) not in (dict, OrderedDict):
            raise _Refused(f"sets items of a {type(target).__name__} object")
        for i in range(0, len(items), 2):
            mapping[items[i]] = items[i + 1]

    def _load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items([key, value])
    dispatch[pickle.SETITEM[0]] = _load_setitem

    def _load_setitems(self):
        self._set_items(self.pop_mark())
    dispatch[pickle.SETITEMS[0]] = _load_setitems

    def _load_additems(self):
        items, target = self.pop_mark(), self.stack[-1]
        if type(target) is not set:
            raise _Refused(f"adds items to a {type(target).__name__} object")
        target.update(items)
    dispatch[pickle.ADDITEMS[0]] = _load_additems


def _storage_from(data, dtype, byteorder: str) -> torch.UntypedStorage:
    storage = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
    if byteorder != sys.byteorder:
        storage.byteswap(dtype)
    return storage


def _read_zip(file, path: Path):
    """The zip format (torch >= 1.6): <folder>/data.pkl, <folder>/data/<key> storages, <folder>/byteorder."""
    with zipfile.ZipFile(file) as archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ZooError(f"{path}: a zip archive without exactly one <folder>/data.pkl, so not a torch checkpoint")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        _check(byteorder in ("little", "big"), "the byte order record")

        def fetch(key, dtype, nbytes):
            data = archive.read(f"{prefix}data/{key}")
            if len(data) != nbytes:
                raise ValueError(f"storage {key} holds {len(data)} bytes where the pickle expects {nbytes}")
            return _storage_from(data, dtype, byteorder)

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), fetch).load()


def _read_legacy(file, path: Path):
    """The format before torch 1.6: magic, protocol and system pickles, the object pickle, the list of
    storage keys, then each storage as an int64 element count and little-endian bytes."""
    try:
        magic, protocol = _Unpickler(file).load(), _Unpickler(file).load()
    except _Refused:
        raise
    except Exception:   # any other bytes
        magic = protocol = None
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
        raise ZooError(f"{path}: neither a torch zip checkpoint nor a legacy torch file")
    _Unpickler(file).load()   # system information (endianness, type sizes)
    pending, file_size = {}, path.stat().st_size

    def fetch(key, dtype, nbytes):
        if nbytes > file_size:   # storages are allocated before their bytes are read: bound the claim
            raise ValueError(f"storage {key} claims {nbytes} bytes, more than the whole file")
        pending[key] = (torch.UntypedStorage(nbytes), dtype)
        return pending[key][0]

    result = _Unpickler(file, fetch).load()
    for key in _Unpickler(file).load():
        storage, dtype = pending[key]
        (count,) = struct.unpack("<q", file.read(8))
        data = file.read(storage.nbytes())
        if count * dtype.itemsize != storage.nbytes() or len(data) != storage.nbytes():
            raise ValueError(f"storage {key} is truncated or has the wrong size")
        if data:
            storage.copy_(_storage_from(data, dtype, "little"))
    return result


def load_structural(path) -> object:
    """The object a torch checkpoint holds, with tensors on the CPU and unimported classes as StandIns.

    Raises ZooError (one line, naming the file) for a damaged or foreign file, and for a pickle that
    calls anything outside the allow-list, before anything it names has run.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":
                return _read_zip(file, path)
            file.seek(0)
            return _read_legacy(file, path)
    except ZooError:
        raise
    except _Refused as exc:
        raise ZooError(f"{path}: pickle {_one_line(exc)}, which is not allowed (reading a checkpoint never runs code "
                       f"named in it; only tensors, plain containers and class names are read)") from None
    except Exception as exc:   # a truncated or foreign file fails anywhere in zipfile, pickle or torch
        raise ZooError(f"{path}: cannot read torch checkpoint: {type(exc).__name__}: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    """Names in a pickle are arbitrary strings: keep messages to one short line."""
    return " ".join(str(exc).split())[:200] or "no details"


def _is_module(obj) -> bool:
    state = vars(obj) if type(obj) is StandIn else {}
    return all(isinstance(state.get(key), dict) for key in ("_parameters", "_buffers", "_modules"))


def _module_tensors(module: StandIn, prefix: str, out: OrderedDict, source: str, ancestors=()) -> None:
    """What torch.nn.Module.state_dict collects: parameters, persistent buffers, then submodules."""
    state = vars(module)
    skip = state.get("_non_persistent_buffers_set") or set()
    if module in ancestors:   # torch would recurse forever
        raise ZooError(f"{source}: module {prefix[:-1]} ({module.pickled_name}) contains itself")
    if not isinstance(skip, (set, frozenset)):
        raise ZooError(f"{source}: {prefix}_non_persistent_buffers_set of {module.pickled_name} is not a set")
    entries = [*state["_parameters"].items(), *((k, v) for k, v in state["_buffers"].items() if k not in skip)]
    for name, tensor in entries:
        if tensor is not None:
            if not isinstance(tensor, torch.Tensor):
                raise ZooError(f"{source}: {prefix}{name} of {module.pickled_name} is not a tensor")
            out[prefix + name] = tensor.detach()
    for name, child in state["_modules"].items():
        if child is not None:
            if not _is_module(child):
                raise ZooError(f"{source}: submodule {prefix}{name} of {module.pickled_name} is not a module")
            _module_tensors(child, f"{prefix}{name}.", out, source, (*ancestors, module))


def module_state_dict(obj, source: str = "checkpoint") -> OrderedDict[str, torch.Tensor]:
    """The state dict torch would give for a StandIn module tree, or a plain state dict (possibly under a
    "state_dict"/"model_state_dict"/"model" key). `source` names the file in errors.

    Why: a StandIn has no `state_dict()`; the walk mirrors torch's. Entries a module's own code would
    add (`get_extra_state`, state-dict hooks) are absent: that code is never run.
    """
    if _is_module(obj):
        out = OrderedDict()
        _module_tensors(obj, "", out, source)
        return out
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict) or _is_module(obj.get(key)):
                return module_state_dict(obj[key], source)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return OrderedDict(obj)
    found = obj.pickled_name if type(obj) is StandIn else type(obj).__name__
    raise ZooError(f"{source}: holds no module or state dict of named tensors (found {found})")


def classification_head(obj, source: str = "checkpoint") -> dict:
    """{"weight", "bias" (None if absent), "normalize"} of a StandIn linear head such as the task vectors'
    `src.modeling.ClassificationHead` (`normalize` is None when the module has no such attribute, e.g. a
    plain pickled torch.nn.Linear: the file then says nothing about the head's input)."""
    state = vars(obj) if _is_module(obj) else {}
    params = state.get("_parameters", {})
    weight, bias, normalize = params.get("weight"), params.get("bias"), state.get("normalize")
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2 and (normalize is None or isinstance(normalize, bool))
            and (bias is None or isinstance(bias, torch.Tensor) and bias.shape == weight.shape[:1])):
        found = obj.pickled_name if type(obj) is StandIn else type(obj).__name__
        raise ZooError(f"{source}: not a linear classification head with a 2-D weight, a matching bias and a "
                       f"bool normalize flag (found {found})")
    return {"weight": weight.detach(), "bias": None if bias is None else bias.detach(), "normalize": normalize}
