"""generate over a damaged store: it remakes exactly the missing and damaged shards, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from synthpos.config import GenerateConfig
from synthpos.data.store_integrity import STAMP, check_store
from synthpos.data.synthetic_store import SyntheticStore

SETTINGS = GenerateConfig(candidates=2, num_steps=2, shard_size=2, batch_size=4, precision="fp32", channels_last=False)
NAMES = [f"shard-{s:05d}.npy" for s in range(5)]  # 10 anchors, 2 per shard


def _content(path: Path) -> dict[str, bytes]:
    """Everything a store holds but its verification stamp (which records file times)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != STAMP}


@pytest.fixture(scope="module")
def generate_settings() -> GenerateConfig:
    return SETTINGS


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_a_finished_store_is_folded_and_stamped(reference_store) -> None:
    assert sorted(_content(reference_store)) == ["manifest.json", *NAMES], "no record files left once folded"
    assert sorted(json.loads((reference_store / "manifest.json").read_text())["shards"]) == NAMES
    assert [s["state"] for s in json.loads((reference_store / STAMP).read_text())["shards"]] == ["ok"] * 5


def test_truncated_zeroed_and_deleted_shards_are_remade_byte_for_byte(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes, capsys) -> None:
    path = tmp_path / "store"
    shutil.copytree(reference_store, path)
    cut = path / NAMES[0]
    cut.write_bytes(cut.read_bytes()[:100])
    zeroed = path / NAMES[2]
    zeroed.write_bytes(bytes(zeroed.stat().st_size))
    (path / NAMES[3]).unlink()
    kept = {name: _identity(path / name) for name in (NAMES[1], NAMES[4])}

    store = generate(anchor_images, generator_dir, path)
    assert count_writes == [0, 2, 3], "exactly the missing and damaged shards"
    assert _content(path) == _content(reference_store)  # shards and manifest, byte for byte
    assert {name: _identity(path / name) for name in kept} == kept, "an intact shard was rewritten"
    assert [s.state for s in check_store(store, full=True)] == ["ok"] * 5
    err = capsys.readouterr().err
    assert f"{NAMES[0]} is damaged (truncated" in err and f"{NAMES[2]} is damaged (its sha256 differs" in err


def test_a_forced_check_finds_bytes_changed_behind_the_stamp(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes) -> None:
    path = tmp_path / "store"
    shutil.copytree(reference_store, path)
    generate(anchor_images, generator_dir, path)  # verifies the copy and stamps it
    assert count_writes == []
    flipped = path / NAMES[1]
    st = flipped.stat()
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    with open(flipped, "r+b") as fh:  # in place, times restored: only a full check sees it
        fh.write(data)
    os.utime(flipped, ns=(st.st_atime_ns, st.st_mtime_ns))
    generate(anchor_images, generator_dir, path)
    assert count_writes == [], "auto trusts the stamp"
    generate(anchor_images, generator_dir, path, SETTINGS.model_copy(update={"verify_store": "always"}))
    assert count_writes == [1]
    assert _content(path) == _content(reference_store)


def test_a_store_from_before_hashes_gets_them_on_the_firstgenerate(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes, capsys) -> None:
    path = tmp_path / "store"
    shutil.copytree(reference_store, path)
    (path / STAMP).unlink()
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["shards"]
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))  # as synthpos wrote it before hashes
    (path / NAMES[4]).write_bytes((path / NAMES[4]).read_bytes()[:-1])  # and one shard cut short
    old = SyntheticStore.open(path, require_complete=False)
    assert [s.state for s in check_store(old, full=False)] == ["no hash"] * 4 + ["wrong size"]

    generate(anchor_images, generator_dir, path)
    assert count_writes == [4]
    assert "adding hashes to 4 shards" in capsys.readouterr().err
    assert _content(path) == _content(reference_store)
