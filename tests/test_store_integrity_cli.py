"""A damaged store through the real `synthpos` script: one line naming the shard and the fix, exit 2, nothing trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint

SCRIPT = Path(sys.executable).parent / "synthpos"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
N, K = 8, 2


def synthpos(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # PYTHONPATH kept: the script must import the synthpos under test.
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")
    env.pop("SYNTHPOS_DATA", None)
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def error_line(result: subprocess.CompletedProcess) -> str:
    """Exit 2, one stderr line 'error: ...', no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def _store(root: Path) -> Path:
    """A 4-shard store of random candidates for the first 8 Fashion-MNIST images."""
    from synthpos.config import DataConfig
    from synthpos.data import load_dataset

    real = load_dataset(DataConfig(subset=N), "train").images
    store = SyntheticStore.create(root / "store", dataset_fingerprint("fashion_mnist", "train", real),
                                  candidates=K, shard_size=2, generator={"kind": "test"})
    rng = np.random.default_rng(0)
    for s in range(4):
        store.write_shard(s, rng.integers(0, 256, size=(2, K, *real.shape[1:]), dtype=np.uint8))
    store.fold_records()
    return store.path


def _damage(store: Path, what: str) -> None:
    """Zero shard 2 in place (same size), or cut the manifest short."""
    if what == "zeroed":
        shard = store / "shard-00002.npy"
        shard.write_bytes(bytes(shard.stat().st_size))
    else:
        (store / "manifest.json").write_text('{"format_version": 1, "dataset": {"na')


PRETRAIN = ["pretrain", "-q", "--set", "run_dir=run", "--set", f"data.subset={N}", "--set", "pretrain.synthetic.mode=clsp",
            "--set", "pretrain.store=store", "--set", "pretrain.batch_size=4", "--set", "pretrain.backbone.name=convnet",
            "--set", "pretrain.epochs=1"]


@needs_fmnist
def test_pretrain_on_a_zeroed_shard_stops_before_training(tmp_path) -> None:
    # Same size: only hashing finds it (no stamp yet, so the first pretrain hashes). A truncated
    # shard is found on open by its size (tests/data/test_store_integrity.py, and below via inspect-store).
    store = _store(tmp_path)
    _damage(store, "zeroed")
    line = error_line(synthpos(tmp_path, *PRETRAIN))
    assert "shard-00002.npy is damaged (its sha256 differs" in line and "synthpos generate" in line, line
    assert not (tmp_path / "run").exists(), "nothing may be written before the store is known good"


def test_inspect_store_verify_reports_every_shard(tmp_path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(8, 2, 2, 1), dtype=np.uint8)
    store = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("toy", "train", images),
                                  candidates=1, shard_size=2, generator={"kind": "test"})
    for s in range(4):
        store.write_shard(s, rng.integers(0, 256, size=(2, 1, 2, 2, 1), dtype=np.uint8))
    ok = synthpos(tmp_path, "inspect-store", "--verify", "--store", "store")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(" ok ") == 4 and (store.path / "verified.json").is_file()

    _damage(store.path, "zeroed")
    (store.path / "shard-00000.npy").unlink()
    (store.path / "shard-00003.npy").write_bytes((store.path / "shard-00003.npy").read_bytes()[:50])
    result = synthpos(tmp_path, "inspect-store", "--verify", "--store", "store")
    line = error_line(result)
    assert "shard-00000.npy is missing" in line and "shard-00002.npy, shard-00003.npy" in line
    rows = {row.split()[1]: row for row in result.stdout.splitlines() if "shard-0000" in row}
    assert "missing" in rows["shard-00000.npy"] and " ok " in rows["shard-00001.npy"]
    assert "damaged" in rows["shard-00002.npy"] and "wrong size" in rows["shard-00003.npy"] and "truncated" in rows["shard-00003.npy"]

    _damage(store.path, "manifest")
    assert "manifest.json is damaged" in error_line(synthpos(tmp_path, "inspect-store", "--verify", "--store", "store"))


VERIFY_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from synthpos.data import store_integrity
from synthpos.data.synthetic_store import SyntheticStore

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
hashed = []
original = store_integrity.file_digest
def slow_digest(path):
    hashed.append(Path(path).name)
    time.sleep(0.3)  # rank 1 would find no stamp yet if it did not wait for rank 0
    return original(path)
store_integrity.file_digest = slow_digest
states = store_integrity.ensure_verified(SyntheticStore.open(out / "store"), raise_if_bad=False)
(out / f"rank{rank}.json").write_text(json.dumps({"hashed": hashed, "states": [s.state for s in states]}))
"""


@pytest.mark.distributed
def test_under_torchrun_only_rank_zero_hashes(tmp_path) -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(8, 2, 2, 1), dtype=np.uint8)
    store = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("toy", "train", images),
                                  candidates=1, shard_size=2, generator={"kind": "test"})
    for s in range(4):
        store.write_shard(s, rng.integers(0, 256, size=(2, 1, 2, 2, 1), dtype=np.uint8))
    _damage(store.path, "zeroed")
    (tmp_path / "verify.py").write_text(VERIFY_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(tmp_path / "verify.py"), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sorted(ranks[0]["hashed"]) == [f"shard-{s:05d}.npy" for s in range(4)]
    assert ranks[1]["hashed"] == [], "rank 1 must wait for rank 0's stamp, not hash the store again"
    assert ranks[0]["states"] == ranks[1]["states"] == ["ok", "ok", "damaged", "ok"]
