"""CLSP generation: candidates/s and fidelity of fast samplers against the paper's DDIM-100.

Every variant makes K candidates for the same fixed anchors (the first N images of the
Fashion-MNIST train split) with the same seeds, through the real
:class:`synthpos.generators.clsp_generator.CLSPGenerator` on the shipped generator
(``builtin:fashion_mnist``):

* ``ddim100`` (the reference): the paper's sampler, DDIM 100 steps, eta 0.1, w = 0.1, x0
  not clipped, fp32, fresh anchor noise per candidate.
* DDIM with fewer steps; DPM-Solver++ (2M) at 10/15/20 steps; each with or without
  ``share_anchor_noise``, ``clip_x0``, ``channels_last``, and bf16 (on a subset of the
  anchors: on a CPU without native bf16 it is several times slower than fp32).

Fidelity: a small CNN trained once in this run on the real train split
(:mod:`synthpos.evaluation.fidelity`, 2 epochs) labels every candidate; fidelity is the
share that gets its anchor's label. Because every variant sees the same anchors, the gap
to the reference is a paired per-anchor difference; its standard error is
``std(d_a) / sqrt(A)`` over the anchors' mean agreements ``d_a`` (candidates of one anchor
are correlated, so they are not counted as independent).

Timing: the variants run interleaved, one round of anchors at a time (every variant
on the same round before the next), so load from other processes hits them alike.
Each variant has one untimed warm-up call first. ``candidates/s`` = candidates / wall
seconds of ``generate()`` (noise drawing, UNet, sampler, uint8 conversion included);
CPU seconds of this process are recorded too.

Run (on an idle machine)::

    python benchmarks/generation.py                      # default size, about 15 min on 2 cores
    python benchmarks/generation.py --anchors 1000 --candidates 8   # bigger, tighter error bars

Writes ``benchmarks/results/generation.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "generation.json"
REFERENCE = "ddim100"
TARGET_SPEEDUP = 5.0
TARGET_GAP_POINTS = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, Any]
    description: str
    max_anchors: int | None = None  # run on the first N anchors only (slow variants)


# The paper's sampler; every variant changes only what it names.
PAPER = {"sampler": "ddim", "num_steps": 100, "eta": 0.1, "interpolation_weight": 0.1, "clip_x0": False,
         "share_anchor_noise": False, "precision": "fp32", "channels_last": False}


def _v(name: str, description: str, max_anchors: int | None = None, **changes: Any) -> Variant:
    return Variant(name, {**PAPER, **changes}, description, max_anchors)


def variants(bf16_anchors: int) -> list[Variant]:
    dpm = {"sampler": "dpmsolver++"}
    return [
        _v(REFERENCE, "paper: DDIM 100 steps, eta 0.1, w 0.1, no clipping, fp32, fresh anchor noise per candidate"),
        _v("ddim20", "DDIM 20 steps", num_steps=20),
        _v("ddim10", "DDIM 10 steps", num_steps=10),
        _v("ddim10_clip", "DDIM 10 steps, x0 clipped every step (the quick start's sampler)", num_steps=10, clip_x0=True),
        _v("dpm10", "DPM-Solver++ 10 steps", num_steps=10, **dpm),
        _v("dpm15", "DPM-Solver++ 15 steps", num_steps=15, **dpm),
        _v("dpm20", "DPM-Solver++ 20 steps", num_steps=20, **dpm),
        _v("dpm10_shared", "DPM-Solver++ 10 steps, share_anchor_noise", num_steps=10, share_anchor_noise=True, **dpm),
        _v("dpm15_shared", "DPM-Solver++ 15 steps, share_anchor_noise", num_steps=15, share_anchor_noise=True, **dpm),
        _v("dpm20_shared", "DPM-Solver++ 20 steps, share_anchor_noise", num_steps=20, share_anchor_noise=True, **dpm),
        _v("dpm15_clip", "DPM-Solver++ 15 steps, x0 clipped every step", num_steps=15, clip_x0=True, **dpm),
        _v("dpm15_shared_cl", "DPM-Solver++ 15 steps, share_anchor_noise, channels_last UNet", num_steps=15,
           share_anchor_noise=True, channels_last=True, **dpm),
        _v("dpm15_shared_bf16", f"DPM-Solver++ 15 steps, share_anchor_noise, bf16 autocast (first {bf16_anchors} anchors)",
           bf16_anchors, num_steps=15, share_anchor_noise=True, precision="bf16", **dpm),
    ]


# --------------------------------------------------------------------------- helpers


def paired_stats(agree: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Fidelity of ``agree`` (A, K) and its paired gap to ``ref`` (A', K'), A <= A', in points."""
    per_anchor = agree.mean(axis=1)
    a = len(per_anchor)
    d = per_anchor - ref[:a].mean(axis=1)
    se = per_anchor.std(ddof=1) / np.sqrt(a) if a > 1 else float("nan")
    gap_se = d.std(ddof=1) / np.sqrt(a) if a > 1 else float("nan")
    return {
        "fidelity": round(100 * float(per_anchor.mean()), 2),
        "fidelity_se": round(100 * float(se), 2),
        "all_candidates_agree": round(100 * float(agree.all(axis=1).mean()), 2),
        "reference_fidelity_same_anchors": round(100 * float(ref[:a].mean()), 2),
        "gap_points": round(100 * float(d.mean()), 2),
        "gap_se_points": round(100 * float(gap_se), 2),
        "gap_ci95_points": [round(100 * float(d.mean() - 1.96 * gap_se), 2), round(100 * float(d.mean() + 1.96 * gap_se), 2)],
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchors", type=int, default=200, help="anchors (the first N train images; default 200)")
    p.add_argument("--candidates", type=int, default=4, help="K candidates per anchor (default 4)")
    p.add_argument("--round", type=int, default=32, help="anchors per interleaved round (default 32)")
    p.add_argument("--batch-size", type=int, default=128, help="generate.batch_size: rows per UNet call (default 128)")
    p.add_argument("--bf16-anchors", type=int, default=16, help="anchors for the bf16 variant (default 16)")
    p.add_argument("--variants", default="all", help="comma list of variant names (default all; the reference always runs)")
    p.add_argument("--generator", default="builtin:fashion_mnist", help="a DDPMPipeline folder (default builtin:fashion_mnist)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--classifier-images", type=int, default=60000, help="real train images for the fidelity classifier")
    p.add_argument("--classifier-epochs", type=int, default=2, help="fidelity classifier epochs (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT.parent)}; "
                   "with --smoke runs/smoke/generation.json)")
    p.add_argument("--smoke", action="store_true", help="checks the script: every variant at 1 sampler step on 2 anchors "
                   "x 1 candidate, no warm-up, a 1-epoch classifier, on a tiny copy of the data (CI; measures nothing)")
    args = p.parse_args(argv)
    args.data_root = None
    if args.smoke:
        from _smoke import THREADS, smoke_out, tiny_fashion_mnist

        args.out = args.out or smoke_out("generation")
        args.threads = THREADS
        args.anchors, args.candidates, args.round, args.bf16_anchors, args.classifier_epochs = 2, 1, 2, 2, 1
        args.data_root = tiny_fashion_mnist(args.out.with_suffix("") / "data", 512, 64)
    args.out = args.out or DEFAULT_OUT
    if args.anchors < 2 or args.candidates < 1 or args.round < 1:
        p.error("need --anchors >= 2, --candidates >= 1, --round >= 1")
    known = {v.name: v for v in variants(args.bf16_anchors)}
    if args.variants == "all":
        args.variants = list(known.values())
    else:
        names = [REFERENCE] + [n.strip() for n in args.variants.split(",") if n.strip() and n.strip() != REFERENCE]
        bad = [n for n in names if n not in known]
        if bad:
            p.error(f"--variants: unknown {bad}; choose from {', '.join(known)}")
        args.variants = [known[n] for n in names]
    if args.smoke:  # each variant as it is, but 1 step: the code paths, not the numbers
        args.variants = [Variant(v.name, {**v.settings, "num_steps": 1}, v.description, v.max_anchors) for v in args.variants]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from synthpos.config import DataConfig, FidelityConfig, GenerateConfig
    from synthpos.data import load_dataset
    from synthpos.evaluation.fidelity import predict, train_classifier
    from synthpos.generators.registry import build_generator

    started = time.perf_counter()
    machine = machine_info("diffusers")
    machine["smoke"] = args.smoke
    train = load_dataset(DataConfig(name="fashion_mnist", root=args.data_root), "train")
    test = load_dataset(DataConfig(name="fashion_mnist", root=args.data_root), "test")
    anchors, labels = train.images[: args.anchors], train.labels[: args.anchors]
    k, device = args.candidates, torch.device(args.device)

    print(f"fidelity classifier on {min(args.classifier_images, len(train))} real train images ...", flush=True)
    t0 = time.perf_counter()
    fidelity_cfg = FidelityConfig(train_images=args.classifier_images, epochs=args.classifier_epochs)
    classifier = train_classifier(train, fidelity_cfg, seed=args.seed, show_progress=False)
    classifier_seconds = time.perf_counter() - t0
    test_acc = float((predict(classifier, test.images, test.mean, test.std) == test.labels).mean())
    anchor_acc = float((predict(classifier, anchors, train.mean, train.std) == labels).mean())
    print(f"    {classifier_seconds:.0f} s; top-1 {100 * test_acc:.1f}% on real test images, {100 * anchor_acc:.1f}% on the anchors")

    generators = {}
    for v in args.variants:
        shared = {key: value for key, value in v.settings.items() if key in GenerateConfig.model_fields}
        own = {key: value for key, value in v.settings.items() if key not in shared}  # generate.clsp.*
        settings = GenerateConfig(kind="clsp", candidates=k, batch_size=args.batch_size, **shared, clsp=own)
        generators[v.name] = build_generator("clsp", args.generator, settings, args.seed, device)
        if not args.smoke:
            generators[v.name].generate(anchors[:1], 0)  # warm-up, untimed
    record = {v.name: generators[v.name].record() for v in args.variants}

    outputs = {v.name: [] for v in args.variants}
    wall = {v.name: 0.0 for v in args.variants}
    cpu = {v.name: 0.0 for v in args.variants}
    for begin in range(0, args.anchors, args.round):
        end = min(args.anchors, begin + args.round)
        for v in args.variants:
            stop = min(end, v.max_anchors or end)
            if stop <= begin:
                continue
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            outputs[v.name].append(generators[v.name].generate(anchors[begin:stop], begin))
            wall[v.name] += time.perf_counter() - t_wall
            cpu[v.name] += time.process_time() - t_cpu
        done = time.perf_counter() - started
        print(f"  anchors {end}/{args.anchors}: {done / 60:.1f} min so far", flush=True)

    agree = {}
    for v in args.variants:
        cands = np.concatenate(outputs[v.name])  # (A, K, H, W, C)
        pred = predict(classifier, cands.reshape(-1, *cands.shape[2:]), train.mean, train.std).reshape(len(cands), k)
        agree[v.name] = pred == labels[: len(cands), None]

    ref_speed = agree[REFERENCE].size / wall[REFERENCE]
    ref_cpu_speed = agree[REFERENCE].size / cpu[REFERENCE]
    results = []
    for v in args.variants:
        n = agree[v.name].size
        speed = n / wall[v.name]
        stats = paired_stats(agree[v.name], agree[REFERENCE])
        entry = {
            "variant": v.name, "description": v.description, "settings": v.settings,
            "anchors": len(agree[v.name]), "candidates": n, "seconds": round(wall[v.name], 2),
            "cpu_seconds": round(cpu[v.name], 2), "candidates_per_s": round(speed, 2),
            "speedup_vs_reference": round(speed / ref_speed, 2),
            "cpu_time_speedup_vs_reference": round((n / cpu[v.name]) / ref_cpu_speed, 2),
            **stats,
            "meets_target": bool(speed / ref_speed >= TARGET_SPEEDUP and stats["gap_points"] >= -TARGET_GAP_POINTS),
            "record": record[v.name],
        }
        results.append(entry)

    report = {
        "benchmark": "generation",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "settings": {
            "generator": args.generator,
            "anchors": f"the first {args.anchors} Fashion-MNIST train images (labels {np.bincount(labels, minlength=10).tolist()})",
            "candidates_per_anchor": k,
            "batch_size": args.batch_size,
            "round_anchors": args.round,
            "threads": args.threads,
            "device": str(device),
            "seed": args.seed,
            "target": f">= {TARGET_SPEEDUP}x the reference's candidates/s with fidelity no more than {TARGET_GAP_POINTS} point below it",
            "timing": "interleaved rounds; wall seconds of CLSPGenerator.generate() after one untimed warm-up call per variant",
            "fidelity": "share of candidates the classifier gives their anchor's label; se over anchors (cluster = anchor)",
            "gap": "paired per-anchor difference to the reference on the same anchors and seeds; se = std(d_a)/sqrt(A)",
        },
        "classifier": {
            "train_images": min(args.classifier_images, len(train)), "epochs": args.classifier_epochs,
            "seconds": round(classifier_seconds, 1), "test_top1": round(100 * test_acc, 2),
            "anchor_top1": round(100 * anchor_acc, 2),
        },
        "results": results,
        "total_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'variant':<19} {'cands':>6} {'cand/s':>8} {'speed-up':>8} {'cpu x':>6} {'fidelity':>13} {'gap (95% CI)':>24}")
    for r in results:
        lo, hi = r["gap_ci95_points"]
        print(f"{r['variant']:<19} {r['candidates']:>6} {r['candidates_per_s']:>8.2f} {r['speedup_vs_reference']:>7.2f}x "
              f"{r['cpu_time_speedup_vs_reference']:>5.2f}x {r['fidelity']:>6.1f} ± {r['fidelity_se']:<4.1f} "
              f"{r['gap_points']:>+6.1f} ({lo:+.1f}, {hi:+.1f}){' *' if r['meets_target'] else ''}")
    print(f"* meets the target ({TARGET_SPEEDUP}x, gap >= -{TARGET_GAP_POINTS} point); total {report['total_minutes']:.1f} min")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
