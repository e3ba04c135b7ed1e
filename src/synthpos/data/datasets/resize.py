"""Resizing uint8 images (``data.image_size``): antialiased bilinear, in chunks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_uint8(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Resize uint8 (N, H, W, C) to (N, size, size, C), antialiased bilinear.

    Chunked so that a 60,000-image set never needs a float copy of all of it.
    """
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[start : start + chunk])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
