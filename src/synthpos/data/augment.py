"""SimCLR view augmentation on whole batches of uint8 image tensors.

torchvision's transforms work on one image at a time, so a DataLoader worker
loop would be the bottleneck of a small model's training step. Here the same
distribution of transforms is drawn per sample but applied to the whole batch
with tensor ops, on whatever device the batch lives on:

* ``RandomResizedCrop(crop_size, scale, ratio)`` + ``RandomHorizontalFlip`` +
  the resize: one ``F.grid_sample`` per batch (:func:`crop_and_flip`).
* ``RandomApply([ColorJitter(b, c, s, h)], p)``: per-sample factors, the four
  adjustments in a random order per batch (:func:`adjust_colour`).
* ``RandomGrayscale(p)``, then ``RandomApply([GaussianBlur(k, sigma)], p)``
  (:func:`gaussian_blur`), then ``RandomSolarize(0.5, p)`` (:func:`solarize`), and
  normalisation: blur and solarization in the order of solo-learn's and GenView's pipelines. Solarization comes after grayscale, as in the official CLSP and GenView
  MoCo pipelines (``RandomGrayscale``, then ``RandomApply([Solarization()])``).

Differences from torchvision, by design: everything stays float (torchvision
rounds to uint8 between steps when fed uint8 images), and a crop larger than
``crop_size`` is downsampled without antialiasing (grid_sample cannot
antialias; at CIFAR / Fashion-MNIST scale crops are almost always upsampled,
where the two agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma weights (torchvision uses 0.2989 for red; the difference is < 1e-4).
_LUMA = (0.299, 0.587, 0.114)

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3  # indices used by ``order``


_TRIES = 10  # RandomResizedCrop's attempts before its central-crop fallback
_CROP_UNIFORMS = 2 * _TRIES + 2  # area and ratio per try, then the two offsets


def sample_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``RandomResizedCrop`` boxes for a batch, with torchvision's distribution.

    Per sample: up to 10 tries of an area fraction ~ U[scale] and a log-uniform
    aspect ratio in ``ratio``; the first try whose rounded box fits is kept and
    placed uniformly at random; if none fits, the central crop torchvision falls
    back to. All tries are drawn at once instead of in a loop.

    Args:
        device: where to draw (default: the generator's device, else the CPU).

    Returns:
        float32 boxes ``(top, left, height, width)`` in pixels (integer valued).
        Shape: (B, 4).
    """
    if generator is not None:
        device = generator.device
    uniform = torch.rand((batch_size, _CROP_UNIFORMS), generator=generator, device=device)
    return _crop_boxes(uniform, height, width, scale, ratio)


def _crop_boxes(
    uniform: torch.Tensor, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """:func:`sample_crop_boxes` from given U[0, 1) draws. Shape: (B, 22) -> (B, 4)."""
    area = float(height * width)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * uniform[:, :_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform[:, _TRIES : 2 * _TRIES])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # argmax of a 0/1 tensor is the first True (0 when none: the fallback replaces it).
    first = fits.float().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # torchvision's fallback: the central crop with the aspect ratio clamped into ``ratio``.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    w = torch.where(found, w, fb_w)
    h = torch.where(found, h, fb_h)

    # Uniform integer offsets in [0, H - h] and [0, W - w] (torch.randint with a per-sample high).
    top = torch.minimum(torch.floor(uniform[:, 2 * _TRIES] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(uniform[:, 2 * _TRIES + 1] * (width - w + 1)), width - w)
    top = torch.where(found, top, (height - fb_h) // 2)
    left = torch.where(found, left, (width - fb_w) // 2)
    return torch.stack([top, left, h, w], dim=1).float()


def _axis_coords(start: torch.Tensor, length: torch.Tensor, extent: int, size: int, flip: torch.Tensor | None) -> torch.Tensor:
    """Normalised source coordinates along one axis for every output pixel.

    The map is affine: output pixel k (centre at x_o = (2k+1)/size - 1 in
    align_corners=False units) reads the source at ``a * x_o + b`` with
    ``a = length/extent`` (negated to flip) and ``b = (2*start + length)/extent - 1``.
    Coordinates are then clamped to the centres of the box's edge pixels, so
    the box's border is replicated rather than blended with pixels outside
    it, exactly as cropping first and then resizing does.

    Shape: start, length, flip (B,) -> (B, size).
    """
    base = (torch.arange(size, device=start.device, dtype=torch.float32) * 2 + 1) / size - 1
    a = (length / extent)[:, None]
    if flip is not None:
        a = torch.where(flip[:, None], -a, a)
    b = ((2 * start + length) / extent - 1)[:, None]
    coords = a * base + b
    lo = ((2 * start + 1) / extent - 1)[:, None]
    hi = ((2 * (start + length) - 1) / extent - 1)[:, None]
    return torch.maximum(torch.minimum(coords, hi), lo)


def crop_and_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None, size: int) -> torch.Tensor:
    """Crop each image to its box, flip it horizontally where asked, resize to ``size``.

    One bilinear ``F.grid_sample`` for the whole batch; equal to torchvision's
    ``resized_crop`` (+ ``horizontal_flip``) wherever that does not antialias,
    i.e. whenever the box is no larger than ``size``.

    Args:
        images: uint8 (scaled to [0, 1]) or float. Shape: (B, C, H, W).
        boxes: ``(top, left, height, width)`` in pixels. Shape: (B, 4).
        flips: bool, or None for no flips. Shape: (B,).
        size: output side length.

    Returns:
        float32. Shape: (B, C, size, size).
    """
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    batch, _, height, width = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    flips = flips.to(x.device, torch.bool) if flips is not None else None
    gx = _axis_coords(boxes[:, 1], boxes[:, 3], width, size, flips)  # (B, size)
    gy = _axis_coords(boxes[:, 0], boxes[:, 2], height, size, None)  # (B, size)
    # The map has no rotation or shear, so the grid is the outer product of the two axes.
    grid = torch.stack(
        [gx[:, None, :].expand(batch, size, size), gy[:, :, None].expand(batch, size, size)], dim=-1
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (ITU-R 601-2 weights); 1-channel images pass through.

    Shape: (B, C, H, W) -> (B, 1, H, W).
    """
    if images.shape[-3] == 1:
        return images
    r, g, b = images.unbind(dim=-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images by ``shift`` (in turns), keeping S and V.

    Computes torchvision's RGB -> HSV -> RGB round trip in closed form: with
    V = max, delta = max - min (= V * S) and H6 = 6 * hue, each channel n of the
    result is ``V - delta * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + H6) mod 6`` and n = 5, 3, 1 for R, G, B. This skips S and the
    sector lookup, which makes it several times cheaper than two conversions.

    Shape: images (B, 3, H, W), shift (B,) -> (B, 3, H, W).
    """
    r, g, b = images.unbind(dim=-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    # Grey pixels (delta = 0) come out as V whatever their hue, so any divisor works there.
    inv = torch.where(delta == 0, 1.0, delta).reciprocal_()
    # Hue in sixths of a turn, from the channel that holds the max (red wins ties, then green);
    # the sector offsets 2 and 4 are folded into the numerators as 2*delta and 4*delta.
    h6 = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0)))
    h6.mul_(inv)
    n = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1)
    offset = (n + 6.0 * shift.view(-1, 1, 1)).unsqueeze(-1)  # (B, 3, 1, 1)
    k = h6.unsqueeze(1) + offset
    # k mod 6 (torch.remainder is several times slower on CPU); in place: these are big temporaries.
    k.sub_(k.mul(1 / 6).floor_().mul_(6.0))
    weight = torch.minimum(k, k.neg().add_(4.0)).clamp_(0.0, 1.0)
    return weight.mul_(delta.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clamped to [0, 1] like torchvision."""
    f = factor.view(-1, 1, 1, 1)
    return (f * images + (1 - f) * other).clamp_(0.0, 1.0)


def adjust_colour(
    images: torch.Tensor,
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
    hue: torch.Tensor | None = None,
    order: Sequence[int] = (BRIGHTNESS, CONTRAST, SATURATION, HUE),
) -> torch.Tensor:
    """Colour jitter with explicit per-sample factors (torchvision's definitions).

    * brightness b: ``image * b``;
    * contrast c: blend with the mean of the image's grayscale;
    * saturation s: blend with the grayscale image (identity for 1 channel);
    * hue h in [-0.5, 0.5]: shift H in HSV by h (identity for 1 channel).

    Each step clamps to [0, 1]. Identity factors are 1, 1, 1, 0; a factor of
    None skips that step for the whole batch.

    Args:
        images: float in [0, 1]. Shape: (B, C, H, W), C in {1, 3}.
        brightness, contrast, saturation, hue: per-sample factors. Shape: (B,).
        order: the steps to apply, in order, as indices 0-3 (brightness,
            contrast, saturation, hue).

    Returns:
        Shape: (B, C, H, W).
    """
    colour = images.shape[-3] == 3
    x = images
    for step in order:
        if step == BRIGHTNESS and brightness is not None:
            x = (x * brightness.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
        elif step == CONTRAST and contrast is not None:
            # The mean of the grayscale is the luma of the per-channel means (cheaper: no gray image).
            channel_means = x.mean(dim=(-2, -1))
            if colour:
                luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)
                mean = (channel_means * luma).sum(dim=1).view(-1, 1, 1, 1)
            else:
                mean = channel_means.view(-1, 1, 1, 1)
            x = _blend(x, mean, contrast)
        elif step == SATURATION and saturation is not None and colour:
            x = _blend(x, rgb_to_grayscale(x), saturation)
        elif step == HUE and hue is not None and colour:
            x = _shift_hue(x, hue)
        elif step not in (BRIGHTNESS, CONTRAST, SATURATION, HUE):
            raise ValueError(f"order holds {step}; use 0 (brightness), 1 (contrast), 2 (saturation), 3 (hue)")
    return x


def solarize(images: torch.Tensor, apply: torch.Tensor | None = None) -> torch.Tensor:
    """Invert every pixel at or above 0.5, in the images where ``apply`` is set (all if None).

    torchvision's ``solarize(img, 0.5)`` on floats. On a float pipeline this is also exactly
    PIL's ``ImageOps.solarize`` (threshold 128) on the image rounded to uint8, which the
    official code applies: round(255 x) >= 128 iff x >= 0.5.

    Shape: images (B, C, H, W) in [0, 1], apply (B,) bool -> (B, C, H, W).
    """
    flip = images >= 0.5
    if apply is not None:
        flip = flip & apply.view(-1, 1, 1, 1)
    return torch.where(flip, 1.0 - images, images)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image with its own Gaussian (torchvision's ``gaussian_blur``: a ``kernel_size``
    kernel, reflect padding), as two 1-D grouped convolutions.

    Shape: images (B, C, H, W), sigma (B,) -> (B, C, H, W).
    """
    batch, channels, height, width = images.shape
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    pdf = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].to(images.dtype)) ** 2)  # (B, k)
    kernel = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    x = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    x = F.conv2d(x, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return x.view(batch, channels, height, width)


def _stat_tensor(values: Sequence[float], channels: int, device: torch.device) -> torch.Tensor:
    if len(values) not in (1, channels):
        raise ValueError(f"mean/std have {len(values)} values for {channels}-channel images; give 1 or {channels}")
    return torch.as_tensor(tuple(values), dtype=torch.float32, device=device).view(1, -1, 1, 1)


def to_model_input(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The evaluation path: scale to [0, 1], resize to ``size`` if needed, normalise.

    Resizing is antialiased bilinear (as torchvision's ``resize``).

    Args:
        images: uint8, or float already in [0, 1]. Shape: (B, C, H, W).

    Returns:
        float32. Shape: (B, C, size, size).
    """
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    channels = x.shape[1]
    return (x - _stat_tensor(mean, channels, x.device)) / _stat_tensor(std, channels, x.device)


def _per_view(prob: float | Sequence[float], name: str) -> tuple[float, ...]:
    """A probability for every view, or one per view (at most two), each in [0, 1]."""
    probs = (float(prob),) if isinstance(prob, (int, float)) else tuple(float(p) for p in prob)
    if not 1 <= len(probs) <= 2 or not all(0 <= p <= 1 for p in probs):
        raise ValueError(f"{name} must be a probability in [0, 1] or a pair of them (view 1, view 2), got {prob}")
    return probs


class BatchAugment(torch.nn.Module):
    """SimCLR's view augmentation, applied to a whole batch at once.

    Same distribution as ``Compose([RandomResizedCrop(crop_size, crop_scale,
    crop_ratio), RandomHorizontalFlip(hflip_prob), RandomApply([ColorJitter(
    brightness, contrast, saturation, hue)], jitter_prob),
    RandomGrayscale(grayscale_prob), RandomSolarize(0.5, solarize_prob),
    Normalize(mean, std)])``, with every
    sample drawing its own parameters (the jitter order is drawn per batch).

    ``blur_prob`` and ``solarize_prob`` may be pairs (view 1, view 2), as GenView's two
    pipelines; ``forward(..., view=i)`` then uses view i's (``per_view`` says whether they
    differ). ``forward(..., no_crop=mask)`` skips the crop of the marked images.
    """

    def __init__(
        self,
        crop_size: int = 32,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_prob: float = 0.2,
        hflip_prob: float = 0.5,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        solarize_prob: float | Sequence[float] = 0.0,
        blur_prob: float | Sequence[float] = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1]:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high, got {crop_scale}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {crop_ratio}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.crop_size = int(crop_size)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.jitter_prob = float(jitter_prob)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.grayscale_prob = float(grayscale_prob)
        self.hflip_prob = float(hflip_prob)
        # One probability for every view, or one per view (view 1, view 2; later views use the last).
        self.solarize_probs = _per_view(solarize_prob, "solarize_prob")
        self.blur_probs = _per_view(blur_prob, "blur_prob")
        #: the views differ (forward's ``view`` matters)
        self.per_view = len(set(self.solarize_probs)) > 1 or len(set(self.blur_probs)) > 1
        self.solarize_prob = self.solarize_probs[0] if len(self.solarize_probs) == 1 else self.solarize_probs
        self.blur_prob = self.blur_probs[0] if len(self.blur_probs) == 1 else self.blur_probs
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {blur_sigma}")
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        # Default: wide enough for 3 sigma of the largest blur, as torchvision's kernels are.
        self.blur_kernel_size = int(blur_kernel_size or 2 * math.ceil(3 * self.blur_sigma[1]) + 1)
        if self.blur_kernel_size % 2 == 0 or self.blur_kernel_size < 1:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {self.blur_kernel_size}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def from_settings(cls, settings: Any, mean: Sequence[float], std: Sequence[float]) -> BatchAugment:
        """From an ``AugmentConfig`` (``pretrain.augment``, ``pretrain.synthetic.augment``) and the data's mean and std."""
        a = settings
        return cls(
            crop_size=a.crop_size, crop_scale=tuple(a.crop_scale), jitter_prob=a.jitter_prob,
            brightness=a.brightness, contrast=a.contrast, saturation=a.saturation,
            hue=a.hue, grayscale_prob=a.grayscale_prob, hflip_prob=a.hflip_prob,
            mean=mean, std=std, solarize_prob=a.solarize_prob,
            blur_prob=a.blur_prob, blur_sigma=tuple(a.blur_sigma), blur_kernel_size=a.blur_kernel_size,
        )

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, crop_scale={self.crop_scale}, jitter_prob={self.jitter_prob}, "
            f"bcsh=({self.brightness}, {self.contrast}, {self.saturation}, {self.hue}), "
            f"grayscale_prob={self.grayscale_prob}, hflip_prob={self.hflip_prob}, "
            f"blur_prob={self.blur_prob}, blur_sigma={self.blur_sigma}, solarize_prob={self.solarize_prob}, mean={self.mean}, std={self.std}"
        )

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None, no_crop: torch.Tensor | None = None,
        view: int = 0,
    ) -> torch.Tensor:
        """Draw one augmented view of every image.

        Args:
            images: uint8. Shape: (B, C, H, W), C in {1, 3}.
            generator: the source of all randomness (a fixed seed gives the
                same views); on the CPU or on the images' device.
            no_crop: bool, where set the whole image instead of a RandomResizedCrop box (still
                flipped, resized to ``crop_size`` and colour-augmented), as GenerativeSSL's SimCLR
                loader treats a synthetic view; the draws are the same either way. Shape: (B,).
            view: which view this is (0 = view 1), for per-view blur and solarize probabilities.

        Returns:
            float32, normalised with ``mean``/``std``. Shape: (B, C, crop_size, crop_size).
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"BatchAugment expects uint8 (B, C, H, W) with C in {{1, 3}}, got {images.dtype} {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        device = images.device
        # Every per-sample draw comes from one call (small ops dominate at this size), made
        # where the generator lives and then moved. Columns: crop, flip, jitter on/off,
        # the four jitter factors, grayscale on/off, then blur on/off and sigma, and solarize on/off,
        # each only when it can happen (so that with both off the stream is the one drawn before they existed).
        blur_prob = self.blur_probs[min(view, len(self.blur_probs) - 1)]
        solarize_prob = self.solarize_probs[min(view, len(self.solarize_probs) - 1)]
        # The columns depend on whether any view blurs / solarizes, so every view draws the same stream layout.
        blur = max(self.blur_probs) > 0
        columns = _CROP_UNIFORMS + 7 + 2 * blur + (max(self.solarize_probs) > 0)
        uniform = torch.rand(
            (batch, columns), generator=generator, device=generator.device if generator is not None else device
        ).to(device)
        boxes = _crop_boxes(uniform[:, :_CROP_UNIFORMS], height, width, self.crop_scale, self.crop_ratio)
        if no_crop is not None:
            whole = torch.tensor([0.0, 0.0, height, width], device=device)
            boxes = torch.where(no_crop.to(device, torch.bool)[:, None], whole, boxes)
        u_flip, u_apply, u_b, u_c, u_s, u_h, u_gray = uniform[:, _CROP_UNIFORMS : _CROP_UNIFORMS + 7].unbind(dim=1)

        x = crop_and_flip(images, boxes, u_flip < self.hflip_prob, self.crop_size)

        if self.jitter_prob > 0:
            apply = u_apply < self.jitter_prob

            def factor(spread: float, u: torch.Tensor) -> torch.Tensor | None:
                # torchvision: U[max(0, 1 - spread), 1 + spread]; identity (1) where jitter is off.
                if spread == 0:
                    return None
                lo, hi = max(0.0, 1.0 - spread), 1.0 + spread
                return torch.where(apply, lo + (hi - lo) * u, 1.0)

            colour = channels == 3
            hue = torch.where(apply, (2 * u_h - 1) * self.hue, 0.0) if self.hue > 0 and colour else None
            # The order drives Python control flow, so it is drawn on the CPU unless the caller's
            # generator lives elsewhere (no device sync in the default case).
            order = torch.randperm(4, generator=generator, device=generator.device if generator is not None else "cpu")
            x = adjust_colour(
                x,
                brightness=factor(self.brightness, u_b),
                contrast=factor(self.contrast, u_c),
                saturation=factor(self.saturation, u_s) if colour else None,
                hue=hue,
                order=order.tolist(),
            )

        if self.grayscale_prob > 0 and channels == 3:
            # Only the chosen rows (a fifth at p 0.2) are converted: the same values as converting all and selecting.
            chosen = (u_gray < self.grayscale_prob).nonzero().squeeze(1)
            if len(chosen):
                x.index_copy_(0, chosen, rgb_to_grayscale(x[chosen]).expand(-1, channels, -1, -1))  # x is this call's own

        if blur:
            u_blur, u_sigma = uniform[:, _CROP_UNIFORMS + 7 : _CROP_UNIFORMS + 9].unbind(dim=1)
            chosen = (u_blur < blur_prob).nonzero().squeeze(1)
            if len(chosen):
                low, high = self.blur_sigma
                sigma = low + (high - low) * u_sigma[chosen]
                x = x.index_copy(0, chosen, gaussian_blur(x[chosen], sigma, self.blur_kernel_size))

        if solarize_prob > 0:
            x = solarize(x, uniform[:, -1] < solarize_prob)

        return x.sub_(_stat_tensor(self.mean, channels, device)).div_(_stat_tensor(self.std, channels, device))
