"""The `synthpos` command: argument parsing only; each command is a module of :mod:`synthpos.stages`."""

from __future__ import annotations

import sys
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
    from synthpos.stages import train_generator as stage
    stage.command(cfg, show_progress=not quiet)


@app.command()
def generate(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 2: CLSP synthetic positives into the store (resumes where it stopped)."""
    cfg = _load(config, set)
    from synthpos.stages import generate as stage
    stage.command(cfg, show_progress=not quiet)


@app.command()
def pretrain(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 3: self-supervised pretraining (resumes from the last checkpoint)."""
    cfg = _load(config, set)
    from synthpos.stages import pretrain as stage
    stage.command(cfg, show_progress=not quiet)


@app.command()
def evaluate(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 4: kNN and linear probe on frozen features; writes metrics.json."""
    cfg = _load(config, set)
    from synthpos.stages import evaluate as stage
    stage.command(cfg, show_progress=not quiet)


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
    from synthpos.stages import inspect_store as stage
    stage.command(cfg, store, encoder, max_anchors, out, show_progress=not quiet, verify=verify, fid=fid,
                  fid_weights=fid_weights, fid_images=fid_images, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets)


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
    from synthpos.stages import import_store as stage
    stage.command(cfg, source, layout, store, variants, show_progress=not quiet)


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
    from synthpos.stages import compare as stage
    stage.command(run_a, run_b, data, images, arch, out)


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A run directory (pipeline, quick start or seeds) or a backbone.pt.")],
    format: Annotated[str, typer.Option("--format", "-f", help="timm, torchvision (ResNet-18/50 only), torchscript or onnx.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new (or empty) folder; several encoders go to OUT/<encoder>.")],
    encoder: Annotated[Optional[str], typer.Option(help="Only this encoder of a run with several (e.g. clsp_simclr).")] = None,
) -> None:
    """Export encoders for timm, torchvision, TorchScript or ONNX, each with a model card (README.md)."""
    from synthpos.stages import export as stage
    stage.command(source, format, out, encoder)


@app.command()
def run(config: ConfigOpt = None, set: SetOpt = None, quiet: QuietOpt = False,
        seeds: Annotated[Optional[str], typer.Option(help="Run once per seed, e.g. 0,1,2 (sets `seeds:`).")] = None) -> None:
    """All four stages from one config, skipping those already done."""
    cfg = _load(config, (set or []) + ([f"seeds=[{seeds}]"] if seeds else []))
    from synthpos.stages import run as stage
    stage.command(cfg, show_progress=not quiet)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (synthpos run, run --seeds, quickstart).")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file (default: <first run>/report.html).")] = None,
) -> None:
    """One self-contained HTML page of runs: configs, positives, store, curves, results, CKA, timings."""
    from synthpos.stages import report as stage
    stage.command(run_dirs, out)


@app.command()
def quickstart(
    run_dir: Annotated[Path, typer.Option(help="Where everything is written.")] = Path("runs/quickstart"),
    train_generator: Annotated[bool, typer.Option("--train-generator", help="Train a DDPM from scratch instead of using the shipped one.")] = False,
    control: Annotated[bool, typer.Option("--control", help="Also pretrain the control: the same mode with the anchors "
                                          "themselves as the extra views, nothing generated (one more pretraining).")] = False,
    set: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """SimCLR vs SimCLR with synthetic positives on Fashion-MNIST at CPU scale (9-15 minutes on 2 cores)."""
    from synthpos.stages import quickstart as stage
    stage.command(run_dir, train_generator=train_generator, overrides=set or [], show_progress=not quiet,
                  control=control)


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
