"""Stores of encoded shards (generate.store_format: png, jpeg, webp): per-candidate random access
through each pack's offset index, records and repair as for raw shards, `auto` raw up to 64 px,
and import-store keeping a tree's files byte for byte."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthpos.config import GenerateConfig, load_config
from synthpos.data.import_store import import_store_stage
from synthpos.data.store.formats import choose_format
from synthpos.data.store_integrity import STAMP, check_store, ensure_verified
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.generators.generate import generate_store

K, SHARD = 3, 4


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images that vary slowly (what JPEG is made for): random gradients. Shape: ``shape``."""
    *lead, h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    a, b, base = (rng.uniform(-80, 80, (*lead, 1, 1, c)) for _ in range(3))
    return np.clip(128 + base + a * yy[..., None] + b * xx[..., None], 0, 255).astype(np.uint8)


def _store(path: Path, fmt: str, shape=(8, 8, 3), n: int = 10, seed: int = 0, quality: int = 95):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    store = SyntheticStore.create(path, dataset_fingerprint("toy", "train", images), K, SHARD, {"kind": "test"},
                                  store_format=fmt, quality=quality)
    candidates = _smooth(rng, (n, K, *shape))
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, candidates[start:end])
    store.fold_records()
    return SyntheticStore.open(path), candidates


def _pil_round_trip(image: np.ndarray, **save) -> np.ndarray:
    """The independent reference: Pillow's own encode and decode of one (H, W, C) image."""
    mode = "L" if image.shape[-1] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(buf, **save)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode))
    return out[..., None] if mode == "L" else out


@pytest.mark.parametrize("shape", [(8, 8, 3), (6, 5, 1)])
def test_png_and_lossless_webp_read_back_exactly(tmp_path: Path, shape) -> None:
    for fmt, quality in (("png", 95), ("webp", 100)):
        store, candidates = _store(tmp_path / fmt, fmt, shape, quality=quality)
        assert sorted(p.name for p in store.path.glob("shard-*")) == [f"shard-0000{s}.{fmt}.pack" for s in range(3)]
        np.testing.assert_array_equal(store[9], candidates[9])
        anchors, picks = np.array([9, 0, 5, 4, 0]), np.array([2, 1, 0, 2, 0])
        np.testing.assert_array_equal(store.get(anchors, picks), candidates[anchors, picks])


def test_jpeg_is_pillows_jpeg_at_the_quality(tmp_path: Path) -> None:
    store, candidates = _store(tmp_path / "s", "jpeg", quality=80)
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["shard_format"] == {"name": "jpeg", "quality": 80} and manifest["format_version"] == 2
    got = store.get(np.array([7, 2]), np.array([1, 2]))
    for row, (a, k) in enumerate([(7, 1), (2, 2)]):
        np.testing.assert_array_equal(got[row], _pil_round_trip(candidates[a, k], format="JPEG", quality=80, subsampling=0))
    assert np.abs(got.astype(int) - candidates[[7, 2], [1, 2]]).mean() < 3  # lossy, but close on smooth images


def test_the_pack_index_gives_each_candidate_its_own_file(tmp_path: Path) -> None:
    store, candidates = _store(tmp_path / "s", "png")
    data = store.shard_path(1).read_bytes()  # anchors 4..7
    assert data[:8] == b"SPPACK01"
    (length,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12:12 + length])
    assert header == {"codec": "png", "shape": [4, K, 8, 8, 3]}
    offsets = np.frombuffer(data[12 + length: 12 + length + 8 * (4 * K + 1)], dtype="<u8")
    start = 12 + length + 8 * (4 * K + 1)
    assert start + int(offsets[-1]) == len(data)
    one = data[start + int(offsets[2 * K + 1]): start + int(offsets[2 * K + 2])]  # anchor 6, candidate 1
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(one))), candidates[6, 1])


def test_damaged_packs_are_found(tmp_path: Path) -> None:
    store, _ = _store(tmp_path / "s", "png")
    path = store.shard_path(1)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # cut short: its record's size says so, one stat
    states = check_store(store, full=False)
    assert states[1].state == "wrong size" and "truncated" in states[1].detail
    with pytest.raises(SynthposError, match="shard-00001.png.pack is damaged"):
        SyntheticStore.open(store.path)
    path.write_bytes(data[:-40] + bytes(40))  # overwritten in place: the hash says so
    assert [s.state for s in ensure_verified(store, "always", raise_if_bad=False)] == ["ok", "damaged", "ok"]
    fresh = SyntheticStore.open(store.path)
    with pytest.raises(SynthposError, match="shard-00001.png.pack is damaged"):
        fresh[7]  # the last candidate's bytes are zeros: it does not decode
    path.write_bytes(b"\0" * len(data))
    with pytest.raises(SynthposError, match="not a synthpos pack file"):
        SyntheticStore.open(store.path)[5]


def test_generate_remakes_a_damaged_encoded_shard_byte_for_byte(tmp_path: Path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    settings = GenerateConfig(kind="anchors", candidates=2, shard_size=2, store_format="jpeg", store_quality=90)
    store = generate_store(images, "toy", "train", tmp_path, tmp_path / "store", settings, device="cpu",
                           show_progress=False)
    before = {p.name: p.read_bytes() for p in store.path.glob("shard-*")}
    assert sorted(before) == [f"shard-0000{s}.jpeg.pack" for s in range(3)]
    shard = store.path / "shard-00001.jpeg.pack"
    shard.write_bytes(bytes(shard.stat().st_size))
    (store.path / "shard-00002.jpeg.pack").unlink()
    store = generate_store(images, "toy", "train", tmp_path, tmp_path / "store", settings, device="cpu",
                           show_progress=False)
    assert {p.name: p.read_bytes() for p in store.path.glob("shard-*")} == before
    assert [s["state"] for s in json.loads((store.path / STAMP).read_text())["shards"]] == ["ok"] * 3
    # the anchors generator copies its anchor: the candidates are JPEGs of it
    np.testing.assert_array_equal(store[3][1], _pil_round_trip(images[3], format="JPEG", quality=90, subsampling=0))


def test_auto_is_raw_up_to_64_px_and_keeps_an_existing_stores_format(tmp_path: Path) -> None:
    assert choose_format("auto", (64, 64, 3)).name == "raw"
    assert choose_format("auto", (65, 65, 3)).name == "jpeg"
    assert choose_format("auto", (96, 96, 3), prefer="png").name == "png"
    store, _ = _store(tmp_path / "s", "raw", (66, 66, 1), n=2)
    again = SyntheticStore.create(store.path, store.manifest["dataset"], K, SHARD, {"kind": "test"}, store_format="auto")
    assert again.shard_format.name == "raw" and again.complete  # made raw above 64 px: resumed raw
    with pytest.raises(SynthposError, match="made with a different shard_format"):
        SyntheticStore.create(store.path, store.manifest["dataset"], K, SHARD, {"kind": "test"}, store_format="png")


def test_an_older_synthpos_refuses_an_encoded_store_in_one_line(tmp_path: Path) -> None:
    store, _ = _store(tmp_path / "s", "png")
    manifest = json.loads((store.path / "manifest.json").read_text())
    (store.path / "manifest.json").write_text(json.dumps({**manifest, "shard_format": {"name": "avif"}}))
    with pytest.raises(SynthposError, match="names shard format 'avif'"):
        SyntheticStore.open(store.path)


def test_import_keeps_a_trees_own_files_undecoded(tmp_path: Path) -> None:
    train, synthetic = tmp_path / "train", tmp_path / "synthetic"
    rng = np.random.default_rng(5)
    kept = {}
    for n in range(3):
        (train / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth(rng, (72, 72, 3))).save(train / "c" / f"c_{n}.JPEG", quality=90)
        (synthetic / "c").mkdir(parents=True, exist_ok=True)
        for k in range(2):
            side = 72 if (n, k) != (2, 1) else 80  # one of the wrong size: decoded and resized
            path = synthetic / "c" / f"c_{n}_{k}.JPEG"
            Image.fromarray(_smooth(rng, (side, side, 3))).save(path, quality=85)
            kept[(n, k)] = path.read_bytes()
    config = load_config(None, ["data.name=image_folder", f"data.root={train}", "data.image_size=72",
                                f"run_dir={tmp_path / 'run'}", "generate.shard_size=2"])
    store = import_store_stage(config, synthetic, "generativessl", None, 2, show_progress=False)
    assert store.shard_format.name == "jpeg"  # auto above 64 px: the tree's own codec
    packs = b"".join(store.shard_path(s).read_bytes() for s in range(2))
    assert all(kept[(n, k)] in packs for n in range(3) for k in range(2) if (n, k) != (2, 1))
    assert kept[(2, 1)] not in packs
    for n, k in [(0, 1), (1, 0)]:
        want = np.asarray(Image.open(io.BytesIO(kept[(n, k)])).convert("RGB"))
        np.testing.assert_array_equal(store[n][k], want)  # the file's own pixels: never re-encoded
    assert store[2][1].shape == (72, 72, 3)


def test_an_encoded_store_pickles_and_feeds_the_torch_dataset(tmp_path: Path) -> None:
    import pickle

    from synthpos.data import SyntheticPositivesDataset

    store, candidates = _store(tmp_path / "s", "png", n=6)
    store[0]  # a pack opened here is not pickled: a DataLoader worker opens its own
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy[5], candidates[5])
    anchors = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)  # _store's images
    item = SyntheticPositivesDataset(copy, anchors)[4]
    np.testing.assert_allclose(item["candidates"].numpy(), candidates[4].transpose(0, 3, 1, 2) / 255, atol=1e-6)
