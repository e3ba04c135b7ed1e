"""SimCLR pretraining throughput on the CPU: synthpos vs lightly's documented pipeline.

Images/s of a whole SimCLR training step, data loading included, for three
pipelines run one after another in this one process, at each precision asked for:

* ``synthpos``: Fashion-MNIST held in memory as uint8; batches fetched whole through
  :class:`synthpos.methods.pretrain.PretrainBatches` (``num_workers=0``); the two views
  made by :class:`synthpos.data.BatchAugment` on the batch; the step is the real
  :meth:`synthpos.methods.simclr.SimCLR.compute_loss` (one backbone pass over both
  views, projector, :class:`synthpos.losses.NTXentLoss`), then backward and SGD.
* ``lightly``: lightly's documented pipeline: the same images as PIL images (mode "L",
  made per item as ``torchvision.datasets.FashionMNIST`` does), per-image
  ``lightly.transforms.SimCLRTransform`` (CIFAR settings of lightly's CIFAR-10
  benchmark: ``input_size=32, cj_strength=0.5, gaussian_blur=0.0``; normalised with the
  dataset's mean/std), a ``DataLoader`` with 2 persistent workers,
  ``lightly.models.modules.SimCLRProjectionHead``, ``lightly.loss.NTXentLoss``, SGD.
* ``model_only``: the synthpos encoder + projector + loss on random tensors that are
  already views: the ceiling with no data pipeline at all.

All three use ``synthpos.models.backbones.ConvNet(1, width=32)`` (1 channel: lightly's
transform handles mode "L" images, so no RGB conversion), the same projector sizes, the
same SGD settings, channels_last, and ``torch.set_num_threads(2)`` in the main process.
lightly's 2 loader workers compete with the main process for the same cores; that is
part of what is measured. Images/s counts anchor images (``steps * batch_size /
seconds``), not views. Warm-up steps (which include the workers' start-up) are not timed.

Run (on an idle machine)::

    python benchmarks/pretrain_throughput.py --steps 40 --warmup 5 --precisions fp32,bf16

Writes ``benchmarks/results/pretrain_throughput.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "pretrain_throughput.json"
PIPELINES = ("synthpos", "lightly", "model_only")
PRECISIONS = ("fp32", "bf16")

# Shared by every pipeline.
WIDTH = 32
CROP = 32
TEMPERATURE = 0.5
SGD = {"lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4}  # lightly's CIFAR-10 examples


# --------------------------------------------------------------------------- helpers


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def forever(loader: DataLoader) -> Iterator:
    """Batches without end: a new epoch starts when one runs out (that cost is counted)."""
    while True:
        yield from loader


def run_steps(step: Callable[[], None], warmup: int, steps: int) -> tuple[float, float]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones.

    Returns the wall-clock seconds of the timed steps and the CPU seconds the main
    process used in them (all its threads; loader workers not included).
    """
    for _ in range(warmup):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return time.perf_counter() - start, time.process_time() - cpu_start


# --------------------------------------------------------------------------- pipelines


def bench_synthpos(ds, precision: str, args) -> tuple[float, float]:
    from synthpos.config import OptimizerConfig
    from synthpos.data import BatchAugment
    from synthpos.methods.pretrain import PretrainBatches
    from synthpos.methods.simclr import SimCLR
    from synthpos.models.backbones import ConvNet

    augment = BatchAugment(crop_size=CROP, mean=ds.mean, std=ds.std)
    method = SimCLR(
        ConvNet(ds.channels, width=WIDTH), augment, optimizer=OptimizerConfig(**SGD),
        projector_hidden_dim=args.hidden_dim, projector_out_dim=args.out_dim, temperature=TEMPERATURE,
        channels_last=True,
    )
    method.setup("fit")  # builds the criterion
    method.train()
    opt = torch.optim.SGD(method.parameters(), **SGD)
    loader = DataLoader(
        PretrainBatches(ds, seed=args.seed), batch_size=args.batch_size, shuffle=True, drop_last=True,
        collate_fn=lambda b: b, num_workers=0,
    )
    batches = forever(loader)

    def step() -> None:
        batch = next(batches)
        with autocast(precision):
            loss, _ = method.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run_steps(step, args.warmup, args.steps)


class PILViews(Dataset):
    """Fashion-MNIST as torchvision serves it (a PIL "L" image per item), through ``transform``."""

    def __init__(self, images: np.ndarray, transform) -> None:
        self.images = images[..., 0]  # (N, H, W) uint8
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index]))  # 2-D uint8 -> mode "L"


class LightlySimCLR(torch.nn.Module):
    """lightly's documented SimCLR module: backbone + SimCLRProjectionHead."""

    def __init__(self, backbone: torch.nn.Module, hidden_dim: int, out_dim: int) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        # batch_norm=False: the same Linear-ReLU-Linear head as synthpos's projector.
        self.projection_head = SimCLRProjectionHead(backbone.feature_dim, hidden_dim, out_dim, batch_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))


def bench_lightly(ds, precision: str, args) -> tuple[float, float]:
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    from synthpos.models.backbones import ConvNet

    transform = SimCLRTransform(
        input_size=CROP, cj_strength=0.5, gaussian_blur=0.0,
        normalize={"mean": list(ds.mean), "std": list(ds.std)},
    )
    model = LightlySimCLR(ConvNet(ds.channels, width=WIDTH), args.hidden_dim, args.out_dim)
    model = model.to(memory_format=torch.channels_last).train()
    criterion = NTXentLoss(temperature=TEMPERATURE)
    opt = torch.optim.SGD(model.parameters(), **SGD)
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        PILViews(ds.images, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.lightly_workers, persistent_workers=args.lightly_workers > 0, generator=generator,
    )
    batches = forever(loader)

    def step() -> None:
        x0, x1 = next(batches)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        x1 = x1.contiguous(memory_format=torch.channels_last)
        with autocast(precision):
            if args.lightly_forward == "concat":
                z0, z1 = model(torch.cat([x0, x1])).float().chunk(2)
            else:  # lightly's examples: one forward per view
                z0, z1 = model(x0).float(), model(x1).float()
            loss = criterion(z0, z1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        return run_steps(step, args.warmup, args.steps)
    finally:
        # Stop the persistent workers now, so that they do not compete with the next configuration.
        batches.close()
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
        del batches, loader
        gc.collect()


def bench_model_only(ds, precision: str, args) -> tuple[float, float]:
    from synthpos.losses import NTXentLoss
    from synthpos.methods.simclr import projection_head
    from synthpos.models.backbones import ConvNet

    backbone = ConvNet(ds.channels, width=WIDTH).to(memory_format=torch.channels_last)
    projector = projection_head(backbone.feature_dim, args.hidden_dim, args.out_dim)
    model = torch.nn.Sequential(backbone, projector).train()
    criterion = NTXentLoss(TEMPERATURE)
    opt = torch.optim.SGD(model.parameters(), **SGD)
    shape = (args.batch_size, ds.channels, CROP, CROP)
    views = torch.cat([torch.randn(shape), torch.randn(shape)]).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(precision):
            z0, z1 = model(views).float().chunk(2)
            loss = criterion(z0, z1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run_steps(step, args.warmup, args.steps)


BENCHES = {"synthpos": bench_synthpos, "lightly": bench_lightly, "model_only": bench_model_only}

DESCRIPTIONS = {
    "synthpos": "PretrainBatches (whole-batch fetch, num_workers=0) + BatchAugment x2 + SimCLR.compute_loss "
    "(one backbone pass over both views) + backward + SGD",
    "lightly": "PIL 'L' image per item + SimCLRTransform (per image) in a DataLoader with persistent workers "
    "+ SimCLRProjectionHead + lightly NTXentLoss + backward + SGD",
    "model_only": "encoder + projector + synthpos NTXentLoss + backward + SGD on random (2*batch, C, 32, 32) "
    "tensors; no data pipeline (ceiling)",
}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per configuration (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per configuration (default 5)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (default fp32,bf16)")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help=f"comma list of {', '.join(PIPELINES)} (default all)")
    p.add_argument("--batch-size", type=int, default=256, help="anchor images per step (default 256)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the main process (default 2)")
    p.add_argument("--lightly-workers", type=int, default=2, help="DataLoader workers of the lightly pipeline (default 2)")
    p.add_argument("--lightly-forward", choices=("two-pass", "concat"), default="two-pass",
                   help="lightly: one backbone pass per view as its examples do (default), or one pass over both")
    p.add_argument("--hidden-dim", type=int, default=512, help="projector hidden size (default 512)")
    p.add_argument("--out-dim", type=int, default=128, help="projector output size (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT.parent)})")
    args = p.parse_args(argv)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    args.pipelines = [s.strip() for s in args.pipelines.split(",") if s.strip()]
    for name, given, allowed in (("precisions", args.precisions, PRECISIONS), ("pipelines", args.pipelines, PIPELINES)):
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            p.error(f"--{name}: {bad or 'empty'}; choose from {', '.join(allowed)}")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2:
        p.error("need --steps >= 1, --warmup >= 0, --batch-size >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from synthpos.config import DataConfig
    from synthpos.data import load_dataset
    from synthpos.models.backbones import ConvNet

    ds = load_dataset(DataConfig(name="fashion_mnist"), "train")
    if len(ds) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the dataset ({len(ds)} images)")

    results = []
    for precision in args.precisions:
        for pipeline in args.pipelines:
            torch.manual_seed(args.seed)
            print(f"[{pipeline} / {precision}] {args.warmup} warm-up + {args.steps} timed steps ...", flush=True)
            seconds, cpu_seconds = BENCHES[pipeline](ds, precision, args)
            ips = args.steps * args.batch_size / seconds
            results.append({
                "pipeline": pipeline, "precision": precision, "steps": args.steps, "seconds": round(seconds, 4),
                "images_per_s": round(ips, 2), "ms_per_step": round(1000 * seconds / args.steps, 2),
                "main_process_cpu_seconds": round(cpu_seconds, 4),
            })
            print(f"    {ips:9.1f} images/s  ({1000 * seconds / args.steps:.1f} ms/step)", flush=True)

    by = {(r["pipeline"], r["precision"]): r["images_per_s"] for r in results}
    ratios = {}
    for precision in args.precisions:
        entry = {}
        if ("synthpos", precision) in by and ("lightly", precision) in by:
            entry["synthpos_over_lightly"] = round(by["synthpos", precision] / by["lightly", precision], 3)
        if ("synthpos", precision) in by and ("model_only", precision) in by:
            entry["synthpos_over_model_only"] = round(by["synthpos", precision] / by["model_only", precision], 3)
        if ("lightly", precision) in by and ("model_only", precision) in by:
            entry["lightly_over_model_only"] = round(by["lightly", precision] / by["model_only", precision], 3)
        if entry:
            ratios[precision] = entry

    n_params = sum(p.numel() for p in ConvNet(ds.channels, WIDTH).parameters())
    report = {
        "benchmark": "pretrain_throughput",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info("torchvision", "lightly", "synthpos"),
        "settings": {
            "dataset": f"fashion_mnist train ({len(ds)} images, {ds.image_shape}, mean {ds.mean}, std {ds.std})",
            "image_mode": "L (1 channel) for all pipelines; encoder in_channels=1",
            "encoder": f"synthpos.models.backbones.ConvNet(in_channels={ds.channels}, width={WIDTH}) ({n_params} params)",
            "projector": f"Linear({8 * WIDTH},{args.hidden_dim})-ReLU-Linear({args.hidden_dim},{args.out_dim}), no BN "
            "(synthpos projection_head; lightly SimCLRProjectionHead(batch_norm=False))",
            "loss": f"NT-Xent, temperature {TEMPERATURE} (synthpos.losses.NTXentLoss; lightly.loss.NTXentLoss for lightly)",
            "optimizer": {"name": "torch.optim.SGD", **SGD},
            "batch_size": args.batch_size,
            "crop_size": CROP,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "precisions": args.precisions,
            "bf16": "torch.autocast('cpu', dtype=torch.bfloat16) around forward + loss "
            "(for synthpos that includes BatchAugment, as compute_loss does under Lightning's bf16-mixed)",
            "channels_last": True,
            "torch_num_threads_main": args.threads,
            "images_per_s": "steps * batch_size / seconds; anchor images, not views; timing includes data loading",
            "main_process_cpu_seconds": "time.process_time() of the main process over the timed steps (all its "
            "threads, loader workers excluded); near threads * seconds when the main process had the cores to itself",
            "synthpos_augment": "BatchAugment(crop_size=32, mean, std) defaults: crop scale (0.08, 1), jitter p 0.8 "
            "(0.4, 0.4, 0.4, 0.1), grayscale p 0.2, hflip p 0.5",
            "synthpos_loader": "DataLoader(PretrainBatches, shuffle=True, drop_last=True, collate_fn=identity, num_workers=0)",
            "lightly_transform": "SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0, "
            "normalize=dataset mean/std) (lightly's CIFAR-10 benchmark settings: same distribution as synthpos's)",
            "lightly_loader": f"DataLoader(batch_size={args.batch_size}, shuffle=True, drop_last=True, "
            f"num_workers={args.lightly_workers}, persistent_workers={args.lightly_workers > 0}); "
            "each worker runs 1 torch thread; the workers compete with the main process for the same cores",
            "lightly_forward": args.lightly_forward,
            "pipelines": {name: DESCRIPTIONS[name] for name in args.pipelines},
            "order": "for each precision: " + ", ".join(args.pipelines) + "; one process, one after another",
        },
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'pipeline':<12} {'precision':<9} {'images/s':>10} {'ms/step':>9} {'seconds':>9} {'main cpu s':>10}")
    for r in results:
        print(f"{r['pipeline']:<12} {r['precision']:<9} {r['images_per_s']:>10.1f} {r['ms_per_step']:>9.1f} "
              f"{r['seconds']:>9.2f} {r['main_process_cpu_seconds']:>10.2f}")
    for precision, entry in ratios.items():
        print(f"{precision}: " + ", ".join(f"{k} = {v:.2f}x" for k, v in entry.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
