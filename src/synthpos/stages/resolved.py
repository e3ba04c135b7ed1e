"""What a stage's record holds beside its settings: the values the config leaves open.

``precision: auto`` resolves per machine, a generator's record of what decides a store's
bytes comes from the generator itself, and a file read from elsewhere (an encoder, a scorer,
a checkpoint) is recorded by its bytes, not its path. Each function is one row's
``resolved`` (:class:`synthpos.stages.table.Stage`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from synthpos.config import RunConfig


def sha256(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (what a record keeps of a file's bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _device_precision(precision: str, device: str) -> str:
    import torch

    from synthpos.precision import resolve_precision

    return resolve_precision(precision, torch.device(device))


def train_generator_resolved(config: RunConfig) -> dict[str, Any]:
    import torch

    # The generator is trained with the generation seed (generate.seed, else the run's), so the
    # seeds of a `run --seeds` share one generator.
    out = {"precision": _device_precision(config.train_generator.precision, "cuda" if torch.cuda.is_available() else "cpu"),
           "generation_seed": config.generation_seed}
    encoder = config.condition_encoder
    if config.train_generator.condition is not None and config.train_generator.condition.encoder is not None \
            and encoder.is_file():
        # The encoder's bytes, not its path: an encoder pretrained again with other settings redoes the generator.
        # (Round 0's encoder is an input stage: its record stands in the generator's.)
        out["condition_encoder_sha256"] = sha256(encoder)
    return out


_GENERATOR_RECORDS: dict[tuple, dict[str, Any]] = {}


def _files_state(folder: Path) -> tuple:
    """(name, size, mtime) of every file under ``folder``: changes when a generator is rewritten there."""
    if not folder.is_dir():
        return ()
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file()))


def generate_resolved(config: RunConfig) -> dict[str, Any]:
    """The generator's own record of what decides the bytes (the store's manifest keeps the same one).

    Building it loads the generator, so it is kept per (weights on disk, settings, seed, device).
    """
    from synthpos.generators.diffusion import resolve_generator_dir
    from synthpos.generators.generate import default_device, generator_record

    device = default_device()
    folder = resolve_generator_dir(config.generator_model)
    seed = config.generation_seed
    key = (str(folder), _files_state(folder), config.generate.model_dump_json(), seed, str(device))
    if key not in _GENERATOR_RECORDS:
        _GENERATOR_RECORDS[key] = generator_record(config.generator_model, config.generate, seed, device)
    return {"generator": _GENERATOR_RECORDS[key]}


def _pretrain_device(config: RunConfig) -> str:
    import torch

    accelerator = config.pretrain.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else "cpu"


def pretrain_resolved(config: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"precision": _device_precision(config.pretrain.precision, _pretrain_device(config))}
    if config.pretrain.synthetic.scorer is not None and Path(config.pretrain.synthetic.scorer).is_file():
        out["scorer_sha256"] = sha256(Path(config.pretrain.synthetic.scorer))
    return out


def evaluate_resolved(config: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"feature_size": config.evaluate.feature_size or config.pretrain.augment.crop_size}
    if config.evaluate.checkpoint is not None and Path(config.evaluate.checkpoint).is_file():
        out["checkpoint_sha256"] = sha256(Path(config.evaluate.checkpoint))  # a backbone from elsewhere
    return out
