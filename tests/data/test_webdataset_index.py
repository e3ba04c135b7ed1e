"""The per-tar index cache of WebDataset shards (synthpos.data.webdataset.index_tar).

A cached index must give what scanning the tar gives, be used only for the tar it was made
from (size, modification time, inode), be rebuilt when the tar changes or the cache file is
damaged, and never be written for a tar whose time cannot yet tell a rewrite apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from synthpos.data import webdataset
from synthpos.data.webdataset import INDEX_DIR, index_shards, index_tar

from test_stream import jpeg_bytes, write_shards

OLD = time.time_ns() - 3600 * 10**9  # an hour ago: old enough to be cached


def _samples(labels: list[int], side: int = 8) -> list[tuple[bytes, int]]:
    """JPEGs of noise seeded by position (the same list of labels gives the same bytes), with their classes."""
    return [(jpeg_bytes(np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)), c)
            for i, c in enumerate(labels)]


def _age(path: Path, ns: int = OLD) -> None:
    os.utime(path, ns=(ns, ns))


@pytest.fixture
def scans(monkeypatch) -> list[str]:
    """The tars actually read (headers scanned), by name."""
    seen: list[str] = []
    original = webdataset._scan_tar

    def counted(path):
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(webdataset, "_scan_tar", counted)
    return seen


def test_a_cached_index_equals_the_scan_and_spares_the_second_read(tmp_path, scans) -> None:
    write_shards(tmp_path, _samples([0, 1, 2, 1, 0]), per_shard=2)
    paths = sorted(tmp_path.glob("*.tar"))
    for p in paths:
        _age(p)
    fresh_images, fresh_labels = index_shards(paths, cache=False)
    assert not (tmp_path / INDEX_DIR).exists() and len(scans) == 3
    first = index_shards(paths)
    assert sorted(f.name for f in (tmp_path / INDEX_DIR).iterdir()) == [f"{p.name}.npz" for p in paths]
    scans.clear()
    images, labels = index_shards(paths)
    assert scans == []  # all three from the cache
    for got in (first, (images, labels)):
        np.testing.assert_array_equal(got[0].member, fresh_images.member)
        np.testing.assert_array_equal(got[1], fresh_labels)
    np.testing.assert_array_equal(labels, [0, 1, 2, 1, 0])
    assert images.read(4) == _samples([0, 1, 2, 1, 0])[4][0]


def test_a_changed_tar_is_indexed_again_and_its_cache_rewritten(tmp_path, scans) -> None:
    write_shards(tmp_path, _samples([0, 1]), per_shard=2)
    tar = tmp_path / "shard-00000.tar"
    _age(tar)
    np.testing.assert_array_equal(index_tar(tar)[1], [0, 1])
    # Same size, same inode, other classes: only the modification time tells.
    write_shards(tmp_path, _samples([1, 0]), per_shard=2)
    _age(tar, OLD + 10**9)
    scans.clear()
    np.testing.assert_array_equal(index_tar(tar)[1], [1, 0])
    assert scans == [tar.name]
    scans.clear()
    np.testing.assert_array_equal(index_tar(tar)[1], [1, 0])  # the rewritten cache is the new tar's
    assert scans == []
    # More samples (another size: tar pads to 10 KiB records, so larger images) with the very same time: the size tells.
    size = tar.stat().st_size
    write_shards(tmp_path, _samples([2, 2, 2], side=64), per_shard=3)
    _age(tar, OLD + 10**9)
    assert tar.stat().st_size != size
    np.testing.assert_array_equal(index_tar(tar)[1], [2, 2, 2])


def test_a_stale_or_damaged_cache_is_never_used(tmp_path, scans) -> None:
    write_shards(tmp_path / "a", _samples([0, 1]), per_shard=2)
    write_shards(tmp_path / "b", _samples([1, 0]), per_shard=2)
    a, b = tmp_path / "a" / "shard-00000.tar", tmp_path / "b" / "shard-00000.tar"
    _age(a)
    _age(b)
    index_tar(a)
    cache_b = tmp_path / "b" / INDEX_DIR / f"{b.name}.npz"
    cache_b.parent.mkdir()
    cache_b.write_bytes((tmp_path / "a" / INDEX_DIR / f"{a.name}.npz").read_bytes())  # another tar's index
    scans.clear()
    np.testing.assert_array_equal(index_tar(b)[1], [1, 0])
    assert scans == [b.name]
    cache_b.write_bytes(b"PK\x03\x04 not a whole zip")  # a cache file cut short
    scans.clear()
    np.testing.assert_array_equal(index_tar(b)[1], [1, 0])
    assert scans == [b.name] and np.load(cache_b)["labels"].tolist() == [1, 0]  # rewritten whole


def test_a_just_written_tar_is_not_cached_and_a_read_only_folder_uses_the_user_cache(tmp_path, monkeypatch) -> None:
    write_shards(tmp_path / "data", _samples([0, 1]), per_shard=2)
    tar = tmp_path / "data" / "shard-00000.tar"
    index_tar(tar)  # written a moment ago: a rewrite in the same time tick could not be told apart
    assert not (tmp_path / "data" / INDEX_DIR).exists()
    _age(tar)
    (tmp_path / "data" / INDEX_DIR).write_text("a file where the cache folder would go: not writable")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    np.testing.assert_array_equal(index_tar(tar)[1], [0, 1])
    assert [p.name for p in (tmp_path / "user" / "synthpos" / "tar-index").glob("*/*.npz")] == [f"{tar.name}.npz"]


def test_new_bytes_under_the_old_modification_time_are_indexed_again(tmp_path, scans) -> None:
    """``cp -p`` / ``touch -r`` put back the old mtime; the change time still says the tar is new."""
    write_shards(tmp_path, _samples([0, 1]), per_shard=2)
    (path,) = sorted(tmp_path.glob("*.tar"))
    _age(path)
    index_shards([path])
    other = tmp_path / "other"
    other.mkdir()
    write_shards(other, _samples([1, 0]), per_shard=2)
    (new,) = sorted(other.glob("*.tar"))
    assert new.stat().st_size == path.stat().st_size
    data = new.read_bytes()
    with open(path, "r+b") as fh:  # same inode, same size
        fh.write(data)
    _age(path)  # the old modification time put back
    scans.clear()
    _, labels = index_shards([path])
    assert scans == [path.name] and labels.tolist() == [1, 0]
