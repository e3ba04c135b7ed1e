"""What a report shows, read from run directories (nothing is trained here).

A run directory is one of: a pipeline run (``pretrain/``, ``evaluate/metrics.json``,
``store/``), a multi-seed run (``seeds.json`` and ``seed-<s>/``), or a quick start
(``results.json`` and one pretraining folder per encoder). Baseline encoders evaluated beside a
run (metrics.json's ``baselines``) are entries of their own, named ``baseline <name>``, without a backbone.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from synthpos.errors import SynthposError

__all__ = ["collect_run", "Entry", "metrics_damage", "read_metrics"]

# An entry: one encoder's row in the report.
Entry = dict[str, Any]


#: The encoders' folders of quick starts run before results.json named them (CLSP-SimCLR and its control).
LEGACY_FOLDERS = {"SimCLR": "simclr", "CLSP-SimCLR": "clsp_simclr", "random init": "random_init",
                  "CLSP-SimCLR control (anchor copies)": "clsp_simclr_control"}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def metrics_damage(path: Path) -> str | None:
    """Why ``path`` (an evaluation's metrics.json, docs/metrics.md) cannot be read back, or None (whole, or absent).

    Whole means a JSON object whose ``results`` is an object (and ``records`` a list, ``baselines`` an object,
    where present): what the report and ``synthpos run`` read from it. Hashes and numbers are not checked here.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        return f"unreadable: {err.__class__.__name__}: {err}"
    try:
        data = json.loads(text)
    except ValueError as err:
        return f"not JSON, cut short or overwritten: {getattr(err, 'msg', err)} at character {getattr(err, 'pos', '?')}"
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not the object synthpos evaluate writes"
    for key, kind in (("results", dict), ("records", list), ("baselines", dict)):
        if (key in data or key == "results") and not isinstance(data.get(key), kind):
            return f"its {key!r} is {type(data.get(key)).__name__}, not a JSON {'object' if kind is dict else 'array'}"
    return None


def read_metrics(path: Path) -> dict | None:
    """An evaluation's metrics.json, or None where there is none.

    Raises:
        SynthposError: the file is there but damaged (:func:`metrics_damage`): one line naming it and how to remake
            it. A report that left it out silently would show a run without its numbers as if it had none.
    """
    path = Path(path)
    if (why := metrics_damage(path)) is not None:
        raise SynthposError(f"{path} is damaged ({why}); run the `synthpos evaluate` (or `synthpos run`) that wrote it "
                            "again: evaluate is not done while its metrics.json is damaged and remakes it; or move the "
                            "file away to report the run without its numbers")
    return _json(path)


def _summary(path: Path, command: str) -> dict | None:
    """A run's own summary (a quick start's results.json, a multi-seed run's seeds.json), or None where there is none.

    Raises:
        SynthposError: it is there but not a JSON object: read as absent, the run would be reported as another kind.
    """
    if not path.exists():
        return None
    data = _json(path)
    if not isinstance(data, dict):
        raise SynthposError(f"{path} is damaged (not the JSON object `{command}` writes); run the `{command}` that "
                            "wrote it again, which writes it anew from the finished stages")
    return data


def read_curves(pretrain_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Per-epoch means of every logged ``train/*``, ``knn/*`` and ``online/*`` value (Lightning's CSV logs)."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((pretrain_dir / "logs").glob("version_*/metrics.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"])) + 1
                for key, value in row.items():
                    if value and key.startswith(("train/", "knn/", "online/")) and key != "train/lr":
                        sums[key][epoch].append(float(value))
    return {k: sorted((e, sum(v) / len(v)) for e, v in by.items()) for k, by in sums.items()}


def _stage_records(root: Path) -> dict[str, Any]:
    """The JSON records a run wrote about itself (stage records, summaries, manifests), by relative path."""
    found = {}
    for pattern in ("*.json", "*/*.json", "*/*/record*.json"):
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(("evaluate/features", "seed-")) or path.name in ("cka.json",) or path.stat().st_size > 200_000:
                continue
            found[rel] = _json(path)
    return found


#: The outputs that carry a ``provenance`` object (synthpos.provenance), by file name.
PROVENANCE_FILES = ("COMPLETE", "manifest.json", "backbone.json", "metrics.json")


def read_provenance(root: Path) -> dict[str, dict]:
    """``{relative path: provenance}`` of every output under ``root`` (three levels deep) that records one.

    Outputs moved aside (``previous/``) and outputs written before provenance existed are left out.
    """
    found = {}
    for pattern in ("*", "*/*", "*/*/*"):
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if path.name not in PROVENANCE_FILES or rel.startswith("previous/") or "/features/" in rel:
                continue
            record = _json(path)
            if isinstance(record, dict) and isinstance(record.get("provenance"), dict):
                found[rel] = record["provenance"]
    return found


def _pretrain_entry(name: str, pretrain_dir: Path, metrics: dict | None) -> Entry:
    config = pretrain_dir / "config.yaml"
    return {
        "name": name, "pretrain_dir": pretrain_dir, "backbone": pretrain_dir / "backbone.pt",
        "config_text": config.read_text() if config.is_file() else None,
        "curves": read_curves(pretrain_dir), "summary": _json(pretrain_dir / "summary.json"),
        "results": metrics.get("results", {}) if metrics else {},
        "records": metrics.get("records", []) if metrics else [],
    }


def _baseline_entries(metrics: dict | None, suffix: str = "") -> list[Entry]:
    """One row per baseline encoder evaluated beside the run (metrics.json's ``baselines``): numbers only."""
    return [{"name": f"baseline {name}{suffix}", "pretrain_dir": None, "backbone": None, "config_text": None,
             "curves": {}, "summary": None, "results": base.get("results", {}), "records": base.get("records", []),
             "baseline": True}
            for name, base in ((metrics or {}).get("baselines") or {}).items()]


def collect_run(run_dir: Path) -> dict:
    """Everything the report can show about one run directory.

    Returns:
        ``{"dir", "kind": "pipeline" | "seeds" | "quickstart", "entries": [Entry], "seeds": seeds.json or None,
        "records": {path: json}, "provenance": {path: provenance}, "store": path or None, "positives": png or None, "inspect": json or None,
        "timings": {...}, "fidelity": {...} or None}``

    Raises:
        SynthposError: ``run_dir`` is not a synthpos run.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SynthposError(f"{run_dir} is not a directory; pass the run_dir of a synthpos run or quick start")
    out: dict[str, Any] = {"dir": run_dir, "seeds": None, "records": _stage_records(run_dir), "timings": {},
                           "provenance": read_provenance(run_dir),
                           "fidelity": None, "positives": None, "inspect": None, "store": None}
    quick = _summary(run_dir / "results.json", "synthpos quickstart")
    seeds = _summary(run_dir / "seeds.json", "synthpos run --seeds")
    if quick and "rows" in quick:
        out["kind"] = "quickstart"
        folders = quick.get("folders", LEGACY_FOLDERS)  # written by quick starts since the mode was the recipe's
        out["entries"] = []
        for name, row in quick["rows"].items():
            folder = run_dir / folders.get(name, "_none")
            entry = _pretrain_entry(name, folder, {"results": {"fashion_mnist": row},
                                                   "records": row.get("records", [])})
            entry["results"] = {"fashion_mnist": {k: v for k, v in row.items() if k != "records"}}
            if not (folder / "backbone.pt").is_file():
                entry["backbone"] = None
            out["entries"].append(entry)
        # A baseline evaluated on the quick start's data (`synthpos evaluate` with evaluate.checkpoint in its run_dir).
        out["entries"] += _baseline_entries(read_metrics(run_dir / "evaluate" / "metrics.json"))
        out["timings"] = {**quick.get("timings", {}), "wall_s": quick.get("wall_s")}
        out["fidelity"] = {**quick.get("fidelity", {}), "classifier_test_top1": quick.get("classifier_test_top1")}
        if (run_dir / "positives.png").is_file():
            out["positives"] = run_dir / "positives.png"
    elif seeds:
        out["kind"] = "seeds"
        out["seeds"] = seeds
        out["entries"] = []
        for s, sub in sorted(seeds.get("runs", {}).items(), key=lambda kv: int(kv[0])):
            sub_dir = Path(sub) if Path(sub).is_absolute() else run_dir / f"seed-{s}"
            if not sub_dir.is_dir():
                sub_dir = run_dir / f"seed-{s}"
            metrics = read_metrics(sub_dir / "evaluate" / "metrics.json")
            out["entries"].append(_pretrain_entry(f"{run_dir.name} seed {s}", sub_dir / "pretrain", metrics))
            out["entries"] += _baseline_entries(metrics, f" seed {s}")
    elif (run_dir / "evaluate" / "metrics.json").is_file() or (run_dir / "pretrain").is_dir():
        out["kind"] = "pipeline"
        metrics = read_metrics(run_dir / "evaluate" / "metrics.json")
        out["entries"] = [_pretrain_entry(run_dir.name, run_dir / "pretrain", metrics)] + _baseline_entries(metrics)
    else:
        raise SynthposError(f"{run_dir} holds no synthpos run (no results.json, seeds.json, evaluate/metrics.json "
                            "or pretrain/); pass a run_dir that synthpos run or quickstart wrote")
    store = run_dir / "store"
    if (store / "manifest.json").is_file():
        out["store"] = store
        out["records"]["store/manifest.json"] = _json(store / "manifest.json")
    inspect = _json(store / "inspect" / "inspect.json")
    if inspect:
        out["inspect"] = inspect
        if out["positives"] is None and (store / "inspect" / "grid.png").is_file():
            out["positives"] = store / "inspect" / "grid.png"
    return out
