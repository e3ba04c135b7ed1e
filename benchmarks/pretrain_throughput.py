"""SimCLR pretraining throughput on the CPU: synthpos's steps vs lightly's documented pipeline.

Images/s of a whole training step, data loading included, for each pipeline, in one
process, at each precision asked for (fp32, and bf16 where the CPU has native bf16):

* ``synthpos``: Fashion-MNIST held in memory as uint8; batches fetched whole through
  :class:`synthpos.methods.pretrain.PretrainBatches` with the real
  :class:`synthpos.resumable.ResumableBatchSampler` (``num_workers=0``); the views made by
  :class:`synthpos.data.BatchAugment` on the batch; the step is the real
  :meth:`synthpos.methods.simclr.SimCLR.compute_loss` (one backbone pass over both views,
  projector, :class:`synthpos.losses.NTXentLoss`), then backward and SGD.
* ``synthpos_clsp``: the same with ``synthetic.mode=clsp``: a third view from one candidate
  per anchor read from a memory-mapped :class:`synthpos.data.synthetic_store.SyntheticStore`
  (K=2 candidates per anchor, written once before timing: copies of the anchors, since the
  bytes do not change the cost), three views through the backbone, NT-Xent + the CLSP term.
* ``synthpos_multipos``: ``synthetic.mode=multipos`` with 2 stored positives: four views and
  the multi-positive InfoNCE.
* ``lightly``: lightly's documented pipeline: the same images as PIL images (mode "L",
  made per item as ``torchvision.datasets.FashionMNIST`` does), per-image
  ``lightly.transforms.SimCLRTransform`` (CIFAR settings of lightly's CIFAR-10
  benchmark: ``input_size=32, cj_strength=0.5, gaussian_blur=0.0``; normalised with the
  dataset's mean/std), a ``DataLoader`` with 2 persistent workers,
  ``lightly.models.modules.SimCLRProjectionHead``, ``lightly.loss.NTXentLoss``, SGD.
* ``model_only``: the synthpos encoder + projector + loss on random tensors that are
  already views: the ceiling with no data pipeline at all.
* with ``--compile``: ``synthpos_compiled`` (``pretrain.compile``: the backbone and heads
  through :func:`synthpos.methods.compiled.compile_method`) and ``lightly_compiled`` (the
  same ``torch.compile`` of lightly's backbone and head). Their compile time (the first
  step's extra seconds) is reported apart, and ``end_to_end_images_per_s`` counts it over
  a ``--end-to-end-steps`` (200) step run.

All use ``synthpos.models.backbones.ConvNet(1, width=32)`` (1 channel: lightly's
transform handles mode "L" images, so no RGB conversion), the same projector sizes, the
same SGD settings, channels_last, and ``torch.set_num_threads(2)`` in the main process.
lightly's 2 loader workers compete with the main process for the same cores; that is
part of what is measured. Images/s counts anchor images (``steps * batch_size /
seconds``), not views. Warm-up steps (which include the workers' start-up) are not timed.
Every configuration runs ``--repeats`` (3) times, interleaved (repeat r of every
configuration before repeat r + 1 of any), and the median is reported.

Run (on an idle machine)::

    python benchmarks/pretrain_throughput.py --steps 40 --warmup 5 --repeats 3
    python benchmarks/pretrain_throughput.py --steps 40 --warmup 5 --repeats 3 --compile
    python benchmarks/pretrain_throughput.py --smoke        # every pipeline for 2 steps on tiny data (CI)
    python benchmarks/pretrain_throughput.py --profile synthpos_clsp --precisions fp32   # where the time goes

Writes ``benchmarks/results/pretrain_throughput.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
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
PIPELINES = ("synthpos", "synthpos_clsp", "synthpos_multipos", "lightly", "model_only")
COMPILED = ("synthpos_compiled", "lightly_compiled")
PRECISIONS = ("fp32", "bf16")

# Shared by every pipeline.
WIDTH = 32
CROP = 32
TEMPERATURE = 0.5
SGD = {"lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4}  # lightly's CIFAR-10 examples
CANDIDATES = 2  # K of the store the clsp and multipos steps read
POSITIVES = 2  # multipos: stored positives per anchor (4 views)


# --------------------------------------------------------------------------- helpers


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def forever(loader: DataLoader) -> Iterator:
    """Batches without end: a new epoch starts when one runs out (that cost is counted)."""
    while True:
        yield from loader


def run_steps(step: Callable[[], None], warmup: int, steps: int) -> dict[str, float]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones.

    Returns the wall-clock seconds of the first step (a compiled step compiles there), of
    the timed steps, and the CPU seconds the main process used in the timed steps (all its
    threads; loader workers not included).
    """
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {"first_step_s": first, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}


def make_store(ds, folder: Path):
    """A store of K=2 candidates per anchor (the anchor and its mirror image), memory-mapped as pretraining reads it."""
    from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint

    fingerprint = dataset_fingerprint(ds.name, ds.split, ds.images)
    store = SyntheticStore.create(folder, fingerprint, candidates=CANDIDATES, shard_size=5000,
                                  generator={"kind": "benchmark: copies of the anchors"})
    for shard in range(store.layout.num_shards):
        begin, end = store.layout.shard_range(shard)
        images = ds.images[begin:end]
        store.write_shard(shard, np.stack([images, images[:, :, ::-1]], axis=1))
    store.fold_records()
    return SyntheticStore.open(folder, ds.name, ds.split, ds.images)


# --------------------------------------------------------------------------- pipelines


def _synthpos(mode: str, compiled: bool = False):
    def bench(ds, store, precision: str, args) -> dict[str, float]:
        from synthpos.config import OptimizerConfig, SyntheticConfig
        from synthpos.data import BatchAugment
        from synthpos.methods.compiled import compile_method
        from synthpos.methods.pretrain import PretrainBatches
        from synthpos.methods.simclr import SimCLR
        from synthpos.models.backbones import ConvNet
        from synthpos.resumable import ResumableBatchSampler

        augment = BatchAugment(crop_size=CROP, mean=ds.mean, std=ds.std)
        method = SimCLR(
            ConvNet(ds.channels, width=WIDTH), augment, optimizer=OptimizerConfig(**SGD),
            projector_hidden_dim=args.hidden_dim, projector_out_dim=args.out_dim, temperature=TEMPERATURE,
            channels_last=True, synthetic=SyntheticConfig(mode=mode, positives=POSITIVES),
        )
        method.setup("fit")  # builds the criterion
        method.train()
        if compiled:
            compile_method(method)
        opt = torch.optim.SGD(method.parameters(), **SGD)
        batches = PretrainBatches(ds, store if method.mode.needs_store else None, args.seed, method.mode)
        loader = DataLoader(batches, batch_sampler=ResumableBatchSampler(len(ds), args.batch_size, args.seed),
                            collate_fn=lambda b: b, num_workers=0)
        source = forever(loader)

        def step() -> None:
            batch = next(source)
            with autocast(precision):
                loss, _ = method.compute_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run_steps(step, args.warmup, args.steps) if args.profile is None else profile(step, args)

    return bench


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


def _lightly(compiled: bool = False):
    def bench(ds, store, precision: str, args) -> dict[str, float]:
        from lightly.loss import NTXentLoss
        from lightly.transforms import SimCLRTransform

        from synthpos.methods.compiled import compile_modules
        from synthpos.models.backbones import ConvNet

        transform = SimCLRTransform(
            input_size=CROP, cj_strength=0.5, gaussian_blur=0.0,
            normalize={"mean": list(ds.mean), "std": list(ds.std)},
        )
        model = LightlySimCLR(ConvNet(ds.channels, width=WIDTH), args.hidden_dim, args.out_dim)
        model = model.to(memory_format=torch.channels_last).train()
        if compiled:  # the same torch.compile as synthpos's: backbone and head
            compile_modules([model.backbone, model.projection_head])
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
            return run_steps(step, args.warmup, args.steps) if args.profile is None else profile(step, args)
        finally:
            # Stop the persistent workers now, so that they do not compete with the next configuration.
            batches.close()
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
            del batches, loader
            gc.collect()

    return bench


def bench_model_only(ds, store, precision: str, args) -> dict[str, float]:
    from synthpos.losses import NTXentLoss
    from synthpos.models.backbones import ConvNet
    from synthpos.models.heads import mlp

    backbone = ConvNet(ds.channels, width=WIDTH).to(memory_format=torch.channels_last)
    projector = mlp(backbone.feature_dim, args.hidden_dim, args.out_dim)
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

    return run_steps(step, args.warmup, args.steps) if args.profile is None else profile(step, args)


BENCHES = {
    "synthpos": _synthpos("none"), "synthpos_clsp": _synthpos("clsp"), "synthpos_multipos": _synthpos("multipos"),
    "lightly": _lightly(), "model_only": bench_model_only,
    "synthpos_compiled": _synthpos("none", compiled=True), "lightly_compiled": _lightly(compiled=True),
}

DESCRIPTIONS = {
    "synthpos": "PretrainBatches (whole-batch fetch, ResumableBatchSampler, num_workers=0) + BatchAugment x2 + "
    "SimCLR.compute_loss (one backbone pass over both views) + backward + SGD",
    "synthpos_clsp": "synthpos with synthetic.mode=clsp: + one candidate per anchor read from the memory-mapped store, "
    "a third BatchAugment view, 3 views in one backbone pass, NT-Xent + CLSP term",
    "synthpos_multipos": f"synthpos with synthetic.mode=multipos, positives={POSITIVES}: + {POSITIVES} candidates per "
    f"anchor from the store, {2 + POSITIVES} views in one pass, multi-positive InfoNCE",
    "lightly": "PIL 'L' image per item + SimCLRTransform (per image) in a DataLoader with persistent workers "
    "+ SimCLRProjectionHead + lightly NTXentLoss + backward + SGD",
    "model_only": "encoder + projector + synthpos NTXentLoss + backward + SGD on random (2*batch, C, 32, 32) "
    "tensors; no data pipeline (ceiling)",
    "synthpos_compiled": "synthpos with pretrain.compile: synthpos.methods.compiled.compile_method (nn.Module.compile "
    "of the backbone and the projector)",
    "lightly_compiled": "lightly with the same nn.Module.compile of its backbone and projection head",
}


def profile(step: Callable[[], None], args) -> dict[str, float]:
    """``--profile``: warm up, then torch.profiler over the timed steps; prints and keeps the top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(max(1, args.warmup)):
        step()
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    print(table)
    args.profile_table = table
    return {"first_step_s": float("nan"), "seconds": seconds, "cpu_seconds": float("nan")}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per configuration and repeat (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per configuration, >= 1 (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported (default 3)")
    p.add_argument("--precisions", default=None,
                   help="comma list of fp32, bf16 (default fp32, and bf16 where the CPU has native bf16)")
    p.add_argument("--pipelines", default=",".join(PIPELINES),
                   help=f"comma list of {', '.join(PIPELINES + COMPILED)} (default: {', '.join(PIPELINES)})")
    p.add_argument("--compile", action="store_true", help=f"add {' and '.join(COMPILED)} (torch.compile; slow to compile)")
    p.add_argument("--end-to-end-steps", type=int, default=200,
                   help="run length over which a compiled step's compile time is counted (default 200)")
    p.add_argument("--batch-size", type=int, default=256, help="anchor images per step (default 256)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the main process (default 2)")
    p.add_argument("--lightly-workers", type=int, default=2, help="DataLoader workers of the lightly pipeline (default 2)")
    p.add_argument("--lightly-forward", choices=("two-pass", "concat"), default="two-pass",
                   help="lightly: one backbone pass per view as its examples do (default), or one pass over both")
    p.add_argument("--hidden-dim", type=int, default=512, help="projector hidden size (default 512)")
    p.add_argument("--out-dim", type=int, default=128, help="projector output size (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, metavar="PIPELINE",
                   help="instead of timing: torch.profiler over --steps steps of PIPELINE, at each precision")
    p.add_argument("--smoke", action="store_true", help="checks the script: every pipeline for 2 steps of 32 images "
                   "of a tiny copy of the data, 1 repeat (CI; measures nothing)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT.parent)}; "
                   "with --smoke runs/smoke/pretrain_throughput.json)")
    args = p.parse_args(argv)
    if args.precisions is None:
        from synthpos.precision import cpu_has_bf16

        args.precisions = "fp32,bf16" if cpu_has_bf16() else "fp32"
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    args.pipelines = [s.strip() for s in args.pipelines.split(",") if s.strip()]
    if args.compile:
        args.pipelines += [c for c in COMPILED if c not in args.pipelines]
    if args.profile is not None:
        args.pipelines, args.repeats = [args.profile], 1
    for name, given, allowed in (("precisions", args.precisions, PRECISIONS),
                                 ("pipelines", args.pipelines, PIPELINES + COMPILED)):
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            p.error(f"--{name}: {bad or 'empty'}; choose from {', '.join(allowed)}")
    args.data_root = None
    if args.smoke:
        from _smoke import THREADS, smoke_out, tiny_fashion_mnist

        args.steps, args.warmup, args.repeats, args.batch_size, args.end_to_end_steps = 2, 1, 1, 32, 4
        args.threads = THREADS
        args.out = args.out or smoke_out("pretrain_throughput")
        args.data_root = tiny_fashion_mnist(args.out.with_suffix("") / "data", 256, 16)
    args.out = args.out or DEFAULT_OUT
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 2 or args.repeats < 1:
        p.error("need --steps >= 1, --warmup >= 1, --batch-size >= 2, --repeats >= 1")
    return args


def summarise(runs: list[dict[str, float]], args) -> dict:
    """Median over the repeats; for a compiled step, its compile time and the end-to-end rate over a long run."""
    seconds = statistics.median(r["seconds"] for r in runs)
    step = seconds / args.steps
    entry = {
        "images_per_s": round(args.steps * args.batch_size / seconds, 2), "ms_per_step": round(1000 * step, 2),
        "seconds": round(seconds, 4), "main_process_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 4),
        "images_per_s_repeats": [round(args.steps * args.batch_size / r["seconds"], 2) for r in runs],
        "first_step_s_repeats": [round(r["first_step_s"], 3) for r in runs],
    }
    # The first step's time beyond a steady step: compilation (and, uncompiled, first-call set-up).
    # The largest over the repeats: the first repeat compiled with torch's caches coldest.
    startup = max(0.0, max(r["first_step_s"] for r in runs) - step)
    n = args.end_to_end_steps
    entry["startup_s"] = round(startup, 3)
    entry["end_to_end_steps"] = n
    entry["end_to_end_images_per_s"] = round(n * args.batch_size / (startup + n * step), 2)
    return entry


def ratios_for(by: dict[str, dict]) -> dict[str, float]:
    """The ratios the issue asks for, from one precision's results (only those whose pipelines ran)."""
    out: dict[str, float] = {}

    def ratio(name: str, a: str, b: str, key: str = "images_per_s") -> None:
        if a in by and b in by:
            out[name] = round(by[a][key] / by[b][key], 3)

    ratio("synthpos_over_lightly", "synthpos", "lightly")
    ratio("synthpos_over_model_only", "synthpos", "model_only")
    ratio("lightly_over_model_only", "lightly", "model_only")
    # Cost per anchor image: ms per step of the same batch size.
    ratio("clsp_step_over_simclr_step", "synthpos_clsp", "synthpos", "ms_per_step")
    ratio("multipos_step_over_simclr_step", "synthpos_multipos", "synthpos", "ms_per_step")
    ratio("synthpos_compiled_over_lightly", "synthpos_compiled", "lightly")
    ratio("synthpos_compiled_over_lightly_compiled", "synthpos_compiled", "lightly_compiled")
    ratio("synthpos_compiled_end_to_end_over_lightly", "synthpos_compiled", "lightly", "end_to_end_images_per_s")
    ratio("synthpos_compiled_end_to_end_over_lightly_compiled_end_to_end", "synthpos_compiled", "lightly_compiled",
          "end_to_end_images_per_s")
    fastest = max((p for p in ("synthpos", "synthpos_compiled") if p in by),
                  key=lambda p: by[p]["end_to_end_images_per_s"], default=None)
    if fastest and "lightly" in by:
        out["best_synthpos_end_to_end_over_lightly"] = round(
            by[fastest]["end_to_end_images_per_s"] / by["lightly"]["end_to_end_images_per_s"], 3)
        out["best_synthpos_pipeline"] = fastest
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from synthpos.config import DataConfig
    from synthpos.data import load_dataset
    from synthpos.models.backbones import ConvNet

    ds = load_dataset(DataConfig(name="fashion_mnist", root=args.data_root), "train")
    if len(ds) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the dataset ({len(ds)} images)")
    machine = machine_info("torchvision", "lightly", "synthpos")

    scratch = tempfile.TemporaryDirectory(prefix="synthpos-throughput-store-")
    store = None
    if any(p in args.pipelines for p in ("synthpos_clsp", "synthpos_multipos")):
        start = time.perf_counter()
        store = make_store(ds, Path(scratch.name) / "store")
        print(f"store of {CANDIDATES} candidates per anchor written in {time.perf_counter() - start:.1f} s (untimed)")

    configs = [(pipeline, precision) for precision in args.precisions for pipeline in args.pipelines]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in configs}
    profiles = {}
    for repeat in range(args.repeats):
        for pipeline, precision in configs:  # interleaved: load from elsewhere falls on every configuration alike
            torch.manual_seed(args.seed)
            print(f"[{pipeline} / {precision} / repeat {repeat + 1}] {args.warmup} warm-up + {args.steps} timed steps ...",
                  flush=True)
            runs[pipeline, precision].append(BENCHES[pipeline](ds, store, precision, args))
            if args.profile is not None:
                profiles[precision] = args.profile_table
            r = runs[pipeline, precision][-1]
            print(f"    {args.steps * args.batch_size / r['seconds']:9.1f} images/s  "
                  f"({1000 * r['seconds'] / args.steps:.1f} ms/step, first step {r['first_step_s']:.2f} s)", flush=True)
    scratch.cleanup()
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    results = [{"pipeline": p, "precision": q, "steps": args.steps, "repeats": args.repeats, **summarise(runs[p, q], args)}
               for p, q in configs]
    ratios = {}
    for precision in args.precisions:
        entry = ratios_for({r["pipeline"]: r for r in results if r["precision"] == precision})
        if entry:
            ratios[precision] = entry

    n_params = sum(p.numel() for p in ConvNet(ds.channels, WIDTH).parameters())
    report = {
        "benchmark": "pretrain_throughput",
        "smoke": args.smoke,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else ["pretrain_throughput.py", *argv])]),
        "machine": machine,
        "settings": {
            "dataset": f"fashion_mnist train ({len(ds)} images, {ds.image_shape}, mean {ds.mean}, std {ds.std})",
            "image_mode": "L (1 channel) for all pipelines; encoder in_channels=1",
            "encoder": f"synthpos.models.backbones.ConvNet(in_channels={ds.channels}, width={WIDTH}) ({n_params} params)",
            "projector": f"Linear({8 * WIDTH},{args.hidden_dim})-ReLU-Linear({args.hidden_dim},{args.out_dim}), no BN "
            "(synthpos.models.heads.mlp; lightly SimCLRProjectionHead(batch_norm=False))",
            "loss": f"NT-Xent, temperature {TEMPERATURE} (synthpos.losses.NTXentLoss; lightly.loss.NTXentLoss for lightly)",
            "optimizer": {"name": "torch.optim.SGD", **SGD},
            "batch_size": args.batch_size,
            "crop_size": CROP,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": f"{args.repeats}, interleaved (repeat r of every configuration before repeat r+1); median reported",
            "precisions": args.precisions,
            "bf16": "torch.autocast('cpu', dtype=torch.bfloat16) around forward + loss "
            "(for synthpos that includes BatchAugment, as compute_loss does under Lightning's bf16-mixed)",
            "channels_last": True,
            "torch_num_threads_main": args.threads,
            "images_per_s": "steps * batch_size / seconds; anchor images, not views; timing includes data loading",
            "startup_s": "the first step's seconds beyond a steady step (compilation for a compiled step), the largest "
            "over the repeats",
            "end_to_end_images_per_s": f"end_to_end_steps * batch_size / (startup_s + end_to_end_steps * step seconds), "
            f"end_to_end_steps = {args.end_to_end_steps}",
            "main_process_cpu_seconds": "time.process_time() of the main process over the timed steps (all its "
            "threads, loader workers excluded); near threads * seconds when the main process had the cores to itself",
            "synthpos_augment": "BatchAugment(crop_size=32, mean, std) defaults: crop scale (0.08, 1), jitter p 0.8 "
            "(0.4, 0.4, 0.4, 0.1), grayscale p 0.2, hflip p 0.5",
            "synthpos_loader": "DataLoader(PretrainBatches, batch_sampler=ResumableBatchSampler, collate_fn=identity, "
            "num_workers=0)",
            "store": f"K={CANDIDATES} candidates per anchor (the anchor and its mirror), uint8 shards of 5000 anchors, "
            "np.load(mmap_mode='r') as pretraining opens them; written before timing, page cache warm",
            "lightly_transform": "SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0, "
            "normalize=dataset mean/std) (lightly's CIFAR-10 benchmark settings: same distribution as synthpos's)",
            "lightly_loader": f"DataLoader(batch_size={args.batch_size}, shuffle=True, drop_last=True, "
            f"num_workers={args.lightly_workers}, persistent_workers={args.lightly_workers > 0}); "
            "each worker runs 1 torch thread; the workers compete with the main process for the same cores",
            "lightly_forward": args.lightly_forward,
            "pipelines": {name: DESCRIPTIONS[name] for name in args.pipelines},
        },
        "results": results,
        "ratios": ratios,
    }
    if profiles:
        report["profile"] = {"pipeline": args.profile, "tables": profiles}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'pipeline':<18} {'precision':<9} {'images/s':>10} {'ms/step':>9} {'startup s':>9} {'e2e img/s':>10} "
          f"{'main cpu s':>10}")
    for r in results:
        print(f"{r['pipeline']:<18} {r['precision']:<9} {r['images_per_s']:>10.1f} {r['ms_per_step']:>9.1f} "
              f"{r['startup_s']:>9.2f} {r['end_to_end_images_per_s']:>10.1f} {r['main_process_cpu_seconds']:>10.2f}")
    for precision, entry in ratios.items():
        print(f"{precision}: " + ", ".join(f"{k} = {v}" for k, v in entry.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
