"""SyntheticStore: sharded, atomic, resumable, memory-mapped, tied to its dataset."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from synthpos.data.synthetic_store import FORMAT_VERSION, SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError

N, K, SHARD = 10, 3, 4  # shards: [0, 4), [4, 8), [8, 10)
SHAPE = (4, 4, 2)
GENERATOR = {"kind": "test", "seed": 0, "eta": 0.1}


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(N, *SHAPE), dtype=np.uint8)


@pytest.fixture
def candidates() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(N, K, *SHAPE), dtype=np.uint8)


def _create(path: Path, images: np.ndarray, **overrides) -> SyntheticStore:
    kwargs = {"candidates": K, "shard_size": SHARD, "generator": GENERATOR}
    kwargs.update(overrides)
    return SyntheticStore.create(path, dataset_fingerprint("toy", "train", images), **kwargs)


def _fill(store: SyntheticStore, data: np.ndarray, shards=None) -> None:
    for s in range(store.layout.num_shards) if shards is None else shards:
        start, end = store.layout.shard_range(s)
        store.write_shard(s, data[start:end])


@pytest.fixture
def full_store(tmp_path: Path, images: np.ndarray, candidates: np.ndarray) -> SyntheticStore:
    store = _create(tmp_path / "store", images)
    _fill(store, candidates)
    return store


# ----------------------------------------------------------------------------- write and read


def test_write_and_read_back(full_store: SyntheticStore, images, candidates) -> None:
    assert full_store.layout.num_shards == 3
    assert full_store.complete and full_store.missing_shards() == []
    store = SyntheticStore.open(full_store.path, "toy", "train", images)
    assert len(store) == N and store.candidates == K
    for i in range(N):
        np.testing.assert_array_equal(store[i], candidates[i])
        assert store[i].shape == (K, *SHAPE)
    np.testing.assert_array_equal(store[np.int64(7)], candidates[7])
    anchors = np.array([9, 0, 5, 5, 3, 8, 4])
    cands = np.array([2, 0, 1, 2, 0, 1, 1])
    got = store.get(anchors, cands)
    assert got.dtype == np.uint8 and got.shape == (len(anchors), *SHAPE)
    np.testing.assert_array_equal(got, candidates[anchors, cands])
    assert store.get(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0, *SHAPE)
    for bad in (-1, N):
        with pytest.raises(IndexError):
            store[bad]


def test_manifest_records_what_the_contract_lists(full_store: SyntheticStore, images) -> None:
    manifest = json.loads((full_store.path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["dataset"] == dataset_fingerprint("toy", "train", images)
    assert manifest["dataset"]["count"] == N and manifest["dataset"]["name"] == "toy" and manifest["dataset"]["split"] == "train"
    assert manifest["generator"] == GENERATOR
    assert manifest["candidates"] == K and manifest["image_shape"] == list(SHAPE) and manifest["dtype"] == "uint8"
    shards = ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    # Each shard's record waits beside it until generation folds them into the manifest.
    assert sorted(p.name for p in full_store.path.iterdir()) == sorted(
        ["manifest.json", *shards, *(name.replace(".npy", ".record.json") for name in shards)]
    )
    assert full_store.fold_records()
    assert sorted(p.name for p in full_store.path.iterdir()) == ["manifest.json", *shards]
    manifest = json.loads((full_store.path / "manifest.json").read_text())
    for name in shards:
        data = (full_store.path / name).read_bytes()
        assert manifest["shards"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not full_store.fold_records(), "nothing left to fold"
    assert np.load(full_store.shard_path(2)).shape == (2, K, *SHAPE)


def test_reads_are_memory_mapped(full_store: SyntheticStore, images) -> None:
    store = SyntheticStore.open(full_store.path, "toy", "train", images)
    assert store._maps == {}, "nothing should be read on open"
    store[5]
    store.get(np.array([9]), np.array([0]))
    assert set(store._maps) == {1, 2}
    def mapped(array) -> bool:  # a view whose chain of bases reaches the file's memory map
        while array is not None:
            if isinstance(array, np.memmap):
                return True
            array = array.base
        return False

    for array in store._maps.values():
        assert mapped(array)  # kept as a plain ndarray view of the map (cheaper fancy indexing)
        assert not array.flags.writeable
    # The rows handed out are views into the map, not copies of the shard.
    assert mapped(store[6])


# ----------------------------------------------------------------------------- atomic writes, resumption


def test_write_leaves_no_temporary_files(full_store: SyntheticStore) -> None:
    assert not [p for p in full_store.path.iterdir() if ".tmp" in p.name]


def test_a_crash_mid_write_leaves_the_shard_missing(tmp_path, images, candidates, monkeypatch) -> None:
    store = _create(tmp_path / "store", images)
    _fill(store, candidates, [0])

    def crashing_save(fh, array, *args, **kwargs):
        fh.write(b"\x93NUMPY half a shard")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(1, candidates[4:8])
    monkeypatch.undo()
    assert not store.shard_path(1).exists()
    assert store.missing_shards() == [1, 2]
    _fill(store, candidates, [1, 2])
    assert store.complete
    np.testing.assert_array_equal(SyntheticStore.open(store.path)[6], candidates[6])


def test_half_written_tmp_file_is_not_a_shard(tmp_path, images, candidates) -> None:
    store = _create(tmp_path / "store", images)
    _fill(store, candidates, [0, 2])
    junk = store.path / "shard-00001.npy.tmp-12345"
    junk.write_bytes(b"\x93NUMPY" + b"\0" * 10)
    assert store.missing_shards() == [1]
    assert not store.complete
    with pytest.raises(SynthposError, match="incomplete"):
        SyntheticStore.open(store.path)
    with pytest.raises(SynthposError, match="missing"):
        store[5]
    with pytest.raises(SynthposError):
        store.get(np.array([0, 5]), np.array([0, 0]))
    # Shards that are there can be read from an incomplete store.
    partial = SyntheticStore.open(store.path, require_complete=False)
    np.testing.assert_array_equal(partial[9], candidates[9])
    np.testing.assert_array_equal(partial.get(np.array([0, 8]), np.array([1, 2])), candidates[[0, 8], [1, 2]])


def test_missing_shards_after_partial_writes(tmp_path, images, candidates) -> None:
    store = _create(tmp_path / "store", images)
    assert store.missing_shards() == [0, 1, 2]
    _fill(store, candidates, [1])
    assert store.missing_shards() == [0, 2]
    # A reopened (resumed) store sees the same.
    again = _create(tmp_path / "store", images)
    assert again.missing_shards() == [0, 2]
    _fill(again, candidates, [2, 0])
    assert again.missing_shards() == [] and again.complete


def test_write_shard_checks_shape_and_dtype(tmp_path, images, candidates) -> None:
    store = _create(tmp_path / "store", images)
    with pytest.raises(ValueError):
        store.write_shard(0, candidates[0:4].astype(np.float32))
    with pytest.raises(ValueError):
        store.write_shard(0, candidates[0:4].astype(np.int16))
    with pytest.raises(ValueError):
        store.write_shard(0, candidates[0:3])  # too few anchors
    with pytest.raises(ValueError):
        store.write_shard(2, candidates[4:8])  # the last shard holds 2 anchors, not 4
    with pytest.raises(ValueError):
        store.write_shard(0, candidates[0:4, :2])  # K=2, not 3
    with pytest.raises(ValueError):
        store.write_shard(0, candidates[0:4, :, :, :, :1])  # one channel
    assert store.missing_shards() == [0, 1, 2]
    assert list(store.path.iterdir()) == [store.path / "manifest.json"]
    # A non-contiguous view of the right shape and dtype is fine.
    view = np.asfortranarray(candidates[8:10])
    store.write_shard(2, view)
    np.testing.assert_array_equal(store[9], candidates[9])


# ----------------------------------------------------------------------------- reopening with other settings


@pytest.mark.parametrize(
    "overrides",
    [{"candidates": K + 1}, {"shard_size": SHARD + 1}, {"generator": {**GENERATOR, "seed": 1}}, {"generator": {**GENERATOR, "eta": 0.0}}],
)
def test_reopening_with_other_settings_raises(full_store, images, overrides) -> None:
    with pytest.raises(SynthposError, match="different"):
        _create(full_store.path, images, **overrides)


def test_reopening_for_other_data_raises(full_store, images) -> None:
    other = images.copy()
    other[3, 0, 0, 0] ^= 1
    for fingerprint in (
        dataset_fingerprint("toy", "train", other),
        dataset_fingerprint("other", "train", images),
        dataset_fingerprint("toy", "test", images),
        dataset_fingerprint("toy", "train", images[:N - 1]),
    ):
        with pytest.raises(SynthposError):
            SyntheticStore.create(full_store.path, fingerprint, candidates=K, shard_size=SHARD, generator=GENERATOR)


def test_reopening_with_the_same_settings_keeps_the_shards(full_store, images, candidates) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in full_store.path.iterdir()}
    again = _create(full_store.path, images)
    assert again.complete
    assert {p.name: p.stat().st_mtime_ns for p in full_store.path.iterdir()} == before
    np.testing.assert_array_equal(again[1], candidates[1])


# ----------------------------------------------------------------------------- opening against a dataset


def test_open_rejects_other_datasets(full_store, images) -> None:
    path = full_store.path
    with pytest.raises(SynthposError, match="toy/train"):
        SyntheticStore.open(path, "other", "train", images)
    with pytest.raises(SynthposError, match="toy/train"):
        SyntheticStore.open(path, "toy", "test", images)
    with pytest.raises(SynthposError):
        SyntheticStore.open(path, None, None, images)
    with pytest.raises(SynthposError, match="holds"):
        SyntheticStore.open(path, "toy", "train", images[:, :, :, :1])
    with pytest.raises(SynthposError, match="holds"):
        SyntheticStore.open(path, "toy", "train", np.zeros((N, 5, 4, 2), np.uint8))


@pytest.mark.parametrize("which", [0, 4, N - 1])
def test_open_rejects_one_changed_pixel(full_store, images, which) -> None:
    changed = images.copy()
    changed[which, 1, 2, 1] = changed[which, 1, 2, 1] ^ 0x80
    with pytest.raises(SynthposError, match=f"image {which} differs"):
        SyntheticStore.open(full_store.path, "toy", "train", changed)


def test_open_checks_sampled_images_of_a_large_dataset(tmp_path) -> None:
    # More anchors than the 64 sampled: a change at a sampled index is caught.
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, size=(300, 2, 2, 1), dtype=np.uint8)
    store = SyntheticStore.create(tmp_path / "s", dataset_fingerprint("big", "train", big), candidates=1, shard_size=128, generator={})
    _fill(store, rng.integers(0, 256, size=(300, 1, 2, 2, 1), dtype=np.uint8))
    sampled = sorted(int(i) for i in store.manifest["dataset"]["sample_hashes"])
    assert len(sampled) == 64 and sampled[0] == 0 and sampled[-1] == 299
    SyntheticStore.open(store.path, "big", "train", big)
    for index in (sampled[1], sampled[37], sampled[-1]):
        changed = big.copy()
        changed[index] = 255 - changed[index]
        with pytest.raises(SynthposError, match="differs"):
            SyntheticStore.open(store.path, "big", "train", changed)
    # The first M anchors pass (and a change beyond M is not the subset's business).
    SyntheticStore.open(store.path, "big", "train", big[:100])
    changed = big.copy()
    changed[sampled[-1]] = 255 - changed[sampled[-1]]
    SyntheticStore.open(store.path, "big", "train", changed[:100])


def test_first_m_anchors_pass_more_than_n_raise(full_store, images) -> None:
    for m in (1, 4, N - 1, N):
        store = SyntheticStore.open(full_store.path, "toy", "train", images[:m])
        assert len(store) == N
    more = np.concatenate([images, images[:1]])
    with pytest.raises(SynthposError, match=f"{N} anchors"):
        SyntheticStore.open(full_store.path, "toy", "train", more)


def test_incomplete_store_with_require_complete_raises(tmp_path, images, candidates) -> None:
    store = _create(tmp_path / "store", images)
    _fill(store, candidates, [0, 1])
    with pytest.raises(SynthposError, match="1 of 3 shards missing"):
        SyntheticStore.open(store.path, "toy", "train", images)
    SyntheticStore.open(store.path, "toy", "train", images, require_complete=False)
    # The dataset is checked even when completeness is not required.
    with pytest.raises(SynthposError):
        SyntheticStore.open(store.path, "other", "train", images, require_complete=False)


def test_open_errors_for_missing_or_broken_manifests(tmp_path, full_store) -> None:
    with pytest.raises(SynthposError, match="no synthetic store"):
        SyntheticStore.open(tmp_path / "nowhere")
    manifest = full_store.path / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(SynthposError, match="format version"):
        SyntheticStore.open(full_store.path)
    manifest.write_text("{not json")
    with pytest.raises(SynthposError, match="not valid JSON"):
        SyntheticStore.open(full_store.path)


# ----------------------------------------------------------------------------- fingerprint


def test_dataset_fingerprint(images) -> None:
    fp = dataset_fingerprint("toy", "train", images)
    assert fp == dataset_fingerprint("toy", "train", images.copy())
    assert fp["count"] == N and fp["image_shape"] == list(SHAPE)
    assert sorted(int(i) for i in fp["sample_hashes"]) == list(range(N))
    changed = images.copy()
    changed[N - 1, 3, 3, 1] ^= 1
    assert dataset_fingerprint("toy", "train", changed)["content_hash"] != fp["content_hash"]
    # A non-contiguous view hashes like its contiguous copy.
    assert dataset_fingerprint("toy", "train", np.asfortranarray(images)) == fp
    assert dataset_fingerprint("toy", "train", images[:1])["sample_hashes"].keys() == {"0"}
    json.dumps(fp)


# ----------------------------------------------------------------------------- pickling (DataLoader workers)


def test_pickled_store_reads_the_same(full_store, images, candidates) -> None:
    store = SyntheticStore.open(full_store.path, "toy", "train", images)
    store[0], store[9]  # open some maps first
    blob = pickle.dumps(store)
    assert len(blob) < candidates.nbytes, "the shards' data must not travel with the store"
    clone = pickle.loads(blob)
    assert clone._maps == {} and clone.path == store.path and clone.layout == store.layout
    for i in range(N):
        np.testing.assert_array_equal(clone[i], candidates[i])
    a, c = np.arange(N)[::-1].copy(), np.arange(N) % K
    np.testing.assert_array_equal(clone.get(a, c), store.get(a, c))


def test_store_in_dataloader_workers(full_store, candidates) -> None:
    torch = pytest.importorskip("torch")
    store = SyntheticStore.open(full_store.path)

    class Anchors(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return N

        def __getitem__(self, i: int):
            return torch.from_numpy(np.array(store[i]))

    loader = torch.utils.data.DataLoader(Anchors(), batch_size=4, num_workers=1, multiprocessing_context="fork" if os.name == "posix" else None)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, candidates)


# ----------------------------------------------------------------------------- bad indices


@pytest.mark.parametrize(
    ("anchors", "cands"),
    [([N], [0]), ([N + 2], [0]), ([4 * SHARD], [0]), ([-1], [0]), ([0], [K]), ([0], [-1]), ([3, N], [0, 0])],
)
def test_get_rejects_out_of_range_indices(full_store, anchors, cands) -> None:
    # An IndexError, not a wrap-around and not a "shard missing, run generate" message.
    with pytest.raises(IndexError):
        full_store.get(np.array(anchors), np.array(cands))


def test_get_needs_one_candidate_per_anchor(full_store) -> None:
    with pytest.raises(ValueError):
        full_store.get(np.array([0, 1, 2]), np.array([0]))
