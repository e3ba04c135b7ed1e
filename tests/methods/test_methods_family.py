"""MoCo v3, BYOL, SimSiam, NNCLR and All4One against hand-written references of their losses.

Every reference recomputes the projections view by view and writes the loss out with
loops over samples (cosines, cross-entropies, nearest neighbours, top-5 sorting,
cross-correlations), so it shares nothing with the losses under test but the networks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthpos.config import AugmentConfig, BackboneConfig, OptimizerConfig, PretrainConfig, SyntheticConfig
from synthpos.data import ImageDataset
from synthpos.data.batch import PretrainBatch
from synthpos.errors import SynthposError
from synthpos.methods import method_class
from synthpos.methods.all4one import All4One
from synthpos.methods.byol import BYOL
from synthpos.methods.mocov3 import MoCoV3
from synthpos.methods.momentum import cosine_momentum
from synthpos.methods.nnclr import NNCLR
from synthpos.methods.pretrain import pretrain
from synthpos.methods.simsiam import SimSiam

N, C, H = 6, 1, 12
OUT, QUEUE, TAU = 8, 32, 0.2
CLASSES = {"mocov3": MoCoV3, "byol": BYOL, "simsiam": SimSiam, "nnclr": NNCLR, "all4one": All4One}
MOMENTUM = ["mocov3", "byol", "all4one"]
WEIGHTED = ["mocov3", "byol", "simsiam", "nnclr"]


class FakeAugment(nn.Module):
    """Deterministic, distinct views: call k of a step gives transform k (identity, flip, shift)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        k, self.calls = self.calls % 3, self.calls + 1
        return _view(images, k)


def _view(images: torch.Tensor, k: int) -> torch.Tensor:
    x = images.float() / 255 - 0.5
    return [x, x.flip(-1), x.roll(1, dims=-2)][k]


class LinearBackbone(nn.Module):
    """Flatten + linear: keeps random images far apart."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(C * H * H, 16, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class FixedScorer:
    """Quality mode's scorer, returning given per-pair weights."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def pair_weights(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        assert view1.shape == view2.shape == (N, C, H, H)
        return self.weights


def _method(name: str, mode: str = "none", weight: float = 1.0, scorer: FixedScorer | None = None):
    torch.manual_seed(0)
    kwargs = dict(projector_hidden_dim=16, projector_out_dim=OUT, predictor_hidden_dim=16)
    if name in ("mocov3", "nnclr", "all4one"):
        kwargs["temperature"] = TAU
    if name in ("nnclr", "all4one"):
        kwargs["queue_size"] = QUEUE
    method = CLASSES[name](LinearBackbone(), FakeAugment(), channels_last=False,
                           synthetic=SyntheticConfig(mode=mode, weight=weight), scorer=scorer, **kwargs)
    method.setup("fit")
    with torch.no_grad():
        # Larger features than the default init gives: distinct views then get clearly distinct
        # predictions (else heads output little more than their last bias).
        method.backbone.features[1].weight.mul_(10)
        # Non-zero BatchNorm biases and a momentum copy that differs from the online net, so a
        # reference that used the wrong network or skipped a layer would not agree by accident.
        for m in method.modules():
            if isinstance(m, nn.BatchNorm1d) and m.affine:
                m.bias.normal_(0, 0.3)
        if name in MOMENTUM:
            for p in method.momentum_encoder.parameters():
                p.add_(0.2 * torch.randn_like(p))
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


def _loss(method, batch):
    method.augment.calls = 0
    return method.compute_loss(batch)


# ----------------------------------------------------------------------------- references


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


def _contrast_rows(rows: torch.Tensor, columns: torch.Tensor, tau: float) -> torch.Tensor:
    """-log softmax_j(cos(rows_i, columns_j) / tau)[i], row by row. Shape: (N,)."""
    rows, columns = rows.double(), columns.double()
    out = []
    for i in range(rows.shape[0]):
        logits = torch.stack([_cos(rows[i], columns[j]) / tau for j in range(columns.shape[0])])
        out.append(-(logits[i] - torch.logsumexp(logits, 0)))
    return torch.stack(out)


def _pair_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([_cos(a[i].double(), b[i].double()) for i in range(a.shape[0])])


def _mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weights is None else (weights.double() * values).mean()


def _ranked(query: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The k bank rows most cosine-similar to each query row, by sorting. Shape: (N, k, D)."""
    out = []
    for q in query.detach().double():
        sims = [_cos(q, b.double()).item() for b in bank]
        order = sorted(range(len(bank)), key=lambda j: -sims[j])[:k]
        out.append(bank[order])
    return torch.stack(out)


def _tokens(count: int, dim: int) -> torch.Tensor:
    """solo-learn's positional table, written out: token k, feature d -> sin/cos(d / 10000^(2(k//2)/6))."""
    table = torch.zeros(count, dim)
    for k in range(count):
        freq = 1 / 10000 ** (2 * (k // 2) / 6)
        for d in range(dim):
            table[k, d] = math.sin(d * freq) if k % 2 == 0 else math.cos(d * freq)
    return table


def _correlation(m: torch.Tensor, z: torch.Tensor) -> list[list[torch.Tensor]]:
    m, z = m.double(), z.double()
    return [[(m[:, a] * z[:, b]).sum() / (m[:, a].norm() * z[:, b].norm()) for b in range(z.shape[1])]
            for a in range(m.shape[1])]


def _feature_reference(m1, m2, z1, z2) -> torch.Tensor:
    c1, c2 = _correlation(m1, z2), _correlation(m2, z1)
    d = len(c1)
    on = [torch.stack([(c[a][a] - 1) ** 2 for a in range(d)]).mean() for c in (c1, c2)]
    off = [torch.stack([c[a][b] ** 2 for a in range(d) for b in range(d) if a != b]).mean() for c in (c1, c2)]
    return 10 * (0.5 * torch.sqrt((on[0] + on[1]) / 2) + 0.5 * torch.sqrt((off[0] + off[1]) / 2))


def _online(method, x: torch.Tensor) -> dict[str, torch.Tensor]:
    z = method.projector(method.backbone(x))
    out = {"z": z, "p": method.predictor(z)}
    if isinstance(method, All4One):
        out["shift"] = method.shift_predictor(z)
    return out


def reference(name: str, method, images: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The method's loss on views 0 and 1 of ``images``, written out from the papers / solo-learn."""
    v1, v2 = _view(images, 0), _view(images, 1)
    o1, o2 = _online(method, v1), _online(method, v2)
    if name in MOMENTUM:
        with torch.no_grad():
            k1, k2 = method.momentum_encoder.module(v1), method.momentum_encoder.module(v2)
    if name == "mocov3":
        ce = _mean(_contrast_rows(o1["p"], k2, TAU), weights) + _mean(_contrast_rows(o2["p"], k1, TAU), weights)
        return 2 * TAU * ce
    if name == "byol":
        return _mean(2 - 2 * _pair_cos(o1["p"], k2), weights) + _mean(2 - 2 * _pair_cos(o2["p"], k1), weights)
    if name == "simsiam":
        return -(_mean(_pair_cos(o1["p"], o2["z"].detach()), weights)
                 + _mean(_pair_cos(o2["p"], o1["z"].detach()), weights)) / 2
    bank = method.support.bank.clone()
    if name == "nnclr":
        nn1, nn2 = _ranked(o1["z"], bank, 1)[:, 0], _ranked(o2["z"], bank, 1)[:, 0]
        return (_mean(_contrast_rows(nn1, o2["p"], TAU), weights) + _mean(_contrast_rows(nn2, o1["p"], TAU), weights)) / 2
    assert name == "all4one" and weights is None
    m1, m2 = k1 / k1.norm(dim=1, keepdim=True), k2 / k2.norm(dim=1, keepdim=True)
    nn1, nn2 = _ranked(m1, bank, 5), _ranked(m2, bank, 5)
    tokens = _tokens(5, OUT)
    summary = lambda seq: method.transformer(seq + tokens)[:, 0]  # noqa: E731
    rich1, rich2 = summary(nn1), summary(nn2)
    shifted1 = summary(torch.cat([o1["shift"][:, None], nn1[:, :4]], 1))
    shifted2 = summary(torch.cat([o2["shift"][:, None], nn2[:, :4]], 1))
    centroid = (_contrast_rows(rich1, shifted2, 0.1).mean() + _contrast_rows(rich2, shifted1, 0.1).mean()) / 2
    neighbour = (_contrast_rows(nn1[:, 0], o2["p"], TAU).mean() + _contrast_rows(nn2[:, 0], o1["p"], TAU).mean()) / 2
    feature = _feature_reference(m1, m2, o1["z"], o2["z"])
    return 0.5 * (centroid + neighbour + feature)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", list(CLASSES))
def test_loss_matches_the_reference(name: str) -> None:
    method = _method(name)
    batch = _batch()
    with torch.no_grad():
        loss, logs = _loss(method, batch)
        expected = reference(name, method, batch.images)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert logs["loss"].item() == loss.item()


@pytest.mark.parametrize("name", list(CLASSES))
def test_gradient_matches_the_reference(name: str) -> None:
    # The same gradient as the reference also checks the stop-gradients (SimSiam's sg(z), the
    # momentum keys, the support set's neighbours): a missing one changes the backbone's gradient.
    method = _method(name)
    batch = _batch(1)
    weight = method.backbone.features[1].weight
    loss, _ = _loss(method, batch)
    (grad,) = torch.autograd.grad(loss, weight)
    (expected,) = torch.autograd.grad(reference(name, method, batch.images), weight)
    torch.testing.assert_close(grad, expected.float(), rtol=1e-4, atol=1e-6)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(CLASSES))
def test_gradients_reach_every_trained_parameter(name: str) -> None:
    method = _method(name).train()
    loss, _ = _loss(method, _batch(2))
    loss.backward()
    trained = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert trained and not any(n.startswith("momentum_encoder.") for n, _ in trained)
    for n, p in trained:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert method.backbone.features[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_clsp_adds_the_weighted_synthetic_term(name: str, weight: float) -> None:
    method = _method(name, "clsp", weight)
    batch = _batch(3)
    with torch.no_grad():
        loss, logs = _loss(method, batch)
        key = method.synthetic_key
        e1 = _online(method, _view(batch.images, 0))[key]
        e3 = _online(method, _view(batch.synthetic, 2))[key]
        synthetic = (2 - 2 * _pair_cos(e1, e3)).mean()
        plain = reference(name, method, batch.images)
    assert key == "p"
    assert logs["synthetic"].item() == pytest.approx(synthetic.item(), rel=1e-5, abs=1e-6)
    assert logs["method"].item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
    assert loss.item() == pytest.approx((plain + weight * synthetic).item(), rel=1e-5, abs=1e-6)
    assert synthetic.item() > 1e-3


@pytest.mark.parametrize("name", WEIGHTED)
def test_quality_weights(name: str) -> None:
    batch = _batch(4)
    with torch.no_grad():
        plain, _ = _loss(_method(name), batch)
        ones, _ = _loss(_method(name, "quality", scorer=FixedScorer(torch.ones(N))), batch)
        w = torch.tensor([3.0, 0.5, 0.1, 1.2, 0.2, 2.0])  # mean 7/6: a loss that assumed mean(w) = 1 fails
        method = _method(name, "quality", scorer=FixedScorer(w))
        weighted, _ = _loss(method, batch)
        expected = reference(name, method, batch.images, w)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6, abs=1e-7)
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert abs(weighted.item() - plain.item()) > 1e-3


def test_all4one_rejects_weights_and_bad_widths() -> None:
    method = _method("all4one", "quality", scorer=FixedScorer(torch.ones(N)))
    with pytest.raises(SynthposError, match="no per-pair loss"):
        _loss(method, _batch())
    with pytest.raises(SynthposError, match="multiple of 8"):
        All4One(LinearBackbone(), FakeAugment(), projector_out_dim=12)


# ----------------------------------------------------------------------------- momentum, support sets


def test_cosine_momentum_schedule_endpoints() -> None:
    assert cosine_momentum(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.99, 1.0) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


@pytest.mark.parametrize("name", MOMENTUM)
@pytest.mark.parametrize("step", [0, 3, 10])
def test_momentum_update_by_hand(name: str, step: int) -> None:
    total = 10
    method = _method(name).train()
    with torch.no_grad():
        _loss(method, _batch())  # All4One stashes its keys for the support set
        for p in method.online.parameters():  # stands in for the optimiser step
            p.add_(0.1 * torch.randn_like(p))
    online = dict(method.online.named_parameters())
    before = {n: p.detach().clone() for n, p in method.momentum_encoder.module.named_parameters()}
    method.trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=total)
    method.on_train_batch_end(None, _batch(), 0)
    tau = 1 - 0.01 * (math.cos(math.pi * step / total) + 1) / 2
    after = dict(method.momentum_encoder.module.named_parameters())
    assert after.keys() == online.keys() == before.keys()
    for n in before:
        torch.testing.assert_close(after[n], tau * before[n] + (1 - tau) * online[n].detach(), rtol=1e-6, atol=1e-7)
    if step == total:  # the schedule's end: the target no longer moves
        assert all(torch.equal(after[n], before[n]) for n in before)
    else:
        assert any(not torch.equal(after[n], before[n]) for n in before)


@pytest.mark.parametrize("name", ["nnclr", "all4one"])
def test_nearest_neighbours_are_the_true_nearest(name: str) -> None:
    method = _method(name)
    batch = _batch(5)
    with torch.no_grad():
        v1 = _view(batch.images, 0)
        # The vectors the method looks up: NNCLR the online projection, All4One the momentum one.
        query = _online(method, v1)["z"] if name == "nnclr" else method.momentum_encoder.module(v1)
        # Plant a close copy of each query in the support set, so the answer is known.
        slots = torch.arange(N) * 5 + 1
        method.support.bank[slots] = F.normalize(query + 0.01 * torch.randn_like(query), dim=1)
        if name == "nnclr":
            found = method.support.nearest(query)
            torch.testing.assert_close(found, method.support.bank[slots])
        else:
            found = method.neighbours(F.normalize(query, dim=1))
            torch.testing.assert_close(found[:, 0], method.support.bank[slots])
            torch.testing.assert_close(found, _ranked(query, method.support.bank, 5).float())
        loss, _ = _loss(method, batch)
        assert loss.item() == pytest.approx(reference(name, method, batch.images).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["nnclr", "all4one"])
def test_support_set_takes_view_one_after_the_step(name: str) -> None:
    method = _method(name)
    batch = _batch(6)
    before = method.support.bank.clone()
    with torch.no_grad():
        _loss(method, batch)
        assert torch.equal(method.support.bank, before)  # nothing enters during the step
        v1 = _view(batch.images, 0)
        stored = _online(method, v1)["z"] if name == "nnclr" else method.momentum_encoder.module(v1)
    method.trainer = SimpleNamespace(global_step=1, estimated_stepping_batches=10)
    method.on_train_batch_end(None, batch, 0)
    torch.testing.assert_close(method.support.bank[:N], F.normalize(stored, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.support.bank[N:], before[N:])
    assert int(method.support.pointer) == N


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", list(CLASSES))
def test_pretrain_two_steps(name: str, tmp_path: Path) -> None:
    assert method_class(name) is CLASSES[name]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, H, H, 1), dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, np.arange(16) % 2, ["a", "b"], (0.5,), (0.25,))
    cfg = PretrainConfig(
        method=name, backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=16, projector_out_dim=OUT,
        predictor_hidden_dim=16, queue_size=QUEUE, batch_size=8, epochs=1, channels_last=False, precision="fp32",
        accelerator="cpu", augment=AugmentConfig(crop_size=H),
        optimizer=OptimizerConfig(lr=0.1, warmup_epochs=0),
    )
    path = pretrain(cfg, dataset, tmp_path, show_progress=False)
    assert path.is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if name in ("nnclr", "all4one"):  # two steps of 8 entered the support set
        assert int(state["support.pointer"]) == 16
    if name in MOMENTUM:  # the target followed the online net part of the way
        online = state["projector.0.weight"]
        target = state["momentum_encoder.module.1.0.weight"]
        assert not torch.equal(online, target)
