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


def _run(row, mode, seed, linear, gid=None, **extra):
    return {"method": "simclr", "row": row, "mode": mode, "seed": seed, "subset": 5000, "epochs": 40,
            "linear_top1": linear, "knn_top1": linear - 0.02, "generator_id": gid, **extra}


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
    assert bench.run_key(first, none, 0, 5000, 40, cpu="AMD-EPYC+bf16") \
        == bench.run_key(second, none, 0, 5000, 40, cpu="AMD-EPYC+bf16") == "none/no-generator/s0/n5000_e40/AMD-EPYC+bf16"
    # The control's store has no weights: one key under every generator.
    control = {"name": "clsp_real", "mode": "clsp", "overrides": ["generate.kind=anchors"]}
    assert bench.run_key(first, control, 0, 5000, 40) == bench.run_key(second, control, 0, 5000, 40)


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


# --- controls (issue 24): which control serves which row, none_time's epochs, one CPU per pairing ---------------


def test_each_store_setting_gets_one_control_on_the_anchors_store(bench):
    rows = [bench.parse_row(r) for r in bench.DEFAULT_ROWS]
    planned = {r["name"]: r for r in bench.plan_rows(rows)}
    served = {name: r["control"] for name, r in planned.items() if r["role"] == "row"}
    assert served == {"clsp": "clsp_real", "clsp_s0.7": "clsp_real", "clsp_s0.4": "clsp_real",  # differ in generate.* only
                      "replace": "none",  # p = 1 on the anchors store is none
                      "multipos": "multipos_real", "multipos_weakaug": "multipos_weakaug_real",
                      "mochi": None, "mochi_simclr": None}  # no store, no control
    controls = {name: r for name, r in planned.items() if r["role"] == "control"}
    assert set(controls) == {"clsp_real", "multipos_real", "multipos_weakaug_real"}  # each planned once
    assert len(planned) == len(bench.plan_rows(rows))
    assert controls["clsp_real"]["mode"] == "clsp" and controls["clsp_real"]["overrides"] == [bench.CONTROL_KIND]
    # Every pretraining setting of its row, only the generator replaced.
    weak = planned["multipos_weakaug"]["overrides"]
    assert controls["multipos_weakaug_real"]["overrides"] == [*weak, bench.CONTROL_KIND]
    assert all(o.startswith("pretrain.synthetic.augment.") for o in weak)


def test_replace_is_none_only_at_p_one_with_real_views_augmentation(bench):
    def control(spec):
        planned = bench.plan_rows([bench.parse_row("none"), bench.parse_row(spec)])
        return {r["name"]: r for r in planned}[planned[1]["control"]]

    assert control("replace=replace:pretrain.synthetic.replace_prob=1.0")["name"] == "none"
    assert control("r=replace:pretrain.synthetic.replace_prob=1.0,pretrain.synthetic.replace_view=each")["name"] == "none"
    half = control("replace_half=replace:pretrain.synthetic.replace_prob=0.5")
    assert half["name"] == "replace_half_real" and half["overrides"][-1] == bench.CONTROL_KIND
    uncropped = control("r=replace:pretrain.synthetic.replace_prob=1.0,pretrain.synthetic.crop_synthetic=false")
    assert uncropped["mode"] == "replace" and bench.CONTROL_KIND in uncropped["overrides"]
    # MoCo's replace at p = 1: MoCo's own none row, with every other setting kept.
    planned = bench.plan_rows([bench.parse_row("moco_none=none:{MOCO}"), bench.parse_row("mr=replace:{MOCO},"
                                                                                       "pretrain.synthetic.replace_prob=1.0")])
    assert planned[1]["control"] == "moco_none"


def test_none_time_epochs_from_given_times(bench):
    assert bench.none_time_epochs(40, 300.0, 490.0) == 65  # round(40 x 490 / 300) = round(65.33)
    assert bench.none_time_epochs(40, 300.0, 303.0) == 40 and bench.none_time_epochs(1, 300.0, 100.0) == 1
    here = {"cpu": {"key": "X"}}

    def timed(row, mode, seed, seconds, **extra):
        return {**_run(row, mode, seed, 0.8, role=extra.pop("role", None), **here), "pretrain_seconds": seconds, **extra}

    runs = [timed("none", "none", s, t) for s, t in enumerate([290.0, 300.0, 310.0])]
    runs += [timed("multipos", "multipos", s, t) for s, t in enumerate([480.0, 490.0, 500.0])]
    runs += [timed("clsp_real", "clsp", s, 400.0, role="control") for s in range(3)]
    runs += [timed("clsp", "clsp", 0, 900.0)]  # one seed only: not a mean over the same seeds
    runs += [{**timed("multipos", "multipos", s, 999.0), "cpu": {"key": "Y"}} for s in range(3)]  # another CPU
    runs += [{**timed("mochi", "mochi", s, 999.0), "method": "mocov2plus"} for s in range(3)]  # not SimCLR
    matched = bench.time_match(runs, [0, 1, 2], "X", 5000, 40)
    assert matched["t_none"] == 300.0 and matched["t_slowest"] == 490.0 and matched["slowest_row"] == "multipos"
    assert matched["epochs"] == 65 and matched["seeds"] == [0, 1, 2] and matched["statistic"] == "median"
    assert bench.time_match(runs, [0, 1, 2, 3], "X", 5000, 40) is None  # none lacks seed 3


def test_none_time_is_not_set_by_one_run_that_shared_the_machine(bench):
    # One seed of none ran beside other work (3x its time): the mean would give 40 x 490 / 500 = 39 epochs.
    here = {"cpu": {"key": "X"}}
    runs = [{**_run("none", "none", s, 0.8, **here), "pretrain_seconds": t} for s, t in enumerate([290.0, 300.0, 910.0])]
    runs += [{**_run("multipos", "multipos", s, 0.8, **here), "pretrain_seconds": t} for s, t in enumerate([480.0, 490.0, 500.0])]
    matched = bench.time_match(runs, [0, 1, 2], "X", 5000, 40)
    assert matched["t_none"] == 300.0 and matched["t_slowest"] == 490.0 and matched["epochs"] == 65


def test_rows_of_two_cpus_are_never_paired(bench):
    amd, intel = {"cpu": {"key": "AMD-EPYC+bf16"}}, {"cpu": {"key": "Intel-Xeon+nobf16"}}
    none_amd = [_run("none", "none", s, 0.80, **amd) for s in range(3)]
    row_intel = [_run("multipos", "multipos", s, 0.83, **intel) for s in range(3)]
    assert bench.paired_summary(none_amd + row_intel) == {}
    none_intel = [_run("none", "none", s, 0.81, **intel) for s in range(3)]
    summary = bench.paired_summary(none_amd + row_intel + none_intel)
    assert set(summary) == {"n5000_e40/multipos@Intel-Xeon+nobf16"}
    assert summary["n5000_e40/multipos@Intel-Xeon+nobf16"]["linear_top1"]["differences_points"] == pytest.approx([2.0] * 3)
    # Rows written before the CPU was recorded are the AMD machine's.
    legacy = [_run("none", "none", s, 0.80) for s in range(3)] + [_run("clsp", "clsp", s, 0.82) for s in range(3)]
    assert summary_cpu(bench, legacy) == {"AMD-EPYC+bf16"}


def summary_cpu(bench, runs):
    return {entry["cpu"] for entry in bench.paired_summary(runs).values()}


def test_summary_against_none_its_control_and_none_time(bench):
    none = [_run("none", "none", s, 0.80 + 0.01 * s) for s in range(3)]
    control = [_run("multipos_real", "multipos", s, 0.805 + 0.01 * s, role="control") for s in range(3)]
    row = [_run("multipos", "multipos", s, 0.80 + 0.01 * s + d, "g" * 16, control="multipos_real")
           for s, d in enumerate([0.02, 0.025, 0.03])]
    timed = [_run("none_time", "none", s, 0.81 + 0.01 * s, role="none_time") for s in range(3)]
    summary = bench.paired_summary(none + control + row + timed)
    entry = summary["n5000_e40/multipos"]
    assert entry["linear_top1"]["differences_points"] == pytest.approx([2.0, 2.5, 3.0])
    assert entry["against_control"]["against"] == "multipos_real"
    assert entry["against_control"]["linear_top1"]["differences_points"] == pytest.approx([1.5, 2.0, 2.5])
    assert entry["against_none_time"]["linear_top1"]["differences_points"] == pytest.approx([1.0, 1.5, 2.0])
    low, high = stats.t.interval(0.95, 2, loc=2.0, scale=stats.sem([1.5, 2.0, 2.5]))
    assert entry["against_control"]["linear_top1"]["low"] == pytest.approx(low, rel=1e-4)
    assert entry["target_met_vs_control"]
    # The control and none_time are rows against none too; none_time is no baseline.
    assert summary["n5000_e40/multipos_real"]["linear_top1"]["mean"] == pytest.approx(0.5)
    assert summary["n5000_e40/none_time"]["role"] == "none_time" and "against_none_time" not in summary["n5000_e40/none_time"]
    assert "multipos_real" in bench.table({"paired": summary})


def test_none_all_trains_on_every_image_at_the_budget_steps(bench):
    row = bench.none_all_row(5000, 40, 250, 2.0)
    assert row["overrides"] == ["data.subset=60000", "pretrain.epochs=3", "pretrain.optimizer.warmup_epochs=0.1667"]
    assert row["steps"] == {"budget": 800, "none_all": 720}  # 3 x 240: the nearest whole number of epochs


def test_the_stored_amd_rows_stay_readable(bench):
    import json

    stored = json.loads((BENCHMARKS / "results" / "synthetic_gain.json").read_text())
    before = stored["paired"]
    unrecorded = [key for key, run in stored["runs"].items() if "cpu" not in run]
    bench.upgrade_results(stored)
    # Every run is keyed by its CPU; those written before the CPU was recorded are the AMD machine's.
    assert all(key.endswith("/" + run["cpu"]["key"]) for key, run in stored["runs"].items())
    assert all(f"{key}/AMD-EPYC+bf16" in stored["runs"] for key in unrecorded if key.count("/") == 3)
    assert any(key.endswith("/AMD-EPYC+bf16") for key in stored["runs"])
    after = bench.paired_summary(list(stored["runs"].values()))
    assert set(after) == set(before)
    for key, entry in before.items():
        for field in ("linear_top1", "knn_top1", "seeds", "against", "target_met"):
            assert after[key][field] == entry[field], (key, field)


def test_a_pretraining_cut_short_starts_again_so_its_time_is_whole(bench, tmp_path, capsys):
    """A killed benchmark's run would resume from its checkpoint and time only the rest: it is moved aside."""
    from synthpos.stages import BY_NAME, prepare_stage, stage_status

    args = Namespace(generator="builtin:fashion_mnist", work=tmp_path / "work", smoke=False, generation_seed=0)
    config, _ = bench.run_config(args, bench.parse_row("none"), 0, 5000, 40)
    stage = BY_NAME["pretrain"]
    prepare_stage(stage, config)  # the starting record, as a run killed mid-way leaves it
    (stage.output(config) / "checkpoints").mkdir(parents=True)
    (stage.output(config) / "checkpoints" / "last.ckpt").write_bytes(b"half a run")
    assert stage_status(stage, config).state == "resume"
    bench._start_afresh(config)
    assert stage_status(stage, config).state == "new"
    kept = config.run_dir / "previous" / "pretrain" / stage.output(config).name / "checkpoints" / "last.ckpt"
    assert kept.read_bytes() == b"half a run"
    assert "starts again from the first step" in capsys.readouterr().out
    bench._start_afresh(config)  # nothing there: nothing moves
    assert kept.is_file() and not stage.output(config).exists()
    # A finished pretraining (whole backbone, complete record) stays where it is: the benchmark's force redoes it.
    from synthpos.models.backbones import build_backbone, save_backbone
    from synthpos.stages import expected_record, write_record

    prepare_stage(stage, config)
    backbone = config.pretrain_dir / "backbone.pt"
    save_backbone(build_backbone(config.pretrain.backbone, 1), config.pretrain.backbone, 1, backbone)
    write_record(stage, config, expected_record(stage, config), complete=True)
    assert stage_status(stage, config).state == "done"
    before = backbone.read_bytes()
    bench._start_afresh(config)
    assert stage_status(stage, config).state == "done" and backbone.read_bytes() == before
