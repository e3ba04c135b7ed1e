"""Every benchmark in benchmarks/ runs at toy size (``--smoke``), so an import or API change cannot
break one unnoticed. Each runs in this process (imports are paid once) and writes its JSON into
tmp_path; the test checks the machine section and that every compared pipeline or variant ran."""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The benchmarks set torch's thread count for the process; later tests get theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(name: str):
    """benchmarks/<name>.py as a module (its folder on sys.path for ``_machine`` and ``_smoke``)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def check_machine(report: dict) -> None:
    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpu_model"] != "unknown"
    assert isinstance(machine["cpu_flags"], list)
    if Path("/proc/cpuinfo").is_file() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "avx2" in machine["cpu_flags"]
    assert machine["torch_threads"] >= 1 and machine["nproc"] >= 1
    assert len(machine["load_average_at_start"]) == 3


def smoke(name: str, tmp_path: Path, *extra: str):
    """Run benchmarks/<name>.py with --smoke into tmp_path; return the module and its checked JSON."""
    bench = load(name)
    out = tmp_path / f"{name}.json"
    bench.main(["--smoke", "--out", str(out), *extra])
    report = json.loads(out.read_text())
    check_machine(report)
    return bench, report


def test_every_benchmark_has_a_smoke_test():
    # gpu_check has its own test (tests/test_gpu_check.py: --cpu, through its shell script).
    scripts = {p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_")} - {"gpu_check"}
    tested = {name.removeprefix("test_").removesuffix("_smoke") for name in globals() if name.endswith("_smoke")}
    assert scripts <= tested, f"benchmarks without a smoke test here: {sorted(scripts - tested)}"


def test_pretrain_throughput_smoke(tmp_path):
    bench, report = smoke("pretrain_throughput", tmp_path)
    precisions = report["settings"]["precisions"]
    assert "fp32" in precisions
    ran = {(r["pipeline"], r["precision"]) for r in report["results"]}
    assert ran == {(p, q) for p in bench.PIPELINES for q in precisions}
    assert all(r["images_per_s"] > 0 and r["end_to_end_images_per_s"] > 0 for r in report["results"])
    ratios = report["ratios"]["fp32"]
    for key in ("synthpos_over_lightly", "clsp_step_over_simclr_step", "multipos_step_over_simclr_step",
                "synthpos_over_model_only"):
        assert ratios[key] > 0


def test_generation_smoke(tmp_path):
    bench, report = smoke("generation", tmp_path)
    assert [r["variant"] for r in report["results"]] == [v.name for v in bench.variants(2)]
    for r in report["results"]:
        assert r["candidates"] >= 1 and r["candidates_per_s"] > 0 and 0 <= r["fidelity"] <= 100
        assert r["record"]["num_steps"] == 1  # smoke: each variant as itself, for one step


def test_frontier_smoke(tmp_path):
    bench, report = smoke("frontier", tmp_path, "--work", str(tmp_path / "work"))
    points = {(p["w"], p["strength"]) for p in report["points"]}
    assert points == {(0.1, 1.0), (0.1, 0.5)}
    assert all(0 <= p["fidelity"]["fidelity"] <= 1 for p in report["points"])
    assert (tmp_path / "frontier.png").is_file()
    # Over-generation and selection: 3 made per anchor, the K = 2 nearest kept (a smoke run starts its JSON anew).
    bench.main(["--smoke", "--out", str(tmp_path / "frontier.json"), "--work", str(tmp_path / "work"), "--select", "3"])
    report = json.loads((tmp_path / "frontier.json").read_text())
    selected = [p for p in report["points"] if "selection" in p]
    assert selected == report["points"] and {(p["w"], p["strength"]) for p in selected} == points
    key = json.loads(selected[0]["key"])
    assert selected[0]["selection"]["selector_sha256"] == key["selector"]
    plain = Namespace(**{k: v for k, v in key.items() if k not in ("generator", "w", "strength", "select", "selector")},
                      select=0)
    assert bench.point_key(key["generator"], key["w"], key["strength"], plain) != selected[0]["key"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--select", "2", "--candidates", "2"])  # keeps as many as it makes
    # The embedding-conditioned generator's neighbour blend: the pool's neighbours fitted, the dial in the record.
    bench.main(["--smoke", "--out", str(tmp_path / "blend.json"), "--work", str(tmp_path / "work"), "--generators",
                "builtin:fashion_mnist_conditioned", "--neighbour-blend", "0.5"])
    blended = json.loads((tmp_path / "blend.json").read_text())["points"]
    assert len(blended) == 2 and all(p["neighbour_blend"] == 0.5 and p["record"]["neighbour_blend"] == 0.5
                                     and json.loads(p["key"])["neighbour_blend"] == 0.5 for p in blended)
    with pytest.raises(SystemExit):
        bench.parse_args(["--selector", "backbone.pt"])  # without --select
    assert all(p["selection"]["made"] == 3 and p["selection"]["kept"] == 2 and json.loads(p["key"])["select"] == 3
               and json.loads(p["key"])["selector"] for p in selected)


def test_store_verify_smoke(tmp_path):
    bench, report = smoke("store_verify", tmp_path, "--dir", str(tmp_path))
    assert set(report["stores"]) == set(bench.SMOKE) == set(bench.STORES)
    assert set(report["hash_mib_per_s"]) == set(bench.ALGORITHMS)
    assert all(s["verify_s"] > 0 for s in report["stores"].values())


def test_fault_sweep_smoke(tmp_path):
    bench, report = smoke("fault_sweep", tmp_path, "--work", str(tmp_path / "work"))
    stage = report["stages"]["import-store"]
    assert report["all_passed"] and stage["points"] == stage["passed"] == 1
    assert stage["trials"][0]["identical"] and stage["compared"]


def test_methods_fashion_mnist_smoke(tmp_path):
    bench, report = smoke("methods_fashion_mnist", tmp_path, "--work", str(tmp_path / "work"))
    runs = report["runs"].values()
    assert {r["method"] for r in runs} == set(bench.METHODS)
    assert {r["mode"] for r in runs} == set(bench.MODES)
    assert all(0 <= r["knn_top1"] <= 1 and 0 <= r["linear_top1"] <= 1 for r in runs)


def test_synthetic_gain_smoke(tmp_path):
    bench, report = smoke("synthetic_gain", tmp_path, "--work", str(tmp_path / "work"))
    planned = {row["name"]: row for row in bench.plan_rows(list(map(bench.parse_row, bench.DEFAULT_ROWS)))}
    runs = report["runs"].values()
    # every row, its control on the anchors store, the all-data and the time-matched SimCLR
    assert {r["row"] for r in runs} == set(planned) | {"none_all", "none_time"}
    assert {r["row"] for r in runs if r["role"] == "control"} == {"clsp_real", "multipos_real", "multipos_weakaug_real"}
    assert all(r["generator"] == {"kind": "anchors", "candidates": 2} for r in runs if r["role"] == "control")
    cpu = report["machine"]["cpu_model"]
    assert all(r["cpu"]["model"] == cpu and key.endswith("/" + r["cpu"]["key"]) for key, r in report["runs"].items())
    # every row but the baselines is paired with its method's own run without synthetic data ...
    baselines = {n for n, row in planned.items() if row["role"] == "baseline"}
    assert {key.split("/", 1)[1] for key in report["paired"]} == (set(planned) | {"none_all", "none_time"}) - baselines
    # ... and, with a store, with its control; SimCLR rows with none_time
    paired = {key.split("/", 1)[1]: entry for key, entry in report["paired"].items()}
    assert paired["multipos"]["against_control"]["against"] == "multipos_real"
    assert paired["clsp_s0.4"]["against_control"]["against"] == "clsp_real"
    assert paired["replace"]["against_control"]["against"] == "none"
    assert paired["multipos_weakaug"]["against_control"]["against"] == "multipos_weakaug_real"
    assert paired["multipos"]["against_none_time"]["against"] == "none_time" and "against_none_time" not in paired["mochi"]
    matched = next(iter(report["time_matched"].values()))
    assert matched["cpu"]["model"] == cpu and len(matched["load_average"]) == 3
    slowest = [r["pretrain_seconds"] for r in runs if r["row"] == matched["slowest_row"]]  # one seed here
    assert matched["t_slowest"] == pytest.approx(slowest[0], abs=0.051) and matched["t_none"] > 0
    none_time = next(r for r in runs if r["row"] == "none_time")
    assert none_time["pretrain_epochs"] == matched["epochs"] == bench.none_time_epochs(1, matched["t_none"], matched["t_slowest"])
    none_all = next(r for r in runs if r["row"] == "none_all")
    assert none_all["train_images"] == 256 and none_all["steps"]["none_all"] >= none_all["steps"]["budget"]


def test_generator_training_cost_smoke(tmp_path):
    bench, report = smoke("generator_training_cost", tmp_path)
    assert {(r["unet"], r["precision"]) for r in report["rows"]} == {(u[0], p) for u in bench.UNETS for p in ("fp32", "bf16")}
    paper = next(r for r in report["rows"] if r["recipe"] == "configs/cifar10/generator.yaml")
    # the recipe's own UNet and steps, not a stand-in
    assert paper["unet_config"]["block_out_channels"] == [128, 256, 256, 256] and paper["recipe_max_steps"] == 800000
    assert all(r["train_images_per_s"] > 0 for r in report["rows"])


def test_frontier_draws_each_generators_weights_as_their_own_series():
    """Old weights of a name (a generator that has since been replaced) are not mixed into the new one's curve."""
    bench = load("frontier")

    def point(name, gid, w):
        return {"generator": name, "record": {"generator_sha256": gid}, "w": w}

    points = [point("builtin:fashion_mnist", "aaaa1111bbbb", 0.1), point("builtin:fashion_mnist", "cccc2222dddd", 0.1),
              point("builtin:fashion_mnist", "cccc2222dddd", 0.3), point("builtin:fashion_mnist_small", "eeee", 0.1)]
    series = bench.generator_series(points)
    assert {label: len(s) for label, s in series.items()} == {
        "fashion_mnist (weights aaaa1111)": 1, "fashion_mnist (weights cccc2222)": 2, "fashion_mnist_small": 1}
    assert all(len({p["record"]["generator_sha256"] for p in s}) == 1 for s in series.values())


def test_frontier_grid_follows_the_generators_conditioning(tmp_path):
    """Guidance is swept only for conditional generators, embedding noise only for embedding-conditioned ones, and a
    point at the defaults keeps the key it had before those dials existed (so measured points are not redone)."""
    bench = load("frontier")
    args = bench.parse_args(["--weights", "0.1", "--strengths", "1,0.7", "--guidance", "1,2", "--condition-noise", "0,0.2",
                             "--neighbour-blend", "0,0.3,0.6"])
    for name, unet_config in (("plain", {}), ("labels", {"num_class_embeds": 11}), ("embedding", {"class_embed_type": "identity"})):
        (tmp_path / name / "unet").mkdir(parents=True)
        (tmp_path / name / "unet" / "config.json").write_text(json.dumps(unet_config))
    def dials(name):
        return [(d["guidance"], d["condition_noise"], d["neighbour_blend"]) for _, _, d in bench.sampling_grid(tmp_path / name, args)]

    assert dials("plain") == [(1.0, 0.0, 0.0)] * 2
    assert set(dials("labels")) == {(1.0, 0.0, 0.0), (2.0, 0.0, 0.0)}
    assert len(dials("embedding")) == 2 * 2 * 2 * 3 and {b for _, _, b in dials("embedding")} == {0.0, 0.3, 0.6}
    old = json.dumps({"generator": "g", "w": 0.1, "strength": 1.0, "sampler": args.sampler, "steps": args.steps,
                      "clip_x0": args.clip_x0, "anchors": args.anchors, "candidates": args.candidates, "seed": args.seed},
                     sort_keys=True)
    assert bench.point_key("g", 0.1, 1.0, args) == old
    assert bench.point_key("g", 0.1, 1.0, args, {"guidance": 1.0, "condition_noise": 0.0, "neighbour_blend": 0.0}) == old
    keys = {bench.point_key("g", 0.1, 1.0, args, d) for d in ({"guidance": 2.0}, {"condition_noise": 0.2}, {"neighbour_blend": 0.3})}
    assert old not in keys and len(keys) == 3


def test_data_path_smoke(tmp_path):
    """Both pipelines (streamed synthpos, torchvision ImageFolder + transforms.v2) on stand-in photographs."""
    from PIL import Image

    bench = load("data_path")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in bench.PHOTOS[:4]:  # scikit-image's wheel is not needed for a smoke run
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(photos / name)
    report = bench.main(["--smoke", "--photos", str(photos), "--out", str(tmp_path / "data_path.json")])
    assert json.loads((tmp_path / "data_path.json").read_text())["summary"] == report["summary"]
    assert {(r["pipeline"], r["images"]) for r in report["results"]} == {(p, n) for p in bench.PIPELINES for n in (8, 32)}
    assert all(r["images_per_s"] > 0 and r["peak_pss_sum_mib"] > 0 for r in report["results"])
    assert report["summary"]["speedup_over_torchvision"]["1"] > 0


def test_frontier_draws_beside_it_only_points_of_the_same_protocol(tmp_path):
    """--beside: another JSON's points join the plot only when measured like this run's (anchors, K, sampler,
    steps, clipping, seed) at one of its interpolation weights."""
    bench = load("frontier")
    args = bench.parse_args(["--anchors", "300", "--weights", "0.1", "--beside", str(tmp_path / "other.json")])

    def point(w, **change):
        key = {"generator": "g", "w": w, "strength": 1.0, "sampler": "dpmsolver++", "steps": 10, "clip_x0": True,
               "anchors": 300, "candidates": 2, "seed": 0, **change}
        return {"key": json.dumps(key, sort_keys=True), "w": w, "tag": json.dumps(change, sort_keys=True)}

    kept = [point(0.1), point(0.1, strength=0.7)]
    dropped = [point(0.3), point(0.1, anchors=500), point(0.1, steps=20), point(0.1, candidates=4), point(0.1, seed=1)]
    (tmp_path / "other.json").write_text(json.dumps({"points": kept + dropped}))
    assert [p["tag"] for p in bench.beside_points(args)] == [p["tag"] for p in kept]


def test_frontier_selection_keeps_the_candidates_nearest_their_anchor():
    """--select: of M candidates the K nearest their anchor in the selector's features, checked against
    scikit-learn's cosine similarity, nearest first."""
    from sklearn.metrics.pairwise import cosine_similarity

    bench = load("frontier")
    rng = np.random.default_rng(0)
    anchors = rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    candidates = rng.integers(0, 256, (3, 5, 4, 4, 1), dtype=np.uint8)
    projection = rng.standard_normal((16, 6))

    def embed(images):
        f = images.reshape(len(images), -1).astype(np.float64) @ projection
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    kept, similarity = bench.keep_nearest(anchors, candidates, 2, embed)
    for i in range(3):
        sims = cosine_similarity(anchors[i].reshape(1, -1) @ projection, candidates[i].reshape(5, -1) @ projection)[0]
        best = np.argsort(-sims)[:2]
        np.testing.assert_array_equal(kept[i], candidates[i][best])
        np.testing.assert_allclose(similarity[i], sims[best], rtol=1e-9)
