"""How long store integrity costs: writing with hashes, the check on open, and a full verification.

Two stores of random bytes, written through :meth:`SyntheticStore.write_shard` (which hashes as
it writes), then checked as synthpos checks them:

* ``quickstart``: the quick start's store, 2500 anchors x 2 candidates x 28x28x1 uint8 in
  shards of 500 (3.9 MB);
* ``1gb``: 40,700 anchors x 8 candidates x 32x32x3 (a CIFAR-sized store, 1.0 GB) in shards of 500.

For each: ``write_s`` (all shards, hashed, fsynced, renamed), ``open_s`` (``SyntheticStore.open``:
manifest + one ``stat`` per shard), ``verify_s`` (``ensure_verified(store, "always")``: every
shard read and hashed, stamp written) and ``open_stamped_s`` (``open(verify="auto")`` with a fresh
stamp: what every later pretrain pays). The shards were just written, so they are read from the
page cache: a cold read from disk adds the disk's read time. Best of ``--repeats`` runs.

It also hashes 100 MiB of random bytes in memory with hashlib's fast algorithms (the choice of
SHA-256 for the shard records).

Run::

    python benchmarks/store_verify.py            # about a minute; needs 1 GB free under --dir
    python benchmarks/store_verify.py --smoke    # tiny stores, a few seconds (checks the script)

Writes ``benchmarks/results/store_verify.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "store_verify.json"
# name: (anchors, K, H, W, C, shard_size)
STORES = {"quickstart": (2500, 2, 28, 28, 1, 500), "1gb": (40_700, 8, 32, 32, 3, 500)}
SMOKE = {"quickstart": (50, 2, 28, 28, 1, 20), "1gb": (200, 8, 32, 32, 3, 50)}
ALGORITHMS = ["sha256", "blake2b", "blake2s", "sha1", "md5", "sha512"]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hash_speeds(mib: int, repeats: int) -> dict[str, float]:
    """MiB/s of each algorithm over ``mib`` MiB of random bytes in memory, 8 MiB per update."""
    data = memoryview(np.random.default_rng(0).integers(0, 256, mib << 20, dtype=np.uint8).tobytes())

    def run(name: str) -> None:
        h = hashlib.new(name)
        for i in range(0, len(data), 8 << 20):
            h.update(data[i: i + (8 << 20)])
        h.hexdigest()

    return {name: round(mib / _best(lambda: run(name), repeats), 1) for name in ALGORITHMS}


def measure_store(root: Path, name: str, anchors: int, k: int, h: int, w: int, c: int, shard_size: int,
                  repeats: int) -> dict[str, Any]:
    from synthpos.data.store_integrity import ensure_verified
    from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint

    rng = np.random.default_rng(0)
    fingerprint = dataset_fingerprint("random", "train", np.zeros((anchors, h, w, c), np.uint8))
    path = root / name
    store = SyntheticStore.create(path, fingerprint, candidates=k, shard_size=shard_size, generator={"kind": "random"})
    shards = [rng.integers(0, 256, size=(end - start, k, h, w, c), dtype=np.uint8)
              for start, end in map(store.layout.shard_range, range(store.layout.num_shards))]

    def write() -> None:
        for s, data in enumerate(shards):
            store.write_shard(s, data)
        store.fold_records()

    result = {"anchors": anchors, "candidates": k, "image_shape": [h, w, c], "shard_size": shard_size,
              "shards": store.layout.num_shards, "bytes": sum(store.expected_bytes(s) for s in range(store.layout.num_shards))}
    result["write_s"] = _best(write, repeats)
    del shards
    result["open_s"] = _best(lambda: SyntheticStore.open(path), repeats)
    result["verify_s"] = _best(lambda: ensure_verified(SyntheticStore.open(path), "always"), repeats)
    result["open_stamped_s"] = _best(lambda: SyntheticStore.open(path, verify="auto"), repeats)
    result["verify_mib_per_s"] = round(result["bytes"] / 2**20 / result["verify_s"], 1)
    shutil.rmtree(path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny stores and 4 MiB of hashing: checks the script runs.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="Where the stores are written (default: a temporary directory).")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default benchmarks/results/store_verify.json; with --smoke runs/smoke/store_verify.json)")
    args = parser.parse_args(argv)
    if args.out is None:
        from _smoke import smoke_out

        args.out = smoke_out("store_verify") if args.smoke else DEFAULT_OUT
    sys.path.insert(0, str(ROOT.parent / "src"))

    report: dict[str, Any] = {
        "benchmark": "store_verify",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine_info(),
        "page_cache": "warm (shards read right after they were written)",
    }
    report["hash_mib_per_s"] = hash_speeds(4 if args.smoke else 100, 1 if args.smoke else args.repeats)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        report["stores"] = {name: measure_store(Path(scratch), name, *shape, repeats=1 if args.smoke else args.repeats)
                            for name, shape in (SMOKE if args.smoke else STORES).items()}
    report["load_average_at_end"] = list(os.getloadavg())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['machine']['cpu_model']}, load {report['machine']['load_average_at_start'][0]:.1f} -> {report['load_average_at_end'][0]:.1f}")
    print("hash MiB/s: " + ", ".join(f"{k} {v:.0f}" for k, v in report["hash_mib_per_s"].items()))
    print(f"{'store':12s} {'MB':>8s} {'shards':>6s} {'write s':>8s} {'open s':>8s} {'verify s':>9s} {'stamped s':>9s}")
    for name, r in report["stores"].items():
        print(f"{name:12s} {r['bytes'] / 1e6:8.1f} {r['shards']:6d} {r['write_s']:8.3f} {r['open_s']:8.4f} "
              f"{r['verify_s']:9.3f} {r['open_stamped_s']:9.4f}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
