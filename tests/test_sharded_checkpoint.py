"""Sharded safetensors checkpoints (HuggingFace's index + shards) read lazily, tensor by tensor."""
import json

import pytest
import torch
from safetensors.torch import save_file

from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.checkpoint import CheckpointFile


def write_sharded(folder, state, shards=2):
    """HF's layout: model-0000i-of-0000n.safetensors + model.safetensors.index.json (weight_map)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(folder / shard))
        weight_map.update({n: shard for n in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.fixture
def state():
    torch.manual_seed(0)
    return {"embed.weight": torch.randn(5, 4), "layers.0.w": torch.randn(4, 4).half(),
            "layers.1.w": torch.randn(4, 4), "norm.weight": torch.ones(4, dtype=torch.bfloat16)}


def test_index_reads_every_tensor_from_its_shard_lazily(tmp_path, state):
    checkpoint = CheckpointFile(write_sharded(tmp_path / "m", state, shards=3), "pretrained")
    assert checkpoint.shapes == {n: tuple(t.shape) for n, t in state.items()}
    assert checkpoint.dtypes == {n: t.dtype for n, t in state.items()}
    assert checkpoint.reads == 0
    assert torch.equal(checkpoint.read("layers.1.w"), state["layers.1.w"])
    assert checkpoint.reads == 1
    assert len(checkpoint.files) == 4          # the index and its three shards
    for name, tensor in state.items():
        assert torch.equal(checkpoint.read(name), tensor)


def test_missing_shard_is_named(tmp_path, state):
    index = write_sharded(tmp_path / "m", state)
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ZooError, match="shard 'model-00002-of-00002.safetensors' of pretrained not found"):
        CheckpointFile(index, "pretrained")


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, state):
    index = write_sharded(tmp_path / "m", state)
    doc = json.loads(index.read_text())
    doc["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(ZooError, match="tensor 'ghost.weight' of task 'a' is named by the index"):
        CheckpointFile(index, "task 'a'")


@pytest.mark.parametrize("text", ["{", "{\"weight_map\": [1, 2]}", "{\"metadata\": {}}"])
def test_malformed_index(tmp_path, text):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(text)
    with pytest.raises(ZooError, match="not a safetensors index of pretrained"):
        CheckpointFile(index, "pretrained")


def test_truncated_shard_is_a_clear_error(tmp_path, state):
    index = write_sharded(tmp_path / "m", state)
    shard = tmp_path / "m" / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(ZooError, match="cannot read safetensors file of pretrained"):
        CheckpointFile(index, "pretrained")


def test_a_zoo_of_sharded_checkpoints_opens_and_its_fingerprint_follows_the_shards(tmp_path):
    from open_clip.transformer import VisionTransformer

    from flexmerge_core.zoo import open_zoo

    config = {"image_size": 8, "patch_size": 4, "width": 8, "layers": 1, "heads": 2, "mlp_ratio": 2, "output_dim": 4}
    torch.manual_seed(1)
    pretrained = VisionTransformer(**config).state_dict()
    write_sharded(tmp_path / "pre", pretrained)
    tasks = []
    for t in range(2):
        write_sharded(tmp_path / f"t{t}", {k: v + 0.1 * (t + 1) for k, v in pretrained.items()})
        tasks.append({"name": f"t{t}", "checkpoint": f"t{t}/model.safetensors.index.json"})
    (tmp_path / "zoo.json").write_text(json.dumps({
        "format": "flexmerge-zoo/1", "architecture": {"kind": "open_clip_vit", "config": config},
        "pretrained": "pre/model.safetensors.index.json", "tasks": tasks}))
    zoo = open_zoo(tmp_path)
    vectors = zoo.task_vectors(["conv1.weight"])["conv1.weight"]
    assert torch.allclose(vectors[1], torch.full_like(vectors[1], 0.2))
    before = zoo.fingerprint
    shard = tmp_path / "t1" / "model-00002-of-00002.safetensors"
    save_file({k: v + 0.3 for k, v in list(pretrained.items())[1::2]}, str(shard))
    assert open_zoo(tmp_path).fingerprint != before
