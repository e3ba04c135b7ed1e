"""``synthpos quickstart``: the whole CLSP idea on Fashion-MNIST, at CPU scale.

Generates synthetic positives with a DDPM (the one shipped with synthpos, or one
trained from scratch), measures their fidelity, pretrains SimCLR and SimCLR with the
positives (the recipe's ``pretrain.synthetic.mode``: ``multipos``) with the same budget,
with ``--control`` also that mode on the anchors themselves (nothing generated), and prints
kNN and linear top-1 beside raw pixels and a randomly initialised encoder. The stages run through :func:`synthpos.stages.runner.run_stage`,
the same table as ``synthpos run``: an output is reused only when its record matches today's
settings. Fidelity is inspect-store's (the cached classifier of the whole real split).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from synthpos.config import RunConfig, load_config
from synthpos.data import load_dataset
from synthpos.errors import SynthposError
from synthpos.evaluation.evaluate import evaluate_backbone, score_features
from synthpos.evaluation.store_diagnostics import fidelity_classifier, inspect_store
from synthpos.figures.grid import positives_grid
from synthpos.models.backbones import build_backbone, load_backbone, save_backbone
from synthpos.report.html import write_report
from synthpos.run_lock import run_lock
from synthpos.stages.quickstart_summary import CONTROL_ROW, control_row, print_table, sampling_reason, synthetic_row  # noqa: F401 (CONTROL_ROW: old imports)
from synthpos.stages.runner import run_stage

console = Console()


def quickstart_recipe() -> Path:
    return Path(str(resources.files("synthpos") / "recipes" / "quickstart.yaml"))


def _timed_stage(timings: dict, key: str, name: str, config: RunConfig, show_progress: bool):
    """Run a stage through the table; its time is recorded only when it ran."""
    start = time.monotonic()
    out, ran = run_stage(name, config, show_progress, explicit=True)  # the quick start wants every one
    if ran:
        timings[key] = round(time.monotonic() - start, 1)
    return out


def run_quickstart(run_dir: Path, train_generator: bool = False, overrides: list[str] | None = None,
                   show_progress: bool = True, control: bool = False) -> dict:
    start = time.monotonic()
    overrides = [f"run_dir={run_dir}"] + (["generate.generator=null"] if train_generator else []) + list(overrides or [])
    config = load_config(quickstart_recipe(), overrides)
    # The limits of the stages it runs, before the first: a generator is trained only when none is given.
    config.check_generate_limits()
    config.check_pretrain_limits()
    config.check_evaluate_limits()
    _check_mode(config.pretrain.synthetic.mode)
    if config.generate.generator is None:
        config.check_train_generator_limits()
    timings: dict[str, float] = {}
    train = load_dataset(config.data, "train")

    # 1. the generator
    if config.generate.generator is None:
        console.print("[bold]1/5[/bold] training a DDPM from scratch (--train-generator)")
        _timed_stage(timings, "train_generator_s", "train-generator", config, show_progress)
    else:
        console.print(f"[bold]1/5[/bold] generator: {config.generate.generator} (shipped with synthpos, trained by this "
                      "project: see docs/generator.md; --train-generator trains one from scratch)")

    # 2. synthetic positives
    g, sampling = config.generate, config.generate.clsp  # the quick start's generator is CLSP's DDPM
    console.print(f"[bold]2/5[/bold] generating {g.candidates} synthetic positives for each of {len(train)} images "
                  f"({sampling.num_steps} {sampling.sampler} steps, w={sampling.interpolation_weight}, "
                  f"strength={sampling.strength})")
    console.print(f"    {sampling_reason(g)}")
    store = _timed_stage(timings, "generate_s", "generate", config, show_progress)
    positives_grid(train, store, config.run_dir / "positives.png", rows=10)

    # 3. fidelity of the positives
    console.print("[bold]3/5[/bold] fidelity: a classifier trained on real images labels the synthetic positives")
    fidelity_start = time.monotonic()
    classifier, classifier_info = fidelity_classifier(config.data, config.fidelity, config.seed,
                                                      config.run_dir / "fidelity", show_progress)
    if not classifier_info["cached"]:
        timings["fidelity_s"] = round(time.monotonic() - fidelity_start, 1)
    real_acc = classifier_info["test_top1"]
    full_train = load_dataset(config.data.model_copy(update={"subset": None}), "train")
    inspected = inspect_store(store, train, classifier, train_images=full_train.images)
    fidelity = {**inspected["fidelity"], "anchors": inspected["anchors"], "candidates": inspected["candidates"]}

    # 4. SimCLR and SimCLR with the positives (the recipe's mode), same budget; with --control also the control:
    # the mode on a store whose candidates are the anchors themselves (generate.kind: anchors), the same views,
    # steps and loss with nothing generated, so what the mode gains over it is what the generated images carry.
    mode = config.pretrain.synthetic.mode
    pretrainings = [("SimCLR", _mode_config(config, "none", "simclr")),
                    (synthetic_row(mode), _mode_config(config, mode, f"{mode}_simclr"))]
    if control:
        pretrainings.append((control_row(mode), _control_config(config)))
        console.print(f"[bold]4/5[/bold] the control's store: {g.candidates} copies of each anchor (generate.kind: anchors), "
                      "nothing generated")
        _timed_stage(timings, "generate_control_s", "generate", pretrainings[-1][1], show_progress)
    runs, folders = {}, {"random init": "random_init"}
    for name, sub in pretrainings:
        console.print(f"[bold]4/5[/bold] pretraining {name} ({sub.pretrain.epochs} epochs on {len(train)} images)")
        runs[name] = _timed_stage(timings, f"pretrain_{name}_s", "pretrain", sub, show_progress)
        folders[name] = sub.pretrain.output_dir.name

    # 5. evaluation
    console.print("[bold]5/5[/bold] evaluating frozen features (kNN, linear fast and paper probes, label efficiency)")
    size = config.pretrain.augment.crop_size
    eval_start = time.monotonic()
    rows = {"raw pixels": _pixel_scores(config)}
    torch.manual_seed(config.seed)
    random_path = config.run_dir / "random_init" / "backbone.pt"
    # Rebuilt every time (it costs nothing): the same seed and backbone settings give the same bytes.
    save_backbone(build_backbone(config.pretrain.backbone, train.channels), config.pretrain.backbone, train.channels, random_path)
    for name, path in (("random init", random_path), *runs.items()):
        rows[name] = evaluate_backbone(load_backbone(path), config.data, config.evaluate, size,
                                       config.evaluate_dir / "features", path, config.seed)
    timings["evaluate_s"] = round(time.monotonic() - eval_start, 1)

    results = {
        "rows": rows,
        "folders": folders,  # each encoder's folder in run_dir (report, export)
        "mode": mode,
        "fidelity": fidelity,
        "diversity": inspected["diversity"],
        "memorisation": inspected["memorisation"],
        "sampling": {**{k: getattr(config.generate.clsp, k) for k in
                        ("sampler", "num_steps", "interpolation_weight", "strength", "clip_x0")},
                     "candidates": config.generate.candidates},
        "classifier_test_top1": real_acc,
        "pretrain_images": len(train),
        "timings": timings,
        "wall_s": round(time.monotonic() - start, 1),
        "generator": str(config.generate.generator or config.generator_model),
    }
    (config.run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print_table(config, results)
    console.print(f"report: {write_report([config.run_dir])}")
    return results


def _check_mode(mode: str) -> None:
    """The quick start compares SimCLR alone with SimCLR on the generated positives: its mode must read them."""
    from synthpos.registry import MODES

    if not (MODES.get(mode).synthetic and MODES.get(mode).needs_store):
        readers = ", ".join(name for name, m in MODES.items() if m.synthetic and m.needs_store)
        raise SynthposError(f"the quick start compares SimCLR with SimCLR on generated positives, but "
                            f"pretrain.synthetic.mode={mode} reads none; set one that does ({readers})")


def _mode_config(config: RunConfig, mode: str, folder: str) -> RunConfig:
    sub = config.model_copy(deep=True)
    sub.pretrain.synthetic.mode = mode
    sub.pretrain.output_dir = config.run_dir / folder
    return sub


def _control_config(config: RunConfig) -> RunConfig:
    """The recipe's mode on ``<run_dir>/control_store``: K copies of each anchor (``generate.kind: anchors``)."""
    mode = config.pretrain.synthetic.mode
    sub = _mode_config(config, mode, f"{mode}_simclr_control")
    sub.generate.kind = "anchors"
    sub.generate.store = config.run_dir / "control_store"
    return sub


def _pixel_scores(config: RunConfig) -> dict[str, float]:
    data = config.data.model_copy(update={"subset": None})
    tr, te = load_dataset(data, "train"), load_dataset(data, "test")
    if config.evaluate.max_train:
        tr = tr.take(min(len(tr), config.evaluate.max_train))
    def flat(ds):
        return torch.from_numpy(ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0)

    mirror = torch.from_numpy(tr.images[:, :, ::-1].reshape(len(tr), -1).astype(np.float32) / 255.0)  # linear-paper's flip
    return score_features(flat(tr), tr.labels, flat(te), te.labels, tr.num_classes, config.evaluate, config.seed,
                          mirror, config.data.name, "raw pixels in [0, 1], flattened")


def command(run_dir: Path, train_generator: bool = False, overrides: list[str] | None = None,
            show_progress: bool = True, control: bool = False) -> dict:
    """``synthpos quickstart``: :func:`run_quickstart` under the run directory's lock."""
    with run_lock(run_dir):
        return run_quickstart(run_dir, train_generator=train_generator, overrides=overrides, show_progress=show_progress,
                              control=control)
