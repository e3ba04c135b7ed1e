"""SimCLR / CLSP-SimCLR loss against a hand-written reference; PretrainBatches draws."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from synthpos.config import BackboneConfig, SyntheticConfig
from synthpos.data import ImageDataset
from synthpos.data.batch import PretrainBatch
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.methods.pretrain import PretrainBatches, _first
from synthpos.methods.simclr import SimCLR
from synthpos.models.backbones import build_backbone

N, C, H = 6, 1, 12
TAU = 0.2


class FakeAugment(nn.Module):
    """Deterministic, distinct 'views': call k returns a fixed transform number k mod 3.

    compute_loss asks for two views of the real images, then one of the synthetic ones,
    so real views are (identity, flip) and the synthetic view is (shift of its own input).
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 - 0.5
        k, self.calls = self.calls % 3, self.calls + 1
        return [x, x.flip(-1), x.roll(1, dims=-2)][k]


def _views(images: torch.Tensor, k: int) -> torch.Tensor:
    x = images.float() / 255 - 0.5
    return [x, x.flip(-1), x.roll(1, dims=-2)][k]


class LinearBackbone(nn.Module):
    """Flatten + linear: unlike a random pooled ConvNet, it keeps random images far apart."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(C * H * H, 16, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _method(synthetic_weight: float | None, channels_last: bool = False, convnet: bool = False) -> SimCLR:
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="convnet", width=4), C) if convnet else LinearBackbone()
    synthetic = None if synthetic_weight is None else SyntheticConfig(mode="clsp", weight=synthetic_weight)
    method = SimCLR(backbone, FakeAugment(), projector_hidden_dim=16, projector_out_dim=8,
                    temperature=TAU, channels_last=channels_last, synthetic=synthetic)
    method.setup("fit")
    # Eval mode: BatchNorm uses fixed statistics, so one pass over all views equals one pass per view.
    return method.eval()


def _batch(seed: int = 0) -> PretrainBatch:
    g = torch.Generator().manual_seed(seed)
    return PretrainBatch(
        images=torch.randint(0, 256, (N, C, H, H), generator=g, dtype=torch.uint8),
        synthetic=torch.randint(0, 256, (N, C, H, H), generator=g, dtype=torch.uint8),
        indices=torch.arange(N),
        labels=torch.zeros(N, dtype=torch.int64),
    )


def ntxent_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent written out with loops (Chen et al., 2020, eq. 1)."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sims = [torch.dot(z[i], z[k]) / tau for k in range(n2)]
        denominator = sum(torch.exp(sims[k]) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(sims[j]) / denominator)
    return total / n2


def _projections(method: SimCLR, batch: PretrainBatch) -> list[torch.Tensor]:
    """z1, z2, z3: each view through the backbone and projector on its own."""
    with torch.no_grad():
        sources = [batch.images, batch.images, batch.synthetic]
        return [method.projector(method.backbone(_views(src, k))).double() for k, src in enumerate(sources)]


def test_simclr_loss_is_ntxent_of_the_two_real_views() -> None:
    method = _method(None)
    batch = _batch()
    with torch.no_grad():
        loss, logs = method.compute_loss(batch)
    z1, z2, _ = _projections(method, batch)
    expected = ntxent_reference(z1, z2, TAU)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(logs) == {"loss", "ntxent"}
    assert method.augment.calls == 2  # no synthetic view without synthetic positives


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_clsp_loss_adds_the_synthetic_term(weight: float) -> None:
    method = _method(weight)
    batch = _batch(1)
    with torch.no_grad():
        loss, logs = method.compute_loss(batch)
    z1, z2, z3 = _projections(method, batch)
    ntxent = ntxent_reference(z1, z2, TAU)
    cos = (z1 * z3).sum(1) / (z1.norm(dim=1) * z3.norm(dim=1))
    synthetic = (2 - 2 * cos).mean()
    assert logs["ntxent"].item() == pytest.approx(ntxent.item(), rel=1e-5)
    assert logs["synthetic"].item() == pytest.approx(synthetic.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ntxent + weight * synthetic).item(), rel=1e-5)
    assert logs["loss"].item() == loss.item()
    assert synthetic.item() > 1e-3  # the check above is not vacuous


def test_clsp_loss_depends_on_the_synthetic_images() -> None:
    method = _method(1.0)
    batch = _batch(2)
    with torch.no_grad():
        first, _ = method.compute_loss(batch)
        other = dataclasses.replace(batch, synthetic=batch.images.flip(0))  # other candidates, same real images
        second, logs = method.compute_loss(other)
    assert abs(first.item() - second.item()) > 1e-4
    z1, z2, z3 = _projections(method, other)
    cos = (z1 * z3).sum(1) / (z1.norm(dim=1) * z3.norm(dim=1))
    assert logs["synthetic"].item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-5)


def test_synthetic_view_is_not_a_negative() -> None:
    # With lambda = 0 the synthetic view must not change the loss at all: as a negative it would.
    plain, clsp = _method(None), _method(0.0)
    clsp.load_state_dict(plain.state_dict())
    batch = _batch(3)
    with torch.no_grad():
        a, _ = plain.compute_loss(batch)
        b, logs = clsp.compute_loss(batch)
    assert b.item() == pytest.approx(a.item(), rel=1e-6)
    assert logs["synthetic"].item() > 1e-3


def test_clsp_gradient_reaches_the_backbone_through_the_synthetic_view() -> None:
    method = _method(1.0, channels_last=True, convnet=True).train()
    loss, _ = method.compute_loss(_batch(4))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())
    assert method.backbone.features[0].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- PretrainBatches


A, K = 20, 4


@pytest.fixture
def dataset() -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 256, size=(A, 5, 5, 1), dtype=np.uint8)
    labels = np.arange(A, dtype=np.int64) % 10
    return ImageDataset("toy", "train", images, labels, [str(i) for i in range(10)], (0.5,), (0.5,))


@pytest.fixture
def store(tmp_path: Path, dataset: ImageDataset) -> SyntheticStore:
    """Candidate c of anchor a carries (a, c) in its first two pixels."""
    store = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("toy", "train", dataset.images),
                                  candidates=K, shard_size=7, generator={"kind": "test"})
    data = np.random.default_rng(1).integers(0, 256, size=(A, K, 5, 5, 1), dtype=np.uint8)
    data[:, :, 0, 0, 0] = np.arange(A)[:, None]
    data[:, :, 0, 1, 0] = np.arange(K)[None, :]
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, data[start:end])
    return SyntheticStore.open(store.path, "toy", "train", dataset.images)


def test_batches_without_store(dataset: ImageDataset) -> None:
    idx = [7, 0, 19, 7]
    batch = PretrainBatches(dataset).__getitems__(idx)
    assert batch.second is None and batch.synthetic is None
    assert batch.indices.tolist() == idx
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (4, 1, 5, 5)
    for row, i in enumerate(idx):
        np.testing.assert_array_equal(batch.images[row].permute(1, 2, 0).numpy(), dataset.images[i])
    assert batch.labels.tolist() == [i % 10 for i in idx]


def test_batches_with_store_draw_one_of_the_anchors_candidates(dataset: ImageDataset, store: SyntheticStore) -> None:
    batches = PretrainBatches(dataset, store, seed=0)
    idx = [3, 14, 6, 7, 19, 0]  # crosses shard boundaries (7, 14)
    batch = batches.__getitems__(idx)
    synthetic = batch.synthetic
    assert synthetic.dtype == torch.uint8 and synthetic.shape == (len(idx), 1, 5, 5)
    for row, a in enumerate(idx):
        image = synthetic[row].permute(1, 2, 0).numpy()
        assert image[0, 0, 0] == a  # this anchor's candidate, not another anchor's
        c = int(image[0, 1, 0])
        assert 0 <= c < K
        np.testing.assert_array_equal(image, store[a][c])


def test_every_candidate_slot_is_drawn_uniformly(dataset: ImageDataset, store: SyntheticStore) -> None:
    batches = PretrainBatches(dataset, store, seed=1)
    counts: dict[int, Counter] = {a: Counter() for a in range(A)}
    draws = 200
    for _ in range(draws):
        synthetic = batches.__getitems__(list(range(A))).synthetic
        for a in range(A):
            counts[a][int(synthetic[a, 0, 0, 1])] += 1
    for a in range(A):
        assert set(counts[a]) == set(range(K)), (a, counts[a])
    # Pooled over anchors: 4000 draws, 1000 expected per slot; a chi-square with 3 dof
    # exceeds 16.3 with probability 0.001.
    pooled = Counter()
    for c in counts.values():
        pooled.update(c)
    expected = A * draws / K
    chi2 = sum((pooled[c] - expected) ** 2 / expected for c in range(K))
    assert chi2 < 16.3, pooled


def test_draws_change_between_epochs(dataset: ImageDataset, store: SyntheticStore) -> None:
    batches = PretrainBatches(dataset, store, seed=0)
    first = batches.__getitems__(list(range(A))).synthetic[:, 0, 0, 1]
    second = batches.__getitems__(list(range(A))).synthetic[:, 0, 0, 1]
    assert not torch.equal(first, second)


def test_dataloader_yields_whole_batches(dataset: ImageDataset, store: SyntheticStore) -> None:
    loader = DataLoader(PretrainBatches(dataset, store), batch_size=8, shuffle=True, drop_last=True, collate_fn=_first)
    seen = []
    for batch in loader:
        assert batch.images.shape == (8, 1, 5, 5) and batch.synthetic.shape == (8, 1, 5, 5)
        assert (batch.synthetic[:, 0, 0, 0] == batch.indices.to(torch.uint8)).all()
        seen += batch.indices.tolist()
    assert len(seen) == 16 and len(set(seen)) == 16
