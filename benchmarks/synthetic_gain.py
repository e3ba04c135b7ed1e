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

Controls (issue 24), planned from the rows (:func:`plan_rows`), never typed:

- ``<row>_real``: each pretraining setting that reads a store, on the ``anchors`` store (``generate.kind:
  anchors``: every candidate is the anchor itself, so the extra views are the method's augmentations of
  the real image): the same mode, subset, epochs, seeds and pretraining settings, nothing generated.
  Rows that differ only in ``generate.*`` share one (``clsp_real`` serves ``clsp``, ``clsp_s0.7``, ...).
  ``replace`` at p = 1 on the anchors store is ``none`` (view 2 is the anchor, augmented): ``none`` is
  its control;
- ``none_time``: SimCLR alone for ``round(epochs x t_slowest / t_none)`` epochs, each t the median
  pretraining seconds over the seeds of this run on this CPU (the slowest SimCLR row against ``none``),
  fixed once per budget and CPU and recorded with both times, the load and the CPU (``time_matched``);
- ``none_all``: SimCLR alone on the whole training split (60,000 images) at the steps of the budget
  (epochs and warm-up scaled by subset / 60,000): "more unlabelled data" beside "generated views". The
  generator was trained on all 60,000 images while the other rows' encoders see ``--subset``: a row's
  gain over its control may hold what the generator learnt from the other images, which ``none_all``
  bounds from the side of the data.

``multipos_weakaug``: ``multipos`` with half the colour jitter on synthetic views only
(``pretrain.synthetic.augment``; AdaInf, ICLR 2024), with its own control.

Every row uses the same training images (the first ``--subset`` of the Fashion-MNIST train
split), epochs, batch, encoder (the quick start's ConvNet) and augmentations, from the quick
start's recipe; one store per generation setting is made once (generation has its own seed,
``--generation-seed``, so training seeds share a store: the interval covers training seeds,
not generation draws). Evaluation: the run's ``evaluate`` stage on frozen features (its
protocol is written beside every number).

Statistics: for each row and seed, the difference to ``none`` on the same seed, to its control and
to ``none_time``; the mean of those paired differences and its two-sided 95% t interval over the
seeds. One JSON row per (row, generator id, seed, budget, CPU) holds its numbers and protocol, so the
summary can be recomputed from the rows. The CPU (model and whether it has avx512_bf16) is part of
every run's key, and only runs of one CPU are paired: results differ in the last digits between CPU
types. Rows written before the CPU was recorded are the AMD machine's (:data:`LEGACY_CPU`).

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
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "results" / "synthetic_gain.json"
# AdaInf's weaker augmentation of generated data, on the colour jitter: half of pretrain.augment's strengths.
WEAK_SYNTHETIC_AUGMENT = ",".join(f"pretrain.synthetic.augment.{key}={value}" for key, value in
                                  (("brightness", 0.2), ("contrast", 0.2), ("saturation", 0.2), ("hue", 0.05)))
DEFAULT_ROWS = ("none", "clsp", "clsp_s0.7=clsp:generate.strength=0.7", "clsp_s0.4=clsp:generate.strength=0.4",
                "replace=replace:pretrain.synthetic.replace_prob=1.0", "multipos",
                f"multipos_weakaug=multipos:{WEAK_SYNTHETIC_AUGMENT}",
                # MoCHi (issue 11): MoCo v2+ against MoCo v2+ (negatives from a queue), and SimCLR with
                # the in-batch hardest negatives against SimCLR.
                "moco_none=none:{MOCO}", "mochi=mochi:{MOCO}", "mochi_simclr=mochi")
# MoCo v2+ on the quick start's budget: its CPU recipe's heads, queue and temperature.
MOCO = "pretrain.method=mocov2plus,pretrain.queue_size=8192,pretrain.temperature=0.2"
BUDGETS = ((2500, 20), (5000, 40), (10000, 60))  # (images, epochs) of --budget-sweep
CONTROL_KIND = "generate.kind=anchors"  # the control's store: every candidate is its anchor
ALL_TRAIN_IMAGES = 60000  # Fashion-MNIST's training split: none_all's images (and the generator's)
# Rows without a CPU in their record were all run on the AMD machine (benchmarks/results/*.json: "machine").
LEGACY_CPU = {"model": "AMD EPYC", "avx512_bf16": True, "key": "AMD-EPYC+bf16",
              "assumed": "written before runs recorded their CPU; the AMD machine of the results' machine section"}
#: what a run is in the plan: the method's run without synthetic data, a row, a control, a time-matched or
#: all-data SimCLR
ROLES = ("baseline", "row", "control", "none_time", "none_all")

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


def _needs_store(mode: str) -> bool:
    from synthpos.registry import MODES

    return MODES.get(mode).needs_store


def _plain(mode: str) -> bool:
    """Whether ``mode`` adds nothing synthetic (the mode declares it): its rows are the baseline."""
    from synthpos.registry import MODES

    return not MODES.get(mode).synthetic


def _plain_on_anchors(mode: str, pretraining: tuple[str, ...]) -> bool:
    """Whether the row, on the anchors store, is plain two-view training (the mode says, from the row's
    ``pretrain.synthetic`` settings: ``replace`` at p = 1 cropped like a real view, same augmentation)."""
    import yaml
    from pydantic import ValidationError

    from synthpos.config import SyntheticConfig
    from synthpos.registry import MODES

    synthetic: dict[str, Any] = {}
    for override in pretraining:
        if override.startswith("pretrain.synthetic."):
            key, _, value = override.removeprefix("pretrain.synthetic.").partition("=")
            *parents, leaf = key.split(".")
            section = synthetic
            for parent in parents:
                section = section.setdefault(parent, {})
            section[leaf] = yaml.safe_load(value)
    try:
        config = SyntheticConfig(**{**synthetic, "mode": mode})
    except ValidationError:
        return False
    return MODES.get(mode).plain_on_anchors(config)


def plan_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their controls: each row that reads a store gets ``control``, the name of a row on the
    anchors store with its mode and every setting but ``generate.*`` (one per such setting, added after the
    rows), or, for ``replace`` at p = 1, of the ``none`` row with its other settings. Each row gets its
    ``role`` (:data:`ROLES`).

    Raises:
        SystemExit: a control's name is taken by a row with other settings.
    """
    planned = [{**row, "role": row.get("role") or ("baseline" if _plain(row["mode"]) else "row"),
                "control": row.get("control")} for row in rows]
    by_name = {row["name"]: row for row in planned}
    controls: dict[tuple, dict[str, Any]] = {}
    for row in list(planned):
        if row["role"] != "row" or not _needs_store(row["mode"]):
            continue
        pretraining = tuple(o for o in row["overrides"] if not o.startswith("generate."))
        if _plain_on_anchors(row["mode"], pretraining):
            others = [o for o in pretraining if not o.startswith("pretrain.synthetic.")]
            control = next((r for r in planned if _plain(r["mode"]) and r["overrides"] == others), None)
            if control is None:
                control = {"name": "none" if not others else f"{row['name']}_none", "mode": "none", "overrides": others,
                           "role": "baseline", "control": None}
        else:
            key = (row["mode"], pretraining)
            if key not in controls:
                name = f"{row['mode']}_real" if not pretraining else f"{row['name']}_real"
                controls[key] = {"name": name, "mode": row["mode"], "overrides": [*pretraining, CONTROL_KIND],
                                 "role": "control", "control": None}
            control = controls[key]
        taken = by_name.get(control["name"])
        if taken is None:
            by_name[control["name"]] = control
            planned.append(control)
        elif taken is not control:
            if taken["overrides"] != control["overrides"] or taken["mode"] != control["mode"]:
                raise SystemExit(f"error: row {control['name']!r} is the control of {row['name']!r} with other settings; "
                                 "rename that row")
            control = taken
        row["control"] = control["name"]
    return planned


def none_all_row(subset: int, epochs: int, batch_size: int, warmup_epochs: float,
                 all_images: int = ALL_TRAIN_IMAGES) -> dict[str, Any]:
    """SimCLR on all ``all_images`` training images at the budget's optimiser steps (``drop_last`` batches):
    epochs and warm-up scaled by (subset's steps per epoch) / (all images' steps per epoch)."""
    ratio = (subset // batch_size) / (all_images // batch_size)
    all_epochs = max(1, round(epochs * ratio))
    return {"name": "none_all", "mode": "none", "role": "none_all", "control": None,
            "overrides": [f"data.subset={all_images}", f"pretrain.epochs={all_epochs}",
                          f"pretrain.optimizer.warmup_epochs={round(warmup_epochs * ratio, 4)}"],
            "steps": {"budget": epochs * (subset // batch_size), "none_all": all_epochs * (all_images // batch_size)}}


def none_time_epochs(epochs: int, t_none: float, t_slowest: float) -> int:
    """SimCLR's epochs that take as long as the slowest row: ``round(epochs x t_slowest / t_none)``, at least 1."""
    return max(1, round(epochs * t_slowest / t_none))


def time_match(runs: list[dict[str, Any]], seeds: list[int], cpu: str, subset: int, epochs: int,
               method: str = "simclr") -> dict[str, Any] | None:
    """``none_time``'s epochs from this CPU's runs of the budget: t_none, the median pretraining seconds of
    ``none`` over ``seeds``, and t_slowest, the largest such median of a row or control of ``method`` run on
    all of them. None while ``none`` or every other row lacks a seed.

    The median, not the mean: a run that shared the cores with other work takes up to 3x as long (its load
    is in its record), and one such seed would set the epochs of every ``none_time`` run. (Over two seeds the
    median is the mean: use three or more.)"""
    here = [r for r in runs if run_cpu(r)["key"] == cpu and (r["subset"], r["epochs"]) == (subset, epochs)
            and r["method"] == method and r["seed"] in seeds and run_role(r) in ("baseline", "row", "control")]
    times: dict[str, dict[int, float]] = {}
    for r in here:
        times.setdefault(r["row"], {})[r["seed"]] = r["pretrain_seconds"]
    full = {name: statistics.median(t.values()) for name, t in times.items() if set(t) == set(seeds)}
    baseline = next((r["row"] for r in here if run_role(r) == "baseline"), None)
    others = {name: t for name, t in full.items() if name != baseline}
    if baseline not in full or not others:
        return None
    slowest = max(others, key=others.get)
    return {"t_none": round(full[baseline], 1), "t_slowest": round(others[slowest], 1), "slowest_row": slowest,
            "baseline_row": baseline, "seeds": sorted(seeds), "base_epochs": epochs, "statistic": "median",
            "epochs": none_time_epochs(epochs, full[baseline], others[slowest])}


def none_time_row(epochs: int) -> dict[str, Any]:
    return {"name": "none_time", "mode": "none", "role": "none_time", "control": None,
            "overrides": [f"pretrain.epochs={epochs}"]}


def run_cpu(run: dict[str, Any]) -> dict[str, Any]:
    """The CPU a run ran on (:data:`LEGACY_CPU` for runs written before it was recorded)."""
    return run.get("cpu") or LEGACY_CPU


def run_role(run: dict[str, Any]) -> str:
    return run.get("role") or ("baseline" if _plain(run["mode"]) else "row")


def upgrade_results(results: dict[str, Any]) -> dict[str, Any]:
    """Runs written before the CPU was part of the key: keyed (and marked) as the AMD machine's, readable as before."""
    runs = {}
    for key, run in results.get("runs", {}).items():
        if "cpu" not in run:
            run = {**run, "cpu": dict(LEGACY_CPU)}
        if key.count("/") == 3:  # row/generator/seed/budget: no CPU yet
            key = f"{key}/{run['cpu']['key']}"
        runs[key] = run
    results["runs"] = runs
    return results


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
    p.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                   help="each row that reads a store also on the anchors store (<row>_real; replace at p = 1: none)")
    p.add_argument("--none-time", action=argparse.BooleanOptionalAction, default=True,
                   help="after the rows: SimCLR alone for as long as the slowest row (none_time)")
    p.add_argument("--none-all", action=argparse.BooleanOptionalAction, default=True,
                   help="SimCLR alone on the whole training split at the budget's steps (none_all)")
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
        "generate.clsp.strength=1.0",
    ]
    if args.smoke:
        from _smoke import pipeline_overrides

        overrides += pipeline_overrides(args.smoke_data)
    overrides += row["overrides"]  # last: none_all's subset and none_time's epochs hold in a smoke run too
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
    if CONTROL_KIND in row.get("overrides", []):
        return "anchors"  # no weights: the same control under every generator
    return _weights_id(args.generator)


@functools.lru_cache(maxsize=None)
def _weights_id(generator: str) -> str:
    """``generator_id`` of a generator folder (or builtin:NAME), hashed once per process, not per run key."""
    from synthpos.generators.clsp_generator import generator_id
    from synthpos.generators.diffusion import resolve_generator_dir

    return generator_id(resolve_generator_dir(Path(generator)))


def run_key(args: argparse.Namespace, row: dict[str, Any], seed: int, subset: int, epochs: int,
            cpu: str | None = None) -> str:
    """``row/generator id/seed/budget/CPU`` (default: this machine's): a run already in the JSON under this key
    is not run again; on another CPU it is run anew."""
    from _machine import cpu_identity

    return f"{row['name']}/{generator_tag(args, row)}/s{seed}/n{subset}_e{epochs}/{cpu or cpu_identity()['key']}"


def one_run(args: argparse.Namespace, row: dict[str, Any], seed: int, subset: int, epochs: int) -> dict[str, Any]:
    # Through the stage layer, as `synthpos run`: a store is made once per settings (its record says
    # so) and shared by the rows that read it; pretraining is forced, so its time is a run's.
    from synthpos.stages import run_stage

    config, generation_seed = run_config(args, row, seed, subset, epochs)
    store, _ = run_stage("generate", config, show_progress=False)  # None when the row's mode reads no store
    generator_record = None if store is None else store.manifest["generator"]
    _start_afresh(config)
    start = time.perf_counter()
    run_stage("pretrain", config, show_progress=False, force=True, explicit=True)
    seconds = time.perf_counter() - start
    metrics, _ = run_stage("evaluate", config, show_progress=False, force=True, explicit=True)
    scores = next(iter(metrics["results"].values()))
    from _machine import cpu_identity

    return {
        "method": config.pretrain.method, "row": row["name"], "mode": row["mode"], "overrides": row["overrides"],
        "role": row.get("role") or ("baseline" if _plain(row["mode"]) else "row"), "control": row.get("control"),
        "cpu": cpu_identity(), "train_images": config.data.subset, "pretrain_epochs": config.pretrain.epochs,
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


def _start_afresh(config) -> None:
    """A pretraining cut short (the benchmark was killed) would resume from its checkpoint, and its time would
    be the rest's only: it is moved aside, so every run's ``pretrain_seconds`` is a whole run's (a killed
    benchmark loses at most the run it was in)."""
    from synthpos.run_lock import run_lock
    from synthpos.stages import BY_NAME, move_aside, stage_status

    stage = BY_NAME["pretrain"]
    with run_lock(config.run_dir):  # a second benchmark on this --work is refused, not robbed of its live run
        if stage_status(stage, config, explicit=True).state != "resume":
            return
        where = move_aside(stage, config)
    print(f"{config.run_dir}: its pretraining was cut short; it starts again from the first step so that its time "
          f"is whole (the partial run is kept in {where})", flush=True)


def _record(metrics: dict[str, Any], probe: str, value: float) -> dict[str, Any] | None:
    """The metrics.json record of the number ``value`` measured with ``probe`` (full labels)."""
    return next((r for r in metrics.get("records", []) if r.get("probe") == probe and r.get("value") == value
                 and r.get("label_fraction", 1.0) == 1.0), None)


def _paired(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Mean and 95% t interval (points) of the paired differences ``row - other`` per metric."""
    out: dict[str, Any] = {"against": pairs[0][1]["row"], "seeds": sorted(r["seed"] for r, _ in pairs)}
    for metric in ("linear_top1", "knn_top1"):
        diffs = [100 * (r[metric] - b[metric]) for r, b in pairs]
        out[metric] = {"mean_points": None, **t_interval(diffs), "differences_points": diffs}
        out[metric]["mean_points"] = out[metric]["mean"]
    return out


def paired_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (budget, CPU, row): the paired differences to the method's ``none`` on the same seed (the entry's
    own fields, as before controls existed), to the row's control (``against_control``) and, for SimCLR rows,
    to ``none_time`` (``against_none_time``); mean and 95% t interval each. Runs of two CPUs are never paired."""
    out: dict[str, Any] = {}
    cpus = {run_cpu(r)["key"] for r in runs}
    for subset, epochs, cpu in sorted({(r["subset"], r["epochs"], run_cpu(r)["key"]) for r in runs}):
        here = [r for r in runs if (r["subset"], r["epochs"], run_cpu(r)["key"]) == (subset, epochs, cpu)]
        # Each row against the method's own run without synthetic data, on the same seed.
        base = {(r["method"], r["seed"]): r for r in here if run_role(r) == "baseline"}
        by_row = {(r["row"], r["seed"]): r for r in here}
        # Rows of two generators (the old and the new builtin:fashion_mnist) are summarised apart.
        groups = sorted({(r["row"], r.get("generator_id") or "") for r in here if run_role(r) != "baseline"})
        shared = {name for name, _ in groups if sum(n == name for n, _ in groups) > 1}  # names needing the id
        for name, gid in groups:
            mine = [r for r in here if r["row"] == name and (r.get("generator_id") or "") == gid]
            pairs = [(r, base[r["method"], r["seed"]]) for r in mine if (r["method"], r["seed"]) in base]
            if not pairs:
                continue
            entry = {"method": pairs[0][0]["method"], "generator_id": gid or None, "cpu": cpu, "role": run_role(mine[0]),
                     **_paired(pairs)}
            entry["target_met"] = (entry["linear_top1"]["mean"] >= 1.5 and entry["linear_top1"]["low"] is not None
                                   and entry["linear_top1"]["low"] > 0)
            control = next((r["control"] for r in mine if r.get("control")), None)
            if control and (pairs := [(r, by_row[control, r["seed"]]) for r in mine if (control, r["seed"]) in by_row]):
                entry["against_control"] = _paired(pairs)
                low = entry["against_control"]["linear_top1"]["low"]
                # Issue 24's target: above its own control (95% interval) and at least +1.5 points over none.
                entry["target_met_vs_control"] = entry["linear_top1"]["mean"] >= 1.5 and low is not None and low > 0
            if entry["method"] == "simclr" and name != "none_time" and (
                    pairs := [(r, by_row["none_time", r["seed"]]) for r in mine if ("none_time", r["seed"]) in by_row]):
                entry["against_none_time"] = _paired(pairs)
            suffix = (f"@{gid[:8]}" if gid and name in shared else "") + (f"@{cpu}" if len(cpus) > 1 else "")
            out[f"n{subset}_e{epochs}/{name}{suffix}"] = entry
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| budget / row | seeds | linear vs none (95% CI) | kNN vs none | linear vs its control | "
             "linear vs none_time |", "|---|---|---|---|---|---|"]

    def cell(s: dict[str, Any] | None) -> str:
        if s is None:
            return "-"
        if s["low"] is None:
            return f"{s['mean']:+.2f}"
        return f"{s['mean']:+.2f} ({s['low']:+.2f}, {s['high']:+.2f})"

    def versus(entry: dict[str, Any], key: str) -> str:
        other = entry.get(key)
        return "-" if other is None else f"{cell(other['linear_top1'])} [{other['against']}]"

    for key, entry in results["paired"].items():
        lines.append(f"| {key} | {len(entry['seeds'])} | {cell(entry['linear_top1'])} | {cell(entry['knn_top1'])} | "
                     f"{versus(entry, 'against_control')} | {versus(entry, 'against_none_time')} |")
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
    upgrade_results(results)
    planned = plan_rows(args.rows) if args.controls else [
        {**r, "role": "baseline" if _plain(r["mode"]) else "row", "control": None} for r in args.rows]
    if args.none_all and not args.budget_sweep:
        recipe, _ = run_config(args, {"name": "none", "mode": "none", "overrides": []}, args.seeds[0],
                               args.subset, args.epochs)
        planned.append(none_all_row(args.subset, args.epochs, recipe.pretrain.batch_size,
                                    recipe.pretrain.optimizer.warmup_epochs, 256 if args.smoke else ALL_TRAIN_IMAGES))
    if not args.budget_sweep:
        # A run key names the row, not its settings: a row changed under its old name must not be
        # skipped to its old result. Checked before anything runs.
        for seed in args.seeds:
            for row in planned:
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

    def run_rows(rows: list[dict[str, Any]], **extra: Any) -> None:
        for seed in args.seeds:
            for row in rows:
                key = run_key(args, row, seed, args.subset, args.epochs)
                if key in results["runs"]:
                    continue
                load = [round(x, 2) for x in os.getloadavg()]
                run = one_run(args, row, seed, args.subset, args.epochs)
                # Each run keeps the command and the load it ran under: the top-level ones are the
                # last invocation's only.
                run.update(command=results["command"], load_average_at_start=load, **extra)
                if "steps" in row:
                    run["steps"] = row["steps"]
                results["runs"][key] = run
                save()
                print(f"{key}: kNN {100 * run['knn_top1']:.2f} linear {100 * run['linear_top1']:.2f} "
                      f"({run['pretrain_seconds']:.0f} s)", flush=True)

    if args.budget_sweep:
        budget_sweep(args, results, save)
    else:
        run_rows(planned)
        if args.none_time:
            # Fixed once per budget and CPU from the seeds that first measured it, so every seed's none_time
            # trains for the same epochs (a later invocation with more seeds reuses them).
            from _machine import cpu_identity

            cpu = cpu_identity()
            where = f"n{args.subset}_e{args.epochs}/{cpu['key']}"
            matched = results.setdefault("time_matched", {}).get(where)
            if matched is None:
                matched = time_match(list(results["runs"].values()), args.seeds, cpu["key"], args.subset, args.epochs)
                if matched is not None:
                    matched.update(cpu=cpu, load_average=[round(x, 2) for x in os.getloadavg()],
                                   measured=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                    results["time_matched"][where] = matched
            if matched is None:
                print("none_time: needs none and a SimCLR row on every seed of this run on this CPU; skipped",
                      file=sys.stderr)
            else:
                run_rows([none_time_row(matched["epochs"])], time_matched=matched)
    results["paired"] = paired_summary(list(results["runs"].values()))
    save()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
