"""The generator check's step cadence (``train_generator.check.every_steps``): checks land at steps
N, 2N, ... whatever the machine's speed, a resume after a kill keeps that schedule (and makes a check
the kill cut short), and the stop rule fires on step-spaced checks, naming their steps."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import GeneratorCheckConfig, TrainGeneratorConfig, UNetConfig, load_config
from synthpos.errors import SynthposError
from synthpos.evaluation import generator_check
from synthpos.generators import diffusion
from synthpos.generators.diffusion import train_generator
from synthpos.signals import Terminated

TINY = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _keep_threads():
    """The runs here train on one thread (fast on a shared machine); put torch's count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, so nothing is saved on the way out."""


def _config(**changes) -> TrainGeneratorConfig:
    base = dict(unet=TINY, num_train_timesteps=50, batch_size=4, max_steps=12, warmup_steps=1, checkpoint_every=3,
                checkpoint_every_minutes=None, channels_last=False, precision="fp32", num_threads=1, loggers=[])
    return TrainGeneratorConfig(**(base | changes))


def _images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(8, 8, 8, 1), dtype=np.uint8)


def _weights(model_dir: Path) -> bytes:
    return (model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def _recorder(seen: list[int], out: Path, kill_at: int | None = None):
    def on_check(model_dir: Path, step: int) -> None:
        # The check judges the model of its own step: the checkpoint on disk is that step's.
        assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == step
        seen.append(step)
        if step == kill_at:
            raise Killed
    return on_check


def test_checks_land_at_multiples_of_every_steps(tmp_path) -> None:
    seen: list[int] = []
    out = tmp_path / "gen"
    train_generator(_images(), _config(max_steps=10), out, show_progress=False,
                    on_check=_recorder(seen, out), check_every_steps=4)
    assert seen == [4, 8]
    complete = json.loads((out / "COMPLETE").read_text())
    assert (complete["step"], complete["stopped_by_check"]) == (10, None)


def test_exactly_one_cadence_reaches_the_loop(tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        train_generator(_images(), _config(), tmp_path / "gen", show_progress=False, on_check=lambda d, s: None,
                        check_every_minutes=1.0, check_every_steps=4)


def test_a_resume_after_a_kill_between_checks_keeps_the_schedule(tmp_path, monkeypatch) -> None:
    whole: list[int] = []
    train_generator(_images(), _config(), tmp_path / "whole", show_progress=False,
                    on_check=_recorder(whole, tmp_path / "whole"), check_every_steps=4)
    assert whole == [4, 8, 12]

    # Killed inside step 8 (after the checkpoint of step 6, before the check of step 8).
    out, before, after = tmp_path / "killed", [], []
    real_update, calls = diffusion._ema_update, []

    def update_then_die(*args) -> None:
        calls.append(1)
        if len(calls) == 8:
            raise Killed
        real_update(*args)

    monkeypatch.setattr(diffusion, "_ema_update", update_then_die)
    with pytest.raises(Killed):
        train_generator(_images(), _config(), out, show_progress=False, on_check=_recorder(before, out), check_every_steps=4)
    monkeypatch.setattr(diffusion, "_ema_update", real_update)
    assert before == [4] and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 6
    train_generator(_images(), _config(), out, show_progress=False, on_check=_recorder(after, out), check_every_steps=4)
    # A clock-based cadence would restart its timer here; the steps do not move.
    assert before + after == whole
    assert _weights(out / "model") == _weights(tmp_path / "whole" / "model")


def test_a_check_cut_short_by_a_kill_is_made_on_resume(tmp_path) -> None:
    whole: list[int] = []
    train_generator(_images(), _config(), tmp_path / "whole", show_progress=False,
                    on_check=_recorder(whole, tmp_path / "whole"), check_every_steps=4)
    out, before, after = tmp_path / "killed", [], []
    with pytest.raises(Killed):
        train_generator(_images(), _config(), out, show_progress=False, on_check=_recorder(before, out, kill_at=8),
                        check_every_steps=4)
    (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"older")  # the folder's rename lost
    train_generator(_images(), _config(), out, show_progress=False, on_check=_recorder(after, out), check_every_steps=4)
    assert before == [4, 8] and after == [8, 12]  # the check of step 8 again, first, on that step's model
    assert _weights(out / "model") == _weights(tmp_path / "whole" / "model")


def test_sigterm_at_a_check_step_leaves_the_check_to_the_resume(tmp_path, monkeypatch) -> None:
    whole: list[int] = []
    train_generator(_images(), _config(), tmp_path / "whole", show_progress=False,
                    on_check=_recorder(whole, tmp_path / "whole"), check_every_steps=4)
    out, before, after = tmp_path / "stopped", [], []
    real_update, calls = diffusion._ema_update, []

    def update_then_term(*args) -> None:
        real_update(*args)
        calls.append(1)
        if len(calls) == 8:  # during step 8: the stop is honoured after it, where its check would be
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(diffusion, "_ema_update", update_then_term)
    with pytest.raises(Terminated):
        train_generator(_images(), _config(), out, show_progress=False, on_check=_recorder(before, out), check_every_steps=4)
    monkeypatch.setattr(diffusion, "_ema_update", real_update)
    # Stopped at once (a check can take minutes), with step 8 checkpointed; the resume makes the check.
    assert before == [4] and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 8
    train_generator(_images(), _config(), out, show_progress=False, on_check=_recorder(after, out), check_every_steps=4)
    assert before + after == whole
    assert _weights(out / "model") == _weights(tmp_path / "whole" / "model")


class _ScriptedCheck:
    """GeneratorCheck with a scripted fidelity per step (the real one samples and judges; tested in
    tests/evaluation/test_generator_check.py): what is tested here is the stage's rule and record."""

    FIDELITY = {2: 0.50, 4: 0.60, 6: 0.605, 8: 0.609, 10: 0.70}
    calls: list[int] = []

    def __init__(self, config, log: Path, show_progress: bool = False) -> None:
        self.log = Path(log)

    history = generator_check.GeneratorCheck.history

    def __call__(self, model_dir: Path, step: int) -> dict:
        self.calls.append(step)
        check = {"step": step, "fidelity": self.FIDELITY[step], "check_s": 0.0,
                 "diversity": {"pixel": {"candidate_to_anchor": 0.3},
                               "features": {"candidate_to_anchor": 0.1, "between_same_class_real_images": 0.15}}}
        with open(self.log, "a") as fh:
            fh.write(json.dumps(check) + "\n")
        return check


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_the_stop_rule_fires_on_step_spaced_checks_and_again_on_resume(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(generator_check, "GeneratorCheck", _ScriptedCheck)
    monkeypatch.setattr(_ScriptedCheck, "calls", [])
    config = load_config(None, [
        f"run_dir={tmp_path}", "data.subset=16", "train_generator.unet.block_out_channels=[8,16]",
        "train_generator.unet.attention_levels=[1]", "train_generator.unet.layers_per_block=1",
        "train_generator.unet.norm_num_groups=4", "train_generator.num_train_timesteps=50",
        "train_generator.warmup_steps=1", "train_generator.batch_size=4", "train_generator.max_steps=12",
        "train_generator.checkpoint_every=5", "train_generator.checkpoint_every_minutes=null",
        "train_generator.precision=fp32", "train_generator.channels_last=false", "train_generator.num_threads=1",
        "train_generator.loggers=[]",
        "train_generator.check.every_minutes=null", "train_generator.check.every_steps=2"])
    diffusion.train_generator_stage(config, show_progress=False)
    gen = config.generator_dir
    complete = json.loads((gen / "COMPLETE").read_text())
    # 0.60 -> 0.605 -> 0.609: two checks in a row under a point, at steps 6 and 8.
    assert complete["step"] == 8 and _ScriptedCheck.calls == [2, 4, 6, 8]
    assert complete["stopped_by_check"] == ("fidelity gained under 1.0 points in each of the last 2 checks "
                                            "(+0.5 at step 6, +0.4 at step 8)")
    assert [c["step"] for c in generator_check.GeneratorCheck(config, gen / "checks.jsonl").history()] == [2, 4, 6, 8]
    # Killed after the check's line, before COMPLETE: the resume answers step 8 from the record, without a
    # second measurement, and stops there again.
    (gen / "COMPLETE").unlink()
    diffusion.train_generator_stage(config, show_progress=False)
    assert json.loads((gen / "COMPLETE").read_text())["stopped_by_check"] == complete["stopped_by_check"]
    assert _ScriptedCheck.calls == [2, 4, 6, 8]
    assert torch.load(gen / "checkpoint.pt", weights_only=False)["step"] == 8


def test_every_steps_alone_is_the_cadence_and_both_are_one_line_errors() -> None:
    assert GeneratorCheckConfig(every_steps=1000).every_minutes is None
    assert GeneratorCheckConfig().every_minutes == 30 and "every_steps" not in GeneratorCheckConfig().model_dump()
    steps = load_config(None, ["train_generator.check.every_steps=1100"]).train_generator.check
    assert (steps.every_steps, steps.every_minutes) == (1100, None)
    recipe = "configs/fashion_mnist/generator_conditioned_cpu.yaml"  # names every_minutes: 30 (generator_cpu.yaml)
    with pytest.raises(SynthposError, match="every_steps=1100 and every_minutes=30 are both set") as both:
        load_config(recipe, ["train_generator.check.every_steps=1100"])
    assert "\n" not in str(both.value)
    assert load_config(recipe, ["train_generator.check.every_steps=1100",
                                "train_generator.check.every_minutes=null"]).train_generator.check.every_steps == 1100
    with pytest.raises(SynthposError, match="needs a cadence"):
        load_config(recipe, ["train_generator.check.every_minutes=null"])
    with pytest.raises(SynthposError):
        load_config(None, ["train_generator.check.every_steps=0"])


def test_stage_records_of_minute_cadence_runs_stay_current() -> None:
    from synthpos.stages import BY_NAME

    stage, recipe = BY_NAME["train-generator"], "configs/fashion_mnist/generator_conditioned_cpu.yaml"
    # What the train-generator record held before every_steps existed: the same keys, none added.
    before = {"train_generator.check." + k: v for k, v in {
        "anchors": 300, "candidates": 2, "every_minutes": 30.0, "min_feature_ratio": 0.5, "min_gain": 0.01,
        "min_pixel_distance": 0.2, "patience": 2, "target_fidelity": 0.8}.items()}
    settings = stage.settings(load_config(recipe, []))
    assert {k: v for k, v in settings.items() if k.startswith("train_generator.check.")} == before
    steps = stage.settings(load_config(recipe, ["train_generator.check.every_minutes=null",
                                                "train_generator.check.every_steps=1100"]))
    assert (steps["train_generator.check.every_steps"], steps["train_generator.check.every_minutes"]) == (1100, None)
