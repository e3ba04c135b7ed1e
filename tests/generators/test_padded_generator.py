"""Generator training on padded images (``train_generator.sample_size``), min-SNR loss weights,
and the training-time check with its stop rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthpos.config import GenerateConfig, GeneratorCheckConfig, TrainGeneratorConfig, UNetConfig
from synthpos.errors import SynthposError
from synthpos.generators.registry import build_generator
from synthpos.evaluation.generator_check import should_stop
from synthpos.generators.diffusion import (
    PADDING_FILE,
    crop_from_model,
    loss_weights,
    pad_to_model,
    padding_for,
    train_generator,
)

TINY = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)


def _config(**changes) -> TrainGeneratorConfig:
    base = dict(unet=TINY, num_train_timesteps=50, batch_size=4, max_steps=3, warmup_steps=1, checkpoint_every=2,
                channels_last=False, precision="fp32")
    return TrainGeneratorConfig(**(base | changes))


def test_min_snr_weights_are_the_closed_form() -> None:
    alphas = torch.tensor([0.999, 0.9, 0.5, 0.01], dtype=torch.float64)
    snr = alphas / (1 - alphas)  # 999, 9, 1, 0.0101
    expected = torch.tensor([5 / 999, 5 / 9, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(loss_weights(alphas, "min_snr", 5.0), expected)
    torch.testing.assert_close(loss_weights(alphas, "none", 5.0), torch.ones(4, dtype=torch.float64))
    assert snr[0] > snr[1] > 5 > snr[2] > snr[3]  # the first two are capped, the last two are not


def test_padding_round_trip_and_bad_sizes() -> None:
    x = torch.rand(2, 1, 6, 6) * 2 - 1
    padded = pad_to_model(x, padding_for(6, 10))
    assert padded.shape == (2, 1, 10, 10)
    assert (padded[..., :2, :] == -1).all() and (padded[..., :, -2:] == -1).all()
    torch.testing.assert_close(crop_from_model(padded, 2), x)
    with pytest.raises(SynthposError, match="even"):
        padding_for(6, 9)
    with pytest.raises(SynthposError, match="pad"):
        padding_for(8, 6)


def test_a_padded_generator_makes_candidates_at_the_data_size(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(12, 6, 6, 1), dtype=np.uint8)
    model = train_generator(images, _config(sample_size=8), tmp_path / "gen", show_progress=False)
    assert json.loads((model / PADDING_FILE).read_text()) == {"image_size": 6, "sample_size": 8}
    generator = build_generator("clsp", model, GenerateConfig(candidates=2, num_steps=3, batch_size=8), seed=0, device="cpu")
    generator.check_images(images)
    out = generator.generate(images[:3], 0)
    assert out.shape == (3, 2, 6, 6, 1) and out.dtype == np.uint8
    # The same anchors and seeds give the same candidates in another batch size.
    again = build_generator("clsp", model, GenerateConfig(candidates=2, num_steps=3, batch_size=2), seed=0, device="cpu")
    np.testing.assert_array_equal(again.generate(images[:3], 0), out)
    with pytest.raises(SynthposError, match="6x6x1"):
        generator.check_images(np.zeros((2, 8, 8, 1), dtype=np.uint8))


def test_unpadded_generator_writes_no_padding_file(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(8, 8, 8, 1), dtype=np.uint8)
    model = train_generator(images, _config(), tmp_path / "gen", show_progress=False)
    assert not (model / PADDING_FILE).exists()


def test_min_snr_training_changes_the_loss_not_the_data(tmp_path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(8, 8, 8, 1), dtype=np.uint8)
    plain = train_generator(images, _config(max_steps=2), tmp_path / "plain", show_progress=False)
    weighted = train_generator(images, _config(max_steps=2, loss_weighting="min_snr"), tmp_path / "weighted",
                               show_progress=False)
    a = (plain / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (weighted / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a != b


def test_the_check_hook_stops_training(tmp_path) -> None:
    images = np.random.default_rng(2).integers(0, 256, size=(8, 8, 8, 1), dtype=np.uint8)
    seen = []

    def on_check(model_dir, step):
        assert (model_dir / "unet" / "config.json").is_file()  # the model is saved before the check
        seen.append(step)
        return "enough" if len(seen) == 2 else None

    train_generator(images, _config(max_steps=50), tmp_path / "gen", show_progress=False,
                    on_check=on_check, check_every_minutes=1e-9)
    assert seen == [1, 2]
    complete = json.loads((tmp_path / "gen" / "COMPLETE").read_text())
    assert complete.pop("provenance")["synthpos_version"]  # recorded, see tests/test_provenance.py
    assert complete == {"step": 2, "stopped_by_check": "enough"}


def _check(fidelity: float, pixel: float = 0.25, feature: float = 0.1, same_class: float = 0.15) -> dict:
    return {"fidelity": fidelity, "diversity": {"pixel": {"candidate_to_anchor": pixel},
                                                "features": {"candidate_to_anchor": feature,
                                                             "between_same_class_real_images": same_class}}}


def test_stop_rule() -> None:
    rule = GeneratorCheckConfig(target_fidelity=0.8, min_gain=0.01, patience=2)
    assert should_stop([], rule) is None
    assert "target" in should_stop([_check(0.5), _check(0.81)], rule)
    # The target without the diversity floors is no reason to stop.
    assert should_stop([_check(0.85, pixel=0.1)], rule) is None
    assert should_stop([_check(0.85, feature=0.05)], rule) is None
    # Two checks in a row gaining under a point.
    assert should_stop([_check(0.5), _check(0.6), _check(0.605)], rule) is None
    assert "2 checks" in should_stop([_check(0.5), _check(0.6), _check(0.605), _check(0.609)], rule)
    assert should_stop([_check(0.5), _check(0.505), _check(0.6)], rule) is None
