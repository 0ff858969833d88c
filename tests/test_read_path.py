"""Reading task vectors: pread in slices through a per-thread staging buffer, converted and subtracted as they
arrive, into new or reused memory. Every path must give exactly what a plain load gives (the reference below:
safetensors.load_file, .float(), minus the pretrained), in every file dtype, and still name a NaN/Inf's file."""
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from flexmerge_core.errors import ZooError
from flexmerge_core.planning.blocks import build_blocks
from flexmerge_core.planning.similarity import block_stream
from flexmerge_core.reused_buffer import ReusedBuffer
from flexmerge_core.zoo import checkpoint as checkpoint_module
from flexmerge_core.zoo import open_zoo, write_zoo

CONFIG = dict(image_size=8, patch_size=4, width=8, layers=2, heads=2, mlp_ratio=2, output_dim=4)
ARCH = {"kind": "open_clip_vit", "config": CONFIG}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SMALL_SLICE = 40   # bytes: slices end mid-row and a tensor's last slice is short


def _zoo(folder, dtype, num_tasks=3):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    pretrained = {k: v.detach().to(dtype) for k, v in VisionTransformer(**CONFIG).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    tasks = [{"name": f"task{i}", "state_dict": {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(dtype)
                                                 for k, v in pretrained.items()}} for i in range(num_tasks)]
    return write_zoo(folder, ARCH, pretrained, tasks)


def _reference(folder, task: int, name: str) -> torch.Tensor:
    """The straightforward task vector: both files loaded whole, widened, subtracted."""
    return load_file(str(folder / "tasks" / f"task{task}.safetensors"))[name].float() \
        - load_file(str(folder / "pretrained.safetensors"))[name].float()


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a.view(torch.int32),
                                                                                      b.view(torch.int32))


@pytest.fixture(params=[None, SMALL_SLICE], ids=["default-slices", "small-slices"])
def slices(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(checkpoint_module, "SLICE_BYTES", request.param)
    # a staging buffer left from another test's slice size must not be reused
    monkeypatch.setattr(checkpoint_module, "_staging_buffers", threading.local())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_read_path_gives_the_reference_bits(tmp_path, dtype, slices):
    folder = _zoo(tmp_path / "zoo", dtype)
    zoo = open_zoo(folder)
    names = zoo.param_names
    stacked = zoo.task_vectors(names, tasks=[2, 0])
    apart = zoo.task_vectors_apart(names, tasks=[1, 2])
    buffer = ReusedBuffer()
    for name in names:
        shape = zoo.param_shapes[name]
        assert _bits_equal(stacked[name][0], _reference(folder, 2, name))
        assert _bits_equal(stacked[name][1], _reference(folder, 0, name))
        assert _bits_equal(apart[0][name], _reference(folder, 1, name))
        assert apart[1][name].untyped_storage().nbytes() == apart[1][name].numel() * 4   # memory of its own
        into = zoo.task_vectors([name], into={name: buffer.view((3, *shape))})[name]
        assert all(_bits_equal(into[t], _reference(folder, t, name)) for t in range(3))
        if len(shape) >= 1 and shape[0] >= 3:
            rows = zoo.task_vector_rows(name, 1, shape[0] - 1, tasks=[0, 2])
            assert _bits_equal(rows[1], _reference(folder, 2, name)[1:shape[0] - 1])
            reused = zoo.task_vector_rows(name, 1, 3, into=buffer.view((3, 2, *shape[1:])))
            assert all(_bits_equal(reused[t], _reference(folder, t, name)[1:3]) for t in range(3))


@pytest.mark.parametrize("file_dtype", DTYPES + [torch.float64], ids=str)
def test_read_into_with_minus_is_copy_then_subtract(tmp_path, file_dtype, slices):
    """The same float operations as out.copy_(values).sub_(minus), also where converting rounds (float64 files)."""
    g = torch.Generator().manual_seed(4)
    values = (torch.randn(7, 5, generator=g, dtype=torch.float64) * 1e3).to(file_dtype)
    save_file({"w": values}, str(tmp_path / "m.safetensors"))
    file = checkpoint_module.CheckpointFile(tmp_path / "m.safetensors", "pretrained")
    minus = torch.randn(7, 5, generator=g)
    expected = torch.empty(7, 5).copy_(values).sub_(minus)
    assert _bits_equal(file.read_into("w", torch.empty(7, 5), minus=minus), expected)
    assert _bits_equal(file.read_into("w", torch.empty(3, 5), 2, 5, minus=minus[2:5]), expected[2:5])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("poisoned", ["task1", "pretrained"])
def test_a_non_finite_value_past_the_first_slice_names_file_and_tensor(tmp_path, monkeypatch, dtype, poisoned):
    monkeypatch.setattr(checkpoint_module, "SLICE_BYTES", SMALL_SLICE)
    monkeypatch.setattr(checkpoint_module, "_staging_buffers", threading.local())
    folder = _zoo(tmp_path / "zoo", dtype)
    path = folder / ("pretrained.safetensors" if poisoned == "pretrained" else "tasks/task1.safetensors")
    state = load_file(str(path))
    name = "transformer.resblocks.1.mlp.c_fc.weight"
    state[name][-1, -1] = float("inf")   # in the last slice
    save_file(state, str(path))
    role = "pretrained" if poisoned == "pretrained" else "task 'task1'"
    pattern = rf"{path.name}: non-finite .* tensor '{name}' of {role}"
    zoo = open_zoo(folder)
    rows = zoo.param_shapes[name][0]
    for read in (lambda: zoo.task_vectors([name]), lambda: zoo.task_vectors_apart([name]),
                 lambda: zoo.task_vector_rows(name, rows - 2, rows)):
        with pytest.raises(ZooError, match=pattern):
            read()


def test_threads_reading_at_once_each_get_their_own_values(tmp_path, monkeypatch):
    """The staging buffer is per thread: concurrent reads of different dtypes never see each other's bytes."""
    monkeypatch.setattr(checkpoint_module, "SLICE_BYTES", 1024)
    monkeypatch.setattr(checkpoint_module, "_staging_buffers", threading.local())
    g = torch.Generator().manual_seed(6)
    files, expected = {}, {}
    for dtype in (torch.float16, torch.bfloat16):
        values = torch.randn(256, 256, generator=g).to(dtype)
        save_file({"w": values}, str(tmp_path / f"{dtype}.safetensors"))
        files[dtype] = checkpoint_module.CheckpointFile(tmp_path / f"{dtype}.safetensors", "pretrained")
        expected[dtype] = values.float()
    failures = []

    def read(dtype):
        out = torch.empty(256, 256)
        for _ in range(30):
            if not _bits_equal(files[dtype].read_into("w", out), expected[dtype]):
                failures.append(dtype)

    threads = [threading.Thread(target=read, args=(dtype,)) for dtype in files for _ in range(3)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # threads switch between any two steps of a read
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert failures == []


def test_reused_buffer_lays_views_out_in_one_memory_and_grows_when_needed():
    buffer = ReusedBuffer()
    first = buffer.views({"a": (2, 3), "b": (4,)})
    assert first["a"].is_contiguous() and first["a"].shape == (2, 3) and first["b"].shape == (4,)
    assert first["b"].data_ptr() == first["a"].data_ptr() + 6 * 4
    again = buffer.view((10,))
    assert again.data_ptr() == first["a"].data_ptr()                     # the same memory, not a new tensor
    bigger = buffer.view((100,))
    assert bigger.shape == (100,) and bigger.dtype == torch.float32


def test_block_stream_gives_each_block_exactly_and_its_iterators_apart(tmp_path):
    zoo = open_zoo(_zoo(tmp_path / "zoo", torch.float16))
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    stream = block_stream(zoo, spec)
    other = stream()
    for block, got in zip(spec.blocks, stream()):
        expected = zoo.task_vectors(block.params)
        assert got.keys() == expected.keys() and all(_bits_equal(got[n], expected[n]) for n in expected)
    first = next(other)   # a second iterator reads into its own buffer
    assert all(_bits_equal(first[n], v) for n, v in zoo.task_vectors(spec.blocks[0].params).items())


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_all_finite_is_exact_where_the_sum_overflows(dtype):
    largest = torch.finfo(dtype).max
    assert checkpoint_module.all_finite(torch.full((4,), largest, dtype=dtype))      # the sum overflows: still finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not checkpoint_module.all_finite(torch.tensor([1.0, bad, 2.0], dtype=dtype))
    assert not checkpoint_module.all_finite(torch.tensor([float("inf"), -float("inf")], dtype=dtype))
    assert checkpoint_module.all_finite(torch.empty(0, dtype=dtype)) and checkpoint_module.all_finite(torch.arange(3))


def test_a_file_cut_short_after_opening_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "SLICE_BYTES", SMALL_SLICE)
    save_file({"a": torch.zeros(4), "w": torch.ones(50, 2, dtype=torch.float16)}, str(tmp_path / "m.safetensors"))
    file = checkpoint_module.CheckpointFile(tmp_path / "m.safetensors", "task 't'")
    path = tmp_path / "m.safetensors"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ZooError, match=r"m\.safetensors: tensor 'w' of task 't' is cut short"):
        file.read_into("w", torch.empty(50, 2))
