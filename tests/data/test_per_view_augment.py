"""Per-view blur and solarize probabilities (GenView MoCo v3: view 1 blur 1.0 / solarize 0, view 2 blur 0.1 /
solarize 0.2; mocov3_resnet50_8xb512-amp-coslr-100e_in1k_singleview_clipmask.py:88-147).

The reference is the probability itself: on images where each op leaves a mark (a checkerboard that a
blur flattens, a bright image that solarization darkens), the share of marked views is each view's p.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from synthpos.config import AugmentConfig, BackboneConfig, PretrainConfig
from synthpos.data import ImageDataset
from synthpos.data.augment import BatchAugment
from synthpos.data.batch import PretrainBatch
from synthpos.methods.pretrain import build_method

N, S = 2000, 8
_PLAIN = dict(crop_size=S, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0,
              hflip_prob=0.0, mean=(0.0,), std=(1.0,))


def _checkerboard(n: int = N) -> torch.Tensor:
    board = (torch.arange(S)[:, None] + torch.arange(S)[None, :]) % 2
    return (board * 200 + 30).to(torch.uint8).expand(n, 1, S, S).contiguous()


def _near(events: torch.Tensor, p: float) -> bool:
    """The share of ``events`` is p within 5 binomial standard deviations (exact at p 0 and 1)."""
    return abs(events.float().mean().item() - p) <= 5 * np.sqrt(p * (1 - p) / len(events))


def test_each_view_blurs_with_its_own_probability() -> None:
    augment = BatchAugment(**_PLAIN, blur_prob=(1.0, 0.1), blur_sigma=(1.0, 2.0))
    images = _checkerboard()
    g = torch.Generator().manual_seed(0)
    blurred = [augment(images, g, view=v).std(dim=(1, 2, 3)) < 0.2 for v in (0, 1, 2)]  # the board's std is 0.39
    assert _near(blurred[0], 1.0) and _near(blurred[1], 0.1) and _near(blurred[2], 0.1)  # view 3 takes view 2's
    assert augment(images, g).std(dim=(1, 2, 3)).max() < 0.2  # the default view is view 1


def test_each_view_solarizes_with_its_own_probability() -> None:
    augment = BatchAugment(**_PLAIN, solarize_prob=(0.0, 0.2))
    bright = torch.full((N, 1, S, S), 230, dtype=torch.uint8)  # 0.9, solarized to 0.1
    g = torch.Generator().manual_seed(1)
    solarized = [augment(bright, g, view=v).mean(dim=(1, 2, 3)) < 0.5 for v in (0, 1)]
    assert _near(solarized[0], 0.0) and _near(solarized[1], 0.2)


def test_one_probability_is_every_views_and_draws_as_before() -> None:
    images = _checkerboard(16)
    one = BatchAugment(blur_prob=0.5, solarize_prob=0.2, crop_size=S)
    pair = BatchAugment(blur_prob=(0.5, 0.5), solarize_prob=(0.2, 0.2), crop_size=S)
    for view in (0, 1):
        a = one(images, torch.Generator().manual_seed(2), view=view)
        b = pair(images, torch.Generator().manual_seed(2), view=view)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert one.blur_prob == 0.5 and pair.blur_prob == (0.5, 0.5)


@pytest.mark.parametrize("bad", [[1.5, 0.1], [0.1, 0.2, 0.3], -0.1])
def test_bad_per_view_probabilities_are_config_errors(bad) -> None:
    with pytest.raises(ValidationError, match="blur_prob"):
        AugmentConfig(blur_prob=bad)
    assert AugmentConfig(blur_prob=[1.0, 0.1]).blur_prob == (1.0, 0.1)


def test_the_training_step_gives_each_view_its_own_augmentation() -> None:
    rng = np.random.default_rng(0)
    images = np.full((N // 4, S, S, 1), 230, dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, rng.integers(0, 2, len(images)), ["a", "b"], (0.0,), (1.0,))
    cfg = PretrainConfig(method="simclr", backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=8,
                         projector_out_dim=4, channels_last=False, precision="fp32",
                         augment=AugmentConfig(crop_size=S, jitter_prob=0.0, grayscale_prob=0.0, solarize_prob=[0.0, 1.0]))
    method = build_method(cfg, dataset)
    batch = PretrainBatch(indices=torch.arange(len(images)), images=torch.from_numpy(images).permute(0, 3, 1, 2))
    first, second = method.mode.views(method, batch)
    assert (first.mean(dim=(1, 2, 3)) > 0.5).all() and (second.mean(dim=(1, 2, 3)) < 0.5).all()
