"""What the quick start prints: why it samples where it does, and its results table.

The sampling reason and its figures are printed only for the point they were measured at
(:data:`RECIPE_POINT`); :func:`print_table` is the table of encoders and the lines on the
positives' fidelity, diversity and memorisation.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from synthpos.config import GeneratorCheckConfig, RunConfig
from synthpos.errors import SynthposError
from synthpos.evaluation.generator_check import floors_met
from synthpos.report.collect import LEGACY_FOLDERS

console = Console()

def synthetic_row(mode: str) -> str:
    """The table's row of SimCLR with the generated positives of ``mode``."""
    return f"SimCLR + {mode} positives"


def control_row(mode: str) -> str:
    """The row of its real-view control: ``mode`` with the anchors themselves as the "synthetic" views."""
    return f"SimCLR + {mode} control (anchor copies)"


#: The control's row in quick starts run before the synthetic mode was the recipe's (CLSP-SimCLR's control), kept
#: for imports; now :func:`control_row` of the recipe's mode.
CONTROL_ROW = next(name for name, folder in LEGACY_FOLDERS.items() if folder == "clsp_simclr_control")


#: The recipe's sampling point (recipes/quickstart.yaml), measured for these generator weights
#: (``generator_id``) and w in benchmarks/results/frontier_1000.json (1,000 positives of the first
#: 500 anchors): the reason and its figures are printed only for that combination, so weights
#: shipped later under the same name do not inherit them.
RECIPE_POINT = {"generator": "builtin:fashion_mnist", "generator_id": "710c88fb53e187ce",
                "interpolation_weight": 0.1, "strength": 0.7, "fidelity": 71, "paper_fidelity": 59}


_XEON = "an Intel Xeon with avx512_bf16 (generation bf16, pretraining fp32)"
#: the settings of the benchmark's runs (its base is the quick start's recipe) that decide whether its figure holds
_BENCHMARK_SETTINGS = {"data.name": "fashion_mnist", "pretrain.method": "simclr", "pretrain.synthetic.positives": 1,
                       "generate.candidates": 2, "generate.clsp.sampler": "dpmsolver++", "generate.clsp.num_steps": 10,
                       "generate.clsp.interpolation_weight": 0.1, "generate.clsp.clip_x0": True}
#: The gain of a mode over its control measured by benchmarks/synthetic_gain.py (key: its paired entry in
#: benchmarks/results/synthetic_gain.json), for these weights, mode and sampling point: a quick start run without
#: ``--control`` prints it, only for that combination (tests/test_quickstart.py checks the figures against the JSON).
BENCHMARK_CONTROLS = (
    {"key": "n5000_e40/multipos_s0.7@Intel(R)-Xeon(R)-Processor+bf16", "generator_id": "710c88fb53e187ce",
     "mode": "multipos", "seeds": 5, "linear": (1.43, 1.09, 1.77), "knn": 2.98, "budget": "5,000 images x 40 epochs",
     "same_time": (0.62, -0.13, 1.37), "same_time_epochs": 67, "cpu": _XEON, "settings": {**_BENCHMARK_SETTINGS, "generate.clsp.strength": 0.7}},
    {"key": "n5000_e40/multipos@Intel(R)-Xeon(R)-Processor+bf16", "generator_id": "710c88fb53e187ce",
     "mode": "multipos", "seeds": 5, "linear": (1.40, 0.97, 1.83), "knn": 3.17, "budget": "5,000 images x 40 epochs",
     "same_time": (0.59, 0.11, 1.07), "same_time_epochs": 67, "cpu": _XEON, "settings": {**_BENCHMARK_SETTINGS, "generate.clsp.strength": 1.0}},
)


def _setting(config: RunConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _same(a, b) -> bool:
    return math.isclose(a, b) if isinstance(a, float) or isinstance(b, float) else a == b


def control_reference(config: RunConfig, mode: str) -> str:
    """The line that stands for the control's row when ``--control`` was not given: the benchmark's paired gain
    of ``mode`` over its control at these settings (data, method, positives, candidates, sampling) and weights, if
    measured; otherwise how to get it."""
    run_it = ("synthpos quickstart --control adds the control's row (the same training on the anchors themselves, "
              "nothing generated: one more pretraining)")
    for point in BENCHMARK_CONTROLS:
        if point["mode"] == mode and all(_same(_setting(config, k), v) for k, v in point["settings"].items()) \
                and _measured_weights(config.generate.generator, point["generator_id"]):
            mean, low, high = point["linear"]
            t_mean, t_low, t_high = point["same_time"]
            return (f"against its control (the anchors themselves as the extra views, nothing generated), {mode} gained "
                    f"{mean:+.2f} linear-fast points (95% t interval {low:+.2f} to {high:+.2f}; kNN {point['knn']:+.2f}), "
                    f"and against SimCLR alone given its pretraining time ({point['same_time_epochs']} epochs) "
                    f"{t_mean:+.2f} ({t_low:+.2f} to {t_high:+.2f}), "
                    f"paired over {point['seeds']} seeds at {point['budget']} with this generator and sampling on "
                    f"{point['cpu']} (benchmarks/synthetic_gain.py, docs/results.md); {run_it}")
    return f"no control measured for {mode} at these settings: {run_it}"


def _measured_weights(generator, measured_id: str = RECIPE_POINT["generator_id"]) -> bool:
    from synthpos.generators.clsp_generator import generator_id
    from synthpos.generators.diffusion import resolve_generator_dir

    if generator is None:  # trained here (--train-generator): not the weights measured
        return False
    try:
        return generator_id(resolve_generator_dir(Path(str(generator)))) == measured_id
    except (OSError, SynthposError):
        return False


def sampling_reason(g) -> str:
    """Why the quick start samples at its strength; ``g``: the ``generate`` section."""
    s = g.clsp
    if s.strength == 1.0:
        return "strength 1.0: the paper's sampling, from pure noise"
    if str(g.generator) == RECIPE_POINT["generator"] and all(
            math.isclose(getattr(s, key), RECIPE_POINT[key]) for key in ("interpolation_weight", "strength")) \
            and _measured_weights(g.generator):
        return (f"strength 0.7, chosen from the frontier (docs/generator.md; 1,000 positives of the first 500 anchors, "
                f"benchmarks/results/frontier_1000.json): it keeps the anchor's class in {RECIPE_POINT['fidelity']}% of "
                f"them, against {RECIPE_POINT['paper_fidelity']}% from pure noise (the paper's strength 1.0), and is the "
                "most faithful point with the paper's w that stays above both diversity floors; "
                "--set generate.clsp.strength=1.0 for the paper's")
    return f"strength {s.strength:g}: each positive starts from its anchor noised {100 * s.strength:.0f}% of the way"


def print_table(config: RunConfig, results: dict) -> None:
    table = Table(title=f"Fashion-MNIST, {results['pretrain_images']} pretraining images, {config.pretrain.epochs} epochs, "
                        f"{config.pretrain.backbone.name}")
    table.add_column("encoder")
    table.add_column("kNN top-1 (k chosen on validation)", justify="right")
    table.add_column("linear top-1 (fast)", justify="right")
    table.add_column("linear top-1 (paper)", justify="right")
    for name, r in results["rows"].items():
        paper = f"{100 * r['linear_paper_top1']:.2f}" if "linear_paper_top1" in r else "-"
        table.add_row(name, f"{100 * r['knn_top1']:.2f}", f"{100 * r['linear_top1']:.2f}", paper)
    console.print(table)
    rows, mode = results["rows"], results["mode"]
    ours, control = synthetic_row(mode), control_row(mode)
    if control in rows:
        gain = {k: 100 * (rows[ours][k] - rows[control][k]) for k in ("knn_top1", "linear_top1")}
        console.print(
            f"{ours} minus its control (the same training with the anchors themselves as the extra views, nothing "
            f"generated): {gain['knn_top1']:+.2f} kNN, {gain['linear_top1']:+.2f} linear (fast) points: what the generated "
            "images carry here, on one seed (benchmarks/synthetic_gain.py gives paired intervals over seeds)")
    else:
        console.print(control_reference(config, mode))
    f = results["fidelity"]
    console.print(
        f"fidelity of the synthetic positives: {100 * f['fidelity']:.1f}% of {f['anchors'] * f['candidates']} candidates "
        f"get their anchor's label (the classifier scores {100 * results['classifier_test_top1']:.1f}% on real test images)"
    )
    pixel, features, memo = results["diversity"]["pixel"], results["diversity"]["features"], results["memorisation"]
    if features is not None:
        rule = config.train_generator.check or GeneratorCheckConfig()  # the generator check's floors, its defaults
        floors = "both met" if floors_met(results, rule) else "not both met"
        console.print(
            f"diversity: a positive is {pixel['candidate_to_anchor']:.3f} from its anchor in pixel RMS (two images of one "
            f"class: {pixel['between_same_class_real_images']:.3f}) and {features['candidate_to_anchor']:.3f} in the "
            f"classifier's features (two of one class: {features['between_same_class_real_images']:.3f}); the floors "
            f"(pixel >= {rule.min_pixel_distance:.2f}, features >= {rule.min_feature_ratio:g} x two of one class): {floors}")
    if memo is not None:
        console.print(
            f"memorisation: {100 * memo['closer_to_another_training_image']:.1f}% of the positives are nearer (pixels) to "
            f"another of the {memo['training_images']} training images than to their anchor (a positive is "
            f"{memo['mean_distance_to_nearest_other']:.3f} from its nearest other training image; an anchor "
            f"{memo['anchor_mean_distance_to_nearest_other']:.3f}); "
            f"{100 * memo['nearer_to_another_training_image_than_its_anchor_is']:.1f}% are nearer to that image than "
            f"their anchor is")
    console.print(f"anchors beside their positives: {config.run_dir / 'positives.png'}")
    console.print(f"results: {config.run_dir / 'results.json'}   wall time: {results['wall_s'] / 60:.1f} min")
