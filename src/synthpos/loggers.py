"""Experiment loggers by name (``pretrain.loggers``, ``train_generator.loggers``): Lightning's own.

``csv`` (the default), ``tensorboard``, ``wandb`` and ``mlflow``. Every one writes under the
stage's ``logs/`` folder, never in the working directory::

    <stage>/logs/version_N/metrics.csv          csv (what ``synthpos report`` reads for curves)
    <stage>/logs/tensorboard/version_N/         tensorboard event files
    <stage>/logs/wandb/offline-run-.../         wandb (offline unless an API key is known)
    <stage>/logs/mlruns/                        mlflow's file store (experiment "synthpos")

The resolved config is logged as hyper-parameters. A logger whose package is missing is one
line naming what to install (:func:`check_loggers`, called before a stage writes anything).
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthpos.errors import SynthposError

LOGGER_NAMES = ("csv", "tensorboard", "wandb", "mlflow")

#: Logger -> the modules it needs (any one of them) and what to install.
_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
}
WANDB_PROJECT = "synthpos"
MLFLOW_EXPERIMENT = "synthpos"


def check_loggers(names: Sequence[str], key: str = "pretrain.loggers") -> None:
    """Raise unless every named logger's package can be imported.

    Raises:
        SynthposError: one line: which logger, what to install (or how to leave it out).
    """
    for name in names:
        if name not in LOGGER_NAMES:
            raise SynthposError(f"{key}: unknown logger {name!r}; use some of {', '.join(LOGGER_NAMES)}")
        modules, install = _NEEDS.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
            raise SynthposError(f"{key}: the {name} logger needs the {modules[0]} package; `{install}` "
                                f"(or `pip install -e '.[test]'`), or remove {name} from {key}")


def wandb_logged_in() -> bool:
    """Whether W&B has an API key here (``WANDB_API_KEY`` or ``wandb login``'s netrc entry)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def build_loggers(names: Sequence[str], logs_dir: Path, run_name: str, key: str = "pretrain.loggers") -> list[Any]:
    """Lightning loggers for ``names``, each writing under ``logs_dir`` (``<stage>/logs``).

    Raises:
        SynthposError: a logger's package is missing.
    """
    check_loggers(names, key)
    logs_dir = Path(logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Any] = []
    for name in names:
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            # logs/version_N/metrics.csv: where the report has always read the curves.
            loggers.append(CSVLogger(logs_dir.parent, name=logs_dir.name))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(logs_dir, name="tensorboard", default_hp_metric=False))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            # Offline unless the user has logged in; a WANDB_MODE the user set (online, disabled) is theirs.
            mode = os.environ.get("WANDB_MODE")
            offline = mode == "offline" or (mode is None and not wandb_logged_in())
            loggers.append(WandbLogger(name=run_name, save_dir=str(logs_dir), project=WANDB_PROJECT, offline=offline))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(MLFlowLogger(experiment_name=MLFLOW_EXPERIMENT, run_name=run_name,
                                        tracking_uri=mlflow_tracking_uri(logs_dir),
                                        artifact_location=(logs_dir / "mlartifacts").resolve().as_uri()))
    return loggers


def mlflow_tracking_uri(logs_dir: Path) -> str:
    """MLflow's store for a stage: an SQLite file in its ``logs/`` (MLflow 3 refuses new file stores)."""
    return f"sqlite:///{(Path(logs_dir) / 'mlflow.db').resolve()}"


def log_hyperparameters(loggers: Sequence[Any], config: dict[str, Any]) -> None:
    """The resolved config (nested dicts; each logger flattens it its own way)."""
    for logger in loggers:
        logger.log_hyperparams(config)


def finish_loggers(loggers: Sequence[Any], status: str = "success") -> None:
    """Flush and close every logger; end the W&B run so that a later stage in this process starts its own."""
    for logger in loggers:
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


class MetricLoggers:
    """The named loggers outside a Lightning Trainer (the generator's training loop)."""

    def __init__(self, names: Sequence[str], logs_dir: Path, run_name: str, config: dict[str, Any],
                 key: str = "train_generator.loggers") -> None:
        self.loggers = build_loggers(names, logs_dir, run_name, key)
        log_hyperparameters(self.loggers, config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def finish(self, status: str = "success") -> None:
        finish_loggers(self.loggers, status)
