"""Round 0: the frozen encoder an embedding-conditioned generator is trained on.

It is pretrained with the run's settings and no synthetic positives into ``<run_dir>/encoder``;
its record is the train-generator stage's input, so an encoder pretrained again with other
settings redoes the generator. A row of :data:`synthpos.stages.table.STAGES`, run by
``synthpos run`` only when ``train_generator.condition`` asks for an encoder it does not name.
"""

from __future__ import annotations

from pathlib import Path

from synthpos.config import RunConfig
from synthpos.errors import SynthposError


def encoder_feeds(config: RunConfig) -> str | None:
    """None when the generator is embedding-conditioned on an encoder this run pretrains (round 0)."""
    condition = config.train_generator.condition
    if condition is None:
        return "the generator is not embedding-conditioned (train_generator.condition)"
    if condition.encoder is not None:
        return f"train_generator.condition.encoder={condition.encoder} is given"
    return None


def encoder_config(config: RunConfig) -> RunConfig:
    """Round 0's settings: the run's pretraining without synthetic positives, into ``<run_dir>/encoder``."""
    sub = config.model_copy(deep=True)
    sub.pretrain.synthetic.mode = "none"
    sub.pretrain.output_dir = config.encoder_dir
    return sub


def run_encoder(config: RunConfig, show_progress: bool) -> Path:
    from synthpos.methods.pretrain import pretrain_stage

    return pretrain_stage(encoder_config(config), show_progress=show_progress)


def check_encoder(config: RunConfig, explicit: bool, upfront: bool) -> None:
    """The condition must be label-free: round 0 refuses a method that reads labels."""
    from synthpos.registry import METHODS

    if METHODS.get(config.pretrain.method).needs_labels:
        raise SynthposError(f"round 0 pretrains the generator's encoder with pretrain.method={config.pretrain.method}, "
                            "which uses labels; the condition must be label-free: use a self-supervised method or "
                            "set train_generator.condition.encoder to a backbone.pt")
