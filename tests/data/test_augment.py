"""BatchAugment and its pieces, checked against torchvision's single-image functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from synthpos.data.augment import (
    _CROP_UNIFORMS,
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    BatchAugment,
    adjust_colour,
    crop_and_flip,
    rgb_to_grayscale,
    sample_crop_boxes,
    to_model_input,
)


def _images(batch: int = 8, channels: int = 3, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random uint8 images (a blurred noise field), so resizing differences stay small."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, channels, size // 4, size // 4, generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8)


def _identity_augment(**overrides) -> BatchAugment:
    """No jitter, no grayscale, no flip, no normalisation; the crop still random unless overridden."""
    kwargs = dict(jitter_prob=0.0, grayscale_prob=0.0, hflip_prob=0.0, mean=(0.0,), std=(1.0,))
    kwargs.update(overrides)
    return BatchAugment(**kwargs)


def test_full_crop_equals_plain_resize() -> None:
    images = _images(channels=1, size=28)
    augment = _identity_augment(crop_size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = augment(images)
    reference = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    assert out.shape == (8, 1, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, atol=1e-2, rtol=0)
    # Also against torchvision's resize (antialias is a no-op when upsampling).
    tv = torch.stack([TF.resize(img.float() / 255, [32, 32], antialias=True) for img in images])
    torch.testing.assert_close(out, tv, atol=1e-2, rtol=0)


@pytest.mark.parametrize("flip", [False, True])
def test_known_box_equals_torchvision_resized_crop(flip: bool) -> None:
    images = _images(batch=4, channels=3, size=28)
    boxes = torch.tensor([[0, 0, 28, 28], [3, 5, 10, 14], [10, 2, 17, 9], [20, 20, 8, 8]], dtype=torch.float32)
    flips = torch.full((4,), flip)
    out = crop_and_flip(images, boxes, flips, 32)
    for k in range(4):
        top, left, h, w = (int(v) for v in boxes[k])
        expected = TF.resized_crop(images[k].float() / 255, top, left, h, w, [32, 32], antialias=True)
        if flip:
            expected = TF.horizontal_flip(expected)
        torch.testing.assert_close(out[k], expected, atol=1e-4, rtol=0)


def test_flip_equals_torch_flip() -> None:
    images = _images(batch=4, channels=3, size=32)
    boxes = torch.tensor([[0, 0, 32, 32]] * 4, dtype=torch.float32)
    plain = crop_and_flip(images, boxes, torch.zeros(4, dtype=torch.bool), 32)
    flipped = crop_and_flip(images, boxes, torch.ones(4, dtype=torch.bool), 32)
    torch.testing.assert_close(plain, images.float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped, torch.flip(plain, dims=[-1]), atol=1e-6, rtol=0)


def test_colour_adjustments_match_torchvision() -> None:
    images = _images(batch=6, channels=3, size=16, seed=1).float() / 255
    g = torch.Generator().manual_seed(2)
    b = 0.6 + 0.8 * torch.rand(6, generator=g)
    c = 0.6 + 0.8 * torch.rand(6, generator=g)
    s = 0.6 + 0.8 * torch.rand(6, generator=g)
    h = 0.5 * (2 * torch.rand(6, generator=g) - 1)  # the full [-0.5, 0.5] range
    cases = [
        (dict(brightness=b), [BRIGHTNESS], lambda img, k: TF.adjust_brightness(img, float(b[k])), 2e-3),
        (dict(contrast=c), [CONTRAST], lambda img, k: TF.adjust_contrast(img, float(c[k])), 2e-3),
        (dict(saturation=s), [SATURATION], lambda img, k: TF.adjust_saturation(img, float(s[k])), 2e-3),
        (dict(hue=h), [HUE], lambda img, k: TF.adjust_hue(img, float(h[k])), 1e-2),
    ]
    for factors, order, reference, atol in cases:
        out = adjust_colour(images, order=order, **factors)
        expected = torch.stack([reference(images[k], k) for k in range(6)])
        torch.testing.assert_close(out, expected, atol=atol, rtol=0, msg=lambda m: f"{order}: {m}")


def test_colour_order_is_followed() -> None:
    images = _images(batch=4, channels=3, size=16, seed=3).float() / 255
    b, c, s, h = torch.full((4,), 1.3), torch.full((4,), 0.7), torch.full((4,), 1.4), torch.full((4,), 0.2)
    for order in ([HUE, SATURATION, CONTRAST, BRIGHTNESS], [BRIGHTNESS, HUE, CONTRAST, SATURATION]):
        out = adjust_colour(images, b, c, s, h, order=order)
        steps = {
            BRIGHTNESS: lambda x: TF.adjust_brightness(x, 1.3),
            CONTRAST: lambda x: TF.adjust_contrast(x, 0.7),
            SATURATION: lambda x: TF.adjust_saturation(x, 1.4),
            HUE: lambda x: TF.adjust_hue(x, 0.2),
        }
        expected = images
        for step in order:
            expected = torch.stack([steps[step](img) for img in expected])
        torch.testing.assert_close(out, expected, atol=1e-2, rtol=0)


def test_one_channel_colour_identities() -> None:
    images = _images(batch=3, channels=1, size=16).float() / 255
    ones = torch.full((3,), 1.4)
    out = adjust_colour(images, saturation=ones, hue=torch.full((3,), 0.3))
    torch.testing.assert_close(out, images)
    out = adjust_colour(images, contrast=torch.full((3,), 0.5))
    expected = torch.stack([TF.adjust_contrast(img, 0.5) for img in images])
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_grayscale_matches_torchvision() -> None:
    images = _images(batch=4, channels=3, size=16).float() / 255
    torch.testing.assert_close(rgb_to_grayscale(images), TF.rgb_to_grayscale(images), atol=2e-4, rtol=0)
    # Through the module: grayscale everything, nothing else; 3 equal channels come out.
    out = _identity_augment(crop_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), grayscale_prob=1.0)(
        (images * 255).round().to(torch.uint8)
    )
    expected = TF.rgb_to_grayscale((images * 255).round() / 255, num_output_channels=3)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)


def test_grayscale_converts_exactly_the_drawn_rows() -> None:
    """At p 0.5 (only the drawn rows are converted): the rows whose grayscale draw is under p, and only they, are
    the luma of the view without grayscale (same seed), bit for bit as converting every row and selecting."""
    batch = 32
    images = _images(batch=batch, channels=3, size=16)
    settings = dict(crop_size=16, jitter_prob=0.8, hflip_prob=0.5, mean=(0.0,), std=(1.0,))  # no normalisation
    plain = BatchAugment(**settings, grayscale_prob=0.0)(images, generator=torch.Generator().manual_seed(3))
    out = BatchAugment(**settings, grayscale_prob=0.5)(images, generator=torch.Generator().manual_seed(3))
    # The draws: the crop's uniforms, then flip, jitter on/off, its four factors, then grayscale (column 6 after).
    uniform = torch.rand((batch, _CROP_UNIFORMS + 7), generator=torch.Generator().manual_seed(3))
    drawn = uniform[:, _CROP_UNIFORMS + 6] < 0.5
    assert 0 < int(drawn.sum()) < batch
    expected = torch.where(drawn.view(-1, 1, 1, 1), rgb_to_grayscale(plain).expand_as(plain), plain)
    assert torch.equal(out, expected)


def test_crop_box_statistics_match_torchvision() -> None:
    n, size = 4000, 224
    boxes = sample_crop_boxes(n, size, size, (0.08, 1.0), (3 / 4, 4 / 3), generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    area = h * w / size**2
    aspect = w / h
    # Rounding the sides to pixels moves the bounds by at most ~1 px.
    assert area.min() >= 0.08 - 2e-3 and area.max() <= 1.0
    assert aspect.min() >= 3 / 4 - 1e-2 and aspect.max() <= 4 / 3 + 1e-2
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    assert (boxes == boxes.round()).all()
    # Same distribution as torchvision's own sampler (its loop, one box at a time).
    torch.manual_seed(0)
    reference = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, size, size), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=torch.float32)
    ref_area = reference[:, 2] * reference[:, 3] / size**2
    ref_aspect = reference[:, 3] / reference[:, 2]
    for q in (0.1, 0.5, 0.9):
        assert abs(area.quantile(q) - ref_area.quantile(q)) < 0.03
        assert abs(aspect.log().quantile(q) - ref_aspect.log().quantile(q)) < 0.03
    # Offsets are uniform over the free space: mean position of the box centre near the middle.
    assert abs(float((top + h / 2).mean()) - size / 2) < 3


def test_fallback_is_central_crop() -> None:
    # A 10x40 strip can never fit a box of ratio 1 with area >= 0.9: torchvision falls back to
    # the central crop with the aspect ratio clamped to the range.
    boxes = sample_crop_boxes(50, 10, 40, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    expected = torch.tensor([0.0, 15.0, 10.0, 10.0])
    assert (boxes == expected).all()


def test_same_generator_same_output() -> None:
    images = _images(batch=16, channels=3, size=28)
    augment = BatchAugment(crop_size=32)
    a = augment(images, generator=torch.Generator().manual_seed(7))
    b = augment(images, generator=torch.Generator().manual_seed(7))
    c = augment(images, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    # Every sample has its own parameters: the two views of one image differ.
    twice = augment(torch.cat([images[:1], images[:1]]), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(twice[0], twice[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_dtype_and_normalisation(channels: int) -> None:
    images = _images(batch=32, channels=channels, size=28)
    mean, std = (0.2, 0.3, 0.4)[:channels], (0.5, 0.25, 0.125)[:channels]
    out = BatchAugment(crop_size=32, mean=mean, std=std)(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == (32, channels, 32, 32) and out.dtype == torch.float32
    # Undo the normalisation: values must lie in [0, 1].
    raw = out * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    # With no randomness left, normalisation is exactly (x - mean) / std.
    fixed = _identity_augment(crop_size=28, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), mean=mean, std=std)(images)
    expected = TF.normalize(images.float() / 255, list(mean), list(std))
    torch.testing.assert_close(fixed, expected, atol=1e-5, rtol=0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment()(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="mean/std"):
        BatchAugment(mean=(0.5, 0.5), std=(0.5, 0.5))(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_to_model_input() -> None:
    images = _images(batch=4, channels=3, size=28)
    out = to_model_input(images, 32, (0.5,), (0.5,))
    reference = torch.stack([TF.normalize(TF.resize(img.float() / 255, [32, 32], antialias=True), [0.5] * 3, [0.5] * 3) for img in images])
    assert out.shape == (4, 3, 32, 32)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
    same = to_model_input(images, 28, (0.0,), (1.0,))
    torch.testing.assert_close(same, images.float() / 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    images = _images(batch=16, channels=3, size=28)
    augment = BatchAugment(crop_size=32)
    cpu = augment(images, generator=torch.Generator().manual_seed(3))
    gpu = augment(images.cuda(), generator=torch.Generator().manual_seed(3))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    augment(images.cuda())  # the default generator on the device works too


def test_crop_box_fraction_consistent_with_formula() -> None:
    # log-uniform aspect ratio: the median log-ratio is 0 for a symmetric range.
    boxes = sample_crop_boxes(4000, 512, 512, generator=torch.Generator().manual_seed(1))
    assert abs(float((boxes[:, 3] / boxes[:, 2]).log().median())) < 0.03
    assert math.isclose(float((boxes[:, 2] * boxes[:, 3] / 512**2).max()), 1.0, abs_tol=0.02)
