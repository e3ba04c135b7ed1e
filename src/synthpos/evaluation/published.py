"""A paper's published numbers beside a run's own, for the recipes that reproduce a paper.

A recipe's ``published:`` section holds what the paper (or its official README) reports for
that recipe, with its source and protocol; ``synthpos run`` prints them at the end beside the
run's numbers on the same metric, so a reproduction is read against its target without
opening the paper. The section decides nothing: it is not part of any stage's record.
"""

from __future__ import annotations

from typing import Any

from synthpos.config import PublishedConfig

__all__ = ["compare_published"]

#: published field -> the metrics.json key holding the same number (top-1, a fraction there).
_METRIC_KEYS = {"linear_top1": ("linear_paper_top1", "linear_top1"), "knn_top1": ("knn_top1",)}


def compare_published(published: PublishedConfig, results: dict[str, dict[str, Any]] | None = None,
                      intervals: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Lines comparing ``published`` with a run's ``results`` (metrics.json's ``results``).

    Args:
        published: the recipe's ``published:`` section (percent).
        results: ``{dataset: {metric: fraction}}`` of one run (None with ``intervals``).
        intervals: seeds.json's ``summary`` (``{"<dataset>/<metric>": {"mean", "ci95"}}``) for a
            run over several seeds: their mean and interval are shown.

    Returns:
        One header line naming the source and protocol, then one line per published metric:
        ``linear_top1: published 94.45, this run 93.10 (linear_paper_top1), -1.35 points``.
    """
    lines = [f"published ({published.source or 'source not given'}; {published.protocol or 'protocol as in the source'}):"]
    if results is None:  # the seeds' means, per dataset
        results = {}
        for name, summary in (intervals or {}).items():
            dataset, _, metric = name.partition("/")
            results.setdefault(dataset, {})[metric] = summary["mean"]
    dataset = next(iter(results), None)
    for field, keys in _METRIC_KEYS.items():
        target = getattr(published, field)
        if target is None:
            continue
        key = next((k for k in keys if dataset is not None and k in results[dataset]), None)
        if key is None:
            lines.append(f"  {field}: published {target:.2f}, not measured by this run")
            continue
        ours, spread = 100 * results[dataset][key], ""
        summary = (intervals or {}).get(f"{dataset}/{key}")
        if summary is not None:
            ours = 100 * summary["mean"]
            if "ci95" in summary:
                spread = f", 95% CI {100 * summary['ci95'][0]:.2f} .. {100 * summary['ci95'][1]:.2f} over {summary['n']} seeds"
        lines.append(f"  {field}: published {target:.2f}, this run {ours:.2f} ({key}{spread}), {ours - target:+.2f} points")
    return lines
