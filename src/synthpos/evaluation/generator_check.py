"""The generator's training-time check: how good are the CLSP positives of the model so far?

At steps ``train_generator.check.every_steps``, 2x, ... (or every ``check.every_minutes``
of wall time) the training loop saves its EMA model and
calls a :class:`GeneratorCheck`: it makes ``check.candidates`` positives for each of the
first ``check.anchors`` training images with the run's ``generate`` settings (sampler,
steps, interpolation weight, strength), judges them with the fidelity classifier (trained
once on the real train split and cached, as ``inspect-store`` does) and measures their
diversity and memorisation (:class:`synthpos.evaluation.positives.PositivesStats`). Each
check is one JSON line in ``<generator>/checks.jsonl``; :func:`should_stop` reads them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthpos.config import GeneratorCheckConfig, RunConfig
from synthpos.data import load_dataset
from synthpos.distributed import default_device
from synthpos.errors import SynthposError
from synthpos.evaluation.positives import PositivesStats
from synthpos.evaluation.store_diagnostics import fidelity_classifier
from synthpos.registry import GENERATORS

#: The sampling dials of a conditional generator that a check line records when its generator's record has them.
CONDITION_DIALS = ("guidance_scale", "condition_noise", "neighbour_blend", "neighbours")

__all__ = ["GeneratorCheck", "floors_met", "should_stop"]


def floors_met(check: dict[str, Any], rule: GeneratorCheckConfig) -> bool:
    """The diversity floors: far enough from the anchor in pixels and in the judge's features."""
    pixel, features = check["diversity"]["pixel"], check["diversity"]["features"]
    same_class = features.get("between_same_class_real_images") if features else None
    return (pixel["candidate_to_anchor"] >= rule.min_pixel_distance and same_class is not None
            and features["candidate_to_anchor"] >= rule.min_feature_ratio * same_class)


def _at(check: dict[str, Any]) -> str:
    return f" at step {check['step']}" if "step" in check else ""


def should_stop(history: list[dict[str, Any]], rule: GeneratorCheckConfig) -> str | None:
    """Why training should stop after the checks so far, or None.

    Stops at ``target_fidelity`` with the floors met, or after ``patience`` checks in a row
    that each gained less than ``min_gain`` over the check before. The reason names the steps
    of the checks it rests on (``history`` entries carry ``step``, as ``checks.jsonl`` does).
    """
    if not history:
        return None
    last = history[-1]
    if last["fidelity"] >= rule.target_fidelity and floors_met(last, rule):
        return (f"fidelity {100 * last['fidelity']:.1f}%{_at(last)} reached the target {100 * rule.target_fidelity:.0f}% "
                "with the diversity floors met")
    gains = [b["fidelity"] - a["fidelity"] for a, b in zip(history, history[1:])]
    if len(gains) >= rule.patience and all(g < rule.min_gain for g in gains[-rule.patience:]):
        return (f"fidelity gained under {100 * rule.min_gain:.1f} points in each of the last {rule.patience} checks "
                f"({', '.join(f'{100 * g:+.1f}{_at(c)}' for g, c in zip(gains[-rule.patience:], history[-rule.patience:]))})")
    return None


class GeneratorCheck:
    """Callable ``(model_dir, step) -> check`` for :func:`synthpos.generators.diffusion.train_generator`.

    Args:
        config: the run; its ``train_generator.check`` says how many anchors and candidates,
            its ``generate`` section how to sample, its ``fidelity`` section the judge.
        log: where each check is appended as one JSON line.
    """

    def __init__(self, config: RunConfig, log: Path, show_progress: bool = False) -> None:
        rule = config.train_generator.check
        if rule is None:
            raise ValueError("train_generator.check is not set")
        self.config, self.rule, self.log = config, rule, Path(log)
        data = config.data.model_copy(update={"subset": None})
        self.train = load_dataset(data, "train")
        trained = fidelity_classifier(data, config.fidelity, config.seed, config.run_dir / "fidelity", show_progress)
        if trained is None:
            raise SynthposError("train_generator.check judges positives by their class, but the training split has "
                                "no labels; set train_generator.check=null")
        self.classifier, self.classifier_info = trained
        self.settings = config.generate.model_copy(update={"candidates": rule.candidates, "compile": False})

    def history(self) -> list[dict[str, Any]]:
        """The checks made so far, in order. A last line a kill cut short (no newline) is cut off the file,
        so that check is made again and the next line is appended whole."""
        if not self.log.is_file():
            return []
        data = self.log.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with open(self.log, "r+b") as fh:
                fh.truncate(len(data))
        try:
            return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except ValueError as err:
            raise SynthposError(f"{self.log} is damaged ({err}); delete it to check again from the next check's "
                                "step (the stop rule then starts its count anew)") from None

    def __call__(self, model_dir: Path, step: int) -> dict[str, Any]:
        start = time.monotonic()
        n = min(self.rule.anchors, len(self.train))
        anchors = self.train.images[:n]
        labels = None if self.train.labels is None else self.train.labels[:n]
        # Through the registry, not the generators package: training calls this check, so the
        # generators import evaluation, never the other way round.
        generator = GENERATORS.get(self.settings.kind).from_config(model_dir, self.settings, self.config.seed, default_device())
        generator.check_images(anchors)
        with tempfile.TemporaryDirectory() as work:  # what prepare() fits (neighbours, a noise fit) is the check's alone
            generator.prepare(self.train.images, self.train.labels, Path(work) / "store")
            candidates = generator.generate(anchors, 0, labels)
        made_with = generator.record()
        stats = PositivesStats(self.train.mean, self.train.std, self.classifier, train_images=self.train.images)
        stats.add(anchors, candidates, labels, np.arange(n))
        summary = stats.summary(self.train.images[:2000], None if self.train.labels is None else self.train.labels[:2000])
        check = {
            "step": step,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "fidelity": None if summary["fidelity"] is None else summary["fidelity"]["fidelity"],
            "check_s": None,
            "sampling": {k: getattr(self.settings, k) for k in
                         ("sampler", "num_steps", "interpolation_weight", "strength", "clip_x0", "eta", "share_anchor_noise")}
            | {k: v for k, v in made_with.items() if k in CONDITION_DIALS and v is not None},  # a conditional's dials
            **{k: summary[k] for k in ("anchors", "candidates", "diversity", "memorisation")},
            "classifier_test_top1": (self.classifier_info or {}).get("test_top1"),
        }
        check["floors_met"] = floors_met(check, self.rule)
        check["check_s"] = round(time.monotonic() - start, 1)
        with open(self.log, "a") as fh:
            fh.write(json.dumps(check) + "\n")
        return check
