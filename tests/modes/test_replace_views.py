"""Which views the replace mode gives a synthetic source (``replace_view``), with what probability,
and that a synthetic view skips RandomResizedCrop when ``crop_synthetic`` is off.

The reference is the official loaders, written out as probabilities: GenerativeSSL's DALI loader
(view 2 only), its SimCLR loader (each view independently with p, its own candidate, no crop on
a synthetic view), GenView's MultiView (one view drawn uniformly, then p).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from synthpos.config import AugmentConfig, BackboneConfig, PretrainConfig, SyntheticConfig
from synthpos.data import ImageDataset
from synthpos.data.augment import BatchAugment
from synthpos.data.import_store import import_store
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.methods.pretrain import PretrainBatches, build_method

A, K, S = 30, 4, 8
REPEATS = 200  # 6000 images per draw
REAL = 255


@pytest.fixture
def dataset() -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 256, size=(A, S, S, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = REAL  # real images carry 255 in pixel (0, 0); candidates carry their anchor index
    return ImageDataset("toy", "train", images, np.arange(A) % 3, ["a", "b", "c"], (0.5,), (0.5,))


@pytest.fixture
def store(tmp_path: Path, dataset: ImageDataset) -> SyntheticStore:
    """Candidate c of anchor a carries (a, c) in its first two pixels; written as a CLSP array and imported."""
    data = np.random.default_rng(1).integers(0, 200, size=(A, K, S, S, 1), dtype=np.uint8)
    data[:, :, 0, 0, 0] = np.arange(A)[:, None]
    data[:, :, 0, 1, 0] = np.arange(K)[None, :]
    np.save(tmp_path / "candidates.npy", data)
    return import_store(tmp_path / "candidates.npy", "clsp", dataset, tmp_path / "store", shard_size=8)


def _draw(dataset, store, mode: str = "replace", **settings):
    """The two views' sources of 6000 draws: (synthetic?, candidate) per view, and the batch."""
    idx = list(range(A)) * REPEATS
    batch = PretrainBatches(dataset, store, seed=3, mode=mode, **settings).__getitems__(idx)
    first = batch.images if batch.first is None else batch.first
    synthetic, candidate = [], []
    for source in (first, batch.second):
        marker = source[:, 0, 0, 0].numpy()
        is_synthetic = marker != REAL
        # A synthetic source is a candidate of its own anchor, stored pixel for pixel.
        np.testing.assert_array_equal(marker[is_synthetic], np.asarray(idx)[is_synthetic])
        synthetic.append(is_synthetic)
        candidate.append(np.where(is_synthetic, source[:, 0, 0, 1].numpy(), -1))
    synthetic = np.stack(synthetic, 1)
    np.testing.assert_array_equal(batch.replaced.numpy(), synthetic)  # the batch says which views are synthetic
    return synthetic, np.stack(candidate, 1)


def _near(events: np.ndarray, p: float) -> bool:
    """The share of ``events`` (bool) is p within 5 binomial standard deviations (fails by chance < 1e-6)."""
    return abs(events.mean() - p) < 5 * np.sqrt(p * (1 - p) / len(events))


@pytest.mark.parametrize("mode", ["replace", "quality"])
def test_second_replaces_view_two_only(dataset, store, mode: str) -> None:
    # GenerativeSSL's DALI loader: x_s feeds every transform after the first.
    synthetic, candidate = _draw(dataset, store, mode, replace_prob=0.3)
    assert not synthetic[:, 0].any()
    assert _near(synthetic[:, 1], 0.3)
    assert all(_near(candidate[synthetic[:, 1], 1] == c, 1 / K) for c in range(K))  # uniform over K
    assert SyntheticConfig().replace_view == "second" and SyntheticConfig().crop_synthetic is True  # the default


def test_each_replaces_every_view_independently_with_its_own_candidate(dataset, store) -> None:
    # GenerativeSSL's SimCLR loader: torch.rand(1) < p per view, random.randint per synthetic image.
    synthetic, candidate = _draw(dataset, store, replace_view="each", replace_prob=0.3)
    assert _near(synthetic[:, 0], 0.3) and _near(synthetic[:, 1], 0.3)
    both = synthetic.all(axis=1)
    assert _near(both, 0.09)  # independent: p * p
    assert _near(candidate[both, 0] == candidate[both, 1], 1 / K)  # two independent candidates
    always, _ = _draw(dataset, store, replace_view="each", replace_prob=1.0)
    assert always.all()


def test_random_replaces_one_uniformly_chosen_view(dataset, store) -> None:
    # GenView's MultiView: chosen_idx = randint(2), then that view's source is generated with p.
    always, candidate = _draw(dataset, store, mode="quality", replace_view="random", replace_prob=1.0)
    assert (always.sum(axis=1) == 1).all()  # exactly one view per image
    assert _near(always[:, 0], 0.5)
    some, _ = _draw(dataset, store, replace_view="random", replace_prob=0.4)
    assert not some.all(axis=1).any()
    assert _near(some.any(axis=1), 0.4) and _near(some[:, 0], 0.2) and _near(some[:, 1], 0.2)


def test_replace_view_is_validated() -> None:
    with pytest.raises(ValidationError, match="replace_view"):
        SyntheticConfig(replace_view="third")


def test_no_crop_views_are_the_whole_image_with_the_same_draws() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    no_crop = torch.tensor([True, False, True, False, True, False])
    # Flips and colour stay on; only the crop goes.
    augment = BatchAugment(crop_size=16, crop_scale=(0.1, 0.3), hflip_prob=0.5, mean=(0.0,), std=(1.0,))
    mixed = augment(images, torch.Generator().manual_seed(1), no_crop=no_crop)
    cropped = augment(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(mixed[~no_crop], cropped[~no_crop], rtol=0, atol=0)  # the same draws elsewhere

    # Reference: without colour ops a no-crop view is the whole image, resized (bilinear upsampling), flipped where drawn.
    plain = BatchAugment(crop_size=16, crop_scale=(0.1, 0.3), jitter_prob=0.0, grayscale_prob=0.0, hflip_prob=0.5,
                         mean=(0.0,), std=(1.0,))
    out = plain(images, torch.Generator().manual_seed(1), no_crop=torch.ones(6, dtype=torch.bool))
    whole = F.interpolate(images.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    flipped = torch.tensor([torch.allclose(o, w.flip(-1), atol=1e-5) for o, w in zip(out, whole)])
    kept = torch.tensor([torch.allclose(o, w, atol=1e-5) for o, w in zip(out, whole)])
    assert (flipped | kept).all() and flipped.any() and kept.any()


def _simclr(dataset: ImageDataset, synthetic: SyntheticConfig):
    cfg = PretrainConfig(method="simclr", backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=16,
                         projector_out_dim=8, batch_size=8, channels_last=False, precision="fp32", synthetic=synthetic,
                         augment=AugmentConfig(crop_size=S, crop_scale=(0.1, 0.3), jitter_prob=0.0, grayscale_prob=0.0,
                                               hflip_prob=0.0))
    return build_method(cfg, dataset)


@pytest.mark.parametrize("crop", [False, True])
def test_a_synthetic_view_skips_the_crop_when_crop_synthetic_is_off(dataset, store, crop: bool) -> None:
    # GenerativeSSL's SimCLR loader: synthetic_transforms has no RandomResizedCrop, real_transforms has.
    config = SyntheticConfig(mode="replace", replace_view="each", replace_prob=0.5, crop_synthetic=crop)
    method = _simclr(dataset, config)
    batch = PretrainBatches(dataset, store, seed=0, mode=config).__getitems__(list(range(A)))
    views = method.mode.views(method, batch)
    sources = method.mode.sources(batch)
    assert batch.replaced.any() and not batch.replaced.all()
    for v, (view, source) in enumerate(zip(views, sources)):
        whole = (source.float() / 255 - 0.5) / 0.5  # no crop, no flip, no colour: the normalised image itself
        is_whole = torch.tensor([torch.allclose(a, b, atol=1e-5) for a, b in zip(view, whole)])
        # A crop of 10-30% of the area is never the whole image.
        assert torch.equal(is_whole, batch.replaced[:, v] & (not crop)), v
    loss, _ = method.compute_loss(batch)  # the training step takes the same path
    assert torch.isfinite(loss)


def test_replace_declares_itself_plain_on_the_anchors_store_only_at_p_one_cropped_and_otherwise_default() -> None:
    from synthpos.registry import MODES

    def plain(mode: str, **settings) -> bool:
        return MODES.get(mode).plain_on_anchors(SyntheticConfig(mode=mode, **settings))

    assert plain("replace", replace_prob=1.0) and plain("replace", replace_prob=1.0, replace_view="each")
    assert not plain("replace", replace_prob=0.5)  # half the views stay real: still plain, but the mode is not
    assert not plain("replace", replace_prob=1.0, crop_synthetic=False)  # a whole anchor resized is another view
    assert not plain("replace", replace_prob=1.0, augment={"crop_size": 32})  # its own augmentation
    assert not plain("quality", replace_prob=1.0) and not plain("clsp")  # weighted pairs; a third view
