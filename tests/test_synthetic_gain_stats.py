"""The gain benchmark's statistics and run keys (benchmarks/synthetic_gain.py), without running it:
the paired t interval against scipy, one summary per generator, and a key that names the weights."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmark_synthetic_gain_stats", BENCHMARKS / "synthetic_gain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("values", [[1.2, -0.3, 2.5], [0.1, 0.4, 0.2, 0.9, -0.1], list(np.linspace(-1, 3, 12))])
def test_t_interval_matches_scipy(bench, values):
    got = bench.t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["low"] == pytest.approx(low, rel=1e-4) and got["high"] == pytest.approx(high, rel=1e-4)


def _run(row, mode, seed, linear, gid=None):
    return {"method": "simclr", "row": row, "mode": mode, "seed": seed, "subset": 5000, "epochs": 40,
            "linear_top1": linear, "knn_top1": linear - 0.02, "generator_id": gid}


def test_paired_summary_pairs_by_seed_and_keeps_generators_apart(bench):
    none = [_run("none", "none", s, 0.80 + 0.01 * s) for s in range(3)]
    old = [_run("clsp", "clsp", s, 0.80 + 0.01 * s + d, "aaaaaaaaaaaaaaaa") for s, d in enumerate([0.01, 0.02, 0.0])]
    new = [_run("clsp", "clsp", s, 0.80 + 0.01 * s + d, "bbbbbbbbbbbbbbbb") for s, d in enumerate([0.03, 0.02, 0.025])]
    summary = bench.paired_summary(none + old + new)
    assert set(summary) == {"n5000_e40/clsp@aaaaaaaa", "n5000_e40/clsp@bbbbbbbb"}
    entry = summary["n5000_e40/clsp@bbbbbbbb"]
    assert entry["generator_id"] == "bbbbbbbbbbbbbbbb" and entry["seeds"] == [0, 1, 2]
    assert entry["linear_top1"]["differences_points"] == pytest.approx([3.0, 2.0, 2.5])
    assert entry["linear_top1"]["mean"] == pytest.approx(2.5)
    assert entry["target_met"]  # mean >= 1.5 points and the interval above 0
    assert not summary["n5000_e40/clsp@aaaaaaaa"]["target_met"]
    # One generator: the key is the row's name alone.
    assert set(bench.paired_summary(none + new)) == {"n5000_e40/clsp"}


def ddpm(folder: Path, weights: bytes) -> Path:
    """A generator folder whose weights hash to their own ``generator_id`` (nothing loads them)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    return folder


def test_run_key_names_the_generator_weights_not_its_alias(bench, tmp_path):
    clsp, none = {"name": "clsp", "mode": "clsp"}, {"name": "none", "mode": "none"}
    first = Namespace(generator=str(ddpm(tmp_path / "a", b"old weights")))
    second = Namespace(generator=str(ddpm(tmp_path / "b", b"new weights")))
    assert bench.run_key(first, clsp, 0, 5000, 40) != bench.run_key(second, clsp, 0, 5000, 40)
    assert bench.run_key(first, none, 0, 5000, 40) == bench.run_key(second, none, 0, 5000, 40) \
        == "none/no-generator/s0/n5000_e40"


def test_two_generators_runs_and_stores_sit_side_by_side(bench, tmp_path):
    """One --work holds both generators' stores and runs: a second generator does not run into
    the first one's store or run folder; runs without a store are shared."""
    clsp, none = bench.parse_row("clsp"), bench.parse_row("none")
    common = dict(work=tmp_path / "work", smoke=False, generation_seed=0)
    first = Namespace(generator=str(ddpm(tmp_path / "a", b"old weights")), **common)
    second = Namespace(generator=str(ddpm(tmp_path / "b", b"new weights")), **common)
    (a, _), (b, _) = bench.run_config(first, clsp, 0, 5000, 40), bench.run_config(second, clsp, 0, 5000, 40)
    assert a.run_dir != b.run_dir and a.generate.store != b.generate.store
    assert a.run_dir.parent == b.run_dir.parent == tmp_path / "work"
    (a, _), (b, _) = bench.run_config(first, none, 0, 5000, 40), bench.run_config(second, none, 0, 5000, 40)
    assert a.run_dir == b.run_dir


def test_a_row_changed_under_its_old_name_is_refused_not_skipped(bench, tmp_path, capsys):
    """The JSON keys runs by row name: a row whose settings changed must not pass for its old result."""
    import json

    generator = str(ddpm(tmp_path / "g", b"weights"))
    old = bench.parse_row("clsp_s=clsp:generate.strength=0.7")
    args = Namespace(generator=generator)
    out = tmp_path / "gain.json"
    stored = {"runs": {bench.run_key(args, old, 0, 5000, 40): {"overrides": old["overrides"]}}}
    out.write_text(json.dumps(stored))
    argv = ["--generator", generator, "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "0"]
    assert bench.main([*argv, "--rows", "clsp_s=clsp:generate.strength=0.6"]) == 2
    assert "generate.strength=0.7" in capsys.readouterr().err
    assert json.loads(out.read_text()) == stored and not list((tmp_path / "work").iterdir())
