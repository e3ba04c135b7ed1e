"""What every benchmark's ``--smoke`` run shares: a tiny copy of Fashion-MNIST.

A smoke run checks that a benchmark still runs every pipeline or variant it compares,
for a step or two; it measures nothing. Reading the whole 60,000-image split costs more
than a smoke run's steps, so the smoke runs read the first few hundred images, copied
once into a folder that ``data.root`` then points at.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

SOURCE = Path("/usr/share/datasets/fashion-mnist")
THREADS = 1  # torch threads of a smoke run (see pipeline_overrides)
# split files: (images, labels), as synthpos.data.datasets reads them
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _head(path: Path, header_bytes: int, item_bytes: int, count: int) -> bytes:
    """The idx header with its count set to ``count``, then the first ``count`` items."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(header_bytes)
        data = f.read(item_bytes * count)
    if len(data) < item_bytes * count:
        raise SystemExit(f"{path} holds fewer than {count} items")
    return header[:4] + struct.pack(">i", count) + header[8:] + data


def tiny_fashion_mnist(folder: Path | None = None, train: int = 512, test: int = 256,
                       source: Path | None = None) -> Path:
    """Write the first ``train`` / ``test`` Fashion-MNIST images and labels as idx files under ``folder``.

    ``source`` defaults to ``$SYNTHPOS_DATA/fashion_mnist`` when set, else the Debian
    package's folder. Returns the folder (a new temporary one when ``folder`` is None).
    """
    import os

    if source is None:
        env = os.environ.get("SYNTHPOS_DATA")
        source = Path(env) / "fashion_mnist" if env and (Path(env) / "fashion_mnist").is_dir() else SOURCE
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="synthpos-smoke-fmnist-"))
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        images, labels = _FILES[split]
        for stem, header, item in ((images, 16, 28 * 28), (labels, 8, 1)):
            src = next((p for p in (source / f"{stem}.gz", source / stem) if p.is_file()), None)
            if src is None:
                raise SystemExit(f"Fashion-MNIST not found under {source} (apt-get install dataset-fashion-mnist)")
            (folder / stem).write_bytes(_head(src, header, item, count))
    return folder


def pipeline_overrides(data_root: Path) -> list[str]:
    """Config overrides that shrink a whole pipeline run (generate, pretrain, evaluate) to a step or two.

    32 training images in 2 batches of 16, 3 sampler steps (so that ``generate.strength``
    down to 0.34 keeps a step), 2 candidates, and an evaluation with one k, the fast linear
    probe for one epoch and one grid point, on the tiny copy's test split. One torch thread
    (:data:`THREADS`): a smoke run times nothing, and on a busy machine small multi-threaded ops
    stall at every barrier (several times slower).
    """
    return [
        f"data.root={data_root}", "data.subset=32",
        "generate.candidates=2", "generate.num_steps=3", "generate.batch_size=128", "generate.shard_size=32",
        "pretrain.epochs=1", "pretrain.batch_size=16", "pretrain.optimizer.warmup_epochs=0",
        "pretrain.knn_every_epochs=0", "pretrain.online_probe=false", "pretrain.precision=fp32", f"pretrain.num_threads={THREADS}",
        "evaluate.max_train=32", "evaluate.knn_k=[5]", "evaluate.linear_protocols=[fast]", "evaluate.label_fractions=[1.0]",
        "evaluate.linear.epochs=1", "evaluate.linear.lr_grid=[0.1]", "evaluate.linear.weight_decay_grid=[0.0]",
        "fidelity.train_images=256", "fidelity.epochs=1",
    ]


def smoke_out(benchmark: str) -> Path:
    """Where a smoke run writes its JSON unless told (never over the real results): ``runs/smoke/`` (git-ignored)."""
    return Path(__file__).resolve().parent.parent / "runs" / "smoke" / f"{benchmark}.json"
