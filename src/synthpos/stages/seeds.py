"""``synthpos run --seeds``: one pipeline run per seed, per-seed metrics, means with 95% intervals.

``synthpos run --seeds 0,1,2`` (or ``seeds: [0, 1, 2]`` in a recipe) runs the pipeline into
``<run_dir>/seed-<s>`` with ``seed = s`` and writes ``<run_dir>/seeds.json``. With
``seed_store: shared`` (the default) the generator and the store are made once, with
``generate.seed`` (default: the first seed), and shared: the interval then covers
pretraining (initialisation, data order, augmentations, synthetic candidate draws) and
evaluation (validation carve, label subsets, probe initialisation and order), not the
generator or the store. ``seed_store: per-seed`` regenerates per seed, so the interval
also covers generation (and a trained generator's training).

Whether a generator or a store is part of the run is the stage table's answer
(:func:`synthpos.stages.table.needed`), as for one seed; the statistics are
:mod:`synthpos.evaluation.seeds`'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from synthpos.atomic import atomic_path
from synthpos.config import RunConfig
from synthpos.stages.runner import run_stage
from synthpos.stages.store_state import store_feeds
from synthpos.stages.table import STAGES, needed

#: the stages ``run --seeds`` runs once, before the seeds, when they share a store (the rows declare it)
SHARED_STAGES = tuple(stage for stage in STAGES if stage.shared_by_seeds)


def _reads_store(config: RunConfig) -> bool:
    """Whether pretraining reads a store (the synthetic mode says)."""
    return store_feeds(config) is None


def _trains_shared_generator(config: RunConfig) -> bool:
    """Whether one generator is trained here for every seed: the seeds share a store and the
    table says a generator is trained for it (one trained on the data, none given)."""
    return config.seed_store == "shared" and any(needed(stage, config) is None for stage in SHARED_STAGES)


def covers(config: RunConfig) -> str:
    """What the seeds' intervals cover, in words (seeds.json's ``covers``)."""
    what = ("pretraining (initialisation, data order, augmentations, candidate draws) and evaluation (validation "
            "carve, label subsets, probe initialisation and order)")
    if not _reads_store(config):
        return what + f"; no store in this run (pretrain.synthetic.mode={config.pretrain.synthetic.mode})"
    if config.seed_store == "shared":
        return what + f"; not generation: one generator and store (generation seed {config.generation_seed}) shared"
    return what + ", and generation (a store per seed)"


def seed_configs(config: RunConfig) -> list[RunConfig]:
    """One config per seed, each in ``<run_dir>/seed-<s>``; shared stores keep the first seed for generation."""
    seeds = config.seeds or [config.seed]
    base = config.model_copy(deep=True)
    out = []
    for s in seeds:
        sub = base.model_copy(deep=True)
        sub.seeds = None
        sub.seed = s
        sub.run_dir = config.run_dir / f"seed-{s}"
        if config.seed_store == "shared":
            sub.generate.seed = config.generate.seed if config.generate.seed is not None else seeds[0]
            sub.generate.store = config.generate.store or config.pretrain.store or config.run_dir / "store"
            sub.pretrain.store = None
            if _trains_shared_generator(config):
                sub.generate.generator = config.run_dir / "generator" / "model"
        out.append(sub)
    return out


def train_shared_generator(base: RunConfig, show_progress: bool = True) -> None:
    """The generator every seed shares, in ``<run_dir>/generator``, through the table (with its
    round-0 encoder when it is embedding-conditioned): redone only when its record does not match."""
    ran = False
    for stage in SHARED_STAGES:
        _, did = run_stage(stage.name, base, show_progress, force=ran)
        ran = ran or did


def run_seeds(config: RunConfig, run_one: Callable[[RunConfig], dict],
              train_generator: Callable[[RunConfig], object] | None = None) -> dict:
    """Run ``run_one`` (the pipeline) per seed and write ``<run_dir>/seeds.json``.

    ``train_generator`` makes the shared generator (shared stores, a generator trained here);
    by default :func:`train_shared_generator`.
    """
    from synthpos.evaluation.seeds import aggregate  # the evaluation package imports torch

    subs = seed_configs(config)
    if _trains_shared_generator(config):
        base = config.model_copy(deep=True)
        base.generate.seed = subs[0].generate.seed
        (train_generator or train_shared_generator)(base)
    per_seed = {sub.seed: run_one(sub) for sub in subs}
    result = aggregate(per_seed, covers(config))
    result["runs"] = {str(sub.seed): str(sub.run_dir) for sub in subs}
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(config.run_dir) / "seeds.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def print_seeds(result: dict) -> None:
    """Per number: mean and 95% interval over the seeds (percent)."""
    print(f"{len(result['seeds'])} seeds {result['seeds']}; the intervals cover {result['covers']}")
    for key, s in result["summary"].items():
        ci = f" (95% CI {100 * s['ci95'][0]:.2f} .. {100 * s['ci95'][1]:.2f})" if "ci95" in s else ""
        print(f"  {key}: {100 * s['mean']:.2f}{ci}  per seed: {', '.join(f'{100 * v:.2f}' for v in s['values'])}")
