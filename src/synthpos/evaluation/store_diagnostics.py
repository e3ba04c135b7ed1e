"""Store diagnostics (``synthpos inspect-store``): are the synthetic positives faithful, and how diverse?

- **Fidelity**: the share of candidates that a classifier trained on the real train split
  gives their anchor's label (a positive that changes class is not a positive).
- **Diversity**: the mean distance between the K candidates of one anchor (over all K(K-1)/2
  pairs), and from each candidate to its anchor; for scale, also between two different
  real images (anchor i and anchor i+1). Measured in pixels and in an encoder's feature space.
- **A grid**: anchors beside their candidates.

The classifier is trained once per (dataset, fidelity settings, seed) and cached, so a
second inspection costs only the pass over the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthpos.atomic import atomic_path
from synthpos.config import DataConfig, FidelityConfig, RunConfig
from synthpos.data import ImageDataset, load_dataset
from synthpos.data.augment import to_model_input
from synthpos.data.store_integrity import (
    HASH,
    ShardState,
    damage_message,
    ensure_verified,
    unknown_note,
    unrecorded_note,
    verify,
)
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.evaluation.fid import fid_kid, inception_network, judge_network, sample_candidates
from synthpos.evaluation.fidelity import Classifier, predict, train_classifier
from synthpos.evaluation.positives import FEATURE_METRIC, PIXEL_METRIC, PositivesStats, feature_distances, pixel_distances
from synthpos.progress import progress_bar

__all__ = [
    "FEATURE_METRIC",
    "PIXEL_METRIC",
    "backbone_embedding",
    "feature_distances",
    "fidelity_classifier",
    "inspect_store",
    "inspect_store_stage",
    "pixel_distances",
    "print_report",
    "verify_command",
]

#: uint8 images (B, H, W, C) -> float features (B, D)
Embedding = Callable[[np.ndarray], torch.Tensor]


# ----------------------------------------------------------------------------- encoders


def backbone_embedding(backbone: nn.Module, size: int, mean, std, batch_size: int = 512) -> Embedding:
    """Features of a pretrained backbone (eval mode, images resized to ``size``, normalised).

    Raises:
        SynthposError: the backbone expects another number of channels than ``mean`` has.
    """
    in_channels = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).in_channels
    if in_channels != len(mean):
        raise SynthposError(
            f"the encoder takes {in_channels}-channel images but the store holds {len(mean)}-channel ones; "
            "pass --encoder with a backbone pretrained on this dataset"
        )
    backbone.eval()

    @torch.no_grad()
    def embed(images: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start: start + batch_size])).permute(0, 3, 1, 2)
            out.append(backbone(to_model_input(x, size, mean, std)).float())
        return torch.cat(out)

    return embed


# ----------------------------------------------------------------------------- the cached classifier


def _classifier_key(data: DataConfig, train: ImageDataset, cfg: FidelityConfig, seed: int) -> str:
    """Names the classifier by what determines it: the data (config and a hash of its images), settings, seed."""
    content = dataset_fingerprint(train.name, train.split, train.images)["content_hash"]
    described = json.dumps({"data": data.model_dump(mode="json"), "images": content,
                            "fidelity": cfg.model_dump(mode="json"), "seed": seed}, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def fidelity_classifier(
    data: DataConfig, cfg: FidelityConfig, seed: int, cache_dir: Path, show_progress: bool = True
) -> tuple[Classifier, dict[str, Any]] | None:
    """The classifier trained on the whole real train split of ``data``; trained once, then read from ``cache_dir``.

    Returns:
        ``(model, info)`` with info = {path, cached, train_images, test_top1 (None without a
        labelled test split)}; None when the training split has no labels.
    """
    data = data.model_copy(update={"subset": None})  # like the quick start: judged by a classifier of the whole split
    train = load_dataset(data, "train")
    if train.labels is None:
        return None
    path = Path(cache_dir) / f"classifier-{_classifier_key(data, train, cfg, seed)}.pt"
    size = train.images.shape[1]
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = Classifier(train.channels, train.num_classes, cfg.width, size)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {"path": str(path), "cached": True, "train_images": int(saved["train_images"]),
                              "test_top1": saved["test_top1"]}
    model = train_classifier(train, cfg, seed, show_progress)
    try:
        test = load_dataset(data, "test")
    except SynthposError:
        test = None  # e.g. an image folder without data.test_root: fidelity still works
    test_top1 = None
    if test is not None and test.labels is not None:
        test_top1 = float((predict(model, test.images, train.mean, train.std) == test.labels).mean())
    train_images = min(len(train), cfg.train_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "train_images": train_images, "test_top1": test_top1}, tmp)
    return model, {"path": str(path), "cached": False, "train_images": train_images, "test_top1": test_top1}


# ----------------------------------------------------------------------------- one pass over the store


def inspect_store(
    store: SyntheticStore,
    dataset: ImageDataset,
    classifier: Classifier | None = None,
    encoder: Embedding | None = None,
    max_anchors: int | None = None,
    batch_anchors: int = 256,
    show_progress: bool = False,
    train_images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fidelity, diversity and memorisation of the first ``max_anchors`` anchors' candidates (default: all).

    Args:
        dataset: the anchors' dataset (its first images are the store's anchors); its labels,
            if any, are what fidelity checks against.
        classifier: the fidelity classifier; without it (or without labels) fidelity is None.
        encoder: embeds images for the feature-space distances; default: the classifier's
            penultimate features; with neither, the feature distances are None.
        train_images: the whole training split, to measure memorisation (None: not measured).

    Returns:
        ``{"anchors", "candidates", "fidelity": {...} | None, "diversity": {"pixel": {...},
        "features": {...} | None}, "memorisation": {...} | None}``
        (see :class:`synthpos.evaluation.positives.PositivesStats`).
    """
    n = min(len(store), len(dataset), max_anchors or len(store))
    stats = PositivesStats(dataset.mean, dataset.std, classifier, encoder, train_images)
    labels = dataset.labels if classifier is not None else None
    with progress_bar("inspect", total=n, enabled=show_progress) as bar:
        for start in range(0, n, batch_anchors):
            end = min(n, start + batch_anchors)
            cands = np.stack([store[a] for a in range(start, end)])  # (b, K, H, W, C)
            stats.add(dataset.images[start:end], cands, None if labels is None else labels[start:end],
                      np.arange(start, end))
            bar.update(end - start)
    return stats.summary(dataset.images[:n], None if dataset.labels is None else dataset.labels[:n])


# ----------------------------------------------------------------------------- the command


def inspect_store_stage(
    config: RunConfig,
    store_dir: Path | None = None,
    encoder_path: Path | None = None,
    max_anchors: int | None = None,
    out_dir: Path | None = None,
    show_progress: bool = True,
    fid: bool = False,
    fid_weights: Path | None = None,
    fid_images: int = 10_000,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """``synthpos inspect-store``: writes ``inspect.json`` and ``grid.png`` to ``out_dir`` (default ``<store>/inspect``).

    Args:
        fid: also FID and KID of the store's candidates against the real train split
            (:mod:`synthpos.evaluation.fid`), under ``"fid_kid"``; in pytorch-fid's Inception
            features with ``fid_weights``, otherwise in the judge's (named "FID (judge features)").
        fid_images: at most this many candidates (drawn from the inspected anchors' K each) and
            this many real training images (drawn from the whole split), both seeded.

    Raises:
        SynthposError: the store is missing, incomplete or made for other data; the encoder
            cannot be read or does not fit the images; FID was asked for without a feature
            network (unlabelled data and no ``fid_weights``) or with bad settings.
    """
    from synthpos.models.backbones import load_backbone
    from synthpos.figures.grid import positives_grid

    if max_anchors is not None and max_anchors < 1:
        raise SynthposError(f"--max-anchors must be at least 1, got {max_anchors}")
    if fid and (fid_images < 2 or kid_subset_size < 2 or kid_subsets < 1):
        raise SynthposError(f"--fid-images ({fid_images}) and --kid-subset-size ({kid_subset_size}) must be at least 2, "
                            f"--kid-subsets ({kid_subsets}) at least 1")
    store_dir = Path(store_dir or config.store_dir)
    dataset = load_dataset(config.data, "train")
    if fid and fid_weights is None and dataset.labels is None:
        raise SynthposError("--fid on unlabelled data needs --fid-weights pt_inception-2015-12-05-*.pth "
                            "(pytorch-fid's Inception): there is no judge network without labels")
    network = None
    if fid and fid_weights is not None:  # read (and hashed) before anything is written
        network = inception_network(Path(fid_weights), device="cuda" if torch.cuda.is_available() else "cpu")
    # Hashed on first use, like pretraining's: diagnostics of zeroed shards would describe black images.
    store = SyntheticStore.open(store_dir, dataset.name, dataset.split, dataset.images, verify="auto")
    notes = []
    encoder, encoder_name = None, None
    if encoder_path is not None:
        size = config.evaluate.feature_size or config.pretrain.augment.crop_size  # as the evaluate stage sees images
        encoder = backbone_embedding(load_backbone(Path(encoder_path)), size, dataset.mean, dataset.std)
        encoder_name = f"{encoder_path} (images at {size} px)"
    trained = None
    if dataset.labels is None:
        notes.append("fidelity skipped: the dataset has no labels (an image folder without class sub-folders)")
    else:
        trained = fidelity_classifier(config.data, config.fidelity, config.seed, config.run_dir / "fidelity", show_progress)
    classifier, classifier_info = trained if trained is not None else (None, None)
    if encoder is None and classifier is not None:
        encoder_name = "the fidelity classifier's penultimate layer (128-d)"
    if encoder is None and classifier is None:
        notes.append("feature distances skipped: pass --encoder backbone.pt (a labelled dataset uses the fidelity classifier)")

    full_train = load_dataset(config.data.model_copy(update={"subset": None}), "train")
    report = inspect_store(store, dataset, classifier, encoder, max_anchors, show_progress=show_progress,
                           train_images=full_train.images)
    report = {"store": str(store_dir), "dataset": f"{dataset.name}/{dataset.split}", "store_anchors": len(store), **report}
    if report["fidelity"] is not None:
        report["fidelity"]["classifier"] = classifier_info
    if report["diversity"]["features"] is not None:
        report["diversity"]["features"]["encoder"] = encoder_name
    if fid:
        if network is None:
            network = judge_network(classifier, dataset.mean, dataset.std, Path(classifier_info["path"]))
        fake = sample_candidates(store, report["anchors"], fid_images, config.seed)
        picks = np.sort(np.random.default_rng(config.seed).choice(len(full_train), min(fid_images, len(full_train)),
                                                                  replace=False))
        report["fid_kid"] = fid_kid(full_train.images[picks], fake, network, kid_subset_size, kid_subsets, config.seed)
        report["fid_kid"]["protocol"].update(real_split=f"{full_train.name}/{full_train.split} (whole split, "
                                                        f"{len(full_train)} images)",
                                             candidates_from=f"all K={store.candidates} candidates of the first "
                                                             f"{report['anchors']} anchors")
    if store.candidates < 2:
        notes.append("distances between candidates need K >= 2; this store has one candidate per anchor")
    report["notes"] = notes

    out_dir = Path(out_dir or store_dir / "inspect")
    out_dir.mkdir(parents=True, exist_ok=True)
    report["grid"] = str(out_dir / "grid.png")
    with atomic_path(out_dir / "grid.png") as tmp:
        positives_grid(dataset.take(report["anchors"]), store, tmp, rows=min(10, report["anchors"]), seed=config.seed)
    with atomic_path(out_dir / "inspect.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict[str, Any]) -> None:
    """A short table of the diagnostics on stdout."""
    from rich.console import Console
    from rich.table import Table

    def show(value: float | None, percent: bool = False) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}%" if percent else f"{value:.4f}"

    console = Console()
    title = f"{report['store']}: {report['anchors']} of {report['store_anchors']} anchors x {report['candidates']} candidates"
    fidelity = report["fidelity"]
    if fidelity is not None:
        table = Table(title=title)
        table.add_column("fidelity")
        table.add_column("value", justify="right")
        table.add_row("candidates with their anchor's label", show(fidelity["fidelity"], True))
        table.add_row("anchors whose candidates all keep it", show(fidelity["all_candidates_agree"], True))
        table.add_row("anchors the classifier gets right", show(fidelity["anchors_classified_right"], True))
        table.add_row("classifier on real test images", show((fidelity.get("classifier") or {}).get("test_top1"), True))
        console.print(table)
        title = None
    table = Table(title=title)
    table.add_column("mean distance")
    table.add_column("between candidates", justify="right")
    table.add_column("candidate to anchor", justify="right")
    table.add_column("two real images", justify="right")
    table.add_column("two of one class", justify="right")
    for name, space in (("pixels (RMS, [0, 1])", "pixel"), ("features (cosine)", "features")):
        d = report["diversity"][space]
        if d is not None:
            table.add_row(name, show(d["between_candidates"]), show(d["candidate_to_anchor"]), show(d["between_real_images"]),
                          show(d.get("between_same_class_real_images")))
    console.print(table)
    memo = report.get("memorisation")
    if memo is not None:
        console.print(f"memorisation: {show(memo['closer_to_another_training_image'], True)} of the candidates are closer to "
                      f"another of the {memo['training_images']} training images than to their anchor (pixels); for "
                      f"{show(memo['nearest_training_image_is_anchor'], True)} the nearest is the anchor; "
                      f"{show(memo['nearer_to_another_training_image_than_its_anchor_is'], True)} are nearer to that "
                      f"image than their anchor is (a copy of another image)")
    if (fk := report.get("fid_kid")) is not None:
        p = fk["protocol"]
        console.print(f"{fk['fid']['name']}: {fk['fid']['value']:.4f}   {fk['kid']['name']}: {fk['kid']['mean']:.6f} "
                      f"± {fk['kid']['std']:.6f}  ({p['candidates_count']} candidates vs {p['real_count']} real images, "
                      f"KID over {p['kid_subsets']} subsets of {p['kid_subset_size']})")
    for note in report["notes"]:
        console.print(f"note: {note}")


# ----------------------------------------------------------------------------- inspect-store --verify


def verify_command(path: Path, writer: str | None = None) -> list[ShardState]:
    """``synthpos inspect-store --verify``: hash every shard, stamp, print each shard's state.

    ``writer``: who holds the lock of the run the store is in (:func:`synthpos.run_lock.live_holder`). Then the
    store may be being written: nothing is written into it (no stamp), and shards not written yet are not called
    damaged.

    Raises:
        SynthposError: the manifest is damaged, or a shard is missing or damaged (after the table); with ``writer``,
            shards not there yet (verify again once it has finished).
    """
    from rich.console import Console
    from rich.table import Table

    store = SyntheticStore.open(path, require_complete=False)
    states = ensure_verified(store, "always", raise_if_bad=False) if writer is None else verify(store, stamp=False)
    table = Table(title=f"{store.path}: {store.layout.num_shards} shards, {HASH}")
    for column in ("shard", "anchors", "state", "detail"):
        table.add_column(column)
    colour = {"ok": "green", "no hash": "yellow"}
    for s in states:
        start, end = store.layout.shard_range(s.shard)
        table.add_row(s.name, f"{start}..{end - 1}", f"[{colour.get(s.state, 'red')}]{s.state}[/]", s.detail)
    console = Console()
    console.print(table)
    if note := unknown_note(store):
        console.print(f"note: {note}")
    damaged = [s for s in states if s.bad and s.state != "missing"]
    if writer is not None and not damaged and (missing := [s for s in states if s.state == "missing"]):
        # Shards are published whole (renamed into place): one not there yet is unfinished work, not damage.
        raise SynthposError(f"store {store.path}: {len(missing)} of {len(states)} shards are not written yet and "
                            f"{writer} holds its run; run `synthpos inspect-store --verify` again once it has "
                            "finished")
    if message := damage_message(store, states):
        raise SynthposError(message + (f" (once {writer}, which holds its run, has finished)" if writer else ""))
    if note := unrecorded_note(store, states):
        console.print(f"note: {note}")
    if writer is not None:
        console.print(f"note: {writer} holds the run of this store, which may be being written: this is what was there "
                      "now, and nothing was written (no stamp)", markup=False, highlight=False)
    return states
