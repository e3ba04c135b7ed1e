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

console = Console()

#: The row of the real-view control: CLSP-SimCLR with the anchors themselves as its "synthetic" view.
CONTROL_ROW = "CLSP-SimCLR control (anchor copies)"


#: The recipe's sampling point (recipes/quickstart.yaml), measured for these generator weights
#: (``generator_id``) and w in benchmarks/results/frontier_1000.json (1,000 positives of the first
#: 500 anchors): the reason and its figures are printed only for that combination, so weights
#: shipped later under the same name do not inherit them.
RECIPE_POINT = {"generator": "builtin:fashion_mnist", "generator_id": "710c88fb53e187ce",
                "interpolation_weight": 0.1, "strength": 0.7, "fidelity": 71, "paper_fidelity": 59}


def _measured_weights(generator) -> bool:
    from synthpos.generators.clsp_generator import generator_id
    from synthpos.generators.diffusion import resolve_generator_dir

    try:
        return generator_id(resolve_generator_dir(Path(str(generator)))) == RECIPE_POINT["generator_id"]
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
    rows = results["rows"]
    if CONTROL_ROW in rows and "CLSP-SimCLR" in rows:
        gain = {k: 100 * (rows["CLSP-SimCLR"][k] - rows[CONTROL_ROW][k]) for k in ("knn_top1", "linear_top1")}
        console.print(
            f"CLSP-SimCLR minus its control (the same training with the anchors themselves as the third view, nothing "
            f"generated): {gain['knn_top1']:+.2f} kNN, {gain['linear_top1']:+.2f} linear (fast) points: what the generated "
            "images carry here, on one seed (benchmarks/synthetic_gain.py gives paired intervals over seeds)")
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
