"""`synthpos compare`: how different two learned representations are (CKA, final and layer by layer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from synthpos.atomic import atomic_path
from synthpos.config import DataConfig, RunConfig
from synthpos.data import load_dataset
from synthpos.errors import SynthposError
from synthpos.evaluation.cka import MinibatchCKA, cka
from synthpos.evaluation.encoders import Encoder, load_encoder, resolve_backbone

__all__ = ["compare_encoders", "compare_stage", "run_config_of"]


def compare_encoders(a: Encoder, b: Encoder, images: np.ndarray, batch_size: int = 250, layers: bool = True) -> dict:
    """CKA of the final features (linear, RBF, linear unbiased) and the layer-by-layer minibatch CKA matrix.

    Args:
        images: uint8 (N, H, W, C), the same images through both encoders.

    Returns:
        ``{"images": N, "final": {...}, "layers_a": [names], "layers_b": [names], "matrix": [[...]]}``
        (the matrix rows: A's layers, columns: B's; minibatch CKA with the unbiased HSIC, Nguyen et al.).
    """
    acc = MinibatchCKA()
    fa, fb = [], []
    with_layers = layers and bool(a.layers) and bool(b.layers)
    for (xa, la), (xb, lb) in zip(a.batches(images, batch_size, with_layers), b.batches(images, batch_size, with_layers)):
        fa.append(xa)
        fb.append(xb)
        if with_layers and len(xa) >= 4:
            acc.update(la + [xa], lb + [xb])
    fa, fb = torch.cat(fa), torch.cat(fb)
    out = {"images": len(images), "a": a.name, "b": b.name, "final": {
        "linear": cka(fa, fb), "rbf": cka(fa, fb, "rbf"), "linear_unbiased": cka(fa, fb, unbiased=True)}}
    if with_layers:
        out["layers_a"] = [n for n, _ in a.layers] + ["output"]
        out["layers_b"] = [n for n, _ in b.layers] + ["output"]
        out["matrix"] = acc.matrix().tolist()
    return out


def run_config_of(path: Path) -> RunConfig | None:
    """The resolved config a run wrote beside its backbone (``pretrain/config.yaml``), or None."""
    backbone = resolve_backbone(path)
    if backbone is None:
        return None
    cfg = backbone.parent / "config.yaml"
    if not cfg.is_file():
        return None
    try:
        return RunConfig.model_validate(yaml.safe_load(cfg.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthposError(f"{cfg} is damaged or not a synthpos config ({first}); it is the resolved config pretrain "
                            "wrote beside the backbone, which says which data to compare on: restore it, or remove it "
                            "and pass --config with the run's recipe") from None


def compare_stage(run_a: Path, run_b: Path, data: DataConfig | None = None, images: int = 2000, arch: str | None = None,
                  out: Path | None = None, size: int | None = None) -> dict:
    """Compare two runs (or a run and a reference encoder) on the first ``images`` test images.

    Writes ``cka.json`` and ``cka_layers.png`` to ``out`` (default ``<run_a>/compare``).

    Raises:
        SynthposError: a path that is not an encoder; no data config to take images from.
    """
    config = run_config_of(run_a) or run_config_of(run_b)
    if data is None:
        if config is None:
            raise SynthposError(f"neither {run_a} nor {run_b} is a synthpos run with a config.yaml; pass --config "
                                "to say which data to compare on")
        data = config.data
    size = size or (config.evaluate.feature_size or config.pretrain.augment.crop_size if config else 32)
    test = load_dataset(data.model_copy(update={"subset": None}), "test")
    test = test.take(min(images, len(test)))
    a = load_encoder(run_a, size, test.mean, test.std, arch)
    b = load_encoder(run_b, size, test.mean, test.std, arch)
    result = {"data": data.name, **compare_encoders(a, b, test.images)}
    out = Path(out) if out else (resolve_backbone(run_a) or Path(run_a)).parent / "compare"
    out.mkdir(parents=True, exist_ok=True)
    if "matrix" in result:
        from synthpos.figures.plots import cka_heatmap

        result["heatmap"] = str(cka_heatmap(result, out / "cka_layers.png"))
    with atomic_path(out / "cka.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result
