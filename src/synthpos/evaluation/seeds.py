"""Several seeds: one pipeline run per seed, per-seed metrics, means with 95% Student-t intervals.

``synthpos run --seeds 0,1,2`` (or ``seeds: [0, 1, 2]`` in a recipe) runs the pipeline into
``<run_dir>/seed-<s>`` with ``seed = s`` and writes ``<run_dir>/seeds.json``. With
``seed_store: shared`` (the default) the generator and the store are made once, with
``generate.seed`` (default: the first seed), and shared: the interval then covers
pretraining (initialisation, data order, augmentations, synthetic candidate draws) and
evaluation (validation carve, label subsets, probe initialisation and order), not the
generator or the store. ``seed_store: per-seed`` regenerates per seed, so the interval
also covers generation (and a trained generator's training).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from synthpos.atomic import atomic_path
from synthpos.config import RunConfig
from synthpos.registry import GENERATORS, MODES

__all__ = ["t_quantile_975", "mean_interval", "aggregate", "paired_difference", "seed_configs", "run_seeds",
           "SEEDS_SCHEMA"]

SEEDS_SCHEMA = "synthpos.seeds/1"

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (checked against scipy in the tests).
_T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423]


def t_quantile_975(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom (a table to 30, then the Cornish-Fisher expansion)."""
    if df < 1:
        raise ValueError(f"df must be >= 1; got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation and 95% t interval of per-seed values (no interval for one value)."""
    n = len(values)
    mean = sum(values) / n
    out = {"n": n, "values": list(values), "mean": mean}
    if n >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        out.update(sd=sd, ci95=[mean - half, mean + half], half_width=half)
    return out


def _numbers(metrics: dict) -> dict[str, float]:
    """``{"<dataset>/<key>": value}`` of a metrics.json's summary."""
    return {f"{d}/{k}": v for d, scores in metrics["results"].items() for k, v in scores.items()
            if isinstance(v, (int, float))}


def aggregate(per_seed: dict[int, dict], covers: str) -> dict:
    """seeds.json from each seed's metrics.json: per-seed numbers and, per number, mean and interval."""
    numbers = {s: _numbers(m) for s, m in per_seed.items()}
    keys = sorted(set.intersection(*(set(v) for v in numbers.values()))) if numbers else []
    return {"schema": SEEDS_SCHEMA, "seeds": sorted(per_seed), "covers": covers,
            "per_seed": {str(s): numbers[s] for s in sorted(numbers)},
            "summary": {k: mean_interval([numbers[s][k] for s in sorted(numbers)]) for k in keys}}


def paired_difference(a: dict, b: dict) -> dict:
    """B minus A per number over the seeds both ran (a paired comparison), with 95% t intervals.

    Args:
        a, b: two seeds.json dicts.
    """
    common = sorted(set(a["per_seed"]) & set(b["per_seed"]), key=int)
    keys = sorted(set.intersection(*(set(a["per_seed"][s]) & set(b["per_seed"][s]) for s in common))) if common else []
    return {"seeds": [int(s) for s in common],
            "difference": {k: mean_interval([b["per_seed"][s][k] - a["per_seed"][s][k] for s in common]) for k in keys}}


def _reads_store(config: RunConfig) -> bool:
    """Whether pretraining reads a store: the synthetic mode says (``none`` and ``mochi`` read none)."""
    return MODES.get(config.pretrain.synthetic.mode).needs_store


def _trains_shared_generator(config: RunConfig) -> bool:
    """Whether one generator is trained here for every seed: the seeds share a store that a generator
    trained on the data makes (its class says so: ``trains_on_data``) and none is given."""
    return (config.seed_store == "shared" and _reads_store(config) and config.generate.generator is None
            and GENERATORS.get(config.generate.kind).trains_on_data)


def covers(config: RunConfig) -> str:
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


def run_seeds(config: RunConfig, run_one: Callable[[RunConfig], dict], train_generator: Callable[[RunConfig], object]
              ) -> dict:
    """Run ``run_one`` (the pipeline) per seed and write ``<run_dir>/seeds.json``.

    ``train_generator`` makes the shared generator once (shared stores, a generator trained here).
    """
    subs = seed_configs(config)
    if _trains_shared_generator(config) and not (config.generator_dir / "COMPLETE").is_file():
        base = config.model_copy(deep=True)
        base.generate.seed = subs[0].generate.seed
        train_generator(base)
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
