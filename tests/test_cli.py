"""The real `synthpos` console script: --help everywhere, bad input -> one line and exit 2.

Every bad-input case also checks that nothing was written: a command that refuses
its input must not leave a half-made run directory behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint

SCRIPT = Path(sys.executable).parent / "synthpos"
# The commands of the design's CLI contract (`report` is not implemented yet) and inspect-store.
COMMANDS = ["train-generator", "generate", "pretrain", "evaluate", "run", "quickstart", "inspect-store", "import-store",
            "export"]
NO_CONFIG = {"quickstart", "export"}  # these read a run directory (or make their own), not a recipe
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")


def synthpos(cwd: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")
    env.pop("SYNTHPOS_DATA", None)
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def assert_bad_input(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting 'error:', no traceback; returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_script_is_installed() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing; pip install -e ."


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command(tmp_path: Path, command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = synthpos(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    if command is None:
        for name in COMMANDS:
            assert name in result.stdout
    elif command not in NO_CONFIG:
        assert "--config" in result.stdout and "--set" in result.stdout
    assert _tree(tmp_path) == set()


def test_bare_command_shows_the_help(tmp_path: Path) -> None:
    result = synthpos(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "pretrain" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["pretrian"], "pretrian"), (["run", "--bogus"], "--bogus"), (["run", "--config"], "--config")],
    ids=["unknown-command", "unknown-option", "option-without-value"],
)
def test_usage_errors_are_bad_input(tmp_path: Path, args: list[str], needle: str) -> None:
    assert_bad_input(synthpos(tmp_path, *args), needle)
    assert _tree(tmp_path) == set()


# ----------------------------------------------------------------------------- config errors
# `run` reads its config before it imports any stage, so these need no torch import.


def test_missing_config_file(tmp_path: Path) -> None:
    assert_bad_input(synthpos(tmp_path, "run", "--config", "missing.yaml"), "missing.yaml")
    assert _tree(tmp_path) == set()


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("run_dir: run\npretrain:\n  epohcs: 3\n")
    assert_bad_input(synthpos(tmp_path, "run", "--config", "cfg.yaml"), "pretrain.epohcs")
    assert _tree(tmp_path) == {"cfg.yaml"}


def test_wrong_type_via_set(tmp_path: Path) -> None:
    result = synthpos(tmp_path, "run", "--set", "run_dir=run", "--set", "evaluate.knn_k=many")
    assert_bad_input(result, "evaluate.knn_k")
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == set()


def test_set_without_equals(tmp_path: Path) -> None:
    assert_bad_input(synthpos(tmp_path, "run", "--set", "generate.candidates"), "generate.candidates")
    assert _tree(tmp_path) == set()


# ----------------------------------------------------------------------------- missing inputs


@needs_fmnist
def test_explicit_data_root_does_not_fall_back_to_the_system_copy(tmp_path: Path) -> None:
    # Fashion-MNIST is installed at the system location, yet a named root must be the only place looked at.
    result = synthpos(tmp_path, "pretrain", "-q", "--set", "run_dir=run", "--set", "data.root=/nonexistent",
                      "--set", "data.subset=64", "--set", "pretrain.batch_size=32")
    assert_bad_input(result, "/nonexistent")
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == set()


def test_evaluate_without_backbone(tmp_path: Path) -> None:
    result = synthpos(tmp_path, "evaluate", "-q", "--set", "run_dir=run")
    assert_bad_input(result, "backbone.pt")
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == set()


@needs_fmnist
def test_generate_without_generator(tmp_path: Path) -> None:
    # The default generator, <run_dir>/generator/model, was never trained.
    result = synthpos(tmp_path, "generate", "-q", "--set", "run_dir=run", "--set", "data.subset=8")
    assert_bad_input(result, "run/generator/model", "train-generator")
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == set()


@needs_fmnist
def test_clsp_pretrain_without_store(tmp_path: Path) -> None:
    result = synthpos(tmp_path, "pretrain", "-q", "--set", "run_dir=run", "--set", "data.subset=8",
                      "--set", "pretrain.synthetic.mode=clsp", "--set", "pretrain.batch_size=4")
    assert_bad_input(result, "store")
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == set()


def _fmnist_first(n: int) -> np.ndarray:
    from synthpos.config import DataConfig
    from synthpos.data import load_dataset

    return load_dataset(DataConfig(subset=n), "train").images


@needs_fmnist
@pytest.mark.parametrize("other", ["other_name", "other_images"])
def test_pretrain_with_a_store_for_other_data(tmp_path: Path, other: str) -> None:
    n, k = 8, 2
    real = _fmnist_first(n)
    if other == "other_name":
        # Same pixels, but the store says it was made for CIFAR-10.
        fingerprint = dataset_fingerprint("cifar10", "train", real)
    else:
        noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
        fingerprint = dataset_fingerprint("fashion_mnist", "train", noise)
    store = SyntheticStore.create(tmp_path / "store", fingerprint, candidates=k, shard_size=n, generator={"kind": "test"})
    store.write_shard(0, np.repeat(real[:, None], k, axis=1))
    before = _tree(tmp_path)

    result = synthpos(tmp_path, "pretrain", "-q", "--set", "run_dir=run", "--set", f"data.subset={n}",
                      "--set", "pretrain.synthetic.mode=clsp", "--set", "pretrain.store=store",
                      "--set", "pretrain.batch_size=4", "--set", "pretrain.backbone.name=convnet")
    line = assert_bad_input(result, "store")
    assert ("cifar10" in line) if other == "other_name" else ("different images" in line)
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == before


@needs_fmnist
def test_pretrain_batch_larger_than_data_is_bad_input(tmp_path: Path) -> None:
    result = synthpos(tmp_path, "pretrain", "-q", "--set", "run_dir=run", "--set", "data.subset=8",
                      "--set", "pretrain.batch_size=16", "--set", "pretrain.backbone.name=convnet")
    assert_bad_input(result, "pretrain.batch_size")
    assert not (tmp_path / "run").exists()
