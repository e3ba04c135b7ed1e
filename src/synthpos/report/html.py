"""`synthpos report`: one self-contained HTML page (images inline as data URIs, no network)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import platform
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from synthpos.atomic import atomic_path
from synthpos.report.collect import collect_run

__all__ = ["write_report", "SECTIONS"]

SECTIONS = [("configs", "configs"), ("positives", "positives"), ("store", "store"), ("curves", "training"),
            ("results", "results"), ("label-efficiency", "label efficiency"), ("cka", "CKA"), ("timings", "timings")]

PROTOCOLS = {
    "knn": ("kNN top-1", "weighted kNN, cosine, T={t}; k chosen on validation"),
    "linear-fast": ("linear top-1 (fast)", "standardised cached features; lr, wd chosen on validation"),
    "linear-paper": ("linear top-1 (paper)", "CLSP official: flip, SGD lr {lr}, {epochs} ep, last epoch"),
    "finetune": ("fine-tune top-1", "backbone + linear head trained; optimiser, epochs, lr chosen on validation"),
}


def _column_key(record: dict) -> str:
    """The summary key of a record's number (metrics.json's ``results``)."""
    protocol, fraction = record["protocol"], record["label_fraction"]
    if protocol == "knn":
        return "knn_top1"
    if protocol == "linear-paper":
        return "linear_paper_top1"
    if protocol == "finetune":
        return f"finetune_top1@{fraction:g}"
    return "linear_top1" if fraction == 1 else f"linear_top1@{fraction:g}"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _machine() -> list[tuple[str, str]]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [("CPU", cpu), ("cores", str(os.cpu_count())), ("GPU", gpu), ("load average (1, 5, 15 min)", load),
            ("python", platform.python_version()), ("torch", torch.__version__), ("system", platform.platform())]


def _config_of(entry: dict):
    from synthpos.config import RunConfig

    if not entry.get("config_text"):
        return None
    try:
        return RunConfig.model_validate(yaml.safe_load(entry["config_text"]))
    except Exception:  # a config from another synthpos version: the report shows it as text only
        return None


def _columns(entries: list[dict]) -> list[dict]:
    keys: list[tuple[str, str]] = []
    temps = {r["hyper_parameters"].get("temperature") for e in entries for r in e["records"] if r["protocol"] == "knn"}
    for e in entries:
        for r in e["records"]:
            key = _column_key(r)
            if (key, r["protocol"]) not in keys:
                keys.append((key, r["protocol"]))
    if not keys:  # metrics without records (older runs): the summary keys, unlabelled
        keys = [(k, "protocol not recorded") for k in ("knn_top1", "linear_top1")]
    cols = []
    for key, protocol in keys:
        label, text = PROTOCOLS.get(protocol, (key, protocol))
        if key.startswith("finetune_top1@"):
            label, text = f"fine-tune top-1, {100 * float(key.split('@')[1]):g}% labels", text + "; class-balanced subset"
        elif "@" in key:
            label, text = f"linear top-1, {100 * float(key.split('@')[1]):g}% labels", "linear-fast, class-balanced subset"
        paper = next((r["hyper_parameters"] for e in entries for r in e["records"] if r["protocol"] == "linear-paper"), {})
        cols.append({"key": key, "label": label, "protocol": text.format(
            t=", ".join(f"{t:g}" for t in temps if t), lr=paper.get("lr"), epochs=paper.get("epochs"))})
    return cols


def _results(runs: list[dict], columns: list[dict]) -> tuple[list[dict], list[dict], str]:
    rows, diffs = [], []
    seeded = [r for r in runs if r["seeds"]]
    for run in runs:
        if run["seeds"]:
            summary = run["seeds"]["summary"]
            n = len(run["seeds"]["seeds"])
            cells = []
            for c in columns:
                s = next((v for k, v in summary.items() if k.split("/", 1)[1] == c["key"]), None)
                cells.append("—" if s is None else f"{100 * s['mean']:.2f} ± {100 * s.get('half_width', 0):.2f}"
                             if "half_width" in s else f"{100 * s['mean']:.2f}")
            rows.append({"name": f"{run['dir'].name} (mean of {n} seeds)", "cells": cells})
        for e in run["entries"]:
            res = next(iter(e["results"].values()), {}) if e["results"] else {}
            rows.append({"name": e["name"], "cells": [_pct(res.get(c["key"])) for c in columns]})
    if len(seeded) >= 2:
        from synthpos.evaluation.seeds import paired_difference

        base = seeded[0]
        for other in seeded[1:]:
            d = paired_difference(base["seeds"], other["seeds"])
            table = [(k, (f"{100 * v['mean']:+.2f}", f"{100 * v['ci95'][0]:+.2f} .. {100 * v['ci95'][1]:+.2f}"
                          if "ci95" in v else "—")) for k, v in d["difference"].items()]
            diffs.append({"title": f"{other['dir'].name} minus {base['dir'].name}", "seeds": d["seeds"], "rows": table})
    note = ("Runs with two or more seeds: mean ± half-width of the 95% Student-t interval over seeds; "
            + "; ".join(f"{r['dir'].name}: covers {r['seeds']['covers']}" for r in seeded)) if seeded else \
        "One seed per run: no interval (synthpos run --seeds 0,1,2 gives one)."
    return rows, diffs, note


def _protocol_rows(entries: list[dict]) -> list[list[str]]:
    out = []
    for e in entries:
        for r in e["records"]:
            sel = r["selection"]
            chosen = (f"{sel['split']} ({sel.get('images', '?')} images carved from train)"
                      if sel.get("split") == "validation" else sel.get("note", sel.get("split", "")))
            hyper = ", ".join(f"{k}={v}" for k, v in r["hyper_parameters"].items())
            out.append([e["name"], r["protocol"], _pct(r["value"]), f"{r['train_labels']} ({100 * r['label_fraction']:g}%)",
                        r["features"], chosen, hyper, str(r["seed"])])
    return out


def _label_points(runs: list[dict]) -> dict[str, list[tuple[float, float, float | None]]]:
    points: dict[str, list] = {}
    for run in runs:
        if run["seeds"]:
            pts = []
            for key, s in run["seeds"]["summary"].items():
                k = key.split("/", 1)[1]
                if k == "linear_top1" or k.startswith("linear_top1@"):
                    f = 1.0 if "@" not in k else float(k.split("@")[1])
                    pts.append((f, 100 * s["mean"], 100 * s.get("half_width", 0) or None))
            if len(pts) > 1:
                points[f"{run['dir'].name} (mean)"] = pts
            continue
        for e in run["entries"]:
            res = next(iter(e["results"].values()), {}) if e["results"] else {}
            pts = [(1.0 if k == "linear_top1" else float(k.split("@")[1]), 100 * v, None) for k, v in res.items()
                   if k == "linear_top1" or k.startswith("linear_top1@")]
            if len(pts) > 1:
                points[e["name"]] = pts
            tuned = [(float(k.split("@")[1]), 100 * v, None) for k, v in res.items() if k.startswith("finetune_top1@")]
            if tuned:
                points[f"{e['name']} (fine-tune)"] = tuned
    return points


def _cka_pair(runs: list[dict]) -> tuple[dict, dict] | None:
    def usable(e):
        return e.get("backbone") is not None and Path(e["backbone"]).is_file() and e["name"] != "random init"

    if len(runs) >= 2:
        firsts = [next((e for e in r["entries"] if usable(e)), None) for r in runs[:2]]
        if all(firsts):
            return firsts[0], firsts[1]
    pool = [e for r in runs for e in r["entries"] if usable(e)]
    return (pool[0], pool[1]) if len(pool) >= 2 else None


def _store_section(runs: list[dict], tmp: Path) -> tuple[list[tuple[str, str]], str, str | None, str]:
    """Rows for the store table, its note, the positives image and its note."""
    rows, note, positives, pos_note = [], "No synthetic store in these runs.", None, "No synthetic store in these runs."
    for run in runs:
        if run["positives"] is not None and positives is None:
            positives = _data_uri(run["positives"])
        f = run["fidelity"]
        if f and f.get("fidelity") is not None:
            rows.append((f"{run['dir'].name}: candidates keeping their anchor's label (fidelity)",
                         f"{100 * f['fidelity']:.1f}% of {f.get('anchors', 0) * f.get('candidates', 0)}"))
            if f.get("classifier_test_top1") is not None:
                rows.append(("the judging classifier on real test images", f"{100 * f['classifier_test_top1']:.1f}%"))
        report = run["inspect"]
        if report is None and run["store"] is not None:
            report = _inspect_now(run, tmp, grid=positives is None)
            if report and positives is None and report.get("grid"):
                positives = _data_uri(Path(report["grid"]))
        if report:
            if report.get("fidelity"):
                rows.append((f"{run['dir'].name}: fidelity (inspect-store)", f"{100 * report['fidelity']['fidelity']:.1f}%"))
            for space, d in report.get("diversity", {}).items():
                if d:
                    for k in ("between_candidates", "candidate_to_anchor", "between_real_images"):
                        if d.get(k) is not None:
                            rows.append((f"{run['dir'].name}: {space} distance, {k.replace('_', ' ')} ({d['metric']})",
                                         f"{d[k]:.3f}"))
            if not report.get("fidelity") and not (f and f.get("fidelity") is not None):
                note_fid = "fidelity not measured: synthpos inspect-store trains the judging classifier"
                rows.append((f"{run['dir'].name}: fidelity", note_fid))
    if positives is None and any(r["store"] is not None for r in runs):
        pos_note = "The store could not be opened against its data; run synthpos inspect-store for a grid."
    return rows, note, positives, pos_note


def _inspect_now(run: dict, tmp: Path, grid: bool = True) -> dict | None:
    """Pixel diversity of the first 200 anchors (and a grid), without a classifier (fast)."""
    from synthpos.data import load_dataset
    from synthpos.data.synthetic_store import SyntheticStore
    from synthpos.evaluation.store_diagnostics import inspect_store
    from synthpos.figures.grid import positives_grid

    config = next((c for c in (_config_of(e) for e in run["entries"]) if c is not None), None)
    if config is None:
        return None
    try:
        dataset = load_dataset(config.data, "train")
        store = SyntheticStore.open(run["store"], dataset.name, dataset.split, dataset.images)
        report = inspect_store(store, dataset.take(min(len(dataset), len(store))), max_anchors=200)
        if grid:
            report["grid"] = str(positives_grid(dataset, store, tmp / f"grid-{run['dir'].name}.png", rows=min(8, len(store))))
        return report
    except Exception:  # a store that does not open against its data: say so rather than fail the whole report
        return None


def write_report(run_dirs: list[Path], out: Path | None = None, cka_images: int = 1000) -> Path:
    """Render the report of ``run_dirs`` to ``out`` (default ``<first run>/report.html``).

    Raises:
        SynthposError: a path that is not a synthpos run.
    """
    import jinja2

    from synthpos.figures.plots import cka_heatmap, label_efficiency_plot, training_curves

    runs = [collect_run(Path(d)) for d in run_dirs]
    entries = [e for r in runs for e in r["entries"]]
    out = Path(out) if out else Path(run_dirs[0]) / "report.html"
    ctx: dict[str, Any] = {"title": ", ".join(Path(d).name for d in run_dirs), "runs": runs, "entries": entries,
                           "sections": SECTIONS, "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ctx["store_rows"], ctx["store_note"], ctx["positives"], ctx["positives_note"] = _store_section(runs, tmp)
        curves = {e["name"]: e["curves"] for e in entries if e["curves"]}
        ctx["curves"] = _data_uri(training_curves(curves, tmp / "curves.png")) if curves else None
        columns = _columns(entries)
        ctx["columns"] = columns
        ctx["rows"], ctx["differences"], ctx["interval_note"] = _results(runs, columns)
        ctx["protocol_rows"] = _protocol_rows(entries)
        points = _label_points(runs)
        ctx["label_plot"] = _data_uri(label_efficiency_plot(points, tmp / "labels.png")) if points else None
        ctx["cka"], ctx["cka_plot"], ctx["cka_note"] = None, None, "CKA needs two encoders (two runs, or a quick start)."
        pair = _cka_pair(runs)
        if pair:
            ctx["cka"], ctx["cka_plot"], ctx["cka_note"] = _cka(pair, cka_images, tmp, cka_heatmap)
        timings = []
        for run in runs:
            timings += [(f"{run['dir'].name}: {k}", v) for k, v in run["timings"].items() if v is not None]
            for e in run["entries"]:
                if e["summary"]:
                    timings.append((f"{e['name']}: pretraining epochs / steps", f"{e['summary'].get('epochs')} / "
                                    f"{e['summary'].get('steps')}"))
        ctx["timings"], ctx["machine"] = timings, _machine()
        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        template = env.from_string((resources.files("synthpos.report") / "templates" / "report.html").read_text())
        html = template.render(**ctx)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp_out:
        tmp_out.write_text(html)
    return out


def _cka(pair, images: int, tmp: Path, heatmap) -> tuple[dict | None, str | None, str]:
    from synthpos.data import load_dataset
    from synthpos.evaluation.compare import compare_encoders
    from synthpos.evaluation.encoders import load_encoder

    a, b = pair
    config = _config_of(a) or _config_of(b)
    if config is None:
        return None, None, "CKA: no resolved config beside the backbones says which data to compare on."
    test = load_dataset(config.data.model_copy(update={"subset": None}), "test")
    test = test.take(min(images, len(test)))
    size = config.evaluate.feature_size or config.pretrain.augment.crop_size
    ea = load_encoder(a["backbone"], size, test.mean, test.std)
    eb = load_encoder(b["backbone"], size, test.mean, test.std)
    result = compare_encoders(ea, eb, test.images)
    result.update(a=a["name"], b=b["name"])
    plot = _data_uri(heatmap({**result, "a_label": a["name"], "b_label": b["name"]}, tmp / "cka.png")) \
        if "matrix" in result else None
    return {**result, "a_name": a["name"], "b_name": b["name"]}, plot, ""
