"""Statistics over seeds: per-seed metrics, means with 95% Student-t intervals, paired differences.

``seeds.json`` (schema :data:`SEEDS_SCHEMA`) is written by ``synthpos run --seeds``
(:mod:`synthpos.stages.seeds`, which runs the seeds); the report and the benchmarks read it
with :func:`paired_difference` and :func:`mean_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["t_quantile_975", "mean_interval", "aggregate", "paired_difference", "SEEDS_SCHEMA"]

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
