"""`synthpos run`: the four stages chained, skipping what is already done."""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.console import Console

from synthpos.config import RunConfig
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.distributed import rank

console = Console(stderr=True)


def _needs_store(config: RunConfig) -> bool:
    """Whether the run's synthetic mode reads a store (the mode says; ``none`` and ``mochi`` do not)."""
    from synthpos.registry import MODES

    return MODES.get(config.pretrain.synthetic.mode).needs_store


def _no_store(config: RunConfig) -> str:
    return f"pretrain.synthetic.mode={config.pretrain.synthetic.mode} needs no store"


def stage_done(config: RunConfig, stage: str) -> str | None:
    """Why ``stage`` can be skipped, or None if it must run."""
    if stage == "train-generator":
        if not _needs_store(config):
            return _no_store(config)
        from synthpos.generators.registry import generator_class

        if not generator_class(config.generate.kind).trains_on_data:
            return f"generate.kind={config.generate.kind} uses a pretrained generator (generate.generator)"
        if config.generate.generator is not None:
            return f"using generator {config.generate.generator}"
        if (config.generator_dir / "COMPLETE").is_file():
            return f"generator already trained in {config.generator_dir}"
    elif stage == "generate":
        if not _needs_store(config):
            return _no_store(config)
        if (config.store_dir / "manifest.json").is_file():
            from synthpos.generators.generate import default_device, generator_record

            store = SyntheticStore.open(config.store_dir, require_complete=False)
            made_with = generator_record(config.generator_model, config.generate, config.seed, default_device())
            same = store.manifest["generator"] == made_with and store.candidates == config.generate.candidates
            if store.complete and same:
                return f"store {config.store_dir} is complete"
    elif stage == "pretrain":
        if config.backbone_path.is_file():
            return f"backbone {config.backbone_path} exists"
    elif stage == "evaluate":
        if (config.evaluate_dir / "metrics.json").is_file():
            return f"metrics {config.evaluate_dir / 'metrics.json'} exist"
    return None


def run_pipeline(config: RunConfig, show_progress: bool = True) -> dict:
    """Run every stage that is not done yet; return the evaluation metrics."""
    from synthpos.evaluation.evaluate import evaluate_stage
    from synthpos.generators.diffusion import train_generator_stage
    from synthpos.generators.generate import generate_stage
    from synthpos.methods.pretrain import pretrain_stage

    stages: list[tuple[str, Callable]] = [
        ("train-generator", train_generator_stage),
        ("generate", generate_stage),
        ("pretrain", pretrain_stage),
        ("evaluate", evaluate_stage),
    ]
    upstream_ran = False
    for name, fn in stages:
        # Once a stage has run, every later one runs too: its inputs are new.
        reason = None if upstream_ran else stage_done(config, name)
        if reason:
            console.print(f"[dim]skip {name}: {reason}[/dim]")
            continue
        console.print(f"[bold]{name}[/bold]")
        fn(config, show_progress=show_progress)
        upstream_ran = True
        if rank() != 0:
            # Lightning's DDP relaunches this command on every rank; only rank 0 goes on.
            return {}
    return json.loads((config.evaluate_dir / "metrics.json").read_text())
