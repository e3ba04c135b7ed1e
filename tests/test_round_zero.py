"""Round 0 end to end: the encoder an embedding-conditioned generator is trained on, pretrained by the run itself,
and no label anywhere on the way from the images to the store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from synthpos.config import load_config
from synthpos.errors import SynthposError
from synthpos.registry import DATASETS
from synthpos.stages import run_stage

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]

TINY = [
    "data.subset=48", "pretrain.method=simclr", "pretrain.synthetic.mode=clsp", "pretrain.backbone.name=convnet", "pretrain.backbone.width=4",
    "pretrain.projector_hidden_dim=16", "pretrain.projector_out_dim=8", "pretrain.batch_size=16", "pretrain.epochs=1",
    "pretrain.precision=fp32", "pretrain.augment.crop_size=28", "pretrain.optimizer.warmup_epochs=0",
    "pretrain.accelerator=cpu", "pretrain.knn_every_epochs=0", "pretrain.online_probe=false",
    "train_generator.unet.block_out_channels=[8,16]", "train_generator.unet.attention_levels=[1]",
    "train_generator.unet.norm_num_groups=4", "train_generator.max_steps=3", "train_generator.batch_size=8",
    "train_generator.warmup_steps=0", "train_generator.precision=fp32", "train_generator.condition.neighbour_prob=0.5",
    "train_generator.condition.neighbours=3", "generate.candidates=1", "generate.num_steps=2", "generate.shard_size=24",
    "generate.precision=fp32", "generate.guidance_scale=2.0", "generate.condition_noise=0.1",
    "generate.clsp.neighbour_blend=0.3", "generate.clsp.neighbours=2",
]


def _content(path: Path) -> bytes:
    """A file's bytes; a JSON description without its provenance (which records the run's paths, never compared)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data.pop("provenance", None)
        return json.dumps(data, sort_keys=True).encode()
    return path.read_bytes()


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every output file under ``folder``; records, logs, checkpoints and saved configs (which name the
    run directory) are left out."""
    skip = ("stage_record.json", "COMPLETE", "logs", "checkpoint", "train_config.json", "verified.json",
            "summary.json", "config.yaml", "embeddings", "loss.log", "manifest.json")
    return {str(p.relative_to(folder)): hashlib.sha256(_content(p)).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(skip) for part in p.relative_to(folder).parts)}


def _rounds(run_dir: Path) -> dict[str, dict[str, str]]:
    config = load_config(None, [f"run_dir={run_dir}", *TINY])
    for name in ("encoder", "train-generator", "generate"):
        run_stage(name, config, show_progress=False)
    manifest = json.loads((config.store_dir / "manifest.json").read_text())
    return {"encoder": _digest(config.encoder_dir), "generator": _digest(config.generator_dir / "model"),
            "store": _digest(config.store_dir), "store_record": manifest["generator"]}


def test_scrambled_labels_give_the_same_encoder_generator_and_store(tmp_path, monkeypatch):
    honest = _rounds(tmp_path / "labels")
    assert honest["encoder"] and honest["generator"] and any(k.startswith("shard-") for k in honest["store"])
    assert "condition/encoder/backbone.pt" in honest["generator"]
    source = DATASETS.get("fashion_mnist")
    real_load = source.load

    def scrambled(split, root, settings=None, **places):
        dataset = real_load(split, root, settings, **places)
        dataset.labels = np.random.default_rng(7).permutation(dataset.labels[::-1].copy())
        return dataset

    monkeypatch.setattr(source, "load", scrambled)
    assert _rounds(tmp_path / "scrambled") == honest


def test_train_generator_alone_says_round_zero_comes_first(tmp_path):
    config = load_config(None, [f"run_dir={tmp_path}", *TINY])
    with pytest.raises(SynthposError, match="synthpos run --config FILE` pretrains it first"):
        run_stage("train-generator", config, show_progress=False, explicit=True)
    assert not (tmp_path / "generator").exists()


def test_round_zero_refuses_a_method_that_uses_labels(tmp_path):
    config = load_config(None, [f"run_dir={tmp_path}", *TINY, "pretrain.method=supcon"])
    with pytest.raises(SynthposError, match="uses labels; the condition must be label-free"):
        run_stage("encoder", config, show_progress=False)
