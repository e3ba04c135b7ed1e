"""Synthetic modes: what the batches carry (replace, multipos) and what the loss does with them.

multipos and quality are checked against hand-written references: a loop over anchors
for the multi-positive InfoNCE, and GenView's pair score written out in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthpos.config import SyntheticConfig, load_config
from synthpos.data import ImageDataset
from synthpos.data.batch import PretrainBatch
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.methods.pretrain import PretrainBatches
from synthpos.methods.simclr import SimCLR
from synthpos.models.scorer import QualityScorer, fit_direction, foreground_maps, pair_scores

A, K, S = 30, 4, 6


@pytest.fixture
def dataset() -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 256, size=(A, S, S, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = 255  # real images carry 255 in pixel (0, 0); candidates carry their anchor index
    return ImageDataset("toy", "train", images, np.arange(A) % 3, ["a", "b", "c"], (0.5,), (0.5,))


@pytest.fixture
def store(tmp_path: Path, dataset: ImageDataset) -> SyntheticStore:
    """Candidate c of anchor a carries (a, c) in its first two pixels."""
    store = SyntheticStore.create(tmp_path / "store", dataset_fingerprint("toy", "train", dataset.images),
                                  candidates=K, shard_size=8, generator={"kind": "test"})
    data = np.random.default_rng(1).integers(0, 200, size=(A, K, S, S, 1), dtype=np.uint8)
    data[:, :, 0, 0, 0] = np.arange(A)[:, None]
    data[:, :, 0, 1, 0] = np.arange(K)[None, :]
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, data[start:end])
    return SyntheticStore.open(store.path, "toy", "train", dataset.images)


@pytest.mark.parametrize("mode", ["replace", "quality"])
def test_replace_swaps_the_source_of_view_two_with_probability_p(dataset, store, mode: str) -> None:
    idx = list(range(A))
    always = PretrainBatches(dataset, store, seed=0, mode=mode, replace_prob=1.0).__getitems__(idx)
    assert always.synthetic is None
    np.testing.assert_array_equal(always.second[:, 0, 0, 0].numpy(), np.arange(A))  # each anchor's own candidate
    for row in range(A):
        c = int(always.second[row, 0, 0, 1])
        np.testing.assert_array_equal(always.second[row].permute(1, 2, 0).numpy(), store[row][c])
    never = PretrainBatches(dataset, store, seed=0, mode=mode, replace_prob=0.0).__getitems__(idx)
    assert torch.equal(never.second, never.images)

    half = PretrainBatches(dataset, store, seed=0, mode=mode, replace_prob=0.5)
    swapped = [int((half.__getitems__(idx).second[:, 0, 0, 0] != 255).sum()) for _ in range(40)]
    # 1200 Bernoulli(0.5) draws: the share lies in 0.5 +- 0.06 with probability > 0.999.
    assert abs(sum(swapped) / (40 * A) - 0.5) < 0.06
    assert len(set(swapped)) > 1  # drawn anew each time


def test_multipos_batches_carry_distinct_candidates_of_the_anchor(dataset, store) -> None:
    batches = PretrainBatches(dataset, store, seed=0, mode="multipos", positives=3)
    batch = batches.__getitems__(list(range(A)))
    synthetic = batch.synthetic
    assert synthetic.shape == (A, 3, 1, S, S)
    assert (synthetic[:, :, 0, 0, 0] == torch.arange(A)[:, None]).all()
    slots = synthetic[:, :, 0, 0, 1]
    assert all(len(set(row.tolist())) == 3 for row in slots)
    with pytest.raises(SynthposError, match="positives=5"):
        PretrainBatches(dataset, store, mode="multipos", positives=5)


# ----------------------------------------------------------------------------- losses of the modes


class Views(nn.Module):
    """Deterministic views: identity, flip, then shifts, one per call in a cycle."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 - 0.5
        k, self.calls = self.calls, self.calls + 1
        return x.flip(-1) if k == 1 else x.roll(k, dims=-2)


class Linear(nn.Module):
    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(S * S, 16, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _simclr(synthetic: SyntheticConfig, scorer=None) -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(Linear(), Views(), projector_hidden_dim=16, projector_out_dim=8, temperature=0.3, channels_last=False,
                  synthetic=synthetic, scorer=scorer).eval()


def _embed(method: SimCLR, sources: list[torch.Tensor]) -> list[torch.Tensor]:
    views = Views()
    with torch.no_grad():
        return [method.projector(method.backbone(views(s))).double() for s in sources]


def test_multipos_loss_makes_every_view_of_an_image_a_positive() -> None:
    method = _simclr(SyntheticConfig(mode="multipos", positives=2))
    g = torch.Generator().manual_seed(0)
    n = 5
    batch = PretrainBatch(images=torch.randint(0, 256, (n, 1, S, S), generator=g, dtype=torch.uint8),
                          synthetic=torch.randint(0, 256, (n, 2, 1, S, S), generator=g, dtype=torch.uint8),
                          indices=torch.arange(100, 100 + n), labels=torch.zeros(n, dtype=torch.int64))
    with torch.no_grad():
        loss, _ = method.compute_loss(batch)
    z = _embed(method, [batch.images, batch.images, batch.synthetic[:, 0], batch.synthetic[:, 1]])
    z = torch.cat(z)
    z = z / z.norm(dim=1, keepdim=True)
    owner = torch.arange(n).repeat(4)
    total = 0.0
    for i in range(len(z)):
        logits = {j: float(z[i] @ z[j]) / 0.3 for j in range(len(z)) if j != i}
        log_denominator = np.log(sum(np.exp(v) for v in logits.values()))
        positives = [j for j in logits if owner[j] == owner[i]]
        assert len(positives) == 3  # the other real view and both synthetic ones, never the anchor itself
        total += -np.mean([logits[j] - log_denominator for j in positives])
    assert loss.item() == pytest.approx(total / len(z), rel=1e-5)


def _genview_score(t1: np.ndarray, t2: np.ndarray, direction: np.ndarray) -> float:
    """GenView's pair score for one pair, written out: tokens (D, h, w)."""
    pooled = []
    for t in (t1, t2):
        flat = t.reshape(t.shape[0], -1)  # (D, P)
        projection = direction @ flat
        fg = (projection - projection.min()) / (projection.max() - projection.min() + 1e-7)
        bg = 1 - fg
        fg, bg = fg / (fg.sum() + 1e-7), bg / (bg.sum() + 1e-7)
        pooled.append((flat @ fg, flat @ bg))

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    return cos(pooled[0][0], pooled[1][0]) - cos(pooled[0][1], pooled[1][1])


class ConvScorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_pair_scores_follow_genview() -> None:
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(4, 5, 3, 3, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    direction = torch.randn(5, generator=g)
    got = pair_scores(t1, t2, direction)
    want = [_genview_score(t1[i].numpy().astype(np.float64), t2[i].numpy().astype(np.float64), direction.numpy()) for i in range(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    fg, bg = foreground_maps(t1, direction)
    torch.testing.assert_close(fg.sum(1), torch.ones(4))
    torch.testing.assert_close(bg.sum(1), torch.ones(4))


def test_fit_direction_is_the_first_principal_component() -> None:
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(20, 6, 4, 4, generator=g)
    tokens[:, 0, 1:3, 1:3] += 4.0  # a bright "object" in the centre along channel 0
    direction = fit_direction(tokens)
    reference = PCA(n_components=1).fit(tokens.permute(0, 2, 3, 1).reshape(-1, 6).numpy()).components_[0]
    assert abs(float(direction @ torch.from_numpy(reference).float())) == pytest.approx(1.0, abs=1e-4)
    assert direction[0] > 0  # signed so that the centre projects higher
    with pytest.raises(SynthposError, match="1x1"):
        fit_direction(torch.randn(5, 6, 1, 1))


def test_quality_mode_weights_each_pair_by_n_softmax_of_its_score() -> None:
    network = ConvScorer().eval()
    direction = torch.tensor([1.0, -0.5, 0.2, 0.0, 0.3])
    gamma = 300.0  # random features score pairs alike; a sharp gamma makes the weights far from uniform
    scorer = QualityScorer(network, direction, gamma)
    method = _simclr(SyntheticConfig(mode="quality", scorer="unused.pt", gamma=gamma), scorer)
    plain = _simclr(SyntheticConfig(mode="replace"))
    plain.load_state_dict(method.state_dict())
    g = torch.Generator().manual_seed(1)
    n = 6
    images = torch.randint(0, 256, (n, 1, S, S), generator=g, dtype=torch.uint8)
    second = torch.randint(0, 256, (n, 1, S, S), generator=g, dtype=torch.uint8)
    second[:3] = images[:3]  # pairs of one image score higher than pairs of unrelated images
    batch = PretrainBatch(images=images, second=second, indices=torch.arange(n), labels=torch.zeros(n, dtype=torch.int64))
    with torch.no_grad():
        weighted, _ = method.compute_loss(batch)
        unweighted, _ = plain.compute_loss(batch)
    views = Views()
    v1, v2 = views(images), views(second)
    with torch.no_grad():
        t1, t2 = network(v1).double().numpy(), network(v2).double().numpy()
    q = np.array([_genview_score(t1[i], t2[i], direction.double().numpy()) for i in range(n)])
    w = n * np.exp(gamma * q) / np.exp(gamma * q).sum()
    z1, z2 = _embed(method, [images, second])
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    per_anchor = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        logits = (z @ z[i]) / 0.3
        logits[i] = -np.inf
        per_anchor.append(-(logits[j] - torch.logsumexp(logits, 0)).item())
    expected = np.mean(np.concatenate([w, w]) * np.array(per_anchor))
    assert weighted.item() == pytest.approx(expected, rel=1e-5)
    assert w.max() / w.min() > 2  # the weights are far from uniform ...
    assert abs(weighted.item() - unweighted.item()) > 1e-3  # ... and they change the loss
    assert unweighted.item() == pytest.approx(float(np.mean(per_anchor)), rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.method=byol", "pretrain.synthetic.mode=multipos"], "multi-positive InfoNCE"),
        (["pretrain.method=barlow_twins", "pretrain.synthetic.mode=quality", "pretrain.synthetic.scorer=x.pt"], "per positive pair"),
        (["pretrain.synthetic.mode=quality"], "needs pretrain.synthetic.scorer"),
    ],
)
def test_modes_a_method_cannot_use_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(SynthposError, match=message):
        load_config(None, overrides)
