"""The `synthpos` command: one thin function per stage, no logic of its own."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from synthpos.errors import SynthposError
from synthpos.signals import terminated

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Self-supervised learning with synthetic positives: train-generator -> generate -> pretrain -> evaluate.",
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Run config (YAML), e.g. configs/fashion_mnist/clsp_simclr.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a value: --set pretrain.epochs=10 (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


_loaded: list = []  # the config of this command, for an error that does not say where it was writing


def _load(config: Path | None, overrides: list[str] | None):
    from synthpos.config import load_config

    cfg = load_config(config, overrides or [])
    _loaded[:] = [cfg]
    return cfg


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command("train-generator")
def train_generator(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 1: train the unconditional DDPM on the run's training split."""
    cfg = _load(config, set)
    from synthpos.stages import run_stage
    path, _ = run_stage("train-generator", cfg, show_progress=not quiet, explicit=True)
    _say(f"generator written to {path}")


@app.command()
def generate(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 2: CLSP synthetic positives into the store (resumes where it stopped)."""
    cfg = _load(config, set)
    from synthpos.stages import run_stage
    store, _ = run_stage("generate", cfg, show_progress=not quiet, explicit=True)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per process
        _say(f"store written to {store.path} ({len(store)} anchors x {store.candidates} candidates)")


@app.command()
def pretrain(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 3: self-supervised pretraining (resumes from the last checkpoint)."""
    cfg = _load(config, set)
    from synthpos.stages import run_stage
    path, _ = run_stage("pretrain", cfg, show_progress=not quiet, explicit=True)
    _say(f"backbone written to {path}")


@app.command()
def evaluate(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 4: kNN and linear probe on frozen features; writes metrics.json."""
    cfg = _load(config, set)
    from synthpos.stages import run_stage
    metrics, _ = run_stage("evaluate", cfg, show_progress=not quiet, explicit=True)
    typer.echo(json.dumps(metrics["results"], indent=2))
    for name, base in metrics.get("baselines", {}).items():  # evaluate.checkpoint: an external encoder
        _say(f"baseline {name}: {json.dumps(base['results'])}")
    _say(f"metrics written to {cfg.evaluate_dir / 'metrics.json'}")


@app.command("inspect-store")
def inspect_store(
    config: ConfigOpt = None,
    set: SetOpt = None,
    store: Annotated[Optional[Path], typer.Option(help="Store directory (default: the run's store).")] = None,
    encoder: Annotated[Optional[Path], typer.Option(help="backbone.pt for feature distances (default: the fidelity classifier's features).")] = None,
    max_anchors: Annotated[Optional[int], typer.Option(help="Inspect only the first N anchors (default: all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where inspect.json and grid.png go (default: <store>/inspect).")] = None,
    quiet: QuietOpt = False,
    verify: Annotated[bool, typer.Option("--verify", help="Only check the store: hash every shard against the manifest, report each one's state (exit 2 if one is missing or damaged).")] = False,
    fid: Annotated[bool, typer.Option("--fid", help="Also FID and KID against the real train split (judge features unless --fid-weights).")] = False,
    fid_weights: Annotated[Optional[Path], typer.Option(help="pytorch-fid's pt_inception-2015-12-05-*.pth: standard FID/KID in Inception features.")] = None,
    fid_images: Annotated[int, typer.Option(help="--fid: candidates and real images compared (at most; seeded draws).")] = 10_000,
    kid_subset_size: Annotated[int, typer.Option(help="--fid: KID subset size.")] = 1000,
    kid_subsets: Annotated[int, typer.Option(help="--fid: KID subsets.")] = 100,
) -> None:
    """Fidelity and diversity of a store's synthetic positives, and a grid of them (--verify: its integrity; --fid: FID/KID)."""
    cfg = _load(config, set)
    if verify:
        from synthpos.evaluation.store_diagnostics import verify_command
        verify_command(store or cfg.store_dir)
        return
    from synthpos.evaluation.store_diagnostics import inspect_store_stage, print_report
    report = inspect_store_stage(cfg, store, encoder, max_anchors, out, show_progress=not quiet, fid=fid or fid_weights is not None,
                                 fid_weights=fid_weights, fid_images=fid_images, kid_subset_size=kid_subset_size,
                                 kid_subsets=kid_subsets)
    print_report(report)
    _say(f"diagnostics written to {Path(report['grid']).parent}")


@app.command("import-store")
def import_store(
    source: Annotated[Path, typer.Option(help="CLSP's synthetic .npy file, or the root of a GenerativeSSL / GenView tree.")],
    layout: Annotated[str, typer.Option(help="clsp (uint8 (N, K, H, W, 3) .npy), generativessl (<stem>_<k>.<ext>) or "
                                        "genview (the same relative paths, one variation).")],
    config: ConfigOpt = None,
    set: SetOpt = None,
    store: Annotated[Optional[Path], typer.Option(help="Store directory (default: the run's store).")] = None,
    variants: Annotated[int, typer.Option(help="generativessl: variants 0..K-1 of each image.")] = 10,
    quiet: QuietOpt = False,
) -> None:
    """Turn a paper's published synthetic set into a store for the run's training split."""
    cfg = _load(config, set)
    from synthpos.data.import_store import import_store_stage
    with _writing_into(store or cfg.store_dir, cfg.run_dir):  # the run's store: one writer, as for generate
        result = import_store_stage(cfg, source, layout, store, variants, show_progress=not quiet)
    _say(f"store written to {result.path} ({len(result)} anchors x {result.candidates} candidates)")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="A run directory, pretrain directory or backbone.pt.")],
    run_b: Annotated[Path, typer.Argument(help="Another one, or a reference encoder: a TorchScript file, a "
                                          "torchvision/timm state_dict (with --arch), or a CLIP folder.")],
    config: ConfigOpt = None,
    set: SetOpt = None,
    images: Annotated[int, typer.Option(help="Test images compared.")] = 2000,
    arch: Annotated[Optional[str], typer.Option(help="Architecture of a state_dict file (torchvision or timm name).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where cka.json and cka_layers.png go (default: RUN_A/compare).")] = None,
) -> None:
    """CKA between two encoders' representations of the same test images, final and layer by layer."""
    data = _load(config, set).data if config or set else None
    from synthpos.evaluation.compare import compare_stage
    result = compare_stage(run_a, run_b, data, images, arch, out)
    final = result["final"]
    typer.echo(f"CKA of the final features ({result['images']} {result['data']} test images): "
               f"linear {final['linear']:.4f}, RBF {final['rbf']:.4f}, linear unbiased {final['linear_unbiased']:.4f}")
    if "heatmap" in result:
        _say(f"layer-wise CKA heat map: {result['heatmap']}")


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A run directory (pipeline, quick start or seeds) or a backbone.pt.")],
    format: Annotated[str, typer.Option("--format", "-f", help="timm, torchvision (ResNet-18/50 only), torchscript or onnx.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new (or empty) folder; several encoders go to OUT/<encoder>.")],
    encoder: Annotated[Optional[str], typer.Option(help="Only this encoder of a run with several (e.g. clsp_simclr).")] = None,
) -> None:
    """Export encoders for timm, torchvision, TorchScript or ONNX, each with a model card (README.md)."""
    from synthpos.export import export as export_encoders
    for folder in export_encoders(source, format, out, encoder):
        _say(f"exported to {folder} (README.md is its model card)")


@app.command()
def run(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False,
        seeds: Annotated[Optional[str], typer.Option(help="Run once per seed, e.g. 0,1,2 (sets `seeds:`).")] = None) -> None:
    """All four stages from one config, skipping those already done."""
    cfg = _load(config, (set or []) + ([f"seeds=[{seeds}]"] if seeds else []))
    from synthpos.pipeline import check_run
    from synthpos.run_lock import run_lock
    check_run(cfg)  # before the lock and before anything is read or moved
    with run_lock(cfg.run_dir):  # one writer for the whole run, seeds and shared generator included
        _run(cfg, quiet)


def _run(cfg, quiet: bool) -> None:
    from synthpos.pipeline import run_pipeline
    if cfg.seeds:
        from synthpos.evaluation.seeds import run_seeds, print_seeds
        from synthpos.generators.diffusion import train_generator_stage
        result = run_seeds(cfg, lambda c: run_pipeline(c, show_progress=not quiet),
                           lambda c: train_generator_stage(c, show_progress=not quiet))
        print_seeds(result)
        if cfg.published is not None:
            _print_published(cfg, intervals=result["summary"])
        _say(f"run directory: {cfg.run_dir} (seeds.json, seed-*/)")
        _say(f"report: {_write_report(cfg.run_dir)}")
        return
    metrics = run_pipeline(cfg, show_progress=not quiet)
    if metrics:  # empty on DDP ranks other than 0
        typer.echo(json.dumps(metrics["results"], indent=2))
        if cfg.published is not None:
            _print_published(cfg, metrics["results"])
    _say(f"run directory: {cfg.run_dir}")
    if metrics:
        _say(f"report: {_write_report(cfg.run_dir)}")


def _print_published(cfg, results: dict | None = None, intervals: dict | None = None) -> None:
    from synthpos.evaluation.published import compare_published
    for line in compare_published(cfg.published, results, intervals):
        typer.echo(line)


def _write_report(run_dir: Path) -> Path:
    from synthpos.report.html import write_report
    return write_report([run_dir])


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (synthpos run, run --seeds, quickstart).")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file (default: <first run>/report.html).")] = None,
) -> None:
    """One self-contained HTML page of runs: configs, positives, store, curves, results, CKA, timings."""
    from synthpos.report.html import write_report
    # report.html goes into the run (a folder that is not there is write_report's one-line error, not a lock's).
    with _writing_into(out or run_dirs[0] / "report.html", run_dirs[0], make=False):
        _say(f"report: {write_report(run_dirs, out)}")


@contextmanager
def _writing_into(target: Path, run_dir: Path, make: bool = True) -> Iterator[None]:
    """For a command outside the stage table that writes ``target``: the run directory's lock when ``target`` is
    inside it (a second launch is refused), and SIGTERM stops it where it is (it writes atomic files only).
    ``make``: lock also where the run directory does not exist yet (the lock makes it, and removes it again)."""
    from synthpos.run_lock import run_lock
    from synthpos.signals import sigterm_raises

    inside = Path(os.path.abspath(target)).is_relative_to(Path(os.path.abspath(run_dir)))
    with run_lock(run_dir) if inside and (make or Path(run_dir).is_dir()) else nullcontext(), sigterm_raises():
        yield


@app.command()
def quickstart(
    run_dir: Annotated[Path, typer.Option(help="Where everything is written.")] = Path("runs/quickstart"),
    train_generator: Annotated[bool, typer.Option("--train-generator", help="Train a DDPM from scratch instead of using the shipped one.")] = False,
    set: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """SimCLR vs CLSP-SimCLR on Fashion-MNIST at CPU scale (about 15 minutes on 2 cores)."""
    from synthpos.quickstart import run_quickstart
    from synthpos.run_lock import run_lock

    with run_lock(run_dir):
        run_quickstart(run_dir, train_generator=train_generator, overrides=set or [], show_progress=not quiet)


def _quiet_libraries() -> None:
    """Keep the console to what synthpos says: no framework tips or deprecation chatter."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local folders only
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|smaller than the logging interval|LeafSpec|low_cpu_mem_usage|accelerate).*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    _quiet_libraries()
    try:
        # Without standalone mode typer returns, rather than raises, the exit code of
        # ctx.exit(...) and of Ctrl-C (130).
        code = app(standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except SynthposError as err:
        _say(f"error: {err}")
        sys.exit(2)
    except typer.BadParameter as err:
        _say(f"error: {err}")
        sys.exit(2)
    except MemoryError as err:
        _say(f"error: {_out_of_memory(err)}")
        sys.exit(2)
    except OSError as err:
        # A full disk outside atomic_path's files (a log, a cache): one line with what and where.
        from synthpos.atomic import as_no_space

        if (full := as_no_space(err)) is None:
            raise
        if full.path is None and _loaded:
            full.what = f"under {_loaded[0].run_dir}"
        _say(f"error: {full}")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        # click turns Ctrl-C into Abort when it does not handle exits itself.
        if (what := terminated()) is not None:
            _say(f"terminated (SIGTERM): finished work and the last checkpoint are kept; run the same command again to "
                 f"resume{f' ({what})' if what else ''}")
            sys.exit(143)
        _say("interrupted: finished work is kept; run the same command again to resume")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # click's usage errors arrive as ClickException subclasses
        usage_errors = _click_exception_types()
        if isinstance(err, usage_errors):
            if type(err).__name__ == "NoArgsIsHelpError":
                # `synthpos` alone: the help, as with --help.
                typer.echo(err.format_message())
                sys.exit(0)
            _say(f"error: {' '.join(err.format_message().split())}")
            sys.exit(2)
        if type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err):  # torch's, CPU or CUDA
            _say(f"error: {_out_of_memory(err)}")
            sys.exit(2)
        raise


def _out_of_memory(err: BaseException) -> str:
    """One line for a failed allocation: the allocator's own words (they say how much it tried), and the way on."""
    said = " ".join(str(err).split("\n")[0].split())[:300] or "an allocation failed"
    return (f"out of memory: {said}; lower the batch size (pretrain.batch_size, generate.batch_size, evaluate.batch_size) "
            "or free memory, then run the same command again (finished work is kept)")


def _click_exception_types() -> tuple[type[Exception], ...]:
    """ClickException as typer raises it: recent typers vendor click as ``typer._click``,
    whose exceptions are not ``click.ClickException``; older typers raise click's own."""
    import importlib

    types = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(types)


if __name__ == "__main__":  # `python -m synthpos.cli`, `torchrun -m synthpos.cli`
    main()
