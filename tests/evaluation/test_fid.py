"""FID and KID: closed forms, a double loop and torchmetrics (used only here) as references; the FID Inception's layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import inception as tv_inception

from synthpos.errors import SynthposError
from synthpos.evaluation.fid import (
    FeatureNetwork,
    fid_inception,
    fid_kid,
    file_sha256,
    frechet_distance,
    gaussian_stats,
    inception_network,
    kid,
    load_fid_inception,
)

# ----------------------------------------------------------------------------- FID


def test_fid_of_diagonal_gaussians_is_the_closed_form() -> None:
    # diagonal covariances commute, so (S1 S2)^(1/2) is the elementwise sqrt of the product
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(9 + 1)


def test_fid_of_full_covariances_matches_torchmetrics() -> None:
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ref = _compute_fid(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_singular_covariances_stay_finite() -> None:
    x = np.random.default_rng(2).normal(size=(200, 8))
    stats = gaussian_stats(x)
    assert frechet_distance(*stats, *stats) == pytest.approx(0, abs=1e-8)
    # fewer samples than dimensions: a singular covariance; the eps offset keeps it finite and ~0
    few = np.random.default_rng(3).normal(size=(5, 20))
    assert abs(frechet_distance(*gaussian_stats(few), *gaussian_stats(few))) < 1e-3


def test_fid_matches_scipy_sqrtm_on_a_singular_pair() -> None:
    from scipy import linalg

    rng = np.random.default_rng(7)
    (mu1, s1), (mu2, s2) = gaussian_stats(rng.normal(size=(6, 10))), gaussian_stats(rng.normal(1, 2, size=(8, 10)))
    root = linalg.sqrtm(s1 @ s2)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_fid_rejects_mismatched_sizes_and_non_covariances() -> None:
    with pytest.raises(SynthposError, match="negative eigenvalue"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(SynthposError, match="different sizes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(SynthposError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))


# ----------------------------------------------------------------------------- KID


def _mmd_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with (x.y/d + 1)^3, written as sums over pairs."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (np.dot(a, b) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_of_one_whole_subset_matches_a_double_loop_and_torchmetrics() -> None:
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.5, size=(12, 5))
    # one subset of every row: a permutation of each set, which leaves MMD^2 unchanged
    mean, std = kid(x, y, subset_size=12, subsets=1)
    assert mean == pytest.approx(_mmd_loop(x, y), rel=1e-10) and std == 0
    assert mean == pytest.approx(poly_mmd(torch.from_numpy(x), torch.from_numpy(y)).item(), rel=1e-10)


def test_kid_over_subsets_is_seeded_and_separates_distributions() -> None:
    rng = np.random.default_rng(5)
    real, same, shifted = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)), rng.normal(0.7, 1, size=(300, 16))
    a = kid(real, same, subset_size=50, subsets=20, seed=1)
    assert a == kid(real, same, subset_size=50, subsets=20, seed=1)
    assert a != kid(real, same, subset_size=50, subsets=20, seed=2)
    far = kid(real, shifted, subset_size=50, subsets=20, seed=1)
    assert abs(a[0]) < 3 * a[1] + 1e-3 and far[0] > 10 * max(abs(a[0]), a[1]) and far[1] > 0
    with pytest.raises(SynthposError, match="subset size"):
        kid(real[:10], same, subset_size=11)


# ----------------------------------------------------------------------------- the FID Inception


def test_fid_inception_has_pytorch_fids_layout_and_embeds_like_torchvisions_forward(tmp_path) -> None:
    net = fid_inception()
    reference = tv_inception.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    path = tmp_path / "pt_inception-2015-12-05-test.pth"
    torch.save(net.state_dict(), path)
    loaded = load_fid_inception(path)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(SynthposError, match="not pytorch-fid's Inception"):
        load_fid_inception(tmp_path / "other.pth")
    with pytest.raises(SynthposError, match="does not exist"):
        load_fid_inception(tmp_path / "missing.pth")
    # the store's path: uint8 grey images, repeated to RGB, named plain FID, the file hashed
    network = inception_network(path)
    assert network.fid_name == "FID" and network.kid_name == "KID" and network.sha256 == file_sha256(path)
    grey = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    # reference: torchvision's own forward (stem, max pools, blocks, average pool; fc removed) on
    # pytorch-fid's input: bilinear resize to 299, then [0, 1] -> [-1, 1]
    rgb = torch.from_numpy(np.repeat(grey, 3, -1)).permute(0, 3, 1, 2).float() / 255
    loaded.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = loaded(2 * F.interpolate(rgb, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    assert expected.shape == (2, 2048)
    assert torch.allclose(network.embed(grey).float(), expected, atol=1e-4)


@torch.no_grad()
def test_fid_blocks_pool_like_tensorflow() -> None:
    # reference: torchvision's own block, its pool branch recomputed with TensorFlow's pooling
    torch.manual_seed(0)
    net = fid_inception()
    tf_avg = lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # noqa: E731
    for name, plain, pool in (("Mixed_5b", tv_inception.InceptionA(192, pool_features=32), tf_avg),
                              ("Mixed_6b", tv_inception.InceptionC(768, channels_7x7=128), tf_avg),
                              ("Mixed_7b", tv_inception.InceptionE(1280), tf_avg),
                              ("Mixed_7c", tv_inception.InceptionE(2048), lambda x: F.max_pool2d(x, 3, 1, 1))):
        block = getattr(net, name)
        plain.load_state_dict(block.state_dict())
        plain.eval()
        x = torch.randn(1, block.branch1x1.conv.in_channels, 5, 5)
        outs = plain._forward(x)
        outs[-1] = plain.branch_pool(pool(x))
        assert torch.allclose(block(x), torch.cat(outs, 1), atol=1e-5), name
        assert not torch.allclose(block(x), plain(x), atol=1e-5), f"{name}: the pool must differ from torchvision's"


# ----------------------------------------------------------------------------- names and protocol


def test_judge_features_are_never_named_plain_fid(tmp_path) -> None:
    rng = np.random.default_rng(6)
    real, fake = rng.integers(0, 256, size=(30, 4, 4, 1), dtype=np.uint8), rng.integers(0, 256, size=(20, 4, 4, 1), dtype=np.uint8)
    flat = lambda images: torch.from_numpy(images.reshape(len(images), -1).astype(np.float64))  # noqa: E731
    (tmp_path / "judge.pt").write_bytes(b"weights")
    judge = FeatureNetwork(flat, "pixels", str(tmp_path / "judge.pt"), file_sha256(tmp_path / "judge.pt"), standard=False,
                           label="judge features")
    out = fid_kid(real, fake, judge, kid_subset_size=1000, kid_subsets=3, seed=0)
    assert out["fid"]["name"] == "FID (judge features)" and out["kid"]["name"] == "KID (judge features)"
    assert out["fid"]["value"] == pytest.approx(frechet_distance(*gaussian_stats(flat(real)), *gaussian_stats(flat(fake))))
    p = out["protocol"]
    assert (p["real_count"], p["candidates_count"], p["kid_subset_size"], p["kid_subsets"], p["feature_dim"]) == (30, 20, 20, 3, 16)
    import hashlib
    assert p["feature_file_sha256"] == hashlib.sha256(b"weights").hexdigest() and not p["standard"]
