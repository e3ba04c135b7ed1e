"""Export a run's encoders for other libraries: timm, torchvision, TorchScript, ONNX; each with a model card.

``export(source, fmt, out)`` reads a run directory (laid out as :func:`synthpos.report.collect.collect_run`
reads it: a pipeline run's ``pretrain/``, a quick start's ``simclr/``, ``<mode>_simclr/``
(``multipos_simclr/``) and, with ``--control``, ``<mode>_simclr_control/`` (read from its results.json), a multi-seed run's ``seed-<s>/pretrain/``) or one ``backbone.pt``, and writes::

    out/                      # one encoder (or --encoder NAME)
      model.safetensors       # timm, torchvision: the backbone's state_dict, keys as the library names them
      config.json             # timm only: timm's Hub config (architecture, num_features, pretrained_cfg)
      model.pt                # torchscript: torch.jit.script, torch.jit.load gives the same features
      model.onnx              # onnx: input "images" (B, C, S, S), output "features" (B, D), batch dynamic
      backbone.json           # synthpos's own description of the backbone (architecture, provenance)
      README.md               # the model card
    out/<encoder>/...         # several encoders, each in its own folder

Every file is checked before it is kept: the exported model gives the backbone's features on a
seeded random batch (TorchScript to 1e-5, ONNX through onnxruntime to 1e-4 when it is installed,
safetensors through the library's own constructor when it is installed); the card says what was
checked. Bad input (no backbone, unknown encoder, a format the backbone cannot take, an ``out``
that holds files) raises :class:`SynthposError` before anything is written; the folder is written
under a temporary name and renamed into place, so ``out`` never holds half an export.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from synthpos.atomic import temporary_sibling
from synthpos.errors import SynthposError
from synthpos.models.backbones import load_backbone
from synthpos.report.collect import collect_run

__all__ = ["FORMATS", "Encoder", "find_encoders", "export"]

#: Every format, and those any backbone takes (the others need a ResNet-18/50 of torchvision's layout).
FORMATS = ("timm", "torchvision", "torchscript", "onnx")
_ANY_BACKBONE = ("torchscript", "onnx")
_RESNETS = ("resnet18", "resnet50")
#: Quick-start folders that are not a trained encoder (the random-init baseline).
_NOT_TRAINED = ("random_init",)
_FILES = {"timm": "model.safetensors", "torchvision": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}


@dataclass
class Encoder:
    """One encoder to export.

    ``key``: its folder name under ``out`` and the ``--encoder`` name (``pretrain``, ``simclr``, ``seed-0``);
    ``title``: the report's row name; ``spec``: its backbone.json; ``config``: the resolved run config
    written beside it (config.yaml), or None; ``results``/``records``: metrics.json's (or results.json's) numbers.
    """

    key: str
    title: str
    backbone: Path
    spec: dict
    config: dict | None = None
    results: dict = field(default_factory=dict)
    records: list = field(default_factory=list)


def _read_spec(backbone: Path) -> dict:
    spec_path = backbone.with_suffix(".json")
    if not backbone.is_file() or not spec_path.is_file():
        raise SynthposError(f"no backbone at {backbone} (with its {spec_path.name}); pass a run directory or a backbone.pt "
                            "written by synthpos pretrain")
    try:
        return json.loads(spec_path.read_text())
    except ValueError as err:
        raise SynthposError(f"{spec_path} is not JSON ({err}); pretrain again to rewrite it") from err


def _yaml(text: str | None) -> dict | None:
    try:
        loaded = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def find_encoders(source: Path, encoder: str | None = None) -> list[Encoder]:
    """The encoders under ``source`` (a run directory or a backbone.pt), or the one named ``encoder``.

    Raises:
        SynthposError: nothing to export there, or no encoder of that name (the message lists the names).
    """
    source = Path(source)
    if source.is_file() or source.suffix == ".pt" or (source / "backbone.pt").is_file():
        backbone = source if source.suffix == ".pt" else source / "backbone.pt"
        spec = _read_spec(backbone)
        config = backbone.parent / "config.yaml"
        found = [Encoder(backbone.parent.name, backbone.parent.name, backbone, spec,
                         _yaml(config.read_text()) if config.is_file() else None)]
        # A pipeline run's pretrain/backbone.pt: its numbers are in the run's evaluate/metrics.json.
        metrics = backbone.parent.parent / "evaluate" / "metrics.json"
        if backbone.parent.name == "pretrain" and metrics.is_file():
            loaded = json.loads(metrics.read_text())
            found[0].results, found[0].records = loaded.get("results", {}), loaded.get("records", [])
    else:
        run = collect_run(source)  # SynthposError when source is no run at all
        found = []
        for entry in run["entries"]:
            backbone = entry.get("backbone")
            if backbone is None or not Path(backbone).is_file():
                continue
            folder = Path(entry["pretrain_dir"])
            key = folder.parent.name if folder.name == "pretrain" and folder.parent != source else folder.name
            if key in _NOT_TRAINED:
                continue
            found.append(Encoder(key, entry["name"], Path(backbone), _read_spec(Path(backbone)),
                                 _yaml(entry.get("config_text")), entry.get("results") or {}, entry.get("records") or []))
        if not found:
            raise SynthposError(f"{source} holds no trained backbone.pt; pass a run directory after its pretrain stage "
                                "or a backbone.pt")
    if encoder is not None:
        chosen = [e for e in found if encoder in (e.key, e.title)]
        if not chosen:
            raise SynthposError(f"no encoder '{encoder}' in {source}; choose one of: {', '.join(e.key for e in found)}")
        return chosen
    return found


def _check_format(enc: Encoder, fmt: str) -> None:
    if fmt not in FORMATS:
        raise SynthposError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    name = enc.spec["backbone"]["name"]
    if fmt not in _ANY_BACKBONE and name not in _RESNETS:
        raise SynthposError(f"--format {fmt} needs a ResNet-18/50 backbone, and encoder '{enc.key}' is a {name}: "
                            f"use --format torchscript or --format onnx")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthposError(f"--out {out} exists and is not an empty folder; pass a new folder or empty this one")


def _input_size(enc: Encoder) -> int:
    """The side the encoder was trained and evaluated at (pretrain.augment.crop_size), default 32."""
    try:
        return int(enc.config["pretrain"]["augment"]["crop_size"])
    except (TypeError, KeyError, ValueError):
        return 32


def _probe_batch(enc: Encoder) -> torch.Tensor:
    """A seeded batch of 3 normalised-looking inputs. Shape: (3, C, S, S)."""
    gen = torch.Generator().manual_seed(0)
    side = _input_size(enc)
    return torch.randn(3, enc.spec["in_channels"], side, side, generator=gen)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _library_resnet(library: str, name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    """The ResNet as a user builds it from ``library`` and the card's lines (test and check use it)."""
    if library == "timm":
        import timm

        net = timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=0)
    else:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        net.fc = nn.Identity()
        if not cifar_stem and in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def _write_safetensors(backbone: nn.Module, enc: Encoder, fmt: str, folder: Path) -> str:
    from safetensors.torch import save_file

    # Contiguous clones: safetensors refuses tensors that share storage.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    path = folder / _FILES[fmt]
    save_file(state, str(path), metadata={"format": "pt", "synthpos": json.dumps(enc.spec["backbone"])})
    b = enc.spec["backbone"]
    if fmt == "timm":
        side = _input_size(enc)
        mean, std = _stats(enc)
        cfg = {"architecture": b["name"], "num_classes": 0, "num_features": enc.spec["feature_dim"],
               "pretrained_cfg": {"input_size": [enc.spec["in_channels"], side, side], "num_classes": 0,
                                  **({"mean": list(mean), "std": list(std)} if mean else {}),
                                  "interpolation": "bilinear", "crop_pct": 1.0}}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        reference = _library_resnet(fmt, b["name"], enc.spec["in_channels"], b["cifar_stem"])
    except ImportError:
        return f"not checked here ({fmt} is not installed)"
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(str(path)), strict=True)
    return _compare(backbone, reference, enc, 1e-5, f"`load_state_dict(..., strict=True)` into {fmt}'s `{b['name']}`")


def _compare(backbone: nn.Module, exported: Any, enc: Encoder, tol: float, how: str) -> str:
    x = _probe_batch(enc)
    with torch.no_grad():
        want = backbone.eval()(x)
        got = exported.eval()(x) if isinstance(exported, nn.Module) or hasattr(exported, "eval") else exported(x)
    # Relative to the features' scale: float32 rounding grows with the values (an untrained ResNet's are large).
    scale = max(1.0, float(want.abs().max()))
    diff = _max_diff(want, got) / scale
    if not diff <= tol:
        raise RuntimeError(f"exported {enc.key} differs from the backbone by {diff:.2e} (> {tol:g}, relative) via {how}")
    return (f"checked: {how} gives the backbone's features on a random batch (largest difference {diff:.1e} "
            f"of max(1, largest feature), tolerance {tol:g})")


def _write_torchscript(backbone: nn.Module, enc: Encoder, folder: Path) -> str:
    path = folder / _FILES["torchscript"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice: the format is what users asked for
        torch.jit.save(torch.jit.script(backbone.eval()), str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return _compare(backbone, loaded, enc, 1e-5, "`torch.jit.load`")


def _write_onnx(backbone: nn.Module, enc: Encoder, folder: Path) -> str:
    path = folder / _FILES["onnx"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the torch.export one needs onnxscript, which few have installed.
        torch.onnx.export(backbone.eval(), (_probe_batch(enc),), str(path), dynamo=False, input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    try:
        import onnxruntime
    except ImportError:
        return "not checked here (onnxruntime is not installed)"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    return _compare(backbone, run, enc, 1e-4, "onnxruntime (CPU)")


def _stats(enc: Encoder) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The dataset's per-channel mean and std, when the run's dataset declares them."""
    try:
        from synthpos.registry import DATASETS

        stats = getattr(DATASETS.get(enc.config["data"]["name"]), "stats", None)
    except Exception:  # no config, an unregistered plugin dataset: the card says so instead
        return None, None
    return (tuple(stats[0]), tuple(stats[1])) if stats else (None, None)


def _get(config: dict | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def _fmt_number(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, float) and 0 <= value <= 1 else str(value)


def model_card(enc: Encoder, fmt: str, check: str) -> str:
    """The README.md of one exported encoder: what it is, how to load it, how it was made and scored."""
    b, c = enc.spec["backbone"], enc.spec["in_channels"]
    side, (mean, std) = _input_size(enc), _stats(enc)
    cfg = enc.config
    lines = [f"# {enc.title}: a synthpos encoder ({b['name']}, {fmt})", "",
             f"A self-supervised image encoder trained with synthpos. Input: (B, {c}, {side}, {side}) float images, "
             f"scaled to [0, 1] and normalised per channel with mean {list(mean) if mean else 'of the dataset'} and std "
             f"{list(std) if std else 'of the dataset'}. Output: (B, {enc.spec['feature_dim']}) features "
             "(globally average-pooled, no projection head).", "", "## How it was made", "",
             "| | |", "| --- | --- |",
             f"| data | {_get(cfg, 'data', 'name') or 'unknown (no config.yaml beside the backbone)'} |",
             f"| method | {_get(cfg, 'pretrain', 'method') or 'unknown'} |",
             f"| synthetic mode | {_get(cfg, 'pretrain', 'synthetic', 'mode') or 'unknown'} |",
             f"| generator | {_generator(cfg)} |",
             f"| epochs | {_get(cfg, 'pretrain', 'epochs') or 'unknown'} |",
             f"| backbone | {b['name']}" + (f", CIFAR stem (3x3 stride-1 conv1, no max-pool)" if b["name"] in _RESNETS and b["cifar_stem"] else "")
             + (f", width {b['width']}" if b["name"] not in _RESNETS else "") + f", {c} input channel(s) |", "",
             "## How to load it", "", "```python", *_load_lines(enc, fmt), "```", "", check + ".", ""]
    lines += ["## Numbers", ""] + _numbers(enc) + [""]
    lines += ["## Provenance", "", "```json", json.dumps(enc.spec.get("provenance"), indent=2), "```", "",
              f"Exported by `synthpos export` from `{enc.backbone}`.", ""]
    return "\n".join(lines)


def _generator(cfg: dict | None) -> str:
    if cfg is None:
        return "unknown"
    from synthpos.registry import MODES

    mode = _get(cfg, "pretrain", "synthetic", "mode")
    if mode is None or (mode in MODES and not MODES.get(mode).synthetic):  # what the mode declares, not its name
        return "none (no synthetic positives)"
    kind, path = _get(cfg, "generate", "kind"), _get(cfg, "generate", "generator")
    return f"{kind}" + (f" ({path})" if path else " (trained in the run)")


def _load_lines(enc: Encoder, fmt: str) -> list[str]:
    b, c = enc.spec["backbone"], enc.spec["in_channels"]
    stem = ["# CIFAR stem: the two-line change before loading", f"model.conv1 = nn.Conv2d({c}, 64, kernel_size=3, stride=1, padding=1, bias=False)",
            "model.maxpool = nn.Identity()"] if b.get("cifar_stem") else []
    if fmt == "timm":
        return ["import timm", "from safetensors.torch import load_file", "from torch import nn", "",
                f"model = timm.create_model(\"{b['name']}\", pretrained=False, in_chans={c}, num_classes=0)", *stem,
                "model.load_state_dict(load_file(\"model.safetensors\"), strict=True)", "model.eval()"]
    if fmt == "torchvision":
        other = ([f"model.conv1 = nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, bias=False)  # {c} input channels"]
                 if c != 3 and not b.get("cifar_stem") else [])
        return ["import torchvision", "from safetensors.torch import load_file", "from torch import nn", "",
                f"model = torchvision.models.{b['name']}(weights=None)",
                "model.fc = nn.Identity()  # the classifier is not exported: the model returns features", *stem, *other,
                "model.load_state_dict(load_file(\"model.safetensors\"), strict=True)", "model.eval()"]
    if fmt == "torchscript":
        return ["import torch", "", "model = torch.jit.load(\"model.pt\", map_location=\"cpu\")",
                f"features = model(torch.randn(8, {c}, {_input_size(enc)}, {_input_size(enc)}))  # (8, {enc.spec['feature_dim']})"]
    return ["import numpy as np", "import onnxruntime", "", "session = onnxruntime.InferenceSession(\"model.onnx\")",
            f"images = np.random.randn(8, {c}, {_input_size(enc)}, {_input_size(enc)}).astype(np.float32)",
            f"(features,) = session.run(None, {{\"images\": images}})  # (8, {enc.spec['feature_dim']})"]


def _numbers(enc: Encoder) -> list[str]:
    if enc.records:
        rows = ["| dataset | protocol | labels | top-1 |", "| --- | --- | --- | --- |"]
        for r in enc.records:
            if not isinstance(r, dict):
                continue
            labels = r.get("label_fraction")
            rows.append(f"| {r.get('dataset', '?')} | {r.get('protocol', r.get('probe', '?'))} | "
                        f"{'all' if labels in (None, 1, 1.0) else f'{100 * labels:g}%'} | {_fmt_number(r.get('value'))} |")
        return rows + ["", "Protocols: docs/metrics.md (the test split scored once; hyper-parameters chosen on a "
                       "validation carve of the training split)."]
    if enc.results:
        rows = ["| dataset | number | value |", "| --- | --- | --- |"]
        for dataset, numbers in enc.results.items():
            for key, value in (numbers.items() if isinstance(numbers, dict) else []):
                rows.append(f"| {dataset} | {key} | {_fmt_number(value)} |")
        return rows
    return ["Not evaluated (no metrics.json or results.json for this encoder)."]


def export(source: Path, fmt: str, out: Path, encoder: str | None = None) -> list[Path]:
    """Export the encoders of ``source`` in ``fmt`` under ``out``; returns the folders written.

    One encoder goes into ``out`` itself, several into ``out/<key>``.

    Raises:
        SynthposError: nothing to export, an unknown encoder or format, a format the backbone cannot take,
            or an ``out`` that is not a new or empty folder. Nothing is written then.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise SynthposError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    _check_out(out)
    encoders = find_encoders(source, encoder)
    for enc in encoders:
        _check_format(enc, fmt)
    tmp = temporary_sibling(out)
    try:
        written = []
        for enc in encoders:
            folder = tmp if len(encoders) == 1 else tmp / enc.key
            folder.mkdir(parents=True)
            backbone = load_backbone(enc.backbone).eval()
            if fmt in ("timm", "torchvision"):
                check = _write_safetensors(backbone, enc, fmt, folder)
            elif fmt == "torchscript":
                check = _write_torchscript(backbone, enc, folder)
            else:
                check = _write_onnx(backbone, enc, folder)
            (folder / "backbone.json").write_text(json.dumps(enc.spec, indent=2))
            (folder / "README.md").write_text(model_card(enc, fmt, check))
            written.append(out if len(encoders) == 1 else out / enc.key)
        if out.exists():
            out.rmdir()  # empty (checked above): rename needs it gone
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
