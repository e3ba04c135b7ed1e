"""Provenance: synthpos's version and git commit, torch, diffusers and the config's hash in every JSON output.

The git fields come from the checkout the package was imported from (checked against git run
by hand in the package's parent folder, from a cwd inside another repository), null outside
one; provenance is recorded, never compared: a run by another commit redoes nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import synthpos
import synthpos.provenance as prov
from synthpos.config import load_config
from synthpos.pipeline import run_pipeline

FMNIST = Path("/usr/share/datasets/fashion-mnist")
PACKAGE_PARENT = Path(synthpos.__file__).resolve().parent.parent
FIELDS = {"synthpos_version", "git_commit", "git_dirty", "torch", "diffusers", "config_sha256"}


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def test_git_fields_are_the_package_checkout_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    # Another repository as the working directory, with a commit of its own.
    other = tmp_path / "other"
    other.mkdir()
    for args in (("init", "-q"), ("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x")):
        assert _git(other, *args).returncode == 0
    monkeypatch.chdir(other)
    head = _git(PACKAGE_PARENT, "rev-parse", "HEAD")
    if head.returncode != 0:
        pytest.skip("synthpos is not imported from a git checkout here")
    dirty = bool(_git(PACKAGE_PARENT, "status", "--porcelain").stdout.strip())
    p = prov.provenance()
    assert set(p) == FIELDS
    assert p["git_commit"] == head.stdout.strip() != _git(other, "rev-parse", "HEAD").stdout.strip()
    assert p["git_dirty"] is dirty
    assert p["synthpos_version"] == synthpos.__version__
    assert p["torch"] == importlib.metadata.version("torch") and torch.__version__.startswith(p["torch"].split("+")[0])
    assert p["diffusers"] == importlib.metadata.version("diffusers")
    assert p["config_sha256"] is None


def test_git_fields_are_null_outside_a_checkout(tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "synthpos"
    copy.mkdir()
    (copy / "__init__.py").write_text("")
    monkeypatch.setattr(prov, "PACKAGE_DIR", copy)
    p = prov.provenance()
    assert p["git_commit"] is None and p["git_dirty"] is None and p["synthpos_version"] == synthpos.__version__
    # An untracked copy inside a checkout (a virtual environment in a project folder) is not that checkout's code.
    assert _git(tmp_path, "init", "-q").returncode == 0
    assert prov.git_state(copy) == (None, None)


def test_config_hash_is_of_the_settings_not_the_run_dir(tmp_path: Path) -> None:
    a, b = load_config(None, [f"run_dir={tmp_path / 'a'}"]), load_config(None, [f"run_dir={tmp_path / 'b'}"])
    data = a.model_dump(mode="json")
    del data["run_dir"]
    reference = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert prov.config_sha256(a) == prov.config_sha256(b) == reference
    assert prov.config_sha256(load_config(None, [f"run_dir={tmp_path / 'a'}", "seed=1"])) != reference


CONFIG = """\
seed: 0
data: {name: fashion_mnist, subset: 32}
train_generator:
  unet: {block_out_channels: [8, 16], attention_levels: [1], layers_per_block: 1, norm_num_groups: 4}
  num_train_timesteps: 50
  warmup_steps: 1
  max_steps: 2
  batch_size: 8
  precision: fp32
generate: {candidates: 2, num_steps: 2, shard_size: 16, batch_size: 64, precision: fp32}
pretrain:
  synthetic: {mode: clsp}
  backbone: {name: convnet, width: 8}
  projector_hidden_dim: 16
  projector_out_dim: 8
  batch_size: 16
  epochs: 1
  precision: fp32
  accelerator: cpu
  augment: {crop_size: 28}
evaluate: {max_train: 100, knn_k: 5, linear_protocols: [fast], linear: {epochs: 1}}
"""


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_every_output_records_provenance_and_another_commit_redoes_nothing(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "cfg.yaml", [f"run_dir={tmp_path / 'run'}", "pretrain.num_threads=1"])
    monkeypatch.setattr(prov, "git_state", lambda folder=None: ("a" * 40, False))
    run_pipeline(config, show_progress=False)
    run = tmp_path / "run"
    outputs = {
        "generator/COMPLETE": json.loads((run / "generator" / "COMPLETE").read_text()),
        "store/manifest.json": json.loads((run / "store" / "manifest.json").read_text()),
        "pretrain/backbone.json": json.loads((run / "pretrain" / "backbone.json").read_text()),
        "evaluate/metrics.json": json.loads((run / "evaluate" / "metrics.json").read_text()),
    }
    expected = {"synthpos_version": synthpos.__version__, "git_commit": "a" * 40, "git_dirty": False,
                "torch": importlib.metadata.version("torch"), "diffusers": importlib.metadata.version("diffusers"),
                "config_sha256": prov.config_sha256(config)}
    for name, output in outputs.items():
        assert output["provenance"] == expected, name
    assert outputs["evaluate/metrics.json"]["config"] == config.model_dump(mode="json")
    assert "provenance" not in json.loads((run / "generator" / "train_config.json").read_text())

    # Another commit, a dirty tree: every stage is done, nothing is rewritten or moved aside.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    monkeypatch.setattr(prov, "git_state", lambda folder=None: ("b" * 40, True))
    run_pipeline(config, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamps
    assert not (run / "previous").exists()

    from synthpos.report.html import write_report

    html = write_report([run], tmp_path / "report.html", cka_images=10).read_text()
    rows = [f"<code>run/{name}</code>" for name in outputs]
    assert all(row in html for row in rows) and html.count(f"<code>{'a' * 12}</code>") == 4, "a provenance row per output"
    assert "b" * 12 not in html
