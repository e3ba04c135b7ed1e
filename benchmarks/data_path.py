"""The streamed data path against torchvision's, side by side: images/s and peak memory.

A tree of JPEGs of ImageNet's typical size (about 400 x 350, quality 90) with natural-image
statistics: random crops, flips and colour shifts of the photographs bundled in scikit-image's
wheel (astronaut, chelsea, coffee, rocket, ...; read from its ``skimage/data`` folder, which
the wheel ships, so nothing is fetched; the package need not even import). Two pipelines read it:

- ``synthpos``: ``data.stream=true`` at ``data.image_size``; DataLoader workers decode and
  resize (``PretrainBatches`` + ``ResumableBatchSampler`` + ``EpochLoader``, as ``pretrain``
  builds them), the main process draws two views of the whole batch with ``BatchAugment``.
- ``torchvision``: ``ImageFolder`` + ``transforms.v2`` on PIL images (each view its own
  RandomResizedCrop from the full JPEG) + ``DataLoader``, the same augmentation settings.

Both: batch 256, two views, ``persistent_workers``, 1 and 2 workers; images/s over the second
epoch (the first, with worker start-up and cold caches, excluded). Each (pipeline, workers,
size) runs in its own process, sampled every 50 ms for the largest RSS of one process and the
sum of PSS over the main process and its workers, at two dataset sizes, one 4x the other.

The main processes keep torch's default thread count, as ``synthpos pretrain`` does (it sets
none; ``--threads`` fixes one). With 2 workers on a 2-core machine both pipelines share the
same two cores; with 1 worker synthpos's main process augments beside its worker while
torchvision's main process only waits, so that row is not core for core.

    PYTHONPATH=src python benchmarks/data_path.py --images 400 --out benchmarks/results/data_path.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

PIPELINES = ("synthpos", "torchvision")
#: colour photographs in scikit-image's wheel (skimage/data)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
          "motorcycle_left.png", "ihc.png")
#: the augmentation of configs/imagenet/generativessl_simclr.yaml (SimCLR's ImageNet views)
AUGMENT = {"crop_size": 224, "crop_scale": (0.08, 1.0), "jitter_prob": 0.8, "brightness": 0.8, "contrast": 0.8,
           "saturation": 0.8, "hue": 0.2, "grayscale_prob": 0.2, "hflip_prob": 0.5, "blur_prob": 0.5,
           "blur_sigma": (0.1, 2.0), "blur_kernel_size": 23}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_folder(explicit: Path | None = None) -> Path:
    """scikit-image's bundled photographs: ``explicit``, else the installed package's ``data`` folder."""
    if explicit is not None:
        return explicit
    spec = importlib.util.find_spec("skimage")  # finds the package without importing it (or its dependencies)
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-image is not installed: pip install scikit-image (its wheel bundles the photographs), "
                         "or pass --photos DIR with them")
    return Path(spec.origin).parent / "data"


def write_tree(root: Path, count: int, photos: Path, seed: int = 0, classes: int = 10) -> None:
    """``count`` JPEGs (quality 90) of about 400 x 350 in ``classes`` folders: a random crop (10-100% of the
    side) of one photograph, flipped half the time, each channel scaled by U(0.8, 1.2)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [np.asarray(Image.open(photos / name).convert("RGB")) for name in PHOTOS if (photos / name).is_file()]
    if len(sources) < 4:
        raise SystemExit(f"{photos} holds fewer than 4 of {', '.join(PHOTOS)}")
    for i in range(count):
        src = sources[rng.integers(len(sources))]
        h, w = src.shape[:2]
        side = rng.uniform(0.1, 1.0)
        ch, cw = max(32, int(h * side)), max(32, int(w * side * rng.uniform(0.8, 1.25)))
        ch, cw = min(ch, h), min(cw, w)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y: y + ch, x: x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.clip(crop * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        size = (int(rng.integers(360, 441)), int(rng.integers(315, 386)))  # (W, H) around 400 x 350
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).resize(size, Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=90)


class MemorySampler(threading.Thread):
    """Every ``every`` s: RSS of this process and each of its children, and the sum of their PSS (/proc)."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.max_rss = self.max_pss_sum = 0
        self.max_processes = 0

    @staticmethod
    def _pids() -> list[int]:
        me = os.getpid()
        pids = [me]
        for task in Path(f"/proc/{me}/task").iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return pids

    @staticmethod
    def _kib(path: str, field: str) -> int:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self) -> None:
        while not self.stop.is_set():
            pids = self._pids()
            rss = [self._kib(f"/proc/{p}/status", "VmRSS:") for p in pids]
            pss = sum(self._kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            self.max_rss = max(self.max_rss, *rss)
            self.max_pss_sum = max(self.max_pss_sum, pss)
            self.max_processes = max(self.max_processes, len(pids))
            time.sleep(self.every)


def _synthpos_epochs(root: Path, workers: int, batch: int, epochs: int, image_size: int):
    from synthpos.config import DataConfig
    from synthpos.data import BatchAugment
    from synthpos.data.stream import EpochLoader, open_dataset
    from synthpos.methods.pretrain import PretrainBatches, _first
    from synthpos.resumable import ResumableBatchSampler

    dataset = open_dataset(DataConfig(name="image_folder", root=root, image_size=image_size, stream=True), "train")
    augment = BatchAugment(**AUGMENT, mean=dataset.mean, std=dataset.std)
    sampler = ResumableBatchSampler(len(dataset), batch, seed=0)
    loader = EpochLoader(PretrainBatches(dataset, None, 0, "none"), batch_sampler=sampler, collate_fn=_first,
                         num_workers=workers, persistent_workers=workers > 0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        images = 0
        for b in loader:
            views = [augment(b.images, view=v) for v in range(2)]
            assert views[0].shape == (batch, 3, 224, 224)
            images += len(b.images)
        yield images


def _torchvision_epochs(root: Path, workers: int, batch: int, epochs: int, image_size: int):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    a = AUGMENT
    view = v2.Compose([
        v2.RandomResizedCrop(a["crop_size"], scale=a["crop_scale"], antialias=True),
        v2.RandomHorizontalFlip(a["hflip_prob"]),
        v2.RandomApply([v2.ColorJitter(a["brightness"], a["contrast"], a["saturation"], a["hue"])], p=a["jitter_prob"]),
        v2.RandomGrayscale(a["grayscale_prob"]),
        v2.RandomApply([v2.GaussianBlur(a["blur_kernel_size"], a["blur_sigma"])], p=a["blur_prob"]),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
    ])
    dataset = datasets.ImageFolder(str(root), transform=lambda img: (view(img), view(img)))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    for _ in range(epochs):
        images = 0
        for (v1, _v2), _labels in loader:
            assert v1.shape == (batch, 3, 224, 224)
            images += len(v1)
        yield images


def run_one(pipeline: str, root: Path, workers: int, batch: int, epochs: int, image_size: int,
            threads: int = 0) -> dict[str, Any]:
    """One pipeline in this process: images/s of each epoch, and the peak memory over all of them."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    sampler = MemorySampler()
    sampler.start()
    epochs_fn = _synthpos_epochs if pipeline == "synthpos" else _torchvision_epochs
    rates = []
    start = time.perf_counter()
    for images in epochs_fn(root, workers, batch, epochs, image_size):
        now = time.perf_counter()
        rates.append(images / (now - start))
        start = now
    sampler.stop.set()
    sampler.join()
    return {"pipeline": pipeline, "workers": workers, "images_per_s_by_epoch": rates,
            "images_per_s": rates[-1] if len(rates) > 1 else rates[0],
            "peak_rss_one_process_mib": sampler.max_rss / 2**20, "peak_pss_sum_mib": sampler.max_pss_sum / 2**20,
            "processes": sampler.max_processes, "main_torch_threads": torch.get_num_threads()}


def _run_apart(pipeline: str, root: Path, workers: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """:func:`run_one` in a fresh process, so that no run's memory counts in another's."""
    cmd = [sys.executable, __file__, "--one", pipeline, str(root), str(workers), "--batch-size", str(args.batch_size),
           "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--threads", str(args.threads or 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"{pipeline} with {workers} workers on {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="the smaller tree; the larger holds --scale times as many")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    parser.add_argument("--image-size", type=int, default=224, help="synthpos's data.image_size")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of each main process (default 0: torch's own, as synthpos pretrain runs it)")
    parser.add_argument("--photos", type=Path, default=None, help="folder with scikit-image's photographs")
    parser.add_argument("--tree", type=Path, default=None, help="where the JPEG trees go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="a toy run (tiny trees, batch 4): checks, measures nothing")
    parser.add_argument("--one", nargs=3, metavar=("PIPELINE", "ROOT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        pipeline, root, workers = args.one
        result = run_one(pipeline, Path(root), int(workers), args.batch_size, args.epochs, args.image_size, args.threads)
        print("RESULT " + json.dumps(result))
        return result
    if args.smoke:
        args.images, args.batch_size, args.workers, args.epochs = 8, 4, [1], 2
    photos = photo_folder(args.photos)
    machine = machine_info("torchvision", "PIL")  # its load average is the one at the start
    if args.tree is not None:
        args.tree.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tree) as tmp:
        sizes = (args.images, args.images * args.scale)
        trees = {n: Path(tmp) / f"tree{n}" for n in sizes}
        for n, root in trees.items():
            write_tree(root, n, photos)
        tree_bytes = {n: sum(p.stat().st_size for p in root.rglob("*.jpg")) for n, root in trees.items()}
        results = []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                            os.environ.get("PYTHONPATH", "")])}
        for pipeline in PIPELINES:
            for workers in args.workers:
                for n in sizes:
                    if args.smoke:  # in this process: a smoke run checks the pipelines, its memory means nothing
                        result = run_one(pipeline, trees[n], workers, args.batch_size, args.epochs, args.image_size,
                                         args.threads)
                    else:
                        result = _run_apart(pipeline, trees[n], workers, args, env)
                    results.append({**result, "images": n})
                    print(f"{pipeline:11s} workers={workers} images={n:6d}: {results[-1]['images_per_s']:.1f} images/s, "
                          f"RSS {results[-1]['peak_rss_one_process_mib']:.0f} MiB, PSS sum {results[-1]['peak_pss_sum_mib']:.0f} MiB",
                          file=sys.stderr)
    summary = _summary(results, sizes, args.workers)
    report = {
        "benchmark": "data_path",
        "settings": {"images": list(sizes), "mean_jpeg_bytes": {str(n): tree_bytes[n] / n for n in sizes},
                     "batch_size": args.batch_size, "views": 2, "epochs": args.epochs, "timed_epoch": args.epochs,
                     "workers": args.workers, "image_size": args.image_size,
                     "torch_threads": args.threads or "torch's default (see each result's main_torch_threads)",
                     "cores": os.cpu_count(),
                     "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in AUGMENT.items()},
                     "photos": [p for p in PHOTOS if (photos / p).is_file()], "smoke": args.smoke},
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "results": results,
        "summary": summary,
    }
    if args.out is None:
        args.out = Path("runs/smoke/data_path.json" if args.smoke else "benchmarks/results/data_path.json")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return report


def _summary(results: list[dict[str, Any]], sizes: tuple[int, int], workers: list[int]) -> dict[str, Any]:
    """Speed-up over torchvision per worker count (on the larger tree), and larger-over-smaller peak memory."""
    def row(pipeline: str, w: int, n: int) -> dict[str, Any]:
        return next(r for r in results if (r["pipeline"], r["workers"], r["images"]) == (pipeline, w, n))

    out: dict[str, Any] = {"speedup_over_torchvision": {}, "memory_growth_4x": {}}
    for w in workers:
        out["speedup_over_torchvision"][str(w)] = row("synthpos", w, sizes[1])["images_per_s"] / row("torchvision", w, sizes[1])["images_per_s"]
        for pipeline in PIPELINES:
            small, large = row(pipeline, w, sizes[0]), row(pipeline, w, sizes[1])
            out["memory_growth_4x"][f"{pipeline}/{w}"] = {
                "rss": large["peak_rss_one_process_mib"] / small["peak_rss_one_process_mib"],
                "pss_sum": large["peak_pss_sum_mib"] / small["peak_pss_sum_mib"]}
    return out


if __name__ == "__main__":
    main()
