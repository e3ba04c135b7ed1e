"""Crash safety: every long stage survives SIGKILL, resumes (not restarts), and ends where an
uninterrupted run ends; SIGTERM checkpoints first; a damaged checkpoint falls back to the one before.

Fault injection: each stage runs as the real console script, is killed with SIGKILL at a random
point after its first checkpoint (the seed is printed; rerun one with SYNTHPOS_FAULT_SEED), and is
resumed in this process; the result is compared with an uninterrupted run in this process:
generator and store byte for byte, backbone bit for bit, metrics equal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import RunConfig, load_config
from synthpos.data import load_dataset
from synthpos.errors import SynthposError
from synthpos.evaluation.evaluate import evaluate_backbone
from synthpos.models.backbones import load_backbone
from synthpos.resumable import LAST, PREVIOUS, usable_checkpoint
from synthpos.stages import run_stage

SCRIPT = Path(sys.executable).parent / "synthpos"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]
SEED = int(os.environ.get("SYNTHPOS_FAULT_SEED", time.time_ns() % 1_000_000))

GENERATOR = ["data.subset=16", "train_generator.unet.block_out_channels=[8,16]", "train_generator.unet.attention_levels=[1]",
             "train_generator.unet.layers_per_block=1", "train_generator.unet.norm_num_groups=4",
             "train_generator.num_train_timesteps=50", "train_generator.warmup_steps=5", "train_generator.batch_size=8",
             "train_generator.max_steps=30", "train_generator.checkpoint_every=3",
             "train_generator.checkpoint_every_minutes=null", "train_generator.precision=fp32",
             "train_generator.num_threads=1"]
# 16 shards of about 0.4 s each on 2 idle cores, so a kill within 1.5 s of the first leaves some undone.
GENERATE = ["pretrain.synthetic.mode=clsp", "generate.generator=builtin:fashion_mnist", "data.subset=64",
            "generate.candidates=2", "generate.num_steps=6", "generate.shard_size=4", "generate.batch_size=8",
            "generate.precision=fp32", "generate.num_threads=1"]
# 4 steps an epoch, 160 in all: at about 10 ms a step on 2 idle cores, a kill within 1 s of the first
# checkpoint (at about 0.24 s) still lands inside training (20 epochs once finished first: CI on an idle Xeon).
PRETRAIN_STEPS = 160
PRETRAIN = ["data.subset=64", "pretrain.method=mocov2plus", "pretrain.queue_size=32", "pretrain.backbone.name=convnet",
            "pretrain.backbone.width=4", "pretrain.projector_hidden_dim=16", "pretrain.projector_out_dim=8",
            "pretrain.batch_size=16", "pretrain.epochs=40", "pretrain.precision=fp32", "pretrain.augment.crop_size=28",
            "pretrain.optimizer.warmup_epochs=1", "pretrain.accelerator=cpu", "pretrain.num_threads=1",
            "pretrain.checkpoint_every_minutes=0.004", "evaluate.max_train=100", "evaluate.knn_k=5",
            "evaluate.linear.epochs=1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    """The stages set torch's thread count (num_threads=1, as the killed process had); put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(run_dir: Path, settings: list[str]) -> RunConfig:
    return load_config(None, [f"run_dir={run_dir}", *settings])


def _start(cwd: Path, command: str, run_dir: Path, settings: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    args = [str(SCRIPT), command, "-q", "--set", f"run_dir={run_dir}"] + [a for s in settings for a in ("--set", s)]
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, first_checkpoint, rng: np.random.Generator, window_s: float) -> float:
    """SIGKILL ``proc`` a random time (up to ``window_s``) after ``first_checkpoint()`` holds; returns the delay."""
    deadline = time.monotonic() + 300
    while not first_checkpoint():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    delay = float(rng.uniform(0, window_s))
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage finished before the kill: make it longer"
    return delay


def _same_files(a: Path, b: Path, pattern: str = "**/*") -> int:
    files = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.glob(pattern) if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    return len(files)


def _resumed_step(err: str, what: str) -> int:
    found = re.search(rf"resuming {what} from \S+ \(step (\d+)\)", err)
    assert found, err[-2000:]
    return int(found.group(1))


def test_train_generator_survives_sigkill(tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    killed = tmp_path / "killed"
    ckpt = killed / "generator" / "checkpoint.pt"
    proc = _start(tmp_path, "train-generator", killed, GENERATOR)
    delay = _kill_after(proc, ckpt.is_file, rng, 1.0)
    # A kill between the two renames of a checkpoint leaves only the previous one, which the
    # resume falls back to.
    on_disk = ckpt if ckpt.is_file() else ckpt.with_name("checkpoint.previous.pt")
    step_on_disk = torch.load(on_disk, weights_only=False)["step"]
    with capsys.disabled():
        print(f"fault seed {SEED}: train-generator killed {delay:.2f}s after its first checkpoint, at step {step_on_disk}")
    assert 0 < step_on_disk < 30
    capsys.readouterr()
    run_stage("train-generator", _config(killed, GENERATOR), show_progress=False, explicit=True)
    assert _resumed_step(capsys.readouterr().err, "generator training") == step_on_disk
    reference = tmp_path / "reference"
    run_stage("train-generator", _config(reference, GENERATOR), show_progress=False, explicit=True)
    assert _same_files(killed / "generator" / "model", reference / "generator" / "model") >= 4


def test_generate_survives_sigkill(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    killed = tmp_path / "killed"
    store = killed / "store"
    proc = _start(tmp_path, "generate", killed, GENERATE)
    delay = _kill_after(proc, lambda: any(store.glob("shard-*.npy")), rng, 1.5)
    done = {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*.npy")}
    print(f"fault seed {SEED}: generate killed {delay:.2f}s after its first shard, with {len(done)} of 16 shards")
    assert 0 < len(done) < 16
    run_stage("generate", _config(killed, GENERATE), show_progress=False, explicit=True)
    # Resumed: the shards written before the kill are the same files, not made again.
    assert {n: (store / n).stat().st_mtime_ns for n in done} == done
    reference = tmp_path / "reference"
    run_stage("generate", _config(reference, GENERATE), show_progress=False, explicit=True)
    assert _same_files(store, reference / "store", "shard-*.npy") == 16
    assert (store / "manifest.json").read_bytes() == (reference / "store" / "manifest.json").read_bytes()


def _equal_backbones(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


def _metrics(config: RunConfig) -> dict:
    return evaluate_backbone(load_backbone(config.backbone_path), config.data, config.evaluate, 28, seed=config.seed)


def test_pretrain_survives_sigkill_and_a_damaged_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(SEED + 2)
    killed = tmp_path / "killed"
    checkpoints = killed / "pretrain" / "checkpoints"
    proc = _start(tmp_path, "pretrain", killed, PRETRAIN)
    delay = _kill_after(proc, (checkpoints / LAST).is_file, rng, 1.0)
    # A kill between the save's two renames leaves previous.ckpt (and the new state's temporary
    # file) but no last.ckpt: the resume takes previous.ckpt, so the test compares against that.
    resume_from, _ = usable_checkpoint(checkpoints, say=lambda message: None)
    saved = torch.load(resume_from, weights_only=False)
    position = saved["callbacks"]["ResumableCheckpoint"]
    with capsys.disabled():
        print(f"fault seed {SEED}: pretrain killed {delay:.2f}s after its first checkpoint; last checkpoint at step "
              f"{saved['global_step']} (epoch {position['epoch']}, batch {position['position']} of 4)")
    assert 0 < saved["global_step"] < PRETRAIN_STEPS
    capsys.readouterr()
    config = _config(killed, PRETRAIN)
    run_stage("pretrain", config, show_progress=False, explicit=True)
    assert _resumed_step(capsys.readouterr().err, "pretraining") == saved["global_step"]

    reference = _config(tmp_path / "reference", PRETRAIN)
    run_stage("pretrain", reference, show_progress=False, explicit=True)
    _equal_backbones(config.backbone_path, reference.backbone_path)
    assert _metrics(config) == _metrics(reference)

    # A last.ckpt cut short: the run goes back to previous.ckpt (an earlier state of the same run) and
    # still ends with the same backbone; with both cut it says what to do.
    ref_checkpoints = reference.pretrain_dir / "checkpoints"
    data = (ref_checkpoints / LAST).read_bytes()
    (ref_checkpoints / LAST).write_bytes(data[: len(data) // 2])
    previous_step = torch.load(ref_checkpoints / PREVIOUS, weights_only=False)["global_step"]
    messages = []
    assert usable_checkpoint(ref_checkpoints, say=messages.append) == (ref_checkpoints / PREVIOUS, previous_step)
    assert "cannot be read" in messages[0]
    (reference.pretrain_dir / "backbone.pt").rename(tmp_path / "reference.pt")
    run_stage("pretrain", reference, show_progress=False, explicit=True)
    _equal_backbones(reference.backbone_path, tmp_path / "reference.pt")
    for name in (LAST, PREVIOUS):
        data = (ref_checkpoints / name).read_bytes()
        (ref_checkpoints / name).write_bytes(data[:100])
    with pytest.raises(SynthposError, match="delete that folder"):
        usable_checkpoint(ref_checkpoints)


def test_generator_checkpoint_cut_short_falls_back(tmp_path, capsys):
    from synthpos.generators.diffusion import PREVIOUS_CHECKPOINT

    settings = [s for s in GENERATOR if not s.startswith("train_generator.max_steps")] + ["train_generator.max_steps=6"]
    config = _config(tmp_path, settings)
    run_stage("train-generator", config, show_progress=False, explicit=True)
    ckpt = config.generator_dir / "checkpoint.pt"
    assert (config.generator_dir / PREVIOUS_CHECKPOINT).is_file()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    more = load_config(None, [f"run_dir={tmp_path}", *settings[:-1], "train_generator.max_steps=8"])
    capsys.readouterr()
    from synthpos.generators.diffusion import train_generator_stage

    train_generator_stage(more, show_progress=False)
    err = capsys.readouterr().err
    assert "cannot be read" in err and PREVIOUS_CHECKPOINT in err
    assert _resumed_step(err, "generator training") > 0
    for name in ("checkpoint.pt", PREVIOUS_CHECKPOINT):
        (config.generator_dir / name).write_bytes(b"not a checkpoint")
    with pytest.raises(SynthposError, match="delete"):
        train_generator_stage(more, show_progress=False)


def test_sigterm_checkpoints_pretraining_and_exits_143(tmp_path):
    run = tmp_path / "run"
    checkpoints = run / "pretrain" / "checkpoints"
    # No checkpoint but the one SIGTERM makes: no time cadence, epochs far apart.
    settings = [s for s in PRETRAIN if "checkpoint_every_minutes" not in s] + [
        "pretrain.epochs=200", "pretrain.checkpoint_every_epochs=1000", "pretrain.checkpoint_every_minutes=null"]
    proc = _start(tmp_path, "pretrain", run, settings)
    deadline = time.monotonic() + 300
    while not (run / "pretrain" / "logs").is_dir():  # training has started
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("terminated (SIGTERM): finished work and the last checkpoint are kept"), err[-2000:]
    assert "Traceback" not in err
    step = torch.load(checkpoints / LAST, weights_only=False)["global_step"]
    assert 0 < step < 800
    assert not [p for p in checkpoints.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("command", ["train-generator", "generate"])
def test_sigterm_of_generation_stages_is_one_line_and_resumes_to_the_same_bytes(tmp_path, command):
    """SIGTERM after the first checkpoint (a seeded point): exit 143 with one line, then the same command finishes
    where an uninterrupted run does (the fault matrix's SIGTERM cells for the generator stages)."""
    rng = np.random.default_rng(SEED + 3)
    settings = GENERATOR if command == "train-generator" else GENERATE
    killed = tmp_path / "killed"
    first = ((lambda: (killed / "generator" / "checkpoint.pt").is_file()) if command == "train-generator"
             else (lambda: any((killed / "store").glob("shard-*.npy"))))
    proc = _start(tmp_path, command, killed, settings)
    deadline = time.monotonic() + 300
    while not first():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    time.sleep(float(rng.uniform(0, 0.5)))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished before the signal landed: nothing to resume, still a clean end
        assert "Traceback" not in err
    else:
        assert proc.returncode == 143, err[-3000:]
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("terminated (SIGTERM)"), err[-2000:]
        assert "Traceback" not in err
    print(f"fault seed {SEED}: {command} got SIGTERM (exit {proc.returncode})")
    run_stage(command, _config(killed, settings), show_progress=False, explicit=True)
    reference = tmp_path / "reference"
    run_stage(command, _config(reference, settings), show_progress=False, explicit=True)
    if command == "train-generator":
        weights = "model/unet/diffusion_pytorch_model.safetensors"
        assert (killed / "generator" / weights).read_bytes() == (reference / "generator" / weights).read_bytes()
    else:
        assert _same_files(killed / "store", reference / "store", "shard-*.npy") == 16


def test_a_resume_from_the_middle_of_an_epoch_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Deterministic companion of the random kill: stopped right after step 6 of 4-step epochs (epoch 1, batch 2)."""
    import synthpos.resumable as resumable
    from synthpos.methods.pretrain import pretrain

    settings = [s for s in PRETRAIN if "epochs=" not in s and "checkpoint_every_minutes" not in s] + [
        "pretrain.epochs=3", "pretrain.checkpoint_every_minutes=null", "pretrain.checkpoint_every_epochs=100"]
    config = _config(tmp_path, settings)
    dataset = load_dataset(config.data, "train")
    reference = pretrain(config.pretrain, dataset, tmp_path / "reference", seed=0, show_progress=False)

    class Killed(Exception):
        pass

    real = resumable.ResumableCheckpoint.on_train_batch_start

    def stop_after_step_6(self, trainer, pl_module, batch, batch_idx):
        real(self, trainer, pl_module, batch, batch_idx)
        if trainer.global_step == 6:
            self._save(trainer)
            raise Killed

    monkeypatch.setattr(resumable.ResumableCheckpoint, "on_train_batch_start", stop_after_step_6)
    with pytest.raises(Killed):
        pretrain(config.pretrain, dataset, tmp_path / "resumed", seed=0, show_progress=False)
    monkeypatch.setattr(resumable.ResumableCheckpoint, "on_train_batch_start", real)
    state = torch.load(tmp_path / "resumed" / "checkpoints" / LAST, weights_only=False)["callbacks"]["ResumableCheckpoint"]
    assert (state["epoch"], state["position"], state["global_step"]) == (1, 2, 6)
    resumed = pretrain(config.pretrain, dataset, tmp_path / "resumed", seed=0, show_progress=False)
    _equal_backbones(resumed, reference)


def test_a_kill_between_the_saves_two_renames_resumes_from_previous(tmp_path, monkeypatch):
    """The window the SIGKILL test can land in: last.ckpt already moved to previous.ckpt, the new
    state still under its temporary name. The resume takes previous.ckpt, not nothing."""
    from synthpos.resumable import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 4}, tmp_path / LAST)
    real_replace = os.replace

    def killed_at_the_second_rename(src, dst):
        if Path(dst).name == LAST:
            raise KeyboardInterrupt  # stands for the SIGKILL: the process does nothing more
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8}, tmp_path / LAST)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / LAST).exists() and (tmp_path / PREVIOUS).is_file()
    assert usable_checkpoint(tmp_path, say=lambda message: None) == (tmp_path / PREVIOUS, 4)
