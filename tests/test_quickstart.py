"""The quick start end to end, at tiny scale, through the real console script."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthpos.config import DataConfig
from synthpos.data import load_dataset
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.generators.diffusion import load_generator, resolve_generator_dir

SYNTHPOS = str(Path(sys.executable).with_name("synthpos"))
TINY = [
    "data.subset=40", "generate.num_steps=2", "generate.shard_size=20", "generate.batch_size=40",
    "fidelity.train_images=512", "fidelity.epochs=1", "pretrain.epochs=1", "pretrain.batch_size=20",
    "pretrain.backbone.width=8", "pretrain.projector_hidden_dim=32", "pretrain.projector_out_dim=16",
    "evaluate.max_train=300", "evaluate.linear.epochs=2", "evaluate.knn_k=10",
]


def test_shipped_generator_loads():
    unet, scheduler = load_generator(resolve_generator_dir("builtin:fashion_mnist"))
    assert unet.config.sample_size == 28 and unet.config.in_channels == 1
    assert scheduler.config.num_train_timesteps == 1000


@pytest.mark.slow
def test_quickstart_tiny(tmp_path):
    run_dir = tmp_path / "qs"
    args = [SYNTHPOS, "quickstart", "--run-dir", str(run_dir), "-q"]
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(args + ["--control"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    synthetic, control_name = "SimCLR + multipos positives", "SimCLR + multipos control (anchor copies)"
    for row in ("raw pixels", "random init", "SimCLR", synthetic, control_name):
        assert row in out
    # The control's store has its own header, before its progress bar and the pretraining.
    marks = [" ".join(out.split()).find(m) for m in ("3/5", "the control's store: 2 copies of each anchor", "4/5 pretraining SimCLR")]
    assert -1 < marks[0] < marks[1] < marks[2], (marks, out[:3000])
    assert "fidelity of the synthetic positives" in out
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["rows"]) == {"raw pixels", "random init", "SimCLR", synthetic, control_name}
    assert results["mode"] == "multipos"
    assert results["folders"] == {"random init": "random_init", "SimCLR": "simclr", synthetic: "multipos_simclr",
                                  control_name: "multipos_simclr_control"}
    # The synthetic row trained with the recipe's mode, SimCLR with none.
    for folder, mode in (("simclr", "none"), ("multipos_simclr", "multipos"), ("multipos_simclr_control", "multipos")):
        saved = yaml.safe_load((run_dir / folder / "config.yaml").read_text())
        assert saved["pretrain"]["synthetic"]["mode"] == mode
    # The control trained on a store of the anchors themselves (the same mode, nothing generated), and its
    # backbone is its own.
    control = SyntheticStore.open(run_dir / "control_store")
    assert control.manifest["generator"]["kind"] == "anchors"
    anchors = load_dataset(DataConfig(name="fashion_mnist", subset=40), "train").images
    assert np.array_equal(np.load(control.shard_path(0)), np.repeat(anchors[:20, None], 2, axis=1))
    assert (run_dir / "multipos_simclr_control" / "backbone.pt").read_bytes() != \
        (run_dir / "multipos_simclr" / "backbone.pt").read_bytes()
    assert f"{synthetic} minus its control" in " ".join(out.split())
    for scores in results["rows"].values():
        assert 0.0 <= scores["knn_top1"] <= 1.0 and 0.0 <= scores["linear_top1"] <= 1.0
    # Raw pixels on Fashion-MNIST are far above chance (10%) even with 300 training images.
    assert results["rows"]["raw pixels"]["knn_top1"] > 0.5
    assert results["fidelity"]["anchors"] == 40 and results["fidelity"]["candidates"] == 2
    # The positives' diversity and memorisation are measured and printed (against all 60,000 training images).
    assert "diversity:" in out and "memorisation:" in out
    # The recipe's sampling point is named with its reason, and the diversity floors are judged.
    flat = " ".join(out.split())  # rich wraps long lines at spaces
    assert "strength 0.7, chosen from the frontier" in flat and "the floors (pixel >= 0.20" in flat
    assert results["sampling"]["strength"] == 0.7 and results["sampling"]["sampler"] == "dpmsolver++"
    assert results["memorisation"]["training_images"] == 60000
    assert 0.0 <= results["memorisation"]["closer_to_another_training_image"] <= 1.0
    assert results["diversity"]["pixel"]["between_same_class_real_images"] < results["diversity"]["pixel"]["between_real_images"]
    assert (run_dir / "positives.png").stat().st_size > 1000
    # The report finds every encoder's folder from results.json.
    from synthpos.report.collect import collect_run

    entries = {e["name"]: e for e in collect_run(run_dir)["entries"]}
    assert entries[synthetic]["backbone"] is not None and entries[control_name]["backbone"] is not None
    # A second run, without --control, reuses every finished piece (nothing trained or generated again), has no
    # control row, and says where the control's figure is.
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((run_dir / "results.json").read_text())
    assert not [k for k in second["timings"] if k.startswith("pretrain_")]
    assert set(second["rows"]) == {"raw pixels", "random init", "SimCLR", synthetic}
    assert second["rows"][synthetic] == results["rows"][synthetic]
    assert "synthpos quickstart --control adds the control's row" in " ".join(again.stdout.split())


def test_builtin_names_resolve_to_the_shipped_folders():
    from synthpos.generators.clsp_generator import generator_id

    small, new = resolve_generator_dir("builtin:fashion_mnist_small"), resolve_generator_dir("builtin:fashion_mnist")
    assert small.name == "fashion_mnist_small" and new.name == "fashion_mnist"
    # Two generators, not one under two names: the old stays comparable with the new.
    assert generator_id(small) != generator_id(new)
    old_unet, _ = load_generator(small)
    new_unet, _ = load_generator(new)
    assert tuple(old_unet.config.block_out_channels) == (16, 32, 64)
    assert tuple(new_unet.config.block_out_channels) == (32, 64, 128)
    # The new one's training is recorded beside its weights (config, command, the checks' curve).
    record = json.loads((new / "training.json").read_text())
    assert record["config"] == "configs/fashion_mnist/generator_cpu.yaml"
    assert [c["step"] for c in record["checks"]] == sorted(c["step"] for c in record["checks"])


def test_train_generator_in_the_quick_start_is_the_shipped_generators_recipe():
    """``quickstart --train-generator`` trains what ships as builtin:fashion_mnist, to its step count
    (not the paper-scale UNet of the defaults)."""
    from synthpos.config import load_config
    from synthpos.quickstart import quickstart_recipe

    repo = Path(__file__).resolve().parents[1]
    quick = load_config(quickstart_recipe()).train_generator
    shipped = load_config(repo / "configs" / "fashion_mnist" / "generator_cpu.yaml").train_generator
    record = json.loads((resolve_generator_dir("builtin:fashion_mnist") / "training.json").read_text())
    assert quick.max_steps == record["steps"]
    assert quick.check is None  # the quick start judges its positives once, after generating them
    skip = {"max_steps", "check"}
    assert quick.model_dump(exclude=skip) == shipped.model_dump(exclude=skip)
    unet, _ = load_generator(resolve_generator_dir("builtin:fashion_mnist"))
    assert list(unet.config.block_out_channels) == quick.unet.block_out_channels


def test_the_recipes_reason_is_printed_only_for_the_point_it_was_measured_at():
    from synthpos.config import load_config
    from synthpos.stages.quickstart import quickstart_recipe
    from synthpos.stages.quickstart_summary import sampling_reason as _sampling_reason

    def reason(*overrides):
        return _sampling_reason(load_config(quickstart_recipe(), list(overrides)).generate)

    assert "chosen from the frontier" in reason()
    assert reason("generate.strength=1.0").startswith("strength 1.0: the paper's sampling")
    # Another generator or w at the same strength: the measured 68% would not be its figure.
    for other in ("generate.generator=builtin:fashion_mnist_small", "generate.interpolation_weight=0.3"):
        assert "chosen from the frontier" not in reason(other) and "noised 70% of the way" in reason(other)


def test_the_recipes_reason_compares_the_point_as_numbers():
    from synthpos.config import load_config
    from synthpos.stages.quickstart import quickstart_recipe
    from synthpos.stages.quickstart_summary import sampling_reason as _sampling_reason

    def reason(*overrides):
        return _sampling_reason(load_config(quickstart_recipe(), list(overrides)).generate)

    # 1 - 0.3 (0.7000000000000001) is the recipe's strength though its text is not "0.7"; 0.71 is not.
    assert "chosen from the frontier" in reason(f"generate.strength={1 - 0.3!r}")
    assert "chosen from the frontier" not in reason("generate.strength=0.71")


def test_the_recipes_figures_are_those_measured_for_the_shipped_weights():
    """The 68% / 56% the quick start prints are frontier_1000.json's for the weights shipped now:
    shipping new weights as builtin:fashion_mnist fails here until the point is measured for them."""
    from synthpos.generators.clsp_generator import generator_id
    from synthpos.quickstart import RECIPE_POINT

    shipped = generator_id(resolve_generator_dir(RECIPE_POINT["generator"]))
    assert shipped == RECIPE_POINT["generator_id"]
    frontier = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "frontier_1000.json"
    measured = {p["strength"]: round(100 * p["fidelity"]["fidelity"]) for p in json.loads(frontier.read_text())["points"]
                if p["record"]["generator_sha256"] == shipped and p["w"] == RECIPE_POINT["interpolation_weight"]
                and p["anchors"] == 500}
    assert measured[RECIPE_POINT["strength"]] == RECIPE_POINT["fidelity"]
    assert measured[1.0] == RECIPE_POINT["paper_fidelity"]


def test_the_recipes_reason_is_not_printed_for_other_weights_under_its_name(tmp_path, monkeypatch):
    import shutil

    from synthpos.config import load_config
    from synthpos.stages.quickstart import quickstart_recipe
    from synthpos.stages.quickstart_summary import sampling_reason

    g = load_config(quickstart_recipe()).generate
    assert "chosen from the frontier" in sampling_reason(g)
    other = tmp_path / "fashion_mnist"
    shutil.copytree(resolve_generator_dir("builtin:fashion_mnist"), other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # other weights, whatever the last byte was
    monkeypatch.setattr("synthpos.generators.diffusion.resolve_generator_dir", lambda name: other)
    assert "chosen from the frontier" not in sampling_reason(g)


def test_the_controls_figures_are_the_benchmarks_paired_numbers():
    """The gain over the control that a quick start without --control prints is the paired summary of
    benchmarks/results/synthetic_gain.json for those weights, mode and settings, to the printed digits; the
    settings it is printed for are those the benchmark's runs were made with."""
    from synthpos.config import load_config
    from synthpos.stages.quickstart import quickstart_recipe
    from synthpos.stages.quickstart_summary import BENCHMARK_CONTROLS

    gain = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "synthetic_gain.json").read_text())
    recipe = load_config(quickstart_recipe())  # the benchmark's base config: what its rows do not override
    record_keys = {"generate.clsp.sampler": "sampler", "generate.clsp.num_steps": "num_steps",
                   "generate.clsp.interpolation_weight": "interpolation_weight", "generate.clsp.clip_x0": "clip_x0"}
    for point in BENCHMARK_CONTROLS:
        paired = gain["paired"][point["key"]]
        row, cpu = point["key"].split("/")[1].split("@")[0], paired["cpu"]
        assert paired["generator_id"] == point["generator_id"]
        vs = paired["against_control"]
        assert vs["seeds"] == list(range(point["seeds"]))
        linear = vs["linear_top1"]
        assert point["linear"] == tuple(round(linear[k], 2) for k in ("mean_points", "low", "high"))
        assert point["knn"] == round(vs["knn_top1"]["mean_points"], 2)
        same_time = paired["against_none_time"]
        assert same_time["seeds"] == vs["seeds"]
        assert point["same_time"] == tuple(round(same_time["linear_top1"][k], 2) for k in ("mean_points", "low", "high"))
        matched = gain["time_matched"][f"n5000_e40/{cpu}"]
        assert point["same_time_epochs"] == matched["epochs"] and matched["seeds"] == vs["seeds"]
        runs = [r for key, r in gain["runs"].items() if r["row"] == row and key.endswith(cpu)
                and r["generator_id"] == point["generator_id"] and r["subset"] == 5000]
        assert sorted(r["seed"] for r in runs) == vs["seeds"]
        settings = point["settings"]
        for r in runs:
            assert r["mode"] == point["mode"] and r["method"] == settings["pretrain.method"]
            assert point["budget"] == f"{r['subset']:,} images x {r['epochs']} epochs"
            record = r["generator"]  # the store's record: strength is written only when it is not 1
            assert record["precision"] == "bf16" and "generation bf16, pretraining fp32" in point["cpu"]
            assert math.isclose(record.get("strength", 1.0), settings["generate.clsp.strength"])
            for key, field in record_keys.items():
                assert record[field] == settings[key], key
            # candidates and positives: the recipe's, which the row does not override
            assert not [o for o in r["overrides"] if o.split("=")[0] in ("generate.candidates", "pretrain.synthetic.positives")]
        assert recipe.generate.candidates == settings["generate.candidates"]
        assert recipe.pretrain.synthetic.positives == settings["pretrain.synthetic.positives"]
        assert recipe.data.name == settings["data.name"]


def test_the_controls_figure_is_printed_only_for_its_settings():
    from synthpos.config import load_config
    from synthpos.stages.quickstart import quickstart_recipe
    from synthpos.stages.quickstart_summary import BENCHMARK_CONTROLS, control_reference

    # The recipe as it ships is a measured point: a plain `synthpos quickstart` prints the benchmark's control figure.
    recipe = load_config(quickstart_recipe())
    assert "linear-fast points (95% t interval" in control_reference(recipe, recipe.pretrain.synthetic.mode)
    for point in BENCHMARK_CONTROLS:
        at_point = [f"{k}={v}" for k, v in point["settings"].items()]

        def line(*overrides, mode=point["mode"]):
            return control_reference(load_config(quickstart_recipe(), at_point + list(overrides)), mode)

        printed = line()
        assert f"{point['linear'][0]:+.2f} linear-fast points" in printed and f"paired over {point['seeds']} seeds" in printed
        assert f"given its pretraining time ({point['same_time_epochs']} epochs) {point['same_time'][0]:+.2f}" in printed
        measured = {p["settings"]["generate.clsp.strength"] for p in BENCHMARK_CONTROLS if p["mode"] == point["mode"]}
        unmeasured = next(x for x in (0.5, 0.55, 0.6, 0.65) if x not in measured)
        for other in (f"generate.clsp.strength={unmeasured}", "generate.generator=builtin:fashion_mnist_small",
                      "generate.generator=null", "generate.clsp.interpolation_weight=0.3", "generate.candidates=3",
                      "pretrain.synthetic.positives=2", "generate.clsp.num_steps=20", "generate.clsp.clip_x0=false"):
            moved = line(other)
            assert "linear-fast points" not in moved and "--control adds the control's row" in moved, other
        # Another mode at the same settings: not its figure.
        assert "linear-fast points" not in line(mode="clsp")


@pytest.mark.parametrize("mode", ["none", "mochi"])
def test_a_mode_that_reads_no_positives_is_one_line(tmp_path, mode):
    proc = subprocess.run([SYNTHPOS, "quickstart", "--run-dir", str(tmp_path / "qs"), "--set",
                           f"pretrain.synthetic.mode={mode}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert f"pretrain.synthetic.mode={mode} reads none; set one that does (" in proc.stderr
    assert "multipos" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "qs").exists()
