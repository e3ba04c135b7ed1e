"""foreground_share 0.35 is GenView's threshold rule (extract_features_pca.py@38a6a78): a 200-bin
histogram of the first component, the left edge of the first bin whose cumulative share is >= 0.65,
foreground = component > threshold. Re-implemented here from the official code as the reference."""

from __future__ import annotations

import numpy as np
import pytest

from official_values import RECIPES


def _genview_threshold(scores: np.ndarray) -> float:
    values, base = np.histogram(scores, bins=200)               # extract_features_pca.py:175
    cumulative = np.cumsum(values) / np.sum(values)             # :176
    prob = {c: b for c, b in zip(cumulative, base[:-1])}       # :187 prob_dict[cumulative[k]] = base[k]
    return next(prob[key] for key in prob if key >= 0.65)       # :294-296


@pytest.mark.parametrize("seed", [0, 1])
def test_genview_rule_leaves_about_35_percent_foreground(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # A bimodal component as foreground / background tokens give (10,000 images x 256 patches in GenView).
    scores = np.concatenate([rng.normal(-1.0, 0.6, 180_000), rng.normal(1.2, 0.5, 76_000)])
    genview_share = float(np.mean(scores > _genview_threshold(scores)))
    share = next(e.value for e in RECIPES["configs/imagenet/genview_mocov3.yaml"]
                 if e.key == "generate.unclip.adaptive_noise.foreground_share")
    ours_share = float(np.mean(scores > np.quantile(scores, 1.0 - share)))  # fit_foreground's rule
    # The left edge of the bin adds at most that bin's mass to the foreground.
    assert ours_share == pytest.approx(0.35, abs=1e-3)
    assert 0.35 <= genview_share <= 0.35 + 0.01
    assert abs(genview_share - 0.6) > 0.2  # the old default was not GenView's rule
