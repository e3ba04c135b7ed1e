"""Solarization and Gaussian blur in BatchAugment against torchvision's functional ops."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import v2

from synthpos.config import AugmentConfig
from synthpos.data.augment import _CROP_UNIFORMS, BatchAugment, gaussian_blur, solarize


def _identity_augment(solarize_prob: float, grayscale_prob: float = 0.0) -> BatchAugment:
    # A full crop at the native size, no flips or jitter, mean 0 / std 1: the output is the image in [0, 1]
    # with only grayscale and solarization applied.
    return BatchAugment(crop_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0,
                        grayscale_prob=grayscale_prob, hflip_prob=0.0, mean=(0.0,), std=(1.0,), solarize_prob=solarize_prob)


def _images(batch: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_solarize_equals_torchvision_uint8_and_float() -> None:
    images = _images()
    # uint8: torchvision's threshold 128; our float op at 0.5 must give the same pixels.
    expected = torch.stack([TF.solarize(img, 128) for img in images]).float() / 255
    assert torch.allclose(solarize(images.float() / 255), expected, atol=1e-6)
    # float: the same threshold 0.5 as torchvision on floats, including values between grid points.
    x = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(solarize(x), TF.solarize(x, 0.5))


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_augment_solarizes_the_drawn_images(channels: int) -> None:
    images = _images(channels=channels)
    p = 0.5
    out = _identity_augment(p)(images, generator=torch.Generator().manual_seed(7))
    # The per-image decisions: the last column of the one uniform draw BatchAugment makes.
    uniform = torch.rand((images.shape[0], _CROP_UNIFORMS + 8), generator=torch.Generator().manual_seed(7))
    decide = uniform[:, -1] < p
    assert 0 < int(decide.sum()) < images.shape[0]  # both kinds present, so the test can tell them apart
    expected = torch.stack([TF.solarize(img, 128) if d else img for img, d in zip(images, decide)]).float() / 255
    assert torch.allclose(out, expected, atol=1e-5)


def test_solarize_comes_after_grayscale() -> None:
    # Uniform-colour images whose grey value is far from 0.5 but some of whose channels are not, so
    # solarize-then-grey and grey-then-solarize give different results.
    colours = torch.tensor([[240, 10, 10], [10, 240, 10], [200, 40, 200], [40, 40, 230]], dtype=torch.uint8)
    images = colours[:, :, None, None].expand(4, 3, 16, 16).contiguous()
    out = _identity_augment(1.0, grayscale_prob=1.0)(images, generator=torch.Generator().manual_seed(0))
    reference = v2.Compose([v2.Grayscale(num_output_channels=3), v2.RandomSolarize(threshold=0.5, p=1.0)])
    expected = torch.stack([reference(img.float() / 255) for img in images])
    assert torch.allclose(out, expected, atol=1e-3)  # luma weights differ by < 1e-4
    wrong_order = torch.stack([TF.rgb_to_grayscale(TF.solarize(img.float() / 255, 0.5), 3) for img in images])
    assert not torch.allclose(out, wrong_order, atol=1e-2)


def test_solarize_off_draws_the_old_stream() -> None:
    # solarize_prob = 0 must keep today's recipes' views bit for bit: it draws exactly what BatchAugment drew
    # before solarization existed (one (B, crop + 7) uniform block, then the jitter order), no extra column.
    images = _images()
    used = torch.Generator().manual_seed(3)
    BatchAugment(crop_size=12, solarize_prob=0.0)(images, generator=used)
    old = torch.Generator().manual_seed(3)
    torch.rand((images.shape[0], _CROP_UNIFORMS + 7), generator=old)
    torch.randperm(4, generator=old)
    assert torch.equal(used.get_state(), old.get_state())
    assert AugmentConfig().solarize_prob == 0.0


def test_rejects_bad_probability() -> None:
    with pytest.raises(ValueError, match="solarize_prob"):
        BatchAugment(solarize_prob=1.5)


def test_gaussian_blur_equals_torchvision_per_image() -> None:
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    ours = gaussian_blur(x, sigma, 13)
    expected = torch.stack([TF.gaussian_blur(img, [13, 13], [float(s), float(s)]) for img, s in zip(x, sigma)])
    assert torch.allclose(ours, expected, atol=1e-5)


def test_batch_augment_blurs_the_drawn_images_before_solarizing() -> None:
    images = _images()
    augment = BatchAugment(crop_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0,
                           hflip_prob=0.0, mean=(0.0,), std=(1.0,), blur_prob=0.5, blur_sigma=(0.5, 2.0), solarize_prob=0.5)
    out = augment(images, generator=torch.Generator().manual_seed(9))
    uniform = torch.rand((images.shape[0], _CROP_UNIFORMS + 10), generator=torch.Generator().manual_seed(9))
    u_blur, u_sigma, u_solar = uniform[:, _CROP_UNIFORMS + 7 :].unbind(dim=1)
    blurred, solarized = u_blur < 0.5, u_solar < 0.5
    assert 0 < int(blurred.sum()) < len(images) and 0 < int((blurred & solarized).sum())
    expected = []
    for img, b, s, u in zip(images.float() / 255, blurred, solarized, u_sigma):
        sigma = 0.5 + 1.5 * float(u)
        img = TF.gaussian_blur(img, [13, 13], [sigma, sigma]) if b else img  # kernel 2 * ceil(3 * 2.0) + 1
        expected.append(TF.solarize(img, 0.5) if s else img)
    assert torch.allclose(out, torch.stack(expected), atol=1e-4)
