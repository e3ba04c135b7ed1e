"""GPU check: synthpos's CUDA paths and their speed, on a machine with its own Python and torch.

Run through ``bash benchmarks/gpu_check.sh`` (the package from ``src/``, no install). The
machine's own packages are used where it has them; a wheel from ``benchmarks/gpu_bundle/wheels``
(filled by ``benchmarks/gpu_bundle.sh``) is unpacked and put first on ``sys.path`` only for a
package it lacks, or has in a version older than synthpos or another added wheel requires.
Nothing is downloaded. Sections, each timed, each written to the JSON as soon as it ends (a
run cut short still reports what it did), each failing on its own:

* ``environment``: torch, CUDA device, bf16 support, what was added from the bundle;
* ``imports``: every synthpos module imported on this torch;
* ``generator_training``: images/s of the paper's CIFAR-sized UNet (35.7M parameters; DDPM
  epsilon loss, Adam) at fp32 and bf16, and ``train_generator`` itself for a few steps;
* ``clsp_sampling``: candidates/s of CLSP sampling with that UNet, DDIM-100 (the paper's) and
  DPM-Solver++ 20 steps, fp32 and bf16;
* ``pretraining``: images/s of SimCLR and CLSP-SimCLR steps (``compute_loss``, views made on
  the device) on the paper's ResNet-18 (CIFAR stem) at 32 px, batch 256, fp32 and bf16;
* ``clsp_simclr_fashion_mnist``: a short CLSP-SimCLR run of the whole pipeline (the shipped
  generator, generation, Lightning pretraining on the GPU, evaluation) on Fashion-MNIST.

``--cpu`` runs every section on the CPU at toy size (CI checks the script this way).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import re
import statistics
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
BUNDLE = ROOT / "gpu_bundle"
DEFAULT_OUT = ROOT / "results" / "gpu_check.json"
# synthpos's own minimum versions (pyproject.toml) of the packages a torch machine may lack.
MINIMUM = {"lightning": "2.4", "diffusers": "0.30", "pydantic": "2.6", "rich": "13", "pyyaml": "6"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _wheel_info(path: Path) -> dict[str, Any]:
    """Distribution name, version and minimum versions it requires (``>=``), from the wheel's METADATA."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    fields = dict(re.findall(r"^(Name|Version): (.+)$", text, flags=re.M))
    needs, pins = {}, {}
    for req in re.findall(r"^Requires-Dist: (.+)$", text, flags=re.M):
        if "extra ==" in req:
            continue
        name = _norm(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
        if m := re.search(r">=\s*([0-9][^,;\s)]*)", req.split(";")[0]):
            needs[name] = m.group(1)
        if m := re.search(r"==\s*([0-9][^,;\s)]*)", req.split(";")[0]):
            needs[name] = pins[name] = m.group(1)  # e.g. pydantic's exact pydantic-core
    return {"name": _norm(fields["Name"]), "version": fields["Version"], "path": path, "needs": needs, "pins": pins}


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def add_missing_wheels(wheels_dir: Path, site: Path) -> dict[str, Any]:
    """Unpack into ``site`` (put first on sys.path) the bundled wheels whose package is missing or too old.

    "Too old": below synthpos's minimum or below what an added wheel requires (``>=``), or not
    the version an added wheel pins (``==``), repeated until nothing more is added. Returns what was found and what was added.
    """
    wheels = {w["name"]: w for w in map(_wheel_info, sorted(wheels_dir.glob("*.whl")))} if wheels_dir.is_dir() else {}
    minimum = {_norm(k): v for k, v in MINIMUM.items()}
    pinned: dict[str, str] = {}
    added: dict[str, str] = {}
    present = {name: installed_version(name) for name in wheels}

    def usable(name: str, have: str | None) -> bool:
        if have is None or (name in pinned and _version_tuple(have) != _version_tuple(pinned[name])):
            return False
        return name not in minimum or _version_tuple(have) >= _version_tuple(minimum[name])

    changed = True
    while changed:
        changed = False
        for name, wheel in wheels.items():
            if name in added or usable(name, present[name]):
                continue
            with zipfile.ZipFile(wheel["path"]) as zf:
                zf.extractall(site)
            added[name] = wheel["version"]
            for dep, version in wheel["needs"].items():
                if minimum.get(dep) is None or _version_tuple(version) > _version_tuple(minimum[dep]):
                    minimum[dep] = version
            pinned.update(wheel["pins"])
            changed = True
    if added:
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return {"bundle": str(wheels_dir), "bundled": sorted(wheels), "present": present, "added_from_bundle": added}


# --------------------------------------------------------------------------- report


class Report:
    """The JSON, rewritten whole (atomically) after every section."""

    def __init__(self, path: Path, header: dict[str, Any], budget_s: float) -> None:
        self.path, self.data, self.start, self.budget_s = path, {**header, "sections": {}}, time.perf_counter(), budget_s
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget_s:
            self.data["sections"][name] = {"status": "skipped", "reason": f"time budget ({self.budget_s:.0f} s) spent"}
            self.write()
            return
        print(f"== {name} ...", flush=True)
        self.data["sections"][name] = {"status": "running"}
        self.write()
        t0 = time.perf_counter()
        try:
            entry = {"status": "ok", **fn()}
        except Exception as err:  # each section fails on its own; the report says why
            entry = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0][:500],
                     "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["sections"][name] = entry
        self.data["total_seconds"] = round(time.perf_counter() - self.start, 2)
        self.write()
        print(f"   {entry['status']} in {entry['seconds']:.1f} s" + (f": {entry.get('error')}" if entry["status"] != "ok" else ""),
              flush=True)


# --------------------------------------------------------------------------- measuring


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device, warmup: int, steps: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per step: the median of ``repeats`` runs of ``steps`` after ``warmup`` steps (CUDA synchronised)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        runs.append((time.perf_counter() - t0) / steps)
    return {"s_per_step": statistics.median(runs), "s_per_step_runs": [round(r, 5) for r in runs],
            "warmup_s": round(first, 3)}


def autocast(device, precision: str):
    import torch

    from synthpos.precision import autocast as synthpos_autocast

    return synthpos_autocast(device, precision) if precision != "fp32" else torch.autocast(device.type, enabled=False)


def sizes(cpu: bool) -> dict[str, Any]:
    """GPU: the paper's models at small step counts; --cpu: toy models (the code paths, not the numbers)."""
    if cpu:
        return {"unet": {"block_out_channels": [16, 32], "attention_levels": [1], "layers_per_block": 1,
                         "norm_num_groups": 8}, "image": 16, "gen_batch": 2, "gen_steps": 1, "anchors": 2, "k": 2,
                "ddim_steps": 3, "dpm_steps": 2, "backbone": {"name": "resnet18"}, "pre_batch": 4, "pre_image": 16, "pre_steps": 1,
                "warmup": 1, "repeats": 1, "train_generator_steps": 2}
    return {"unet": {}, "image": 32, "gen_batch": 128, "gen_steps": 10, "anchors": 64, "k": 4, "ddim_steps": 100,
            "dpm_steps": 20, "backbone": {"name": "resnet18"}, "pre_batch": 256, "pre_image": 32, "pre_steps": 10, "warmup": 3,
            "repeats": 3, "train_generator_steps": 20}


def precisions(device) -> list[str]:
    from synthpos.precision import resolve_precision

    return ["fp32"] + (["bf16"] if resolve_precision("auto", device) == "bf16" else [])


# --------------------------------------------------------------------------- sections


def section_environment(device, bundle: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "device": str(device),
                           "cuda_available": torch.cuda.is_available(), **bundle}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": list(torch.cuda.get_device_capability(device)),
                    "bf16_supported": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda})
    for name in ("torchvision", "lightning", "pytorch_lightning", "diffusers", "pydantic", "transformers", "numpy"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # report, do not stop: the imports section says what breaks
            out[name] = f"not importable: {type(err).__name__}: {err}".splitlines()[0][:200]
    return out


def section_imports() -> dict[str, Any]:
    import pkgutil

    import synthpos

    failed, done = {}, []
    for info in pkgutil.walk_packages(synthpos.__path__, "synthpos."):
        try:
            importlib.import_module(info.name)
            done.append(info.name)
        except Exception as err:
            failed[info.name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    # The report and the CLI need matplotlib/jinja2/typer, which a training machine may lack: named, not fatal.
    optional = {"synthpos.report", "synthpos.cli", "synthpos.quickstart", "synthpos.evaluation.compare"}
    fatal = {k: v for k, v in failed.items() if not any(k == o or k.startswith(o + ".") for o in optional)}
    if fatal:
        raise RuntimeError(f"{len(fatal)} modules fail to import: " + "; ".join(f"{k}: {v}" for k, v in fatal.items()))
    return {"imported": len(done), "optional_failed": failed}


def _unet(size: dict[str, Any], channels: int = 3):
    from synthpos.config import UNetConfig
    from synthpos.generators.diffusion import build_unet

    return build_unet(UNetConfig(**size["unet"]), size["image"], channels)


def section_generator_training(device, size: dict[str, Any], work: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from synthpos.config import TrainGeneratorConfig, UNetConfig
    from synthpos.generators.diffusion import count_parameters, train_generator

    out: dict[str, Any] = {"unet": size["unet"] or "UNetConfig() defaults (DDPM CIFAR-10: 128-256-256-256, attention "
                           "at 16 px)", "image": size["image"], "batch_size": size["gen_batch"], "results": {}}
    b, s = size["gen_batch"], size["image"]
    for precision in precisions(device):
        torch.manual_seed(0)
        unet = _unet(size).to(device).train()
        out["parameters"] = count_parameters(unet)
        opt = torch.optim.Adam(unet.parameters(), lr=2e-4)
        x0 = torch.rand(b, 3, s, s, device=device) * 2 - 1
        alphas = torch.linspace(0.9999, 0.98, 1000, device=device).cumprod(0)

        def step() -> None:
            t = torch.randint(0, 1000, (b,), device=device)
            noise = torch.randn_like(x0)
            a = alphas[t].view(-1, 1, 1, 1)
            with autocast(device, precision):
                pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = timed(step, device, size["warmup"], size["gen_steps"], size["repeats"])
        out["results"][precision] = {**t, "images_per_s": round(b / t["s_per_step"], 1)}
        del unet, opt
    # The real stage function on this device: a few steps, its checkpoint and pipeline folder.
    images = np.random.default_rng(0).integers(0, 256, (max(64, b), s, s, 3), dtype=np.uint8)
    cfg = TrainGeneratorConfig(unet=UNetConfig(**size["unet"]), batch_size=min(b, 64), warmup_steps=0,
                               max_steps=size["train_generator_steps"], checkpoint_every=10**6, precision="auto")
    t0 = time.perf_counter()
    model_dir = train_generator(images, cfg, work / "generator", seed=0, device=device, show_progress=False)
    out["train_generator"] = {"steps": cfg.max_steps, "batch_size": cfg.batch_size, "precision": "auto",
                              "seconds_with_setup_and_save": round(time.perf_counter() - t0, 2),
                              "model_dir_written": Path(model_dir).is_dir()}
    return out


def section_clsp_sampling(device, size: dict[str, Any]) -> dict[str, Any]:
    import torch

    from synthpos.config import TrainGeneratorConfig
    from synthpos.generators.clsp import clsp_interpolation_sample
    from synthpos.generators.diffusion import build_noise_scheduler
    from synthpos.generators.samplers import ddim_scheduler, dpmsolver_scheduler

    torch.manual_seed(0)
    unet = _unet(size).to(device).eval()
    noise = build_noise_scheduler(TrainGeneratorConfig())
    a, k, s = size["anchors"], size["k"], size["image"]
    anchors = torch.rand(a, 3, s, s, device=device) * 2 - 1
    index = torch.arange(a).repeat_interleave(k)
    out: dict[str, Any] = {"anchors": a, "candidates_per_anchor": k, "rows": a * k, "weights": "random init (speed only)",
                           "results": {}}
    samplers = {f"ddim{size['ddim_steps']}": (ddim_scheduler, size["ddim_steps"]),
                f"dpmsolver++{size['dpm_steps']}": (dpmsolver_scheduler, size["dpm_steps"])}
    for name, (make, steps) in samplers.items():
        for precision in precisions(device):
            def run() -> torch.Tensor:
                gens = [torch.Generator().manual_seed(i) for i in range(a * k)]
                with torch.no_grad():
                    return clsp_interpolation_sample(unet, make(noise), anchors, gens, num_steps=steps,
                                                     precision=precision, anchor_index=index)

            sample = run()  # warm-up (and the check that it runs)
            if not torch.isfinite(sample).all() or sample.shape != (a * k, 3, s, s):
                raise RuntimeError(f"{name} {precision}: bad samples {tuple(sample.shape)}")
            _sync(device)
            t0 = time.perf_counter()
            run()
            _sync(device)
            seconds = time.perf_counter() - t0
            out["results"][f"{name}/{precision}"] = {"steps": steps, "seconds": round(seconds, 3),
                                                     "candidates_per_s": round(a * k / seconds, 1)}
    return out


def section_pretraining(device, size: dict[str, Any]) -> dict[str, Any]:
    import torch

    from synthpos.config import BackboneConfig, OptimizerConfig, SyntheticConfig
    from synthpos.data import BatchAugment
    from synthpos.data.batch import PretrainBatch
    from synthpos.methods.simclr import SimCLR
    from synthpos.models.backbones import build_backbone

    b, s = size["pre_batch"], size["pre_image"]
    out: dict[str, Any] = {"backbone": "resnet18 (CIFAR stem)", "batch_size": b, "image": f"3x{s}x{s}", "results": {}}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8)
    synthetic = torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8)
    batch = PretrainBatch(indices=torch.arange(b).to(device), images=images.to(device), labels=None,
                          synthetic=synthetic.to(device))
    for mode, name, views in (("none", "simclr", 2), ("clsp", "clsp_simclr", 3)):
        for precision in precisions(device):
            torch.manual_seed(0)
            method = SimCLR(build_backbone(BackboneConfig(**size["backbone"]), 3), BatchAugment(crop_size=s),
                            optimizer=OptimizerConfig(lr=0.3), synthetic=SyntheticConfig(mode=mode))
            method.setup("fit")
            method = method.to(device).train()
            opt = torch.optim.SGD(method.parameters(), lr=0.3, momentum=0.9)

            def step() -> None:
                with autocast(device, precision):
                    loss, _ = method.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t = timed(step, device, size["warmup"], size["pre_steps"], size["repeats"])
            out["results"][f"{name}/{precision}"] = {**t, "views": views,
                                                     "images_per_s": round(b / t["s_per_step"], 1)}
            del method, opt
    for precision in precisions(device):
        simclr, clsp = out["results"][f"simclr/{precision}"], out["results"][f"clsp_simclr/{precision}"]
        out[f"clsp_step_over_simclr_step/{precision}"] = round(clsp["s_per_step"] / simclr["s_per_step"], 3)
    return out


def section_fashion_mnist(device, cpu: bool, data_root: Path | None, work: Path) -> dict[str, Any]:
    from synthpos.config import load_config
    from synthpos.evaluation.evaluate import evaluate_stage
    from synthpos.generators.generate import generate_stage
    from synthpos.methods.pretrain import pretrain_stage
    from synthpos.quickstart import quickstart_recipe

    overrides = [f"run_dir={work / 'fashion_mnist'}", "pretrain.synthetic.mode=clsp", "generate.generator=builtin:fashion_mnist",
                 "pretrain.knn_every_epochs=0", "pretrain.online_probe=false", "evaluate.linear_protocols=[fast]",
                 "evaluate.label_fractions=[1.0]"]
    if cpu:
        sys.path.insert(0, str(ROOT))
        from _smoke import pipeline_overrides, tiny_fashion_mnist

        overrides += pipeline_overrides(tiny_fashion_mnist(work / "data", 256, 128)) + ["pretrain.accelerator=cpu"]
    else:
        overrides += ["data.subset=5000", "generate.candidates=2", "generate.num_steps=10", "generate.batch_size=1000",
                      "pretrain.epochs=3", "pretrain.batch_size=256", "pretrain.accelerator=gpu", "pretrain.precision=auto",
                      "evaluate.max_train=10000"]
        if data_root is not None:
            overrides.append(f"data.root={data_root}")
    config = load_config(quickstart_recipe(), overrides)
    times = {}
    t0 = time.perf_counter()
    store = generate_stage(config, show_progress=False)
    times["generate_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    pretrain_stage(config, show_progress=False)
    times["pretrain_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    metrics = evaluate_stage(config, show_progress=False)
    times["evaluate_s"] = round(time.perf_counter() - t0, 2)
    scores = next(iter(metrics["results"].values()))
    return {"overrides": overrides, "store_record": store.manifest["generator"], **times,
            "knn_top1": scores["knn_top1"], "linear_top1": scores["linear_top1"]}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="every section on the CPU at toy size (CI)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON, rewritten after every section")
    p.add_argument("--bundle", type=Path, default=BUNDLE, help="folder with wheels/ and fashion-mnist/ (gpu_bundle.sh)")
    p.add_argument("--budget-s", type=float, default=270.0, help="start no section after this many seconds (default 270)")
    p.add_argument("--sections", default=None, help="comma list of sections to run (default all)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="synthpos-gpu-check-") as tmp:  # removed at the end (12 MB a run)
        return run_sections(args, " ".join(["gpu_check.py", *(sys.argv[1:] if argv is None else argv)]), Path(tmp))


def run_sections(args: argparse.Namespace, command: str, work: Path) -> int:
    bundle = add_missing_wheels(args.bundle / "wheels", work / "site")

    import torch

    device = torch.device("cpu" if args.cpu else "cuda")
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the toy-size check", file=sys.stderr)
        return 2
    if args.cpu:  # toy size: one thread (a busy CI machine stalls multi-threaded small ops at every barrier)
        torch.set_num_threads(1)
    size = sizes(args.cpu)
    data = args.bundle / "fashion-mnist"
    data_root = data if (data / "train-images-idx3-ubyte.gz").is_file() else None
    report = Report(args.out, {
        "benchmark": "gpu_check", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "cpu_toy_size": args.cpu,
        "sizes": size, "budget_s": args.budget_s,
    }, args.budget_s)
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "environment": lambda: section_environment(device, bundle),
        "imports": section_imports,
        "generator_training": lambda: section_generator_training(device, size, work),
        "clsp_sampling": lambda: section_clsp_sampling(device, size),
        "pretraining": lambda: section_pretraining(device, size),
        "clsp_simclr_fashion_mnist": lambda: section_fashion_mnist(device, args.cpu, data_root, work),
    }
    chosen = args.sections.split(",") if args.sections else list(sections)
    for name in chosen:
        report.section(name, sections[name])
        if name == "environment":
            sys.path.insert(0, str(ROOT))
            from _machine import machine_info

            report.data["machine"] = machine_info()
            report.write()
    failed = [n for n, s in report.data["sections"].items() if s["status"] != "ok"]
    print(f"wrote {args.out}; " + (f"not ok: {', '.join(failed)}" if failed else "all sections ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
