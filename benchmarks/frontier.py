"""The fidelity-diversity frontier of CLSP positives: sweep the interpolation weight w and
``generate.strength`` for one or more generators, and draw fidelity against distance.

Every point makes K candidates for the same anchors (the first N images of the
Fashion-MNIST train split) with the same seeds, through the real generator
(``synthpos.generators.registry.build_generator``, ``generate.kind: clsp``), and judges them
with :class:`synthpos.evaluation.positives.PositivesStats`, the code ``inspect-store`` uses:

- fidelity: the share of candidates the quick start's fidelity classifier (trained once on
  the real train split, cached under ``--work``) gives their anchor's label;
- diversity: mean pixel RMS and judge-feature cosine distance from a candidate to its
  anchor and between candidates, beside two real images and two real images of one class;
- memorisation: the share of candidates nearer (pixels) to another training image than to
  their own anchor.

Each point is written to the JSON as soon as it is measured and skipped when the JSON
already has it (same generator weights and settings), so a cut-short sweep continues.

Run::

    python benchmarks/frontier.py                                   # both shipped generators, default grid
    python benchmarks/frontier.py --generators builtin:fashion_mnist --weights 0.1 --strengths 1,0.5
    python benchmarks/frontier.py --smoke                           # a few anchors, two points (CI)

Writes ``benchmarks/results/frontier.json`` and ``frontier.png`` (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "frontier.json"


#: A conditional generator's sampling dials: the point's JSON key -> (its generate.clsp key, default, label in the
#: plot, the conditionings that sweep it). A point at a dial's default keeps the key it had before the dial existed.
DIALS = {"guidance": ("guidance_scale", 1.0, "guidance", ("class", "embedding")),
         "condition_noise": ("condition_noise", 0.0, "noise", ("embedding",)),
         "neighbour_blend": ("neighbour_blend", 0.0, "blend", ("embedding",))}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", default="builtin:fashion_mnist_small,builtin:fashion_mnist",
                   help="comma-separated generator folders (or builtin:NAME)")
    p.add_argument("--weights", type=_floats, default=[0.0, 0.1, 0.3, 0.5, 1.0], help="interpolation weights w")
    p.add_argument("--strengths", type=_floats, default=[1.0, 0.8, 0.6, 0.4], help="generate.strength values")
    p.add_argument("--guidance", type=_floats, default=[1.0], help="classifier-free guidance scales (conditional "
                   "generators only; an unconditional one is measured at 1)")
    p.add_argument("--condition-noise", dest="condition_noise", type=_floats, default=[0.0],
                   help="generate.condition_noise values (embedding-conditioned generators only; others at 0)")
    p.add_argument("--neighbour-blend", dest="neighbour_blend", type=_floats, default=[0.0],
                   help="generate.clsp.neighbour_blend values (embedding-conditioned generators only; others at 0): "
                        "each candidate conditioned on its anchor's embedding blended toward one of its 5 nearest "
                        "training images' (all 60,000 training images are the pool)")
    p.add_argument("--anchors", type=int, default=300)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--sampler", default="dpmsolver++", choices=["ddim", "dpmsolver++"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-clip-x0", dest="clip_x0", action="store_false", help="do not clip x0 at every step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trained-on-candidates", dest="cas_seeds", type=int, default=0, metavar="SEEDS",
                   help="also train the judge's ConvNet only on each point's candidates (anchor labels) and on the same "
                        "number of real training images, SEEDS seeds each, and score both on the real test split "
                        "(the second fidelity measure; about 80 s per seed and set on 2 cores)")
    p.add_argument("--select", type=int, default=0, metavar="M",
                   help="also make M candidates per anchor and keep the --candidates nearest their anchor (cosine) in a "
                        "label-free encoder's features (--selector): over-generation and selection, no labels")
    p.add_argument("--selector", default=None, metavar="BACKBONE",
                   help="the encoder --select ranks with: a backbone.pt of a synthpos pretraining run (default the "
                        "round-0 SimCLR encoder shipped inside builtin:fashion_mnist_conditioned)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None,
                   help="cache of the fidelity classifier (default runs/frontier; with --smoke beside --out)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/frontier.json; "
                   "with --smoke runs/smoke/frontier.json)")
    p.add_argument("--beside", type=Path, action="append", default=[], metavar="JSON",
                   help="also draw the points of another frontier JSON measured with the same anchors, candidates, "
                        "sampler and steps (e.g. the unconditional generators' beside a conditioned one); repeatable")
    p.add_argument("--smoke", action="store_true", help="checks the script: 4 anchors, 2 points of 2 sampler steps, "
                   "a 1-epoch classifier, on a tiny copy of the data, classifier cached beside --out (CI)")
    args = p.parse_args(argv)
    if args.select and args.select <= args.candidates:
        p.error(f"--select {args.select} must be more than --candidates {args.candidates} (it makes M and keeps K)")
    if args.selector and not args.select:
        p.error("--selector ranks the candidates of --select M; give --select too")
    args.generators = [g for g in args.generators.split(",") if g]
    args.data_root = None
    if args.smoke:
        from _smoke import THREADS, smoke_out, tiny_fashion_mnist

        args.anchors, args.weights, args.strengths, args.steps, args.threads = 4, [0.1], [1.0, 0.5], 2, THREADS
        args.out = args.out or smoke_out("frontier")
        args.work = args.work or args.out.with_suffix("")
        args.data_root = tiny_fashion_mnist(args.work / "data")
    args.work = args.work or Path("runs/frontier")
    args.out = args.out or DEFAULT_OUT
    return args


def point_key(generator_id: str, w: float, strength: float, args: argparse.Namespace,
              dials: dict[str, float] | None = None, selector_id: str | None = None) -> str:
    # The conditional dials and selection join the key only when set, so points measured before they existed
    # stay found.
    extra = {k: v for k, v in (dials or {}).items() if v != DIALS[k][1]}
    if getattr(args, "select", 0):
        extra |= {"select": args.select, "selector": selector_id}
    return json.dumps({"generator": generator_id, "w": w, "strength": strength, "sampler": args.sampler, "steps": args.steps,
                       "clip_x0": args.clip_x0, "anchors": args.anchors, "candidates": args.candidates, "seed": args.seed,
                       **extra}, sort_keys=True)


def conditioning(generator_dir: Path) -> str | None:
    """"embedding" or "class" for a conditional generator folder, None for an unconditional one."""
    unet_config = json.loads((generator_dir / "unet" / "config.json").read_text())
    if unet_config.get("class_embed_type") == "identity":
        return "embedding"
    return "class" if unet_config.get("num_class_embeds") else None


def sampling_grid(generator_dir: Path, args: argparse.Namespace) -> list[tuple[float, float, dict[str, float]]]:
    """The (w, strength, dials) points a generator is measured at: each dial of :data:`DIALS` swept where the
    generator's conditioning takes it, at its default elsewhere."""
    kind = conditioning(generator_dir)
    values = [[(key, v) for v in (getattr(args, key) if kind in takes else [default])]
              for key, (_, default, _, takes) in DIALS.items()]
    return [(w, s, dict(combo)) for w in args.weights for s in args.strengths for combo in itertools.product(*values)]


def trained_on_candidates(candidates: np.ndarray, labels: np.ndarray, train, test, seeds: int) -> dict[str, Any]:
    """The second fidelity measure: test top-1 of a classifier trained only on the candidates, beside the same
    classifier trained on as many real training images (the first ones), mean over ``seeds`` seeds."""
    from synthpos.evaluation.fidelity import trained_on

    n, k = candidates.shape[:2]
    flat, flat_labels = candidates.reshape(n * k, *candidates.shape[2:]), np.repeat(labels, k)
    on_candidates = [trained_on(flat, flat_labels, train, test, seed=s) for s in range(seeds)]
    on_real = [trained_on(train.images[: n * k], train.labels[: n * k], train, test, seed=s) for s in range(seeds)]
    return {"protocol": f"the judge's ConvNet trained 400 steps (batch 128) on {n * k} images, Fashion-MNIST test top-1, "
                        f"mean of seeds 0-{seeds - 1}",
            "on_candidates": float(np.mean(on_candidates)), "on_real": float(np.mean(on_real)),
            "ratio": float(np.mean(on_candidates) / np.mean(on_real)),
            "per_seed": {"on_candidates": on_candidates, "on_real": on_real}}


def default_selector() -> Path:
    """The round-0 SimCLR encoder shipped with the embedding-conditioned generator (no labels in its training)."""
    from synthpos.generators.diffusion import resolve_generator_dir

    return resolve_generator_dir(Path("builtin:fashion_mnist_conditioned")) / "condition" / "encoder" / "backbone.pt"


def keep_nearest(anchors: np.ndarray, candidates: np.ndarray, keep: int, embed) -> tuple[np.ndarray, np.ndarray]:
    """Of M candidates per anchor, the ``keep`` whose embedding is nearest the anchor's (cosine), in the order
    of nearness. ``embed``: uint8 images (N, H, W, C) -> L2-normalised features (N, D).

    Returns the kept candidates (n, keep, H, W, C) and their cosine similarities (n, keep)."""
    n, m = candidates.shape[:2]
    a = embed(anchors)
    c = embed(candidates.reshape(n * m, *candidates.shape[2:])).reshape(n, m, -1)
    similarity = np.einsum("nd,nmd->nm", a, c)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :keep]
    return (np.take_along_axis(candidates, order[:, :, None, None, None], axis=1),
            np.take_along_axis(similarity, order, axis=1))


def measure(generator_dir: str, w: float, strength: float, train, classifier, args: argparse.Namespace,
            dials: dict[str, float] | None = None, test=None, selector=None,
            selector_id: str | None = None) -> dict[str, Any]:
    from synthpos.config import GenerateConfig
    from synthpos.evaluation.positives import PositivesStats
    from synthpos.generators.registry import build_generator

    dials = {key: default for key, (_, default, _, _) in DIALS.items()} | (dials or {})
    settings = GenerateConfig(kind="clsp", candidates=args.select or args.candidates, batch_size=256,
                              clsp={"sampler": args.sampler, "num_steps": args.steps, "interpolation_weight": w,
                                    "strength": strength, "clip_x0": args.clip_x0,
                                    **{DIALS[key][0]: value for key, value in dials.items()}})
    generator = build_generator("clsp", Path(generator_dir), settings, args.seed, torch.device("cpu"))
    anchors, labels = train.images[: args.anchors], train.labels[: args.anchors]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:  # the neighbours neighbour_blend fits (the whole training split)
        generator.prepare(train.images, train.labels, Path(work) / "store")  # labels: a class-conditional's check
        candidates = generator.generate(anchors, 0, labels)
    seconds = time.perf_counter() - start
    selection = None
    if args.select:
        from synthpos.generators.embedding_condition import embed_images

        size = train.images.shape[1]
        candidates, similarity = keep_nearest(anchors, candidates, args.candidates,
                                              lambda x: embed_images(selector, x, size, train.mean, train.std))
        selection = {"made": args.select, "kept": args.candidates, "by": "cosine to the anchor in the selector's "
                     "L2-normalised backbone features", "selector": args.selector_name, "selector_sha256": selector_id,
                     "kept_similarity_mean": float(similarity.mean())}
    stats = PositivesStats(train.mean, train.std, classifier, train_images=train.images)
    stats.add(anchors, candidates, labels, np.arange(len(anchors)))
    summary = stats.summary(train.images[:2000], train.labels[:2000])
    if args.cas_seeds:
        summary["trained_on_candidates"] = trained_on_candidates(candidates, labels, train, test, args.cas_seeds)
    return {"generator": generator_dir, "record": generator.record(), "w": w, "strength": strength,
            **{key: value for key, value in dials.items() if key != "neighbour_blend" or value != 0.0},
            "generate_s": round(seconds, 1),
            **({"selection": selection} if selection else {}), **summary}


def generator_series(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The points by generator weights, each under a label for the plot.

    A series is one set of weights (``record.generator_sha256``), not one name: once new weights
    ship as ``builtin:fashion_mnist``, the points measured with the old ones stay in the JSON and
    are drawn as their own series, labelled with their weights id, not mixed into the new one's.
    """
    by_weights: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for p in points:
        dials = "".join(f", {label} {p.get(key, default):g}" for key, (_, default, label, _) in DIALS.items()
                        if p.get(key, default) != default)
        if "selection" in p:
            chosen = p["selection"]
            dials += f", kept {chosen['kept']} of {chosen['made']}" + (
                f" by {chosen['selector_sha256'][:8]}" if chosen.get("selector_sha256") else "")
        by_weights.setdefault((p["generator"], p["record"]["generator_sha256"], dials), []).append(p)
    weights_per_name = Counter(name for name, _ in {(name, gid) for name, gid, _ in by_weights})
    return {(name.removeprefix("builtin:") + (f" (weights {gid[:8]})" if weights_per_name[name] > 1 else "") + dials): series
            for (name, gid, dials), series in sorted(by_weights.items())}


def beside_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The points of ``--beside`` files measured under this run's protocol (anchors, K, sampler, steps, x0 clipping,
    seed) at this run's interpolation weights, so that only like is drawn beside like."""
    same = {"anchors": args.anchors, "candidates": args.candidates, "sampler": args.sampler, "steps": args.steps,
            "clip_x0": args.clip_x0, "seed": args.seed}
    out = []
    for path in args.beside:
        for p in json.loads(path.read_text())["points"]:
            key = json.loads(p["key"])
            if all(key.get(k) == v for k, v in same.items()) and p["w"] in args.weights:
                out.append(p)
    return out


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("pixel", "pixel RMS from candidate to anchor ([0, 1])"),
              ("features", "judge-feature cosine distance from candidate to anchor"))
    markers = ["o", "s", "^", "D", "v"]
    generators = generator_series(points)
    weights = sorted({p["w"] for p in points})
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(weights))))
    for ax, (space, label) in zip(axes, panels):
        for gi, (name, series) in enumerate(generators.items()):
            for wi, w in enumerate(weights):
                row = sorted((p for p in series if p["w"] == w), key=lambda p: p["strength"])
                row = [p for p in row if p["fidelity"] and p["diversity"][space]]
                if not row:
                    continue
                x = [p["diversity"][space]["candidate_to_anchor"] for p in row]
                y = [100 * p["fidelity"]["fidelity"] for p in row]
                ax.plot(x, y, marker=markers[gi % len(markers)], color=colours[wi], linestyle="-" if gi else "--",
                        label=f"{name}, w={w}")
                for p, xi, yi in zip(row, x, y):
                    ax.annotate(f"{p['strength']:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        scale = next((p["diversity"][space] for p in points if p["diversity"][space]), None)
        if scale:
            for key, style in (("between_same_class_real_images", ":"), ("between_real_images", "-.")):
                if scale.get(key) is not None:
                    ax.axvline(scale[key], color="grey", linestyle=style, linewidth=1,
                               label="two real images" + (" of one class" if "same" in key else ""))
        ax.set_xlabel(label)
        ax.set_ylabel("fidelity (% of candidates keeping the anchor's class)")
        ax.grid(alpha=0.3)
    axes[0].axhline(80, color="red", linewidth=0.8)
    # The legend below both panels, in columns, the figure taller by its rows: many series stay readable.
    handles, labels = axes[1].get_legend_handles_labels()
    columns = 3 if len(labels) > 8 else 2
    legend_in = 0.2 + 0.16 * -(-len(labels) // columns)
    fig.set_size_inches(12, 4.8 + legend_in)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    fig.suptitle("CLSP positives: fidelity against distance to the anchor (numbers: strength)")
    fig.tight_layout(rect=(0, legend_in / (4.8 + legend_in), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from synthpos.config import DataConfig, FidelityConfig
    from synthpos.data import load_dataset
    from synthpos.evaluation.store_diagnostics import fidelity_classifier
    from synthpos.generators.clsp_generator import generator_id
    from synthpos.generators.diffusion import resolve_generator_dir

    data = DataConfig(name="fashion_mnist", root=args.data_root)
    train = load_dataset(data, "train")
    test = load_dataset(data, "test") if args.cas_seeds else None
    fidelity = FidelityConfig(train_images=len(train), epochs=1) if args.smoke else FidelityConfig()
    classifier, info = fidelity_classifier(data, fidelity, args.seed, args.work / "fidelity", show_progress=False)
    results: dict[str, Any] = {"points": []}
    if args.out.is_file() and not args.smoke:
        results = json.loads(args.out.read_text())
    # A point measured without the second fidelity measure is measured again when it is asked for.
    done = {p["key"] for p in results["points"] if not args.cas_seeds or "trained_on_candidates" in p}
    command = "python benchmarks/frontier.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results.update({
        "benchmark": "frontier",
        "command": command,  # the last one; each point keeps the command that measured it
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("diffusers"),
        "protocol": {"anchors": f"the first {args.anchors} Fashion-MNIST training images", "candidates": args.candidates,
                     "sampler": args.sampler, "steps": args.steps, "clip_x0": args.clip_x0, "seed": args.seed,
                     "judge": {"model": "synthpos.evaluation.fidelity.Classifier", **fidelity.model_dump(),
                               "test_top1": info["test_top1"]},
                     "features": "the judge's penultimate layer (128-d)"},
    })
    selector, selector_id = None, None
    if args.select:
        from synthpos.generators.embedding_condition import encoder_digest
        from synthpos.models.backbones import load_backbone

        args.selector_name = args.selector or "builtin:fashion_mnist_conditioned/condition/encoder/backbone.pt"
        args.selector = Path(args.selector) if args.selector else default_selector()
        selector, selector_id = load_backbone(args.selector).eval().requires_grad_(False), encoder_digest(args.selector)
    for gen in args.generators:
        folder = resolve_generator_dir(Path(gen))
        gid = generator_id(folder)
        for w, strength, dials in sampling_grid(folder, args):
            key = point_key(gid, w, strength, args, dials, selector_id)
            if key in done:
                continue
            point = {"key": key, "command": command,
                     **measure(gen, w, strength, train, classifier, args, dials, test, selector, selector_id)}
            results["points"] = [p for p in results["points"] if p["key"] != key] + [point]
            done.add(key)
            f, d, m = point["fidelity"], point["diversity"], point["memorisation"]
            kept = f" kept {args.candidates} of {args.select}" if args.select else ""
            shown = " ".join(f"{k}={v:g}" for k, v in dials.items())
            print(f"{gen} w={w} strength={strength} {shown}{kept}: fidelity {100 * f['fidelity']:.1f}%, pixel "
                  f"{d['pixel']['candidate_to_anchor']:.3f}, features {d['features']['candidate_to_anchor']:.3f}, "
                  f"nearer another training image {100 * m['closer_to_another_training_image']:.1f}%, "
                  f"nearer it than its anchor is {100 * m['nearer_to_another_training_image_than_its_anchor_is']:.1f}% "
                  f"({point['generate_s']:.0f} s)", flush=True)
            if "trained_on_candidates" in point:
                t = point["trained_on_candidates"]
                print(f"  trained on the candidates: {100 * t['on_candidates']:.2f}% test top-1, on as many real images "
                      f"{100 * t['on_real']:.2f}%", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=2))
            tmp.replace(args.out)
    plot(results["points"] + beside_points(args), args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
