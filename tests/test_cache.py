"""Crash-safe writes and checksummed cache entries."""
import json

import pytest

from flexmerge_core.cache import (JsonCache, atomic_directory, atomic_write_bytes, atomic_write_json,
                                  content_hash, read_checked_json)


def test_content_hash_is_order_independent_for_dicts_and_sensitive_to_values():
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_failed_write_leaves_no_file_under_final_name(tmp_path):
    target = tmp_path / "out.bin"

    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    from flexmerge_core.cache import atomic_write
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_json_entry_round_trip_and_corruption_detected(tmp_path):
    path = tmp_path / "entry.json"
    atomic_write_json(path, {"acc": [0.5, 0.75]})
    assert read_checked_json(path) == {"acc": [0.5, 0.75]}
    doc = json.loads(path.read_text())
    doc["payload"]["acc"][0] = 0.9          # tampered payload, stale checksum
    path.write_text(json.dumps(doc))
    assert read_checked_json(path) is None
    atomic_write_bytes(path, b"{not json")
    assert read_checked_json(path) is None


def test_json_cache_recomputes_only_when_missing_or_corrupt(tmp_path):
    cache = JsonCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"v": len(calls)}

    assert cache.get_or_compute("k", compute) == {"v": 1}
    assert cache.get_or_compute("k", compute) == {"v": 1}
    cache.path("k").write_text("garbage")
    assert cache.get_or_compute("k", compute) == {"v": 2}
    assert len(calls) == 2


def test_atomic_directory_replaces_whole_folder_or_nothing(tmp_path):
    final = tmp_path / "zoo"
    atomic_directory(final, lambda d: (d / "a.txt").write_text("one"))
    assert (final / "a.txt").read_text() == "one"

    def failing(d):
        (d / "b.txt").write_text("two")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory(final, failing)
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]


def test_stale_temporaries_of_killed_writers_are_swept_but_fresh_ones_kept(tmp_path):
    import os
    import time

    from flexmerge_core.cache import STALE_TEMPORARY_SECONDS
    old_file = tmp_path / ".entry.json.abc.tmp"
    old_dir = tmp_path / ".zoo.xyz.tmp"
    fresh = tmp_path / ".other.json.def.tmp"
    old_file.write_text("partial")
    old_dir.mkdir()
    (old_dir / "a").write_text("partial")
    fresh.write_text("being written")
    long_ago = time.time() - STALE_TEMPORARY_SECONDS - 60
    for path in (old_file, old_dir):
        os.utime(path, (long_ago, long_ago))
    atomic_write_json(tmp_path / "entry.json", {"v": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.def.tmp", "entry.json"]


def _swap(a, b) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def test_json_entries_swapped_on_disk_are_misses_and_rebuilt(tmp_path):
    """Two valid entries exchanged on disk: each is found under the other's key, so neither is trusted."""
    cache = JsonCache(tmp_path)
    cache.put("key-a", {"accuracy": 0.25})
    cache.put("key-b", {"accuracy": 0.75})
    _swap(cache.path("key-a"), cache.path("key-b"))
    assert cache.get("key-a") is None and cache.get("key-b") is None
    assert read_checked_json(cache.path("key-a")) == {"accuracy": 0.75}   # intact, just not key-a's
    assert cache.get_or_compute("key-a", lambda: {"accuracy": 0.25}) == {"accuracy": 0.25}
    assert cache.get("key-a") == {"accuracy": 0.25}


def test_tensor_entries_carry_their_key_and_checksum(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from flexmerge_core.cache import read_tensor_entry, write_tensor_entry

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_tensor_entry(a, "a", {"w": torch.ones(3)}, {"members": "[0, 1]"})
    write_tensor_entry(b, "b", {"w": torch.zeros(3)}, {"members": "[2]"})
    tensors, meta = read_tensor_entry(a, "a")
    assert torch.equal(tensors["w"], torch.ones(3)) and meta == {"members": "[0, 1]", "key": "a"}
    _swap(a, b)
    assert read_tensor_entry(a, "a") is None and read_tensor_entry(b, "b") is None
    assert read_tensor_entry(a, "b") is not None            # the entry itself is intact
    with __import__("safetensors").safe_open(str(a), framework="pt") as f:
        meta = f.metadata()
    save_file({"w": load_file(str(a))["w"] + 1}, str(a), metadata=meta)   # altered bytes, stale checksum
    assert read_tensor_entry(a, "b") is None


def test_group_cache_swapped_entries_are_recomputed(tmp_path):
    import torch

    from flexmerge_core.algorithms.base import MergeResult
    from flexmerge_core.deployment.group_cache import GroupResultCache

    groups = GroupResultCache(tmp_path)
    groups.store("g1", MergeResult(unified={"w": torch.ones(2)}, members=(0, 1)))
    groups.store("g2", MergeResult(unified={"w": torch.zeros(2)}, members=(2,)))
    assert groups.load("g1").members == (0, 1)
    _swap(groups.path("g1"), groups.path("g2"))
    assert groups.load("g1") is None and groups.load("g2") is None


def test_several_files_are_published_all_or_none(tmp_path):
    """A failure while renaming the second file removes the first again (an export is never half there)."""
    from flexmerge_core.cache import atomic_write_all
    from flexmerge_core.errors import CacheError

    first, blocked = tmp_path / "model.bin", tmp_path / "model.recipe.json"
    blocked.mkdir()                       # a folder under the recipe's name: its rename fails
    with pytest.raises(CacheError, match="model.recipe.json"):
        atomic_write_all({first: lambda tmp: tmp.write_bytes(b"model"), blocked: lambda tmp: tmp.write_bytes(b"{}")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.recipe.json"] and blocked.is_dir()
    atomic_write_all({first: lambda tmp: tmp.write_bytes(b"model"), tmp_path / "r.json": lambda tmp: tmp.write_bytes(b"{}")})
    assert first.read_bytes() == b"model" and (tmp_path / "r.json").read_bytes() == b"{}"


def test_empty_cache_variable_is_refused_not_the_current_folder(monkeypatch):
    from flexmerge_core.cache import cache_root
    from flexmerge_core.errors import CacheError

    monkeypatch.setenv("FLEXMERGE_CACHE", "")
    with pytest.raises(CacheError, match="FLEXMERGE_CACHE is set but empty"):
        cache_root()
    monkeypatch.setenv("FLEXMERGE_CACHE", "relative/cache")
    assert str(cache_root()) == "relative/cache"
