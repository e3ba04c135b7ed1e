"""SyntheticPositivesDataset: a store's anchors and candidates as tensors, through a DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthpos.data import ImageDataset, SyntheticPositivesDataset, SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError

N, K, SHARD = 10, 3, 4
SHAPE = (5, 6, 3)  # H != W != C: a transposed axis would show


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(N, *SHAPE), dtype=np.uint8)


@pytest.fixture
def candidates() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(N, K, *SHAPE), dtype=np.uint8)


@pytest.fixture
def store(tmp_path: Path, images, candidates) -> SyntheticStore:
    store = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("toy", "train", images), K, SHARD, {"kind": "test"})
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, candidates[start:end])
    return store


def _reference(uint8_hwc: np.ndarray) -> torch.Tensor:
    """Independent of the module: per-pixel division, then HWC -> CHW by einsum."""
    return torch.einsum("...hwc->...chw", torch.tensor(uint8_hwc.astype(np.float64) / 255.0)).float()


def test_items_are_the_anchor_and_its_candidates_as_chw_floats(store, images, candidates) -> None:
    data = SyntheticPositivesDataset(store.path, images)
    assert len(data) == N
    for i in (0, 3, 4, 9):  # across shard borders
        item = data[i]
        assert set(item) == {"index", "anchor", "candidates"}, "no label without labels"
        assert item["index"] == i
        assert item["anchor"].dtype == torch.float32 and item["anchor"].shape == (3, 5, 6)
        assert item["candidates"].shape == (K, 3, 5, 6)
        torch.testing.assert_close(item["anchor"], _reference(images[i]), rtol=0, atol=1e-7)
        torch.testing.assert_close(item["candidates"], _reference(candidates[i]), rtol=0, atol=1e-7)
    assert data[-1]["index"] == N - 1
    with pytest.raises(IndexError):
        data[N]


def test_labels_of_an_image_dataset_and_collation(store, images, candidates) -> None:
    labels = np.arange(N) % 3
    dataset = ImageDataset("toy", "train", images, labels, ["a", "b", "c"], (0.5,) * 3, (0.5,) * 3)
    loader = DataLoader(SyntheticPositivesDataset(store, dataset), batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["anchor"].shape == (4, 3, 5, 6) and batch["candidates"].shape == (4, K, 3, 5, 6)
    assert batch["label"].tolist() == labels[:4].tolist() and batch["index"].tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(batch["candidates"][2], _reference(candidates[2]), rtol=0, atol=1e-7)


def test_draw_picks_distinct_candidates_anew_and_works_in_workers(store, images, candidates) -> None:
    torch.manual_seed(0)
    data = SyntheticPositivesDataset(store, images, draw=2)
    seen = set()
    for _ in range(30):
        got = data[5]["candidates"]
        assert got.shape == (2, 3, 5, 6)
        which = [next(k for k in range(K) if torch.equal(c, _reference(candidates[5, k]))) for c in got]
        assert which[0] != which[1], "drawn without replacement"
        seen.add(tuple(which))
    assert len(seen) > 1, "drawn anew on each access"
    # The store pickles without its memory maps: worker processes reopen them.
    batches = list(DataLoader(data, batch_size=5, num_workers=2))
    assert [b["candidates"].shape for b in batches] == [(5, 2, 3, 5, 6)] * 2


def test_transforms_apply_to_anchor_and_each_candidate(store, images) -> None:
    data = SyntheticPositivesDataset(store, images, transform=lambda x: x.mean(0, keepdim=True),
                                     anchor_transform=lambda x: [x, 1 - x])
    item = data[1]
    assert item["candidates"].shape == (K, 1, 5, 6)
    assert isinstance(item["anchor"], list) and torch.allclose(item["anchor"][0] + item["anchor"][1], torch.ones(3, 5, 6))


def test_wrong_images_draw_or_labels_are_one_clear_error(store, images) -> None:
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    with pytest.raises(SynthposError, match="different images"):
        SyntheticPositivesDataset(store, other)
    with pytest.raises(SynthposError, match="candidates for 10 anchors"):
        SyntheticPositivesDataset(store, np.concatenate([images, images[:1]]))
    with pytest.raises(SynthposError, match="uint8"):
        SyntheticPositivesDataset(store, images.astype(np.float32))
    with pytest.raises(SynthposError, match="draw=4"):
        SyntheticPositivesDataset(store, images, draw=4)
    with pytest.raises(SynthposError, match="one label per anchor"):
        SyntheticPositivesDataset(store, images, labels=np.zeros(3))
    assert len(SyntheticPositivesDataset(store, images[:6])) == 6, "the first anchors of the store's data"
