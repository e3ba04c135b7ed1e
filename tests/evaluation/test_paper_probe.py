"""linear-paper on cached plain + mirror features equals re-encoding flipped images every epoch."""

from __future__ import annotations

import numpy as np
import torch

from synthpos.evaluation.features import extract_features
from synthpos.evaluation.paper_probe import paper_linear_probe, train_flip_probe
from synthpos.models.backbones import ConvNet


def test_cached_mirror_features_equal_reencoding_every_epoch() -> None:
    torch.manual_seed(0)
    backbone = ConvNet(in_channels=1, width=4)
    # BatchNorm with non-trivial running statistics: eval mode must use them, in any batch.
    backbone.train()
    with torch.no_grad():
        backbone(torch.randn(32, 1, 12, 12))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 12, 1), dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, 3, 40))
    mean, std = (0.5,), (0.25,)
    plain = extract_features(backbone, images, 12, mean, std)
    mirror = extract_features(backbone, images[:, :, ::-1], 12, mean, std)
    assert not torch.allclose(plain, mirror)  # the flip changes the features: the test is not vacuous
    calls = []

    def reencode(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        batch = images[idx.numpy()].copy()
        batch[flip.numpy()] = batch[flip.numpy()][:, :, ::-1]
        calls.append(len(idx))
        return extract_features(backbone, batch, 12, mean, std, batch_size=7)  # other batches than the cache's

    def cached(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        return torch.where(flip[:, None], mirror[idx], plain[idx])

    kwargs = dict(dim=plain.shape[1], num_classes=3, epochs=3, lr=1.0, batch_size=16, seed=3)
    a = train_flip_probe(reencode, labels, **kwargs)
    b = train_flip_probe(cached, labels, **kwargs)
    assert sum(calls) == 3 * 40  # every image re-encoded in every epoch
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-4, atol=1e-5)
    # The public function is the cached path.
    out = paper_linear_probe(plain, mirror, labels, plain, labels, 3, epochs=3, batch_size=16, seed=3)
    with torch.no_grad():
        expected = float((b(plain).argmax(1) == labels).double().mean())
    assert out["train_top1"] == expected


def test_flip_probe_draws_a_flip_per_image_per_epoch() -> None:
    flips_seen = []

    def record(idx, flip):
        flips_seen.append(flip.clone())
        return torch.zeros(len(idx), 2)

    train_flip_probe(record, torch.zeros(1000, dtype=torch.long), dim=2, num_classes=2, epochs=2, batch_size=1000)
    first, second = flips_seen
    assert 0.45 < first.float().mean() < 0.55 and not torch.equal(first, second)
