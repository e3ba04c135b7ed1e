"""Instance conditioning: a DDPM conditioned on each image's own self-supervised embedding.

The idea of IC-GAN (Casanova et al., 2021), RCDM (Bordes et al., 2022) and of Stable unCLIP's
image variations (Ayromlou et al.), trained here on the user's own data with no external
weights and no labels. A frozen synthpos encoder (a pretraining run on the same data,
"round 0") embeds every training image once (its backbone features, L2-normalised); a small
learned projection maps the embedding to the UNet's time-embedding width, and the UNet adds
it to the time embedding at every block (diffusers' ``class_embed_type="identity"``, with
``resnet_time_scale_shift="scale_shift"``). During training the embedding is replaced by
zeros with probability ``dropout``, so the same model also predicts unconditionally and
classifier-free guidance works; with probability ``neighbour_prob`` the target image is one
of the anchor's ``neighbours`` nearest training images in embedding space (IC-GAN's
neighbourhood targets), so the model learns the embedding's neighbourhood, not the image.

A conditioned generator folder is a DDPMPipeline folder plus ``condition/``: the
projection's weights and settings, and a copy of the encoder (``encoder/backbone.pt`` with
its ``.json``), so it samples on its own, on the CPU, with no other file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthpos.errors import SynthposError

__all__ = [
    "CONDITION_DIR",
    "ConditionData",
    "ConditionProjection",
    "EmbeddingCondition",
    "embed_images",
    "load_condition_data",
    "encoder_digest",
    "nearest_neighbours",
]

CONDITION_DIR = "condition"
_WEIGHTS = "projection.pt"
_CONFIG = "config.json"


class ConditionProjection(nn.Module):
    """Embedding (B, D) -> time-embedding offset (B, E): Linear, SiLU, Linear."""

    def __init__(self, input_dim: int, time_embed_dim: int) -> None:
        super().__init__()
        self.input_dim, self.time_embed_dim = input_dim, time_embed_dim
        self.net = nn.Sequential(nn.Linear(input_dim, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


def encoder_digest(backbone_file: Path) -> str:
    """SHA-256 (16 hex digits) of an encoder's weights and architecture: names the embeddings it makes.

    The description's ``provenance`` (which commit and config wrote it) is left out: it is recorded, never
    compared, so the same weights give the same digest whoever made them.
    """
    digest = hashlib.sha256(Path(backbone_file).read_bytes())
    spec = json.loads(Path(backbone_file).with_suffix(".json").read_text())
    spec.pop("provenance", None)
    digest.update(json.dumps(spec, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def embed_images(
    encoder: nn.Module, images: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...], batch_size: int = 512
) -> np.ndarray:
    """L2-normalised backbone features of uint8 images (N, H, W, C) -> float32 (N, D), in eval mode."""
    from synthpos.evaluation.features import extract_features

    features = extract_features(encoder, images, size, mean, std, batch_size=batch_size, device="cpu")
    return torch.nn.functional.normalize(features.float(), dim=1).numpy()


def nearest_neighbours(embeddings: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Indices of each row's ``k`` nearest other rows by cosine similarity. Shape: (N, D) -> (N, k) int64."""
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    out = np.empty((len(x), k), dtype=np.int64)
    for begin in range(0, len(x), chunk):
        sim = x[begin: begin + chunk] @ x.T
        rows = torch.arange(begin, min(begin + chunk, len(x)))
        sim[torch.arange(len(rows)), rows] = -float("inf")  # never a row's own neighbour
        out[begin: begin + len(rows)] = sim.topk(k, dim=1).indices.numpy()
    return out


@dataclass(frozen=True)
class ConditionData:
    """What generator training needs of the condition: every training image's embedding and its neighbours.

    Attributes:
        embeddings: L2-normalised embeddings of the training images. Shape: (N, D), float32.
        neighbours: each image's nearest other images in embedding space. Shape: (N, k), or None.
        encoder_file: the encoder's backbone.pt (copied into the generator folder).
        size, mean, std: how the encoder reads images.
    """

    embeddings: np.ndarray
    neighbours: np.ndarray | None
    encoder_file: Path
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def write(self, projection: ConditionProjection, folder: Path) -> None:
        """Write the condition folder of a generator being saved at ``folder``."""
        EmbeddingCondition.write(folder, projection, self.encoder_file, self.size, self.mean, self.std)


def load_condition_data(encoder_file: Path, images: np.ndarray, size: int, mean: tuple[float, ...],
                        std: tuple[float, ...], neighbours: int | None, cache_dir: Path) -> ConditionData:
    """Embed ``images`` with the encoder (cached under the encoder's and the images' digests) and find neighbours.

    Raises:
        SynthposError: the encoder cannot be read.
    """
    from synthpos.evaluation.features import images_digest
    from synthpos.models.backbones import load_backbone

    encoder_file = Path(encoder_file)
    key = f"embeddings-{encoder_digest(encoder_file)}-{images_digest(images)}-{size}"
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        embeddings = np.load(path)
    else:
        embeddings = embed_images(load_backbone(encoder_file), images, size, mean, std)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, embeddings)
        tmp.replace(path)
    near = None if neighbours is None else nearest_neighbours(embeddings, neighbours)
    return ConditionData(embeddings, near, encoder_file, size, tuple(mean), tuple(std))


class EmbeddingCondition:
    """The frozen encoder and the projection of a conditioned generator, as saved in its ``condition/`` folder.

    Args:
        encoder: the frozen backbone (any synthpos backbone).
        projection: the trained projection.
        size, mean, std: how the encoder reads images (its pretraining crop size and the data's statistics).
        encoder_sha256: :func:`encoder_digest` of the encoder's files.
    """

    def __init__(self, encoder: nn.Module, projection: ConditionProjection, size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], encoder_sha256: str) -> None:
        self.encoder = encoder.eval().requires_grad_(False)
        self.projection = projection.eval().requires_grad_(False)
        self.size, self.mean, self.std, self.encoder_sha256 = size, tuple(mean), tuple(std), encoder_sha256

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of uint8 images (N, H, W, C) -> (N, D)."""
        return embed_images(self.encoder, images, self.size, self.mean, self.std)

    @torch.no_grad()
    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) -> the UNet's condition (N, E)."""
        return self.projection(embeddings.float())

    def null(self) -> torch.Tensor:
        """The unconditional condition (1, E): the projection of the zero embedding, as dropped in training."""
        return self.project(torch.zeros(1, self.projection.input_dim))

    # ------------------------------------------------------------------ files

    @staticmethod
    def write(folder: Path, projection: ConditionProjection, encoder_file: Path, size: int,
              mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Write ``folder/condition/`` (the projection and a copy of the encoder) into a generator folder."""
        target = Path(folder) / CONDITION_DIR
        (target / "encoder").mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().float().cpu().contiguous() for k, v in projection.state_dict().items()}, target / _WEIGHTS)
        encoder_file = Path(encoder_file)
        shutil.copyfile(encoder_file, target / "encoder" / "backbone.pt")
        shutil.copyfile(encoder_file.with_suffix(".json"), target / "encoder" / "backbone.json")
        (target / _CONFIG).write_text(json.dumps({
            "input_dim": projection.input_dim, "time_embed_dim": projection.time_embed_dim, "size": size,
            "mean": list(mean), "std": list(std), "encoder_sha256": encoder_digest(encoder_file),
            "feature": "backbone, L2-normalised",
        }, indent=2))

    @classmethod
    def load(cls, generator_dir: Path) -> EmbeddingCondition:
        """Read ``generator_dir/condition/``.

        Raises:
            SynthposError: the folder or one of its files is missing.
        """
        from synthpos.models.backbones import load_backbone

        folder = Path(generator_dir) / CONDITION_DIR
        needed = [folder / _CONFIG, folder / _WEIGHTS, folder / "encoder" / "backbone.pt"]
        missing = [str(p.relative_to(generator_dir)) for p in needed if not p.is_file()]
        if missing:
            raise SynthposError(f"{generator_dir} holds an embedding-conditioned UNet but {', '.join(missing)} is missing; "
                                "copy the whole generator folder as train-generator wrote it")
        spec = json.loads((folder / _CONFIG).read_text())
        projection = ConditionProjection(spec["input_dim"], spec["time_embed_dim"])
        projection.load_state_dict(torch.load(folder / _WEIGHTS, map_location="cpu", weights_only=True))
        encoder = load_backbone(folder / "encoder" / "backbone.pt")
        return cls(encoder, projection, spec["size"], spec["mean"], spec["std"], spec["encoder_sha256"])

    @staticmethod
    def digest(generator_dir: Path) -> bytes:
        """The bytes that decide a conditioned generator's output beyond its UNet (projection and encoder)."""
        folder = Path(generator_dir) / CONDITION_DIR
        return (folder / _WEIGHTS).read_bytes() + encoder_digest(folder / "encoder" / "backbone.pt").encode()
