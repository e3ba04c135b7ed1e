"""``pretrain.synthetic.augment``: views made from stored candidates get their own augmentation (AdaInf).

Null (the default): every view is exactly what it was before the setting existed, the run's
augmentation of each source drawn from the same random stream. Set: the views whose source is a
candidate (clsp's third view, multipos's extra views, replace's replaced rows) use it, and only
they; keys it leaves out take ``pretrain.augment``'s values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import AugmentConfig, BackboneConfig, PretrainConfig, SyntheticConfig, load_config
from synthpos.data import ImageDataset
from synthpos.data.import_store import import_store
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.errors import SynthposError
from synthpos.methods.pretrain import PretrainBatches, build_method

A, K, S = 24, 4, 8
#: real views: random crops of 10-30% of the area with colour jitter, never the image itself
REAL = AugmentConfig(crop_size=S, crop_scale=(0.1, 0.3), jitter_prob=1.0, grayscale_prob=0.0, hflip_prob=0.5)
#: synthetic views: no crop, no flip, no colour: the normalised candidate itself
IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)
MODES = {"clsp": {}, "multipos": {"positives": 2}, "replace": {"replace_view": "each", "replace_prob": 0.5}}


@pytest.fixture
def dataset() -> ImageDataset:
    rgb = np.random.default_rng(0).integers(0, 256, size=(A, S, S, 3), dtype=np.uint8)
    return ImageDataset("toy", "train", rgb, np.arange(A) % 3, ["a", "b", "c"], (0.5,) * 3, (0.5,) * 3)


@pytest.fixture
def store(tmp_path: Path, dataset: ImageDataset) -> SyntheticStore:
    data = np.random.default_rng(1).integers(0, 256, size=(A, K, S, S, 3), dtype=np.uint8)
    np.save(tmp_path / "candidates.npy", data)
    return import_store(tmp_path / "candidates.npy", "clsp", dataset, tmp_path / "store", shard_size=8)


def _method(dataset: ImageDataset, mode: str, augment: AugmentConfig | None):
    synthetic = SyntheticConfig(mode=mode, augment=augment, **MODES[mode])
    cfg = PretrainConfig(method="simclr", backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=16,
                         projector_out_dim=8, batch_size=8, channels_last=False, precision="fp32",
                         synthetic=synthetic, augment=REAL)
    return build_method(cfg, dataset)


def _views(method, dataset, store, seed: int = 5):
    batch = PretrainBatches(dataset, store, seed=0, mode=method.config.synthetic).__getitems__(list(range(A)))
    torch.manual_seed(seed)
    return batch, method.mode.views(method, batch)


def _is_identity(view: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per row: the view is the normalised source (no crop, flip or colour change). Shape: (B,) bool."""
    whole = (source.float() / 255 - 0.5) / 0.5
    return torch.tensor([torch.allclose(a, b, atol=1e-5) for a, b in zip(view, whole)])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_unset_the_views_are_bit_identical_to_the_run_augmentation_of_each_source(dataset, store, mode) -> None:
    method = _method(dataset, mode, None)
    assert method.synthetic_augment is None
    batch, views = _views(method, dataset, store)
    torch.manual_seed(5)  # what a step made before the setting existed: the run's augmentation of every source
    reference = [method.augment(source) for source in method.mode.sources(batch)]
    assert len(views) == len(reference) == (4 if mode == "multipos" else 3 if mode == "clsp" else 2)
    for view, ref in zip(views, reference):
        assert torch.equal(view, ref)
    if mode == "replace":
        return  # per-row synthetic views draw their rows again, so only whole synthetic views keep the stream
    # The same parameters given explicitly: the same draws, the same bits.
    same = _method(dataset, mode, AugmentConfig(**REAL.model_dump()))
    assert same.synthetic_augment is not None
    for view, ref in zip(_views(same, dataset, store)[1], reference):
        assert torch.equal(view, ref)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_set_the_synthetic_views_and_only_they_take_it(dataset, store, mode) -> None:
    method = _method(dataset, mode, IDENTITY)
    batch, views = _views(method, dataset, store)
    sources = method.mode.sources(batch)
    for v, (view, source) in enumerate(zip(views, sources)):
        if mode == "replace":
            synthetic = batch.replaced[:, v]
            assert synthetic.any() and not synthetic.all()
        else:
            synthetic = torch.full((A,), v >= 2)
        # Synthetic rows: colours (and pixels) untouched; real rows: cropped and jittered as before.
        assert torch.equal(_is_identity(view, source), synthetic), (mode, v)
    loss, _ = method.compute_loss(batch)  # the training step takes the same path
    assert torch.isfinite(loss)


def test_keys_left_out_take_pretrain_augment_values() -> None:
    config = load_config(None, ["pretrain.augment.crop_size=28", "pretrain.augment.crop_scale=[0.2,1.0]",
                                "pretrain.synthetic.augment.jitter_prob=0.2", "pretrain.synthetic.augment.hue=0.0"])
    own, real = config.pretrain.synthetic.augment, config.pretrain.augment
    assert own.jitter_prob == 0.2 and own.hue == 0.0
    assert own.crop_size == 28 and own.crop_scale == (0.2, 1.0)  # from pretrain.augment, not AugmentConfig's defaults
    assert own.model_dump(exclude={"jitter_prob", "hue"}) == real.model_dump(exclude={"jitter_prob", "hue"})
    # A saved config reads back the same (every key written out).
    again = load_config(None, [f"pretrain={config.pretrain.model_dump_json()}"])
    assert again.pretrain.synthetic.augment == own


def test_unset_it_is_not_written_and_another_crop_size_is_refused() -> None:
    # Left out of dumps while unset: stage records of runs made before the key existed stay current.
    assert "augment" not in load_config(None, []).model_dump(mode="json")["pretrain"]["synthetic"]
    with pytest.raises(SynthposError, match="pretrain.synthetic.augment.crop_size=20 must equal"):
        load_config(None, ["pretrain.synthetic.augment.crop_size=20"])


def test_set_it_changes_the_pretraining_record_only(tmp_path) -> None:
    from synthpos.stages import BY_NAME

    base = [f"run_dir={tmp_path}", "pretrain.synthetic.mode=multipos"]
    plain, weak = load_config(None, base), load_config(None, [*base, "pretrain.synthetic.augment.hue=0.05"])
    for stage in ("train-generator", "generate"):
        assert BY_NAME[stage].settings(plain) == BY_NAME[stage].settings(weak)
    changed = {k: v for k, v in BY_NAME["pretrain"].settings(weak).items() if BY_NAME["pretrain"].settings(plain).get(k) != v}
    assert changed["pretrain.synthetic.augment.hue"] == 0.05 and "pretrain.synthetic.augment.crop_size" in changed
