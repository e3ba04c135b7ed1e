"""Do synthetic positives help? SimCLR without them and with each synthetic mode, same budget,
several seeds, and the paired difference against ``none`` with its 95% interval.

Rows (``--rows``, each ``name=mode[:setting=value,...]``; the default set):

- ``none``: SimCLR alone;
- ``clsp``: CLSP-SimCLR on the paper's sampling (pure noise, w = 0.1, ``generate.strength=1``),
  and two other points of the fidelity-diversity frontier (``generate.strength``): ``clsp_s0.7``
  (the quick start's, the most faithful point that meets both diversity floors) and
  ``clsp_s0.4`` (near-copies);
- ``replace``: view 2 from a stored candidate with p = 1.0 (Ayromlou et al.'s main runs);
- ``multipos``: the candidates as extra positives of a multi-positive InfoNCE;
- ``mochi``: MoCo v2+ with MoCHi's synthetic hard negatives (no store), against MoCo v2+
  alone (``moco_none``); ``mochi_simclr``: SimCLR with MoCHi's mixes of its hardest in-batch
  negatives; each row is paired with its own method's ``none`` run.

Every row uses the same training images (the first ``--subset`` of the Fashion-MNIST train
split), epochs, batch, encoder (the quick start's ConvNet) and augmentations, from the quick
start's recipe; one store per generation setting is made once (generation has its own seed,
``--generation-seed``, so training seeds share a store: the interval covers training seeds,
not generation draws). Evaluation: the run's ``evaluate`` stage on frozen features (its
protocol is written beside every number).

Statistics: for each row and seed, the difference to ``none`` on the same seed; the mean of
those paired differences and its two-sided 95% t interval over the seeds. One JSON row per
(method, mode, generator id, seed) holds its numbers and protocol, so the summary can be
recomputed from the rows.

Resumable: a run already in the JSON is skipped, so the benchmark can run in pieces::

    python benchmarks/synthetic_gain.py --budget-sweep            # SimCLR alone at three budgets: pick one
    python benchmarks/synthetic_gain.py --seeds 0,1,2                 # the chosen budget: 5,000 images x 40 epochs
    python benchmarks/synthetic_gain.py --seeds 3,4 --rows "none;multipos"
    python benchmarks/synthetic_gain.py --smoke                    # every row for one step (CI)

Writes ``benchmarks/results/synthetic_gain.json`` (``--out``) and prints the paired table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "results" / "synthetic_gain.json"
DEFAULT_ROWS = ("none", "clsp", "clsp_s0.7=clsp:generate.strength=0.7", "clsp_s0.4=clsp:generate.strength=0.4",
                "replace=replace:pretrain.synthetic.replace_prob=1.0", "multipos",
                # MoCHi (issue 11): MoCo v2+ against MoCo v2+ (negatives from a queue), and SimCLR with
                # the in-batch hardest negatives against SimCLR.
                "moco_none=none:{MOCO}", "mochi=mochi:{MOCO}", "mochi_simclr=mochi")
# MoCo v2+ on the quick start's budget: its CPU recipe's heads, queue and temperature.
MOCO = "pretrain.method=mocov2plus,pretrain.queue_size=8192,pretrain.temperature=0.2"
BUDGETS = ((2500, 20), (5000, 40), (10000, 60))  # (images, epochs) of --budget-sweep

def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean and two-sided 95% t interval of ``values`` (None bounds for fewer than two), from
    :func:`synthpos.evaluation.seeds.mean_interval` (the interval ``synthpos run --seeds`` prints)."""
    from synthpos.evaluation.seeds import mean_interval

    summary = mean_interval(values)
    low, high = summary.get("ci95", (None, None))
    return {"n": summary["n"], "mean": summary["mean"], "low": low, "high": high, "sd": summary.get("sd")}


def parse_row(text: str) -> dict[str, Any]:
    """``name=mode:key=value,key=value`` (or just ``mode``) -> {name, mode, overrides}."""
    text = text.replace("{MOCO}", MOCO)
    name, _, spec = text.partition("=") if "=" in text.split(":")[0] else (text, "", text)
    mode, _, rest = spec.partition(":")
    overrides = [item for item in rest.split(",") if item]
    return {"name": name, "mode": mode, "overrides": overrides}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=";".join(DEFAULT_ROWS), help="';'-separated rows: name=mode:key=value,...")
    p.add_argument("--seeds", default="0,1,2")
    # The budget chosen by --budget-sweep (docs/results.md): the smallest at which SimCLR is clearly above a
    # random encoder and level with raw pixels on linear top-1.
    p.add_argument("--subset", type=int, default=5000,
                   help="pretraining images (each gets its synthetic positives; default 5000, chosen by --budget-sweep)")
    p.add_argument("--epochs", type=int, default=40, help="pretraining epochs (default 40, chosen by --budget-sweep)")
    p.add_argument("--generator", default="builtin:fashion_mnist")
    p.add_argument("--generation-seed", type=int, default=0)
    p.add_argument("--budget-sweep", action="store_true", help="SimCLR alone at three budgets, random init, raw pixels")
    p.add_argument("--work", type=Path, default=None, help="run folders (default runs/bench_gain; --smoke: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/synthetic_gain.json; "
                   "--smoke: runs/smoke/synthetic_gain.json)")
    p.add_argument("--smoke", action="store_true", help="every row (with --budget-sweep: one budget and both references) "
                   "for 2 steps on 32 images of a tiny copy of the data, 3 sampler steps, a minimal evaluation (CI)")
    args = p.parse_args(argv)
    args.rows = [parse_row(r) for r in args.rows.split(";") if r]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.smoke:
        args.subset, args.epochs, args.seeds = 32, 1, [0]
    return args


def run_config(args: argparse.Namespace, row: dict[str, Any], seed: int, subset: int, epochs: int):
    from synthpos.config import load_config
    from synthpos.quickstart import quickstart_recipe

    generation = [o for o in row["overrides"] if o.startswith("generate.")]
    # Folders of rows with a store name their generator's weights, so that two generators'
    # stores and runs sit side by side in one --work.
    tag = generator_tag(args, row)
    weights = "" if tag == NO_GENERATOR else f"_{tag[:8]}"
    store = args.work / (f"store{weights}_"
                         + ("_".join(o.replace("generate.", "").replace("=", "") for o in generation) or "paper"))
    run_name = f"{row['name']}{weights}_n{subset}_e{epochs}_s{seed}"
    overrides = [
        f"run_dir={args.work / run_name}",
        f"seed={seed}",
        f"data.subset={subset}",
        f"generate.generator={args.generator}",
        f"generate.store={store}_n{subset}",
        f"pretrain.epochs={epochs}",
        f"pretrain.synthetic.mode={row['mode']}",
        "pretrain.precision=fp32",
        "pretrain.num_threads=2",
        # The paper's sampling (pure noise) unless a row says otherwise: the quick start's recipe
        # starts part-way (strength 0.7), a frontier point of its own row here.
        "generate.strength=1.0",
        *row["overrides"],
    ]
    if args.smoke:
        from _smoke import pipeline_overrides

        overrides += pipeline_overrides(args.smoke_data)
    # Generation has its own seed: every training seed reads the same store.
    config = load_config(quickstart_recipe(), overrides + [f"generate.seed={args.generation_seed}"])
    return config, args.generation_seed


NO_GENERATOR = "no-generator"


def generator_tag(args: argparse.Namespace, row: dict[str, Any]) -> str:
    """The generator a row's store comes from, named by its weights (``generator_id``), not by
    ``--generator``: ``builtin:fashion_mnist`` names other weights once a new generator ships, and a
    result of the old one must not be skipped to as if it were the new one's. Rows without a store:
    :data:`NO_GENERATOR`."""
    from synthpos.registry import MODES

    if not MODES.get(row["mode"]).needs_store:
        return NO_GENERATOR
    return _weights_id(args.generator)


@functools.lru_cache(maxsize=None)
def _weights_id(generator: str) -> str:
    """``generator_id`` of a generator folder (or builtin:NAME), hashed once per process, not per run key."""
    from synthpos.generators.clsp_generator import generator_id
    from synthpos.generators.diffusion import resolve_generator_dir

    return generator_id(resolve_generator_dir(Path(generator)))


def run_key(args: argparse.Namespace, row: dict[str, Any], seed: int, subset: int, epochs: int) -> str:
    """``row/generator id/seed/budget``: a run already in the JSON under this key is not run again."""
    return f"{row['name']}/{generator_tag(args, row)}/s{seed}/n{subset}_e{epochs}"


def one_run(args: argparse.Namespace, row: dict[str, Any], seed: int, subset: int, epochs: int) -> dict[str, Any]:
    from synthpos.evaluation.evaluate import evaluate_stage
    from synthpos.generators.generate import generate_stage
    from synthpos.methods.pretrain import pretrain_stage

    from synthpos.registry import MODES

    config, generation_seed = run_config(args, row, seed, subset, epochs)
    generator_record = None
    if MODES.get(row["mode"]).needs_store:
        store = generate_stage(config, show_progress=False)
        generator_record = store.manifest["generator"]
    start = time.perf_counter()
    pretrain_stage(config, show_progress=False)
    seconds = time.perf_counter() - start
    metrics = evaluate_stage(config, show_progress=False)
    scores = next(iter(metrics["results"].values()))
    return {
        "method": config.pretrain.method, "row": row["name"], "mode": row["mode"], "overrides": row["overrides"],
        "generator": generator_record, "generator_id": (generator_record or {}).get("generator_sha256"),
        "seed": seed, "generation_seed": generation_seed if generator_record else None,
        "subset": subset, "epochs": epochs,
        "knn_top1": scores["knn_top1"], "linear_top1": scores["linear_top1"],
        # Each number's own record from the evaluate stage (probe, features, labels, the validation
        # carve and grid that chose its hyper-parameters, the chosen values, seed).
        "protocol": {"evaluate": config.evaluate.model_dump(mode="json"), "test": "Fashion-MNIST test (10,000)",
                     "knn_top1": _record(metrics, "knn", scores["knn_top1"]),
                     "linear_top1": _record(metrics, "linear", scores["linear_top1"]), "seed": seed},
        "pretrain_seconds": round(seconds, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _record(metrics: dict[str, Any], probe: str, value: float) -> dict[str, Any] | None:
    """The metrics.json record of the number ``value`` measured with ``probe`` (full labels)."""
    return next((r for r in metrics.get("records", []) if r.get("probe") == probe and r.get("value") == value
                 and r.get("label_fraction", 1.0) == 1.0), None)


def paired_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (budget, row): the paired differences to ``none`` on the same seed, mean and 95% t interval."""
    out: dict[str, Any] = {}
    budgets = sorted({(r["subset"], r["epochs"]) for r in runs})
    for subset, epochs in budgets:
        here = [r for r in runs if (r["subset"], r["epochs"]) == (subset, epochs)]
        # Each row against the method's own run without synthetic data, on the same seed.
        base = {(r["method"], r["seed"]): r for r in here if r["mode"] == "none"}
        # Rows of two generators (the old and the new builtin:fashion_mnist) are summarised apart.
        groups = sorted({(r["row"], r.get("generator_id") or "") for r in here if r["mode"] != "none"})
        shared = {name for name, _ in groups if sum(n == name for n, _ in groups) > 1}  # names needing the id
        for name, gid in groups:
            pairs = [(r, base[r["method"], r["seed"]]) for r in here
                     if r["row"] == name and (r.get("generator_id") or "") == gid and (r["method"], r["seed"]) in base]
            if not pairs:
                continue
            entry = {"method": pairs[0][0]["method"], "against": pairs[0][1]["row"], "generator_id": gid or None,
                     "seeds": sorted(r["seed"] for r, _ in pairs)}
            for metric in ("linear_top1", "knn_top1"):
                diffs = [100 * (r[metric] - b[metric]) for r, b in pairs]
                entry[metric] = {"mean_points": None, **t_interval(diffs), "differences_points": diffs}
                entry[metric]["mean_points"] = entry[metric]["mean"]
            entry["target_met"] = (entry["linear_top1"]["mean"] >= 1.5 and entry["linear_top1"]["low"] is not None
                                   and entry["linear_top1"]["low"] > 0)
            out[f"n{subset}_e{epochs}/{name}" + (f"@{gid[:8]}" if gid and name in shared else "")] = entry
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| budget / row | against | seeds | linear diff (95% CI) | kNN diff (95% CI) |", "|---|---|---|---|---|"]

    def cell(s: dict[str, Any]) -> str:
        if s["low"] is None:
            return f"{s['mean']:+.2f}"
        return f"{s['mean']:+.2f} ({s['low']:+.2f}, {s['high']:+.2f})"

    for key, entry in results["paired"].items():
        lines.append(f"| {key} | {entry['against']} | {len(entry['seeds'])} | {cell(entry['linear_top1'])} | "
                     f"{cell(entry['knn_top1'])} |")
    return "\n".join(lines)


def budget_sweep(args: argparse.Namespace, results: dict[str, Any], save) -> None:
    """SimCLR alone at three budgets, beside a randomly initialised encoder and raw pixels."""
    import torch

    from synthpos.evaluation.evaluate import evaluate_backbone, score_features
    from synthpos.models.backbones import build_backbone

    sweep = results.setdefault("budget_sweep", {})
    budgets = ((32, 1),) if args.smoke else BUDGETS
    for subset, epochs in budgets:
        key = f"n{subset}_e{epochs}"
        if key not in sweep:
            run = one_run(args, {"name": "none", "mode": "none", "overrides": []}, args.seeds[0], subset, epochs)
            sweep[key] = run
            results["runs"][run_key(args, {"name": "none", "mode": "none"}, args.seeds[0], subset, epochs)] = run
            save()
            print(f"budget {key}: SimCLR kNN {100 * run['knn_top1']:.2f} linear {100 * run['linear_top1']:.2f} "
                  f"({run['pretrain_seconds']:.0f} s)", flush=True)
    if "references" not in sweep:
        config, _ = run_config(args, {"name": "ref", "mode": "none", "overrides": []}, args.seeds[0], budgets[0][0], 1)
        from synthpos.data import load_dataset

        data = config.data.model_copy(update={"subset": None})
        tr, te = load_dataset(data, "train"), load_dataset(data, "test")
        if config.evaluate.max_train:
            tr = tr.take(min(len(tr), config.evaluate.max_train))

        def flat(ds):
            return torch.from_numpy(ds.images.reshape(len(ds), -1).astype("float32") / 255.0)

        pixels = score_features(flat(tr), tr.labels, flat(te), te.labels, tr.num_classes, config.evaluate, config.seed)
        torch.manual_seed(config.seed)
        random = evaluate_backbone(build_backbone(config.pretrain.backbone, tr.channels), config.data, config.evaluate,
                                   config.pretrain.augment.crop_size, None, None, config.seed)
        sweep["references"] = {"raw_pixels": pixels, "random_init": random}
        save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import tempfile

    import torch

    torch.set_num_threads(2)
    if args.smoke:
        from _smoke import THREADS, smoke_out, tiny_fashion_mnist

        torch.set_num_threads(THREADS)
        tmp = None if args.work else tempfile.TemporaryDirectory()
        args.work = args.work or Path(tmp.name)
        args.smoke_data = tiny_fashion_mnist(args.work / "data", 256, 128)
        args.out = args.out or smoke_out("synthetic_gain")
    args.work = args.work or REPO / "runs" / "bench_gain"
    args.out = args.out or DEFAULT_OUT
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() and not args.smoke else {}
    results.setdefault("runs", {})
    if not args.budget_sweep:
        # A run key names the row, not its settings: a row changed under its old name must not be
        # skipped to its old result. Checked before anything runs.
        for seed in args.seeds:
            for row in args.rows:
                done = results["runs"].get(run_key(args, row, seed, args.subset, args.epochs))
                if done is not None and done["overrides"] != row["overrides"]:
                    print(f"error: row {row['name']!r} seed {seed} is in {args.out} with the settings "
                          f"{done['overrides']}, not {row['overrides']}; give the changed row a name of its own "
                          "(NAME=mode:key=value,...)", file=sys.stderr)
                    return 2
    results["benchmark"] = "synthetic_gain"
    results["command"] = "python benchmarks/synthetic_gain.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results["machine"] = machine_info("diffusers")
    results["variation_covered"] = "training seeds (pretraining init, augmentations, batch order); one store per row"

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(results, indent=2))
        tmp_out.replace(args.out)

    if args.budget_sweep:
        budget_sweep(args, results, save)
    else:
        for seed in args.seeds:
            for row in args.rows:
                key = run_key(args, row, seed, args.subset, args.epochs)
                if key in results["runs"]:
                    continue
                load = [round(x, 2) for x in os.getloadavg()]
                run = one_run(args, row, seed, args.subset, args.epochs)
                # Each run keeps the command and the load it ran under: the top-level ones are the
                # last invocation's only.
                run.update(command=results["command"], load_average_at_start=load)
                results["runs"][key] = run
                save()
                print(f"{key}: kNN {100 * run['knn_top1']:.2f} linear {100 * run['linear_top1']:.2f} "
                      f"({run['pretrain_seconds']:.0f} s)", flush=True)
    results["paired"] = paired_summary(list(results["runs"].values()))
    save()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
