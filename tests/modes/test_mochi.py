"""MoCHi (Kalantidis et al., NeurIPS 2020) against hand-written loops: the mixes and MoCo v2+'s loss with them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthpos.config import SyntheticConfig, load_config
from synthpos.data.batch import PretrainBatch
from synthpos.errors import SynthposError
from synthpos.methods.mocov2plus import MoCoV2Plus
from synthpos.methods.mocov3 import MoCoV3
from synthpos.modes.mochi import draw_mixing, mix_hard_negatives
from synthpos.pipeline import stage_done

B, D, Q = 4, 8, 20
HARDEST, MIXES, QUERY_MIXES = 6, 5, 3  # small (N, s, s') so that the loops stay readable


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def reference_mixes(query, negatives, hardest, draws, own: bool = False, never=None) -> list[list[list[float]]]:
    """MoCHi's h and h' written out per query with Python lists (the paper's section 4).

    ``own``: row i of ``negatives`` is query i's positive (in-batch keys) and is never a negative.
    ``never(i)``: the rows that are never query i's negatives (in-batch contrasts of several views).
    """
    out = []
    negs = [_unit(n) for n in negatives.tolist()]
    for i, q in enumerate(query.tolist()):
        q = _unit(q)
        sims = [sum(a * b for a, b in zip(q, n)) for n in negs]
        excluded = set(never(i)) if never else ({i} if own else set())
        candidates = [j for j in range(len(negs)) if j not in excluded]
        order = sorted(candidates, key=lambda j: -sims[j])[:hardest]  # hardest: most similar to the query
        rows = []
        for k in range(draws.alpha.shape[1]):
            a = float(draws.alpha[i, k])
            ni, nj = negs[order[int(draws.first[i, k])]], negs[order[int(draws.second[i, k])]]
            rows.append(_unit([a * x + (1 - a) * y for x, y in zip(ni, nj)]))
        for k in range(draws.beta.shape[1]):
            b = float(draws.beta[i, k])
            nj = negs[order[int(draws.partner[i, k])]]
            rows.append(_unit([b * x + (1 - b) * y for x, y in zip(q, nj)]))
        out.append(rows)
    return out


def test_mixes_match_a_hand_written_loop() -> None:
    g = torch.Generator().manual_seed(0)
    query = torch.randn(B, D, generator=g, requires_grad=True)
    negatives = torch.randn(Q, D, generator=g)
    draws = draw_mixing(B, HARDEST, MIXES, QUERY_MIXES, generator=torch.Generator().manual_seed(1))
    mixed = mix_hard_negatives(query, negatives, HARDEST, draws)
    assert mixed.shape == (B, MIXES + QUERY_MIXES, D)
    assert not mixed.requires_grad  # the paper: no gradient through the mixing
    expected = torch.tensor(reference_mixes(query.detach(), negatives, HARDEST, draws))
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed.norm(dim=2), torch.ones(B, MIXES + QUERY_MIXES))


def test_with_one_hardest_negative_every_pair_mix_is_the_most_similar_negative() -> None:
    g = torch.Generator().manual_seed(2)
    query, negatives = torch.randn(B, D, generator=g), torch.randn(Q, D, generator=g)
    mixed = mix_hard_negatives(query, negatives, 1, draw_mixing(B, 1, MIXES, QUERY_MIXES, generator=g))
    sims = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(negatives, dim=1).T
    nearest = torch.nn.functional.normalize(negatives, dim=1)[sims.argmax(dim=1)]  # (B, D)
    torch.testing.assert_close(mixed[:, :MIXES], nearest[:, None].expand(-1, MIXES, -1), rtol=1e-5, atol=1e-6)
    # Query mixes: the query's share is below one half, so each stays closer to the negative than to the query.
    q = torch.nn.functional.normalize(query, dim=1)
    to_negative = (mixed[:, MIXES:] * nearest[:, None]).sum(-1)
    to_query = (mixed[:, MIXES:] * q[:, None]).sum(-1)
    assert (to_negative > to_query).all()


def test_draws_are_uniform_picks_and_shares_in_the_papers_ranges() -> None:
    draws = draw_mixing(2000, HARDEST, MIXES, QUERY_MIXES, generator=torch.Generator().manual_seed(3))
    assert 0 < draws.alpha.min() and draws.alpha.max() < 1 and abs(draws.alpha.mean().item() - 0.5) < 0.01
    assert 0 <= draws.beta.min() and draws.beta.max() < 0.5 and abs(draws.beta.mean().item() - 0.25) < 0.01
    for picks in (draws.first, draws.second, draws.partner):
        counts = torch.bincount(picks.flatten(), minlength=HARDEST).float()
        assert len(counts) == HARDEST and (counts / counts.mean() - 1).abs().max() < 0.1


class Flip(nn.Module):
    """Deterministic views: call k of a step gives the identity or a flip."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        k, self.calls = self.calls % 2, self.calls + 1
        x = images.float() / 255 - 0.5
        return x if k == 0 else x.flip(-1)


class Linear(nn.Module):
    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _moco(mode: str) -> MoCoV2Plus:
    torch.manual_seed(0)
    synthetic = SyntheticConfig(mode=mode, mochi={"hardest": HARDEST, "mixes": MIXES, "query_mixes": QUERY_MIXES})
    method = MoCoV2Plus(Linear(), Flip(), projector_hidden_dim=16, projector_out_dim=D, temperature=0.2,
                        queue_size=Q, channels_last=False, synthetic=synthetic)
    with torch.no_grad():
        for p in method.momentum_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))  # keys from a different network than the queries
    return method.eval()


def _ce(logits: list[float]) -> float:
    """-log softmax(logits)[0], written out."""
    top = max(logits)
    return -(logits[0] - top - math.log(sum(math.exp(x - top) for x in logits)))


def _step(method, seed: int, head) -> tuple[torch.Tensor, PretrainBatch, list[torch.Tensor], list[torch.Tensor]]:
    """The method's loss of a random batch under ``seed``, and the queries (``head(view)``) and keys recomputed view by view."""
    g = torch.Generator().manual_seed(seed)
    batch = PretrainBatch(indices=torch.arange(B), images=torch.randint(0, 256, (B, 1, 6, 6), generator=g, dtype=torch.uint8))
    torch.manual_seed(seed)
    loss, _ = method.compute_loss(batch)
    with torch.no_grad():
        x = batch.images.float() / 255 - 0.5
        views = [x, x.flip(-1)]  # what Flip gives for views 1 and 2
        return loss, batch, [head(v) for v in views], [method.momentum_encoder(v) for v in views]


def test_mocov2plus_loss_with_mochi_matches_a_hand_written_loop() -> None:
    method = _moco("mochi")
    loss, batch, q, k = _step(method, 5, lambda v: method.projector(method.backbone(v)))
    with torch.no_grad():
        queues = [qu.queue for qu in method.queues]
    torch.manual_seed(5)  # the same draws, in the same order: (q1 against queue 2), then (q2 against queue 1)
    draws = [draw_mixing(B, HARDEST, MIXES, QUERY_MIXES) for _ in range(2)]
    total = 0.0
    for (qv, kv, queue), d in zip([(q[0], k[1], queues[1]), (q[1], k[0], queues[0])], draws):
        synthetic = reference_mixes(qv, queue, HARDEST, d)
        per_query = []
        for i in range(B):
            qi, ki = _unit(qv[i].tolist()), _unit(kv[i].tolist())
            negs = [_unit(n) for n in queue.tolist()] + synthetic[i]
            logits = [sum(a * b for a, b in zip(qi, x)) / 0.2 for x in [ki, *negs]]
            per_query.append(_ce(logits))
        total += sum(per_query) / B / 2
    assert loss.item() == pytest.approx(total, rel=1e-5)
    # More (and harder) negatives can only raise the cross-entropy of the same queries.
    plain = _moco("none")
    with torch.no_grad():
        assert plain.compute_loss(batch)[0].item() < loss.item()


def test_mocov3_mixes_the_hardest_of_the_batchs_other_keys_as_a_hand_written_loop() -> None:
    torch.manual_seed(0)
    n_hard = 3  # of the B - 1 = 3 other keys: all of them, the own key never
    synthetic = SyntheticConfig(mode="mochi", mochi={"hardest": 8, "mixes": MIXES, "query_mixes": QUERY_MIXES})
    method = MoCoV3(Linear(), Flip(), projector_hidden_dim=16, projector_out_dim=D, predictor_hidden_dim=16,
                    temperature=0.2, channels_last=False, synthetic=synthetic).eval()
    with torch.no_grad():
        for p in method.momentum_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss, _, q, k = _step(method, 8, lambda v: method.predictor(method.projector(method.backbone(v))))
    torch.manual_seed(8)
    draws = [draw_mixing(B, n_hard, MIXES, QUERY_MIXES) for _ in range(2)]
    total = 0.0
    for (qv, kv), d in zip([(q[0], k[1]), (q[1], k[0])], draws):
        synthetic = reference_mixes(qv, kv, n_hard, d, own=True)
        for i in range(B):
            qi = _unit(qv[i].tolist())
            keys = [_unit(x) for x in kv.tolist()]
            columns = [keys[i]] + [keys[j] for j in range(B) if j != i] + synthetic[i]  # the positive first
            total += 2 * 0.2 * _ce([sum(a * b for a, b in zip(qi, c)) / 0.2 for c in columns]) / B
    assert loss.item() == pytest.approx(total, rel=1e-5)


def test_gradient_reaches_the_query_through_the_mixed_negatives_logits_only() -> None:
    method = _moco("mochi").train()
    g = torch.Generator().manual_seed(6)
    batch = PretrainBatch(indices=torch.arange(B), images=torch.randint(0, 256, (B, 1, 6, 6), generator=g, dtype=torch.uint8))
    loss, logs = method.compute_loss(batch)
    loss.backward()
    trained = [p for p in method.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert all(p.grad is None for p in method.momentum_encoder.parameters())


def test_mochi_needs_no_store_and_a_method_with_negatives() -> None:
    config = load_config("configs/fashion_mnist/mochi_mocov2plus.yaml")
    assert config.pretrain.method == "mocov2plus" and config.pretrain.synthetic.mode == "mochi"
    assert "needs no store" in stage_done(config, "train-generator")
    assert "needs no store" in stage_done(config, "generate")
    with pytest.raises(SynthposError, match="mode=mochi needs a contrast of each query with a set of negatives.*"
                       "byol has none. Use it with (.*), or choose") as err:
        load_config("configs/fashion_mnist/byol.yaml", ["pretrain.synthetic.mode=mochi"])
    users = str(err.value).split("Use it with ")[1].split(", or choose")[0].split(", ")
    assert sorted(users) == ["all4one", "dcl", "dclw", "mocov2plus", "mocov3", "simclr"]
    with pytest.raises(SynthposError, match="mode=mochi needs .*nnclr has none"):  # its rows carry no gradient
        load_config("configs/fashion_mnist/nnclr.yaml", ["pretrain.synthetic.mode=mochi"])
    with pytest.raises(SynthposError, match="unknown key 'pretrain.synthetic.mochi.n'"):
        load_config("configs/fashion_mnist/mochi_mocov2plus.yaml", ["pretrain.synthetic.mochi.n=3"])


# --- in-batch negatives: SimCLR, DCL, DCLW, All4One's centroid contrast ------------------------------

IN_BATCH_HARDEST = 4  # of the 2B - 2 = 6 in-batch negatives of each SimCLR/DCL anchor: the top-k matters


def _in_batch(cls, mode: str, hardest: int = IN_BATCH_HARDEST, **kwargs):
    torch.manual_seed(0)
    synthetic = SyntheticConfig(mode=mode, mochi={"hardest": hardest, "mixes": MIXES, "query_mixes": QUERY_MIXES})
    return cls(Linear(), Flip(), projector_hidden_dim=16, projector_out_dim=D, temperature=0.2,
               channels_last=False, synthetic=synthetic, **kwargs).eval()


def _views(seed: int) -> tuple[PretrainBatch, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batch = PretrainBatch(indices=torch.arange(B), images=torch.randint(0, 256, (B, 1, 6, 6), generator=g, dtype=torch.uint8))
    x = batch.images.float() / 255 - 0.5
    return batch, [x, x.flip(-1)]  # what Flip gives for views 1 and 2


def _decoupled_reference(z1, z2, draws, positive_weight, decoupled: bool) -> float:
    """NT-Xent (``decoupled=False``) or DCL(W) of the 2B anchors with their mixes, one anchor at a time.

    Anchor r is ``z1[r]`` (r < B) or ``z2[r - B]``; its candidates are the 2B projections ``[z1, z2]``;
    its positive the other view of image ``i = r % B``; its negatives the 2B - 2 rows of the other images.
    """
    def never(r: int) -> tuple[int, int]:  # both views of the anchor's own image
        return r % B, r % B + B

    anchors = torch.cat([z1, z2])
    synthetic = reference_mixes(anchors, anchors, IN_BATCH_HARDEST, draws, never=never)
    rows = [_unit(v) for v in anchors.tolist()]
    total = 0.0
    for r, a in enumerate(rows):
        i = r % B

        def logit(x: list[float]) -> float:
            return sum(p * q for p, q in zip(a, x)) / 0.2

        positive = logit(rows[i + B] if r < B else rows[i])
        negatives = [logit(rows[j]) for j in range(2 * B) if j not in never(r)] + [logit(h) for h in synthetic[r]]
        if decoupled:  # -w_i * pos + logsumexp(negatives): the positive is not in the denominator
            top = max(negatives)
            total += -positive_weight[i] * positive + top + math.log(sum(math.exp(x - top) for x in negatives))
        else:
            total += _ce([positive, *negatives])
    return total / (2 * B)


@pytest.mark.parametrize("name", ["simclr", "dcl", "dclw"])
def test_simclr_and_dcl_mix_the_hardest_other_views_of_the_batch_as_a_hand_written_loop(name: str) -> None:
    from synthpos.methods.dcl import DCL, DCLW
    from synthpos.methods.simclr import SimCLR

    cls = {"simclr": SimCLR, "dcl": DCL, "dclw": DCLW}[name]
    method = _in_batch(cls, "mochi")
    batch, views = _views(11)
    torch.manual_seed(11)
    loss, _ = method.compute_loss(batch)
    torch.manual_seed(11)  # one call, for all 2B anchors at once
    draws = draw_mixing(2 * B, IN_BATCH_HARDEST, MIXES, QUERY_MIXES)
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(v)) for v in views)
    weight = [1.0] * B
    if name == "dclw":  # von Mises-Fisher weights of the positives, sigma 0.5: 2 - B softmax(cos / sigma)
        e = [math.exp(sum(p * q for p, q in zip(_unit(a), _unit(b))) / 0.5) for a, b in zip(z1.tolist(), z2.tolist())]
        weight = [2 - B * x / sum(e) for x in e]
    expected = _decoupled_reference(z1, z2, draws, weight, decoupled=name != "simclr")
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The mixes are negatives the plain loss does not have: with the same weights the loss differs.
    plain = _in_batch(cls, "none")
    with torch.no_grad():
        assert plain.compute_loss(batch)[0].item() != pytest.approx(loss.item(), rel=1e-4)


def test_all4one_mixes_the_centroid_contrasts_hardest_other_images_as_a_hand_written_loop() -> None:
    from synthpos.methods.all4one import CENTROID_TEMPERATURE, All4One

    hardest = 2  # of the B - 1 = 3 other images
    method = _in_batch(All4One, "mochi", hardest=hardest, predictor_hidden_dim=16, queue_size=12)
    with torch.no_grad():
        for p in method.momentum_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch, views = _views(12)
    torch.manual_seed(12)
    loss, logs = method.compute_loss(batch)
    torch.manual_seed(12)  # rich1 against shifted2 first, then rich2 against shifted1
    draws = [draw_mixing(B, hardest, MIXES, QUERY_MIXES) for _ in range(2)]
    with torch.no_grad():
        m1, m2 = (torch.nn.functional.normalize(method.momentum_encoder(v), dim=1) for v in views)
        nn1, nn2 = method.neighbours(m1), method.neighbours(m2)
        z1, z2 = (method.projector(method.backbone(v)) for v in views)
        s1, s2 = method.shift_predictor(z1), method.shift_predictor(z2)
        rich1, rich2 = method.summarise(nn1), method.summarise(nn2)
        shifted1 = method.summarise(torch.cat([s1.unsqueeze(1), nn1[:, :-1]], dim=1))
        shifted2 = method.summarise(torch.cat([s2.unsqueeze(1), nn2[:, :-1]], dim=1))
    total = 0.0
    for (rows, columns), d in zip([(rich1, shifted2), (rich2, shifted1)], draws):
        synthetic = reference_mixes(rows, columns, hardest, d, own=True)
        keys = [_unit(c) for c in columns.tolist()]
        for i, r in enumerate(rows.tolist()):
            r = _unit(r)
            ordered = [keys[i]] + [keys[j] for j in range(B) if j != i] + synthetic[i]  # the positive first
            total += _ce([sum(a * b for a, b in zip(r, c)) / CENTROID_TEMPERATURE for c in ordered]) / B / 2
    assert logs["centroid"].item() == pytest.approx(total, rel=1e-5)
    # The neighbour and feature terms are All4One's own, untouched by the mode.
    plain = _in_batch(All4One, "none", predictor_hidden_dim=16, queue_size=12)
    plain.load_state_dict(method.state_dict())
    with torch.no_grad():
        _, plain_logs = plain.compute_loss(batch)
    for key in ("neighbour", "feature"):
        assert plain_logs[key].item() == pytest.approx(logs[key].item(), rel=1e-6), key
    assert plain_logs["centroid"].item() < logs["centroid"].item()  # more negatives: a larger cross-entropy


def test_in_batch_hard_negatives_never_take_the_querys_own_image() -> None:
    from synthpos.modes.mochi import MoCHi

    mode = MoCHi(SyntheticConfig(mode="mochi", mochi={"hardest": 2 * B - 2, "mixes": 64, "query_mixes": 0}))
    z1 = torch.randn(B, D)
    z2 = z1 + 1e-3 * torch.randn(B, D)  # each image's other view: by far its most similar row
    torch.manual_seed(0)
    mixed = mode.batch_hard_negatives(torch.cat([z1, z2]), [z1, z2])
    assert mixed.shape == (2 * B, 64, D)
    rows = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    for r in range(2 * B):
        # With N = 2B - 2 the hardest are all the other images' views and never the own image's (its other
        # view is by far the most similar row): every mix lies in the span of the other images' rows ...
        allowed = rows[[j for j in range(2 * B) if j % B != r % B]]  # (6, D) in D = 8: a proper subspace
        coef = torch.linalg.lstsq(allowed.T, mixed[r].T).solution
        assert torch.allclose(allowed.T @ coef, mixed[r].T, atol=1e-4)
        assert (mixed[r] @ rows[r]).max() < 0.999  # ... and none is the anchor or its positive


def test_on_rank_1_of_2_the_own_image_is_found_at_its_offset_in_the_gathered_batch(monkeypatch) -> None:
    from synthpos.modes.mochi import MoCHi

    # Rank 1 of 2 without processes: the other rank's rows (a rotated copy) come first, this rank's at offset n.
    monkeypatch.setattr("synthpos.modes.base.gather", lambda t: torch.cat([t.roll(1, dims=1), t]))
    monkeypatch.setattr("synthpos.modes.base.rank_offset", lambda n: n)
    mode = MoCHi(SyntheticConfig(mode="mochi", mochi={"hardest": 5, "mixes": MIXES, "query_mixes": QUERY_MIXES}))
    g = torch.Generator().manual_seed(13)
    z1, z2 = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    torch.manual_seed(13)
    mixed = mode.batch_hard_negatives(torch.cat([z1, z2]), [z1, z2])
    torch.manual_seed(13)
    draws = draw_mixing(2 * B, 5, MIXES, QUERY_MIXES)
    candidates = torch.cat([z1.roll(1, dims=1), z1, z2.roll(1, dims=1), z2])  # view 1 of both ranks, then view 2
    m = 2 * B
    expected = reference_mixes(torch.cat([z1, z2]), candidates, 5, draws, never=lambda r: (B + r % B, m + B + r % B))
    torch.testing.assert_close(mixed, torch.tensor(expected), rtol=1e-5, atol=1e-6)
