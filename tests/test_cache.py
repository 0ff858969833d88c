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
