"""The contract between methods and modes (synthpos.modes.contrast): a method declares what its loss
contrasts, on its class (``contrasts``) and in its objective; a mode transforms only that.

Checked here: every built-in method's objective matches its class's declaration; the modes each method
takes follow from it (the same sets the methods once listed by name); no method module asks for its
mode; a new mode that requires a declaration takes every method with it, touching no method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthpos.config import SyntheticConfig
from synthpos.data.augment import BatchAugment
from synthpos.data.batch import PretrainBatch
from synthpos.methods.base import SharedSettings
from synthpos.models.backbones import ConvNet
from synthpos.modes.base import SyntheticMode, register_mode
from synthpos.modes.contrast import NEGATIVES, PAIRS, POSITIVES
from synthpos.registry import METHODS, MODES

BUILTIN = sorted(name for name, cls in METHODS.items() if cls.__module__.startswith("synthpos."))
SHARED = SharedSettings(projector_hidden_dim=16, projector_out_dim=8, predictor_hidden_dim=16, temperature=0.3,
                        queue_size=16, momentum_base=0.99, momentum_final=1.0)
#: the modes each method listed by name before it declared its contrasts
LISTED = {"simclr": {"multipos", "quality", "mochi"}, "dcl": {"quality", "mochi"}, "dclw": {"quality", "mochi"},
          "supcon": {"multipos"}, "byol": {"quality"}, "simsiam": {"quality"}, "nnclr": {"quality"},
          "mocov2plus": {"quality", "mochi"}, "mocov3": {"quality", "mochi"}, "all4one": {"mochi"},
          "barlow_twins": set(), "vicreg": set()}


def _objective(name: str):
    torch.manual_seed(0)
    method = METHODS.get(name)(ConvNet(1, width=4), BatchAugment(crop_size=8), shared=SHARED, channels_last=False)
    method.setup("fit")
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = PretrainBatch(indices=torch.arange(8), images=images, labels=torch.arange(8) % 2)
    views = method.mode.views(method, batch)
    return method, method.objective(method.embed_views(views)[:2], views[:2], batch)


@pytest.mark.parametrize("name", BUILTIN)
def test_a_methods_objective_is_what_its_class_declares(name: str) -> None:
    method, objective = _objective(name)
    declared = type(method).contrasts
    assert (PAIRS in declared) == objective.weighted
    assert (NEGATIVES in declared) == any(t.queries is not None for t in objective.terms)
    assert (POSITIVES in declared) == (method.positives() is not None)
    for term in objective.terms:  # a term with queries names the negatives they meet, one way
        assert term.queries is None or (term.negatives is None) != (term.in_batch is None)
    loss, logs = objective.loss()
    assert torch.isfinite(loss) and logs[objective.name] is loss


def test_the_modes_a_method_takes_follow_from_its_declaration() -> None:
    assert set(LISTED) == set(BUILTIN)
    for name in BUILTIN:
        assert set(METHODS.get(name).modes) == LISTED[name], name


def test_no_method_module_asks_for_its_mode() -> None:
    methods = Path(__file__).resolve().parents[2] / "src" / "synthpos" / "methods"
    for path in methods.glob("*.py"):
        if path.name in ("base.py", "pretrain.py", "training.py"):
            continue
        text = path.read_text()
        for hole in ("self.mode", "hard_negatives", "multipos_loss", "pair_loss"):
            assert hole not in text, f"{path.name} names {hole}"


class _Scratch(SyntheticMode):
    """A mode that requires negatives and adds, per query, the query's own detached negation as one more."""

    needs_store = False
    requires = NEGATIVES

    def method_loss(self, method, views, outputs, batch):
        return method.objective(outputs[:2], views[:2], batch).loss(
            negatives=lambda term: -term.queries.detach().unsqueeze(1))


def test_a_new_mode_that_requires_negatives_takes_those_methods_with_no_method_edit() -> None:
    register_mode("scratch_far_negatives")(_Scratch)
    try:
        takers = {name for name in BUILTIN if "scratch_far_negatives" in METHODS.get(name).modes}
        assert takers == {name for name in BUILTIN if NEGATIVES in METHODS.get(name).contrasts}
        method, objective = _objective("mocov2plus")
        plain, _ = objective.loss()
        # -q is each query's least similar vector: one more logit of exp(-1 / T) in every denominator.
        farther, _ = objective.loss(negatives=lambda term: -term.queries.detach().unsqueeze(1))
        assert farther > plain
    finally:
        MODES.unregister("scratch_far_negatives")
