"""GenView's foreground ratio and noise-level bins, against scikit-learn's PCA and plain numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA

from synthpos.errors import SynthposError
from synthpos.generators.adaptive_noise import (
    ForegroundFit,
    PatchMoments,
    fit_foreground,
    load_fit,
    noise_levels,
    orientation,
    save_fit_once,
)

GRID, DIM = 6, 12


def synthetic_tokens(count: int = 40, flip: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patch tokens with a known foreground: a centred rectangle of random size, shifted along one direction.

    Returns:
        tokens (count, 36, 12) and the foreground masks (count, 36).
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    masks = np.zeros((count, GRID, GRID), dtype=bool)
    for mask in masks:
        top, left = rng.integers(1, 3, size=2)
        bottom, right = rng.integers(3, 6, size=2)
        mask[top:bottom + 1, left:right + 1] = True
    masks = masks.reshape(count, -1)
    offset = rng.normal(size=DIM)  # tokens are not centred, as CLIP's are not
    noise = rng.normal(scale=0.1, size=(count, GRID * GRID, DIM))
    tokens = offset + noise + (-3.0 if flip else 3.0) * masks[..., None] * direction
    return tokens, masks


def reference_ratios(tokens: np.ndarray, share: float) -> tuple[np.ndarray, PCA, int, float]:
    """The same recipe written plainly: sklearn's PCA, centre-vs-border side, quantile threshold."""
    count = len(tokens)
    pca = PCA(n_components=1).fit(tokens.reshape(-1, DIM))
    scores = pca.transform(tokens.reshape(-1, DIM))[:, 0].reshape(count, -1)
    border = np.ones((GRID, GRID), dtype=bool)
    border[1:-1, 1:-1] = False
    border = border.ravel()
    sign = 1 if scores[:, ~border].mean() >= scores[:, border].mean() else -1
    threshold = np.quantile(sign * scores, 1 - share)
    return ((sign * scores) > threshold).mean(axis=1), pca, sign, threshold


def batches_of(tokens: np.ndarray, size: int):
    return lambda: (tokens[i: i + size] for i in range(0, len(tokens), size))


def test_fit_matches_sklearn_pca_and_recovers_the_known_foreground() -> None:
    tokens, masks = synthetic_tokens()
    share = float(masks.mean())
    fit = fit_foreground(batches_of(tokens, 7), share)
    expected, pca, sign, threshold = reference_ratios(tokens, share)
    np.testing.assert_allclose(fit.mean, pca.mean_, atol=1e-10)
    assert abs(abs(fit.component @ pca.components_[0]) - 1) < 1e-10
    assert np.linalg.norm(fit.component) == pytest.approx(1.0)
    # The oriented scores are sklearn's, up to the component's arbitrary sign.
    flip = np.sign(fit.component @ pca.components_[0])
    assert fit.sign == sign * flip
    assert fit.threshold == pytest.approx(threshold, abs=1e-9)
    ratios = fit.foreground_ratio(tokens)
    np.testing.assert_array_equal(ratios, expected)
    # The foreground was planted: the ratio is exactly its area.
    np.testing.assert_array_equal(ratios, masks.mean(axis=1))


def test_the_foreground_side_is_found_whichever_way_the_component_points() -> None:
    tokens, masks = synthetic_tokens()
    flipped, _ = synthetic_tokens(flip=True)
    share = float(masks.mean())
    fit, fit_flipped = fit_foreground(batches_of(tokens, 40), share), fit_foreground(batches_of(flipped, 40), share)
    assert fit.sign == -fit_flipped.sign
    np.testing.assert_array_equal(fit_flipped.foreground_ratio(flipped), masks.mean(axis=1))


def test_batching_the_sample_does_not_change_the_fit() -> None:
    tokens, _ = synthetic_tokens(count=30, seed=3)
    one, many = fit_foreground(batches_of(tokens, 30), 0.4), fit_foreground(batches_of(tokens, 4), 0.4)
    np.testing.assert_allclose(one.mean, many.mean, atol=1e-12)
    np.testing.assert_allclose(one.component, many.component, atol=1e-10)
    assert one.sign == many.sign and one.threshold == pytest.approx(many.threshold, abs=1e-9)


def test_foreground_share_is_the_share_of_foreground_patches_in_the_sample() -> None:
    rng = np.random.default_rng(5)
    tokens = rng.normal(size=(50, 16, 8)) * np.linspace(3, 0.5, 8)  # no planted foreground: a continuous spread
    for share in (0.2, 0.6, 0.9):
        fit = fit_foreground(batches_of(tokens, 16), share)
        assert abs(fit.foreground_ratio(tokens).mean() - share) <= 1 / tokens[..., 0].size + 1e-12


def test_moments_match_numpy() -> None:
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(9, 16, 5)) + 4
    moments = PatchMoments()
    for part in np.array_split(tokens, 3):
        moments.update(part)
    mean, component = moments.principal_component()
    flat = tokens.reshape(-1, 5)
    values, vectors = np.linalg.eigh(np.cov(flat, rowvar=False))
    np.testing.assert_allclose(mean, flat.mean(axis=0), atol=1e-12)
    assert abs(abs(component @ vectors[:, -1]) - 1) < 1e-10
    assert component[np.argmax(np.abs(component))] > 0
    with pytest.raises(ValueError):
        PatchMoments().principal_component()


def test_orientation_needs_a_square_grid() -> None:
    centre = np.zeros((4, 4))
    centre[1:3, 1:3] = 1
    assert orientation(centre.ravel()) == 1 and orientation(-centre.ravel()) == -1
    with pytest.raises(ValueError, match="square grid"):
        orientation(np.zeros(10))
    with pytest.raises(ValueError, match="square grid"):
        orientation(np.zeros(4))  # 2x2: no centre


def test_noise_levels_bin_like_a_plain_loop() -> None:
    bins, levels = [0.2, 0.4, 0.6, 0.8], [0, 100, 200, 300, 400]
    ratios = np.array([0.0, 0.19, 0.2, 0.39, 0.5, 0.6, 0.79, 0.8, 0.99, 1.0])
    expected = [levels[sum(r >= b for b in bins)] for r in ratios]
    np.testing.assert_array_equal(noise_levels(ratios, bins, levels), expected)
    np.testing.assert_array_equal(noise_levels(ratios, bins, levels), [0, 0, 100, 100, 200, 300, 300, 400, 400, 400])
    np.testing.assert_array_equal(noise_levels(np.array([0.1, 0.5]), [0.3], [7, 9]), [7, 9])
    with pytest.raises(ValueError, match="one entry more"):
        noise_levels(ratios, bins, levels[:-1])


def test_a_saved_fit_reloads_exactly_and_the_first_writer_wins(tmp_path) -> None:
    tokens, masks = synthetic_tokens()
    first = fit_foreground(batches_of(tokens, 40), float(masks.mean()), {"seed": 0})
    second = fit_foreground(batches_of(tokens, 40), 0.3, {"seed": 1})
    path = tmp_path / "adaptive_noise.json"
    on_disk = save_fit_once(first, path)
    np.testing.assert_array_equal(on_disk.component, first.component)
    np.testing.assert_array_equal(on_disk.mean, first.mean)
    assert on_disk.threshold == first.threshold and on_disk.to_json() == first.to_json() and on_disk.made_with == {"seed": 0}
    # A later (or concurrent) writer gets the fit already there; no temporary file is left.
    assert save_fit_once(second, path).to_json() == first.to_json()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adaptive_noise.json"]
    assert first.to_json() != second.to_json()
    np.testing.assert_array_equal(load_fit(path).foreground_ratio(tokens), first.foreground_ratio(tokens))


def test_a_broken_fit_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "adaptive_noise.json"
    path.write_text(json.dumps({"mean": [0.0]}))
    with pytest.raises(SynthposError, match="not a valid adaptive-noise fit"):
        load_fit(path)
    path.write_text("{")
    with pytest.raises(SynthposError, match="delete it"):
        load_fit(path)


def test_fit_json_round_trip() -> None:
    fit = ForegroundFit(np.array([0.1, 1 / 3]), np.array([0.6, 0.8]), -1, 0.123456789012345678, 0.6, {"a": 1})
    again = ForegroundFit.from_json(json.loads(json.dumps(fit.to_json())))
    assert again.threshold == fit.threshold and (again.mean == fit.mean).all() and again.sign == -1
    tokens = np.array([[[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0], [0.5, 0.5]]])
    np.testing.assert_array_equal(again.foreground_ratio(tokens), fit.foreground_ratio(tokens))
