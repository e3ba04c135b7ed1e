"""Every method, without synthetic positives and with the ``clsp`` and ``replace`` modes, on Fashion-MNIST.

One fixed budget for all: the same training images (the first ``--subset`` of the train
split), epochs, batch size, backbone (ConvNet width 32), augmentations, seeds and one
synthetic store made once by the DDPM shipped with synthpos. Each method uses its
CPU recipe (``configs/fashion_mnist/<method>.yaml``: heads, temperature, queue sizes)
with these budget settings laid over it. Each run is then evaluated on frozen features:
weighted kNN (k=200, T=0.1) and a linear probe, trained on the first ``--eval-train``
train images and scored on the 10,000 test images.

Results are written to the JSON after every run, and a run already in the JSON is not
repeated, so an interrupted benchmark continues where it stopped::

    python benchmarks/methods_fashion_mnist.py                    # all methods, modes none,clsp,replace, seed 0
    python benchmarks/methods_fashion_mnist.py --methods simclr,byol --modes none,clsp --seeds 0,1

Writes ``benchmarks/results/methods_fashion_mnist.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _machine import machine_info  # benchmarks/_machine.py
from synthpos.registry import METHODS as METHOD_REGISTRY
from synthpos.registry import MODES as MODE_REGISTRY

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "results" / "methods_fashion_mnist.json"

# Every registered method that has its CPU recipe, configs/fashion_mnist/<method>.yaml (a plugin's
# too, when imported first and given a recipe); a method registered without one is not benchmarked.
METHODS = tuple(n for n in METHOD_REGISTRY.names() if (REPO / "configs" / "fashion_mnist" / f"{n}.yaml").is_file())
MODES = ("none", "clsp", "replace")


def budget_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    """The settings every run shares, laid over each method's recipe (then --smoke's)."""
    from _smoke import pipeline_overrides

    smoke = pipeline_overrides(args.smoke_data) if args.smoke else []
    return [
        f"data.subset={args.subset}",
        f"generate.store={work / 'store'}",
        "generate.generator=builtin:fashion_mnist",
        f"generate.candidates={args.candidates}",
        "generate.num_steps=10",
        "generate.clip_x0=true",
        "generate.batch_size=250",
        f"pretrain.epochs={args.epochs}",
        f"pretrain.batch_size={args.batch_size}",
        "pretrain.optimizer.warmup_epochs=1",
        "pretrain.knn_every_epochs=0",
        "pretrain.precision=fp32",
        "pretrain.num_threads=2",
        f"evaluate.max_train={args.eval_train}",
        f"evaluate.linear.epochs={args.linear_epochs}",
        *smoke,
    ]


def run_config(args: argparse.Namespace, work: Path, method: str, mode: str, seed: int):
    from synthpos.config import load_config

    overrides = budget_overrides(args, work) + [
        f"run_dir={work / f'{method}_{mode}_s{seed}'}",
        f"seed={seed}",
        f"pretrain.synthetic.mode={mode}",
        "pretrain.synthetic.weight=1.0",
        f"pretrain.synthetic.replace_prob={args.replace_prob}",
    ]
    return load_config(REPO / "configs" / "fashion_mnist" / f"{method}.yaml", overrides)


def smoke_runs(methods: list[str], modes: list[str]) -> set[tuple[str, str]]:
    """--smoke's (method, mode) pairs: every method once, the modes in turn, so every method and every mode runs."""
    return {(method, modes[i % len(modes)]) for i, method in enumerate(methods)} | {(methods[0], m) for m in modes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--subset", type=int, default=2500, help="training images (each gets its synthetic positives)")
    parser.add_argument("--candidates", type=int, default=2, help="K: synthetic candidates per training image")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--replace-prob", type=float, default=0.5, help="replace mode: p that view 2 is synthetic")
    parser.add_argument("--eval-train", type=int, default=10000, help="train images for kNN and the linear probe")
    parser.add_argument("--linear-epochs", type=int, default=30)
    parser.add_argument("--work", type=Path, default=None, help="run folders (default runs/bench_methods, "
                        "with --smoke runs/smoke/methods_fashion_mnist)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/methods_fashion_mnist.json, "
                        "with --smoke runs/smoke/methods_fashion_mnist.json)")
    parser.add_argument("--smoke", action="store_true", help="checks the script: every method once and every mode (the "
                        "modes in turn over the methods, all of them for the first) for 2 steps of 16 images of a tiny "
                        "copy of the data, 3 sampler steps, a minimal evaluation, in --work (CI; measures nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        from _smoke import smoke_out, tiny_fashion_mnist

        args.out = args.out or smoke_out("methods_fashion_mnist")
        if args.work is None:  # smoke's own folder: start afresh (the stages would resume what is there)
            args.work = args.out.with_suffix("")
            shutil.rmtree(args.work, ignore_errors=True)
        args.smoke_data = tiny_fashion_mnist(args.work / "data", 256, 128)
    args.work = args.work or REPO / "runs" / "bench_methods"
    args.out = args.out or DEFAULT_OUT

    import torch

    from synthpos.stages import run_stage

    torch.set_num_threads(2)
    if args.smoke:
        from _smoke import THREADS

        torch.set_num_threads(THREADS)
    methods, modes = args.methods.split(","), args.modes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in methods:
        if name not in METHODS:
            sys.exit(f"unknown method {name}; known: {', '.join(METHODS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() and not args.smoke else {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("out", "work", "smoke_data")}
    results.setdefault("runs", {})
    results["settings"] = settings
    results["machine"] = machine_info()
    results["command"] = "python benchmarks/methods_fashion_mnist.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(args.out)

    if any(MODE_REGISTRY.get(m).needs_store for m in modes):  # the modes say whether they read a store
        start = time.perf_counter()
        run_stage("generate", run_config(args, args.work, "simclr", "clsp", seeds[0]), show_progress=False, explicit=True)
        results["store_seconds"] = results.get("store_seconds") or round(time.perf_counter() - start, 1)
        save()
    for seed in seeds:
        for method in methods:
            for mode in modes:
                key = f"{method}/{mode}/s{seed}"
                if key in results["runs"] or (args.smoke and (method, mode) not in smoke_runs(methods, modes)):
                    continue
                config = run_config(args, args.work, method, mode, seed)
                start = time.perf_counter()
                # Through the stage layer; forced, so the time is a run's even where an output was left
                run_stage("pretrain", config, show_progress=False, force=True, explicit=True)
                pretrain_seconds = time.perf_counter() - start
                metrics = run_stage("evaluate", config, show_progress=False, force=True, explicit=True)[0]["results"]
                scores = next(iter(metrics.values()))
                results["runs"][key] = {
                    "method": method, "mode": mode, "seed": seed,
                    "knn_top1": scores["knn_top1"], "linear_top1": scores["linear_top1"],
                    "pretrain_seconds": round(pretrain_seconds, 1),
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                save()
                print(f"{key:28s} kNN {100 * scores['knn_top1']:.2f}  linear {100 * scores['linear_top1']:.2f}  "
                      f"({pretrain_seconds:.0f} s)", flush=True)
    print(table(results))


def table(results: dict) -> str:
    """Markdown table: one row per method, kNN / linear top-1 per mode (mean over seeds)."""
    runs = results["runs"].values()
    modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
    lines = ["| method | " + " | ".join(f"{m} kNN / linear" for m in modes) + " |",
             "|---|" + "---|" * len(modes)]
    for method in METHODS:
        cells = []
        for mode in modes:
            rows = [r for r in runs if r["method"] == method and r["mode"] == mode]
            if not rows:
                cells.append("-")
                continue
            knn = sum(r["knn_top1"] for r in rows) / len(rows)
            lin = sum(r["linear_top1"] for r in rows) / len(rows)
            cells.append(f"{100 * knn:.2f} / {100 * lin:.2f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
