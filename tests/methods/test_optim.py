"""warmup_cosine against its closed form; LARS against a hand-written step; parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthpos.methods.optim import LARS, parameter_groups, warmup_cosine

TOTAL, WARMUP, BASE, START, MIN = 110, 10, 0.5, 1e-3, 0.01


def _closed_form(step: int) -> float:
    if step < WARMUP:
        return START + (BASE - START) * step / WARMUP
    t = (step - WARMUP) / (TOTAL - WARMUP)
    return MIN + (BASE - MIN) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, START),  # start: the warm-up start value
        (5, (START + BASE) / 2),  # mid-warm-up: halfway between start and peak
        (WARMUP, BASE),  # end of warm-up: the peak
        (WARMUP + (TOTAL - WARMUP) // 2, (BASE + MIN) / 2),  # middle of the cosine: halfway down
        (TOTAL, MIN),  # end: the minimum
    ],
)
def test_warmup_cosine_landmarks(step: int, expected: float) -> None:
    assert warmup_cosine(step, TOTAL, WARMUP, BASE, START, MIN) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("step", [1, 3, 9, 11, 37, 84, 109])
def test_warmup_cosine_closed_form(step: int) -> None:
    assert warmup_cosine(step, TOTAL, WARMUP, BASE, START, MIN) == pytest.approx(_closed_form(step), rel=1e-12)


def test_warmup_cosine_without_warmup_and_past_the_end() -> None:
    assert warmup_cosine(0, 100, 0, 1.0, 0.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(25, 100, 0, 1.0, 0.0, 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(500, 100, 0, 1.0, 0.0, 0.2) == pytest.approx(0.2)  # held at the minimum


def test_warmup_cosine_is_monotone() -> None:
    lrs = [warmup_cosine(s, TOTAL, WARMUP, BASE, START, MIN) for s in range(TOTAL + 1)]
    assert all(a < b for a, b in zip(lrs[:WARMUP], lrs[1 : WARMUP + 1]))
    assert all(a >= b for a, b in zip(lrs[WARMUP:], lrs[WARMUP + 1 :]))


# ----------------------------------------------------------------------------- LARS


def _lars_reference(w, g, buf, lr, momentum, wd, eta, exclude):
    """One LARS step written out: returns (new w, new momentum buffer)."""
    if exclude:
        update = g.clone()
    else:
        d = g + wd * w
        trust = eta * w.norm() / d.norm()
        update = trust * d
    buf = update if buf is None else momentum * buf + update
    return w - lr * buf, buf


def _lars_setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(4, 3, generator=g))
    bias = nn.Parameter(torch.randn(4, generator=g))
    return weight, bias, g


def test_lars_two_steps_match_hand_computation() -> None:
    lr, momentum, wd, eta = 0.3, 0.9, 1e-2, 0.02
    weight, bias, g = _lars_setup()
    opt = LARS(
        [{"params": [weight], "weight_decay": wd}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
        lr=lr, momentum=momentum, weight_decay=wd, eta=eta,
    )
    _check_steps(opt, weight, bias, g, 2, lambda w, gw, buf: _lars_reference(w, gw, buf, lr, momentum, wd, eta, exclude=False),
                 lambda b, gb, buf: _lars_reference(b, gb, buf, lr, momentum, wd, eta, exclude=True))


def _check_steps(opt, weight, bias, g, steps, weight_step, bias_step) -> None:
    """``steps`` optimiser steps on random gradients, each checked against the hand-written steps (w, g, buf) -> (w, buf)."""
    w_ref, b_ref = weight.detach().clone(), bias.detach().clone()
    w_buf = b_buf = None
    for _ in range(steps):
        gw, gb = torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
        weight.grad, bias.grad = gw.clone(), gb.clone()
        opt.step()
        w_ref, w_buf = weight_step(w_ref, gw, w_buf)
        b_ref, b_buf = bias_step(b_ref, gb, b_buf)
        torch.testing.assert_close(weight.detach(), w_ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bias.detach(), b_ref, rtol=1e-6, atol=1e-7)


def test_lars_trust_ratio_scales_the_step() -> None:
    # One step from a zero buffer moves w by exactly lr * eta * ||w|| along the unit (g + wd*w).
    lr, wd, eta = 1.0, 0.1, 0.02
    weight, _, g = _lars_setup(1)
    w0 = weight.detach().clone()
    grad = torch.randn(4, 3, generator=g) * 100  # a large gradient: LARS normalises it away
    weight.grad = grad.clone()
    LARS([weight], lr=lr, momentum=0.9, weight_decay=wd, eta=eta).step()
    step = w0 - weight.detach()
    assert step.norm().item() == pytest.approx(lr * eta * w0.norm().item(), rel=1e-5)
    direction = grad + wd * w0
    torch.testing.assert_close(step / step.norm(), direction / direction.norm(), rtol=1e-5, atol=1e-6)


def test_lars_excluded_group_is_plain_sgd_without_decay() -> None:
    lr, momentum = 0.1, 0.9
    _, bias, g = _lars_setup(2)
    opt = LARS([{"params": [bias], "weight_decay": 0.5, "lars_exclude": True}], lr=lr, momentum=momentum, weight_decay=0.5)
    sgd_bias = nn.Parameter(bias.detach().clone())
    sgd = torch.optim.SGD([sgd_bias], lr=lr, momentum=momentum, weight_decay=0.0)
    for _ in range(3):
        grad = torch.randn(4, generator=g)
        bias.grad, sgd_bias.grad = grad.clone(), grad.clone()
        opt.step(), sgd.step()
        torch.testing.assert_close(bias.detach(), sgd_bias.detach(), rtol=1e-6, atol=1e-7)


def _bolts_reference(w, g, buf, lr, momentum, wd, eta, clip):
    """One step of solo-learn's LARS (lightning-bolts; GSSL solo-learn/solo/utils/lars.py:140-167), written out."""
    lars_lr = eta * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
    if clip:
        lars_lr = min(lars_lr / lr, 1.0)
    d = (g + wd * w) * lars_lr
    buf = d if buf is None else momentum * buf + d
    return w - lr * buf, buf


@pytest.mark.parametrize(("clip", "lr"), [(False, 0.3), (True, 0.3), (True, 0.005)])
def test_lars_grad_and_decay_trust_matches_solo_learn(clip: bool, lr: float) -> None:
    momentum, wd, eta = 0.9, 1e-2, 0.02
    weight, bias, g = _lars_setup(3)
    opt = LARS([{"params": [weight], "weight_decay": wd}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
               lr=lr, momentum=momentum, weight_decay=wd, eta=eta, trust="grad_and_decay", clip=clip)
    _check_steps(opt, weight, bias, g, 3, lambda w, gw, buf: _bolts_reference(w, gw, buf, lr, momentum, wd, eta, clip),
                 lambda b, gb, buf: _lars_reference(b, gb, buf, lr, momentum, wd, eta, exclude=True))  # excluded: plain SGD
    # The two trust ratios differ (||g + wd w|| vs ||g|| + wd ||w||), so the test can tell them apart.
    other, _, g2 = _lars_setup(3)
    other.grad = 0.1 * torch.randn(4, 3, generator=g2) - other.detach()  # g + wd w is small, ||g|| + wd ||w|| is not
    start = other.detach().clone()
    LARS([other], lr=0.3, weight_decay=1.0, trust="update").step()
    assert not torch.allclose(other.detach(), _bolts_reference(start, other.grad, None, 0.3, 0.9, 1.0, 0.02, False)[0])


def test_lars_clip_caps_each_layers_rate_at_lr() -> None:
    # clip_lr: a layer whose trust ratio exceeds lr moves at rate lr (the plain SGD step on g + wd w).
    weight, _, g = _lars_setup(4)
    w0, grad = weight.detach().clone(), torch.randn(4, 3, generator=g) * 1e-3  # tiny gradient: a huge ratio
    weight.grad = grad.clone()
    LARS([weight], lr=0.1, momentum=0.9, weight_decay=0.0, trust="grad_and_decay", clip=True).step()
    torch.testing.assert_close(weight.detach(), w0 - 0.1 * grad, rtol=1e-6, atol=1e-9)


def test_lars_settings_reach_the_optimizer() -> None:
    import numpy as np

    from synthpos.config import BackboneConfig, OptimizerConfig, PretrainConfig
    from synthpos.data import ImageDataset
    from synthpos.methods.pretrain import build_method

    images = np.zeros((4, 8, 8, 1), dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, None, None, (0.5,), (0.5,))
    cfg = PretrainConfig(method="simclr", backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=8,
                         projector_out_dim=4, optimizer=OptimizerConfig(name="lars", eta=0.001, lars_trust="grad_and_decay",
                                                                        lars_clip=True))
    method = build_method(cfg, dataset)
    method._trainer = type("Trainer", (), {"estimated_stepping_batches": 10, "max_epochs": 1})()
    opt = method.configure_optimizers()["optimizer"]
    assert isinstance(opt, LARS)
    assert {(g["eta"], g["trust"], g["clip"]) for g in opt.param_groups} == {(0.001, "grad_and_decay", True)}


@pytest.mark.parametrize("fixed", [True, False])
def test_simsiam_predictor_lr_can_stay_fixed(fixed: bool) -> None:
    # solo-learn's static_lr / mmpretrain's SimSiamHook: the predictor's lr is optimizer.lr at every step.
    import numpy as np

    from synthpos.config import BackboneConfig, OptimizerConfig, PretrainConfig
    from synthpos.data import ImageDataset
    from synthpos.methods.pretrain import build_method

    dataset = ImageDataset("toy", "train", np.zeros((4, 8, 8, 1), dtype=np.uint8), None, None, (0.5,), (0.5,))
    cfg = PretrainConfig(method="simsiam", backbone=BackboneConfig(name="convnet", width=4), projector_hidden_dim=8,
                         projector_out_dim=4, predictor_hidden_dim=4, simsiam={"fixed_predictor_lr": fixed},
                         optimizer=OptimizerConfig(lr=0.05, warmup_epochs=1, warmup_start_lr=0.001, min_lr=0.0))
    method = build_method(cfg, dataset)
    total = 20
    method._trainer = type("Trainer", (), {"estimated_stepping_batches": total, "max_epochs": 4})()
    setup = method.configure_optimizers()
    opt, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    predictor = {id(p) for p in method.predictor.parameters()}
    static = [g for g in opt.param_groups if g.get("static_lr")]
    assert ({id(p) for g in static for p in g["params"]} == predictor) is fixed
    assert sum(len(g["params"]) for g in opt.param_groups) == len([p for p in method.parameters() if p.requires_grad])
    for step in range(total):
        expected = warmup_cosine(step, total, 5, 0.05, 0.001, 0.0)
        for group in opt.param_groups:
            lr = 0.05 if group.get("static_lr") else expected
            assert group["lr"] == pytest.approx(lr, rel=1e-9, abs=1e-12), (step, group.get("static_lr"))
        opt.step()
        schedule.step()


def test_lars_zero_weights_take_a_plain_step() -> None:
    p = nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    LARS([p], lr=0.1, momentum=0.0, weight_decay=0.0).step()
    torch.testing.assert_close(p.detach(), torch.full((3, 2), -0.1))


# ----------------------------------------------------------------------------- parameter groups


def test_parameter_groups_put_biases_and_norms_in_no_decay() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2),
    )
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.append(frozen)
    decay, no_decay = parameter_groups(model, 5e-4)
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    conv, bn, lin, ln = model[0], model[1], model[4], model[5]
    assert decay_ids == {id(conv.weight), id(lin.weight)}
    assert no_decay_ids == {id(conv.bias), id(bn.weight), id(bn.bias), id(lin.bias), id(ln.weight), id(ln.bias)}
    assert decay["weight_decay"] == 5e-4 and not decay.get("lars_exclude", False)
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True


def test_sgd_with_parameter_groups_does_not_decay_biases() -> None:
    # With a zero gradient only weight decay moves a parameter.
    model = nn.Linear(3, 2)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = torch.optim.SGD(parameter_groups(model, 0.1), lr=1.0, momentum=0.0, weight_decay=0.1)
    model.weight.grad, model.bias.grad = torch.zeros_like(w0), torch.zeros_like(b0)
    opt.step()
    torch.testing.assert_close(model.weight.detach(), w0 * 0.9)
    torch.testing.assert_close(model.bias.detach(), b0)
