"""GenView's pair-quality scorer: foreground minus background similarity under a frozen network.

Li et al. (ECCV 2024) score each positive pair with a frozen CLIP ConvNeXt: its patch
tokens are projected on a fixed direction (the first principal component of tokens over
the dataset); per image the projection is min-max normalised into a soft foreground map
``m`` and a background map ``1 - m``, each normalised to sum 1; the foreground (background)
feature is the map-weighted mean of the tokens; the pair's score is
``q = cos(fg1, fg2) - cos(bg1, bg2)`` and its loss weight ``N * softmax(gamma * q)``.
A pair that shares its object but not its background gets a large weight; a pair whose
similarity comes from the background gets a small one.

The scorer here is any frozen network the user supplies that maps normalised images
(B, C, H, W) to feature maps (B, D, h, w): a synthpos ``backbone.pt`` (its features before
pooling) or a TorchScript file (e.g. a traced CLIP ConvNeXt trunk).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthpos.errors import SynthposError
from synthpos.losses import quality_weights
from synthpos.models.backbones import feature_map, load_backbone


class _FeatureMap(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map(self.backbone, x)


def load_scorer_network(path: Path) -> nn.Module:
    """A frozen feature-map network from a synthpos ``backbone.pt`` (with its ``.json``) or a TorchScript file.

    Raises:
        SynthposError: the file is missing or is neither.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthposError(f"pretrain.synthetic.scorer: {path} does not exist; point it at a synthpos backbone.pt "
                            "or a TorchScript file that maps images (B, C, H, W) to feature maps (B, D, h, w)")
    if path.with_suffix(".json").is_file():
        network: nn.Module = _FeatureMap(load_backbone(path))
    else:
        try:
            network = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as err:
            raise SynthposError(f"pretrain.synthetic.scorer: {path} is neither a synthpos backbone.pt (no "
                                f"{path.with_suffix('.json').name} beside it) nor a TorchScript file") from err
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def foreground_maps(tokens: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft foreground and background maps, each summing to 1 per image.

    Args:
        tokens: feature maps. Shape: (B, D, h, w).
        direction: the foreground direction. Shape: (D,).

    Returns:
        ``(fg, bg)``, each of shape (B, h * w).
    """
    projection = torch.einsum("bdhw,d->bhw", tokens, direction).flatten(1)
    low = projection.min(dim=1, keepdim=True).values
    high = projection.max(dim=1, keepdim=True).values
    fg = (projection - low) / (high - low + 1e-7)
    bg = 1 - fg
    return fg / (fg.sum(1, keepdim=True) + 1e-7), bg / (bg.sum(1, keepdim=True) + 1e-7)


def pair_scores(tokens1: torch.Tensor, tokens2: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``cos(fg1, fg2) - cos(bg1, bg2)`` per pair. Shape: (B, D, h, w) twice -> (B,)."""
    pooled = []
    for tokens in (tokens1, tokens2):
        fg, bg = foreground_maps(tokens, direction)
        flat = tokens.flatten(2)  # (B, D, h*w)
        pooled.append((torch.einsum("bdp,bp->bd", flat, fg), torch.einsum("bdp,bp->bd", flat, bg)))
    (fg1, bg1), (fg2, bg2) = pooled
    return F.cosine_similarity(fg1, fg2, dim=1) - F.cosine_similarity(bg1, bg2, dim=1)


def fit_direction(tokens: torch.Tensor) -> torch.Tensor:
    """The first principal component of all spatial tokens, signed so the image centre projects higher.

    GenView fits the component offline and fixes its sign so that objects come out
    positive; without labels for that, the sign is chosen so that the central quarter of
    the map projects higher than the border on average (objects tend to be centred).

    Args:
        tokens: feature maps of a sample of images. Shape: (N, D, h, w) with h * w >= 4.

    Returns:
        Unit vector. Shape: (D,).
    """
    n, d, h, w = tokens.shape
    if h * w < 4:
        raise SynthposError(f"the quality scorer's feature map is {h}x{w}; a foreground needs a spatial map "
                            "(use a scorer with less downsampling, or larger images)")
    flat = tokens.permute(0, 2, 3, 1).reshape(-1, d).double()
    centred = flat - flat.mean(0)
    # The top right-singular vector of the centred tokens = the first principal axis.
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    direction = vh[0]
    projection = torch.einsum("nd,d->n", flat, direction).reshape(n, h, w)
    rows, cols = torch.arange(h), torch.arange(w)
    centre = ((rows - (h - 1) / 2).abs()[:, None] <= h / 4) & ((cols - (w - 1) / 2).abs()[None, :] <= w / 4)
    if projection[:, centre].mean() < projection[:, ~centre].mean():
        direction = -direction
    return direction.float()


class QualityScorer(nn.Module):
    """Per-pair loss weights ``N * softmax(gamma * q)`` for GenView's quality-driven loss.

    Args:
        network: frozen; normalised images (B, C, H, W) -> feature maps (B, D, h, w).
        direction: foreground direction (D,), from :func:`fit_direction`.
        gamma: sharpness of the weights (0: all ones).

    Example:
        >>> scorer = QualityScorer(network, direction, gamma=1.0)
        >>> w = scorer.pair_weights(view1, view2)   # (B,), mean 1, no gradient
    """

    def __init__(self, network: nn.Module, direction: torch.Tensor, gamma: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("direction", direction.float())
        self.gamma = gamma

    @torch.no_grad()
    def scores(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """q per pair. Shape: (B, C, H, W) twice -> (B,)."""
        with torch.autocast(view1.device.type, enabled=False):
            tokens = self.network(torch.cat([view1, view2]).float()).float()
        t1, t2 = tokens.chunk(2)
        return pair_scores(t1, t2, self.direction.to(tokens.device))

    @torch.no_grad()
    def pair_weights(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        return quality_weights(self.scores(view1, view2), self.gamma)


def build_scorer(path: Path, images: np.ndarray, to_input, gamma: float, fit_images: int, seed: int) -> QualityScorer:
    """Load the scorer network and fit its foreground direction on a sample of the training images.

    Args:
        images: training images, uint8. Shape: (N, H, W, C).
        to_input: uint8 (B, C, H, W) tensor -> the normalised model input the views also get.
        fit_images: how many images to fit on (drawn with ``seed``).
    """
    network = load_scorer_network(path)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(fit_images, len(images)), replace=False))
    batch = torch.from_numpy(np.ascontiguousarray(images[pick])).permute(0, 3, 1, 2)
    with torch.no_grad():
        tokens = torch.cat([network(to_input(chunk)).float() for chunk in batch.split(256)])
    if tokens.dim() != 4:
        raise SynthposError(f"pretrain.synthetic.scorer must return feature maps (B, D, h, w); it returned shape {tuple(tokens.shape)}")
    return QualityScorer(network, fit_direction(tokens), gamma)
