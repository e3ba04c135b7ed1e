"""Store integrity: truncated, zeroed and deleted shards and damaged manifests are found, named, and stamped once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthpos.data import store_integrity
from synthpos.data.store_integrity import STAMP, check_store, ensure_verified, npy_size
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError

N, K, SHARD, SHAPE = 10, 2, 4, (3, 3, 1)  # shards [0, 4), [4, 8), [8, 10)


@pytest.fixture
def store(tmp_path: Path) -> SyntheticStore:
    """A complete store of random bytes, its records folded into the manifest as generate leaves it."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, *SHAPE), dtype=np.uint8)
    made = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("toy", "train", images),
                                 candidates=K, shard_size=SHARD, generator={"kind": "test"})
    for s in range(made.layout.num_shards):
        start, end = made.layout.shard_range(s)
        made.write_shard(s, rng.integers(0, 256, size=(end - start, K, *SHAPE), dtype=np.uint8))
    made.fold_records()
    return made


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files this process hashes."""
    names: list[str] = []
    original = store_integrity.file_digest

    def counting(path):
        names.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(store_integrity, "file_digest", counting)
    return names


def _zero(path: Path, keep_times: bool = False) -> None:
    """Overwrite a file with zeros in place (same size, same inode), optionally restoring its times."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(bytes(st.st_size))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        # File times are coarse (a few ms on ext4): make sure this write shows, as any later one would.
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _states(store: SyntheticStore) -> dict[str, str]:
    return {s.name: s.state for s in check_store(store, full=True)}


# ----------------------------------------------------------------------------- what is recorded


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (4, 2, 3, 3, 1), (2, 8, 32, 32, 3), (500, 8, 28, 28, 1)])
def test_npy_size_is_what_np_save_writes(tmp_path, shape) -> None:
    np.save(tmp_path / "a.npy", np.zeros(shape, np.uint8))
    assert npy_size(shape) == (tmp_path / "a.npy").stat().st_size


def test_records_are_the_written_files_sha256(store) -> None:
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == [f"shard-{s:05d}.npy" for s in range(3)]
    for name, record in manifest["shards"].items():
        data = (store.path / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(_states(store).values()) == {"ok"}


def test_records_before_folding_count_too(tmp_path, store) -> None:
    # An interrupted generation leaves its records beside the shards: they are the shards' records.
    manifest = json.loads((store.path / "manifest.json").read_text())
    records = manifest.pop("shards")
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    (store.path / "shard-00001.record.json").write_text(json.dumps(records["shard-00001.npy"]))
    reopened = SyntheticStore.open(store.path)
    assert reopened.records() == {"shard-00001.npy": records["shard-00001.npy"]}
    assert _states(reopened) == {"shard-00000.npy": "no hash", "shard-00001.npy": "ok", "shard-00002.npy": "no hash"}
    (store.path / "shard-00001.record.json").write_text("{cut sh")  # an unreadable record vouches for nothing
    assert _states(reopened)["shard-00001.npy"] == "no hash"


# ----------------------------------------------------------------------------- the cheap check on open


def test_a_truncated_shard_is_named_on_open(store) -> None:
    path = store.shard_path(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not SyntheticStore.open(store.path, require_complete=False).complete
    with pytest.raises(SynthposError, match=r"shard-00001\.npy is damaged \(truncated: .*synthpos generate") as err:
        SyntheticStore.open(store.path)
    assert "\n" not in str(err.value)
    path.write_bytes(data + b"\0")
    with pytest.raises(SynthposError, match="too long"):
        SyntheticStore.open(store.path)


def test_a_deleted_shard_is_named_on_open(store) -> None:
    store.shard_path(2).unlink()
    with pytest.raises(SynthposError, match=r"1 of 3 shards missing: shard-00002\.npy.*synthpos generate"):
        SyntheticStore.open(store.path)
    assert _states(store)["shard-00002.npy"] == "missing"


def test_missing_and_truncated_shards_are_named_together(store) -> None:
    store.shard_path(0).unlink()
    store.shard_path(2).write_bytes(b"\x93NUMPY")
    with pytest.raises(SynthposError, match=r"shard-00000\.npy is missing, and 1 more shard is missing or damaged "
                                            r"\(shard-00002\.npy\)"):
        SyntheticStore.open(store.path)


def test_a_zeroed_shard_read_without_verification_is_a_clear_error(store) -> None:
    _zero(store.shard_path(0))
    opened = SyntheticStore.open(store.path)  # same size: the cheap check cannot see it
    with pytest.raises(SynthposError, match=r"shard-00000\.npy is damaged"):
        opened[1]


# ----------------------------------------------------------------------------- the full check and its stamp


def test_first_use_hashes_once_then_the_stamp_vouches(store, hashed) -> None:
    (store.path / STAMP).unlink(missing_ok=True)
    SyntheticStore.open(store.path, verify="auto")
    assert sorted(hashed) == [f"shard-{s:05d}.npy" for s in range(3)]
    assert (store.path / STAMP).is_file()
    hashed.clear()
    SyntheticStore.open(store.path, verify="auto")
    assert hashed == [], "a fresh stamp: no second hashing"
    SyntheticStore.open(store.path, verify="always")
    assert len(hashed) == 3, "always: hashed anyway"


def test_a_copied_store_is_verified_on_first_use(tmp_path, store, hashed) -> None:
    ensure_verified(store)
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)  # copies times too, not inodes
    hashed.clear()
    SyntheticStore.open(copy, verify="auto")
    assert len(hashed) == 3


def test_a_zeroed_shard_is_found_by_the_first_verification_after_it_changed(store) -> None:
    ensure_verified(store)
    _zero(store.shard_path(1))
    with pytest.raises(SynthposError, match=r"shard-00001\.npy is damaged \(its sha256 differs.*synthpos generate") as err:
        SyntheticStore.open(store.path, verify="auto")
    assert "\n" not in str(err.value)
    # A damaged store is never stamped as good: the next open says the same.
    with pytest.raises(SynthposError, match="shard-00001.npy"):
        SyntheticStore.open(store.path, verify="auto")


def test_bytes_changed_without_the_time_changing_need_a_forced_check(store) -> None:
    ensure_verified(store)
    _zero(store.shard_path(2), keep_times=True)  # what a disk flipping bytes looks like: no new mtime
    SyntheticStore.open(store.path, verify="auto")  # the stamp still vouches for size, time and inode
    with pytest.raises(SynthposError, match=r"shard-00002\.npy is damaged"):
        SyntheticStore.open(store.path, verify="always")


def test_several_bad_shards_are_one_line(store) -> None:
    store.shard_path(0).unlink()
    _zero(store.shard_path(1))
    store.shard_path(2).write_bytes(b"\x93NUMPY")
    states = ensure_verified(store, raise_if_bad=False)
    assert [s.state for s in states] == ["missing", "damaged", "wrong size"]
    with pytest.raises(SynthposError) as err:
        ensure_verified(store)
    line = str(err.value)
    assert "\n" not in line and "shard-00000.npy is missing" in line
    assert "2 more shards are missing or damaged (shard-00001.npy, shard-00002.npy)" in line


def test_other_ranks_read_rank_zeros_stamp(store, hashed, monkeypatch) -> None:
    _zero(store.shard_path(1))
    states = ensure_verified(store, raise_if_bad=False)  # rank 0
    assert len(hashed) == 3
    hashed.clear()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning launched after rank 0 verified
    assert not store_integrity.is_leader()
    with pytest.raises(SynthposError, match="shard-00001.npy is damaged"):
        ensure_verified(store)
    assert hashed == [], "rank 0's stamp answers, nothing is hashed twice"
    assert ensure_verified(store, raise_if_bad=False) == states
    # Without a stamp (no rank 0 before it) a process checks for itself.
    (store.path / STAMP).unlink()
    ensure_verified(store, raise_if_bad=False)
    assert len(hashed) == 3


def test_a_read_only_store_is_verified_without_a_stamp(store, hashed, monkeypatch) -> None:
    def read_only(path, data):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(store_integrity, "write_json_atomically", read_only)
    assert [s.state for s in ensure_verified(store)] == ["ok"] * 3
    assert not (store.path / STAMP).exists() and len(hashed) == 3


def test_a_damaged_stamp_means_check_again(store, hashed) -> None:
    ensure_verified(store)
    hashed.clear()
    (store.path / STAMP).write_bytes(b"\xff\x00 not json")
    assert [s.state for s in ensure_verified(store)] == ["ok"] * 3
    assert len(hashed) == 3


# ----------------------------------------------------------------------------- damaged manifests


@pytest.mark.parametrize("damage", ["cut", "zeros", "random", "not_object", "no_key", "wrong_type", "bad_shape"])
def test_a_damaged_manifest_is_one_line(store, damage) -> None:
    path = store.path / "manifest.json"
    text = path.read_text()
    manifest = json.loads(text)
    data = {
        "cut": text[: len(text) // 2].encode(),
        "zeros": bytes(len(text)),
        "random": np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "not_object": b"[1, 2]",
        "no_key": json.dumps({k: v for k, v in manifest.items() if k != "shard_size"}).encode(),
        "wrong_type": json.dumps({**manifest, "candidates": "2"}).encode(),
        "bad_shape": json.dumps({**manifest, "image_shape": [3, 3]}).encode(),
    }[damage]
    path.write_bytes(data)
    with pytest.raises(SynthposError, match=r"manifest\.json is damaged .*synthpos generate") as err:
        SyntheticStore.open(store.path)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- stores from before hashes


def test_a_store_without_hashes_opens_and_says_how_to_upgrade(store, capsys) -> None:
    manifest = json.loads((store.path / "manifest.json").read_text())
    del manifest["shards"]
    (store.path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    opened = SyntheticStore.open(store.path, verify="auto")
    assert [s.state for s in check_store(opened, full=True)] == ["no hash"] * 3
    assert "3 of 3 shards have no recorded hash" in capsys.readouterr().err
    # Its shapes still give every shard's size: a truncated one is found all the same.
    store.shard_path(1).write_bytes(store.shard_path(1).read_bytes()[:-7])
    with pytest.raises(SynthposError, match=r"shard-00001\.npy is damaged \(truncated"):
        SyntheticStore.open(store.path, verify="auto")
