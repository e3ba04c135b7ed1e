"""pretrain.loggers / train_generator.loggers: csv, tensorboard, wandb (offline), mlflow.

Each logger's output is read back with that tool's own reader (TensorBoard's EventAccumulator,
W&B's offline run file through its DataStore, MLflow's client on its store) and compared with
the CSV log (pretraining) or loss.log (the generator); everything stays under <stage>/logs/.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import synthpos
from synthpos.config import load_config
from synthpos.data import ImageDataset
from synthpos.errors import SynthposError
from synthpos.loggers import MLFLOW_EXPERIMENT, check_loggers, mlflow_tracking_uri

ALL = ["csv", "tensorboard", "wandb", "mlflow"]


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert list(cwd.iterdir()) == [], "a logger wrote into the working directory"


def _tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(folder.glob("version_*"))
    assert len(runs) == 1, runs
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def _wandb_payloads(path: Path) -> list[bytes]:
    """The records of a .wandb transaction log: LevelDB's log framing (32 KiB blocks, 7-byte record
    headers: CRC, length, type FULL/FIRST/MIDDLE/LAST) after W&B's 7-byte file header. wandb 0.31
    ships no Python reader (its Go core writes the file), so the framing is read here and each
    record is parsed by W&B's own protobuf schema below."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a W&B transaction log"
    payloads, pos, partial = [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            payloads.append(partial + chunk)
    return payloads


def _wandb_records(logs: Path) -> tuple[list[dict], dict]:
    """History rows and the config of the one offline run, from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    files = list((logs / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history, config = [], {}
    for data in _wandb_payloads(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config


def _mlflow_run(logs: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_tracking_uri(logs))
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _need_all() -> None:
    for module in ("tensorboard", "wandb", "mlflow"):  # the test extras
        pytest.importorskip(module, reason=f"{module} is a test extra: pip install -e '.[test]'")


@pytest.mark.slow
def test_pretraining_logs_to_every_logger_under_its_folder(tmp_path: Path) -> None:
    _need_all()
    from synthpos.methods.pretrain import pretrain

    config = load_config(None, [f"run_dir={tmp_path / 'run'}", f"pretrain.loggers={ALL}", "pretrain.backbone.name=convnet",
                                "pretrain.backbone.width=8", "pretrain.projector_hidden_dim=16", "pretrain.projector_out_dim=8",
                                "pretrain.batch_size=8", "pretrain.epochs=2", "pretrain.precision=fp32",
                                "pretrain.accelerator=cpu", "pretrain.augment.crop_size=16", "pretrain.num_threads=1"])
    images = np.random.default_rng(0).integers(0, 256, size=(16, 16, 16, 1), dtype=np.uint8)
    dataset = ImageDataset("toy", "train", images, None, [], (0.5,), (0.5,))
    hyper = config.model_dump(mode="json")
    out = tmp_path / "run" / "pretrain"
    pretrain(config.pretrain, dataset, out, show_progress=False, hyperparameters=hyper)
    logs = out / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["mlflow.db", "tensorboard", "version_0", "wandb"]

    # The CSV log: what the report reads; 2 steps per epoch, logged every 2 steps.
    with (logs / "version_0" / "metrics.csv").open() as fh:
        csv_loss = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}
    assert len(csv_loss) == 2 and all(math.isfinite(v) for v in csv_loss.values())
    assert yaml.safe_load((logs / "version_0" / "hparams.yaml").read_text())["pretrain"]["batch_size"] == 8

    tb = _tensorboard_scalars(logs / "tensorboard", "train/loss")
    assert tb.keys() == csv_loss.keys() and all(abs(tb[s] - csv_loss[s]) < 1e-5 for s in tb)

    history, wb_config = _wandb_records(logs)
    wb_loss = [row["train/loss"] for row in history if "train/loss" in row]
    assert np.allclose(wb_loss, [csv_loss[s] for s in sorted(csv_loss)], atol=1e-5)
    assert wb_config["pretrain"]["batch_size"] == 8 and wb_config["seed"] == 0

    client, run = _mlflow_run(logs)
    ml = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert ml.keys() == csv_loss.keys() and all(abs(ml[s] - csv_loss[s]) < 1e-5 for s in ml)
    assert run.data.params["pretrain/batch_size"] == "8" and run.data.params["pretrain/loggers"] == str(ALL)
    assert run.info.status == "FINISHED"
    assert (out / "backbone.pt").is_file()


@pytest.mark.slow
def test_generator_training_logs_its_loss_through_the_same_loggers(tmp_path: Path) -> None:
    _need_all()
    from synthpos.generators.diffusion import train_generator

    config = load_config(None, [f"train_generator.loggers={ALL}", "train_generator.unet.block_out_channels=[8, 16]",
                                "train_generator.unet.attention_levels=[]", "train_generator.unet.layers_per_block=1",
                                "train_generator.unet.norm_num_groups=4", "train_generator.num_train_timesteps=50",
                                "train_generator.warmup_steps=1", "train_generator.max_steps=4",
                                "train_generator.checkpoint_every=2", "train_generator.batch_size=4",
                                "train_generator.precision=fp32"])
    images = np.random.default_rng(0).integers(0, 256, size=(8, 16, 16, 1), dtype=np.uint8)
    out = tmp_path / "generator"
    train_generator(images, config.train_generator, out, show_progress=False)
    logged = {int(s): float(v) for s, v in (line.split("\t") for line in (out / "loss.log").read_text().splitlines())}
    assert sorted(logged) == [2, 4]
    logs = out / "logs"

    with (logs / "version_0" / "metrics.csv").open() as fh:
        csv_loss = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}
    assert csv_loss.keys() == logged.keys() and all(abs(csv_loss[s] - logged[s]) < 1e-5 for s in logged)
    tb = _tensorboard_scalars(logs / "tensorboard", "train/loss")
    assert tb.keys() == logged.keys() and all(abs(tb[s] - logged[s]) < 1e-5 for s in logged)
    history, wb_config = _wandb_records(logs)
    assert np.allclose([r["train/loss"] for r in history if "train/loss" in r], [logged[2], logged[4]], atol=1e-5)
    assert wb_config["train_generator"]["max_steps"] == 4
    client, run = _mlflow_run(logs)
    ml = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert ml.keys() == logged.keys() and all(abs(ml[s] - logged[s]) < 1e-5 for s in logged)
    assert run.data.params["train_generator/max_steps"] == "4"


def test_a_missing_logger_package_is_one_line_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a))
    with pytest.raises(SynthposError, match=r"pretrain.loggers: the wandb logger needs the wandb package; `pip install wandb`"):
        check_loggers(["csv", "wandb"])
    with pytest.raises(SynthposError, match=r"train_generator.loggers: the mlflow logger"):
        check_loggers(["mlflow"], "train_generator.loggers")
    check_loggers(["csv", "tensorboard"])


def test_the_cli_says_what_to_install_and_exits_2(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['wandb'] = None\n"  # as if wandb were not installed
            "from synthpos.cli import main\n"
            f"sys.argv = ['synthpos', 'pretrain', '--set', 'run_dir={tmp_path / 'run'}', '--set', 'pretrain.loggers=[csv, wandb]']\n"
            "main()\n")
    env = dict(os.environ, PYTHONPATH=str(Path(synthpos.__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "cwd", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install wandb" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("mode", "logged_in", "offline"), [(None, False, True), (None, True, False),
                                                            ("offline", True, True), ("disabled", False, False)])
def test_wandb_is_offline_unless_logged_in_or_asked(tmp_path: Path, monkeypatch, mode, logged_in, offline) -> None:
    pytest.importorskip("wandb")
    import synthpos.loggers as loggers

    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setattr(loggers, "wandb_logged_in", lambda: logged_in)
    (logger,) = loggers.build_loggers(["wandb"], tmp_path / "logs", "x")  # no run starts before the first log
    assert logger._offline is offline and logger.save_dir == str(tmp_path / "logs")
