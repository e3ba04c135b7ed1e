"""Class-conditional DDPM: training with label dropout, classifier-free guidance, stores.

The guidance references call the plain ``unet(x, t, class_labels=...)`` (with mid-block
hooks for the interpolated bottleneck) and combine the predictions by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from synthpos.config import GenerateConfig, TrainGeneratorConfig, UNetConfig
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.errors import SynthposError
from synthpos.generators.clsp import clsp_interpolation_sample, derive_seed, guided_eps, null_label, num_classes
from synthpos.generators.diffusion import build_noise_scheduler, build_unet, load_generator, save_pipeline, train_generator
from synthpos.generators.generate import generate_store
from synthpos.generators.samplers import build_sampler

CLASSES = 3
TINY_UNET = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)


def make_noise_scheduler(num_train_timesteps: int):
    return build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=num_train_timesteps))


def _conditional_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = build_unet(TINY_UNET, sample_size=8, channels=1, num_classes=CLASSES).eval().requires_grad_(False)
    # A fresh embedding is small next to the time embedding; scale it so labels clearly matter.
    unet.class_embedding.weight.mul_(20.0)
    return unet


@pytest.fixture(scope="module")
def cond_unet() -> UNet2DModel:
    return _conditional_unet()


def _gens(keys) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(0, a, c)) for a, c in keys]


def _draw(generators, shape) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def _eps(unet, x, t, labels, noisy_anchor=None, w=1.0) -> torch.Tensor:
    """Plain forward with labels; with an anchor, its mid-block output (same labels) is mixed in by hooks."""
    if noisy_anchor is None:
        return unet(x, t, class_labels=labels).sample
    captured = {}
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: captured.setdefault("h", out.detach().clone()))
    try:
        unet(noisy_anchor, t, class_labels=labels)
    finally:
        handle.remove()
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: w * out + (1.0 - w) * captured["h"])
    try:
        return unet(x, t, class_labels=labels).sample
    finally:
        handle.remove()


@torch.no_grad()
def _reference(unet, noise_scheduler, anchors, labels, keys, num_steps, scale, weight, eta=0.1):
    """DDIM with eps = eps_null + scale * (eps_cond - eps_null), written out here."""
    sched = DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(num_steps)
    gens = _gens(keys)
    shape = anchors.shape[1:]
    null = torch.full_like(labels, CLASSES)
    x = _draw(gens, shape)
    for t in sched.timesteps:
        anchor_noise, a_t = _draw(gens, shape), noise_scheduler.alphas_cumprod[int(t)]
        noisy = None if weight == 1.0 else a_t.sqrt() * anchors + (1 - a_t).sqrt() * anchor_noise
        eps_cond = _eps(unet, x, t, labels, noisy, weight)
        eps_null = _eps(unet, x, t, null, noisy, weight)
        eps = eps_null + scale * (eps_cond - eps_null)
        x = sched.step(eps, t, x, eta=eta, variance_noise=_draw(gens, shape)).prev_sample
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------- the model


def test_conditional_unet_has_a_null_class(cond_unet) -> None:
    assert cond_unet.config.num_class_embeds == CLASSES + 1
    assert num_classes(cond_unet) == CLASSES and null_label(cond_unet) == CLASSES
    assert num_classes(build_unet(TINY_UNET, 8, 1)) is None
    with pytest.raises(ValueError, match="not class-conditional"):
        null_label(build_unet(TINY_UNET, 8, 1))


def test_guided_eps_by_hand() -> None:
    null, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert guided_eps(null, cond, 1.0).tolist() == [3.0, 0.5]
    assert guided_eps(null, cond, 0.0).tolist() == [1.0, -2.0]
    # 1 + 2.5 * (3 - 1) = 6; -2 + 2.5 * (0.5 + 2) = 4.25
    assert guided_eps(null, cond, 2.5).tolist() == [6.0, 4.25]


# ----------------------------------------------------------------------------- guidance in the sampler


@pytest.mark.parametrize("weight", [1.0, 0.3])
@pytest.mark.parametrize("scale", [1.0, 0.0, 2.5])
def test_guidance_matches_the_hand_combination(cond_unet, anchors_model_range, scale, weight) -> None:
    """s=1: the conditional prediction; s=0: the null-class one; s=2.5: the CFG formula by hand."""
    noise_scheduler = make_noise_scheduler(100)
    labels = torch.tensor([0, 2, 1, 2])
    keys = [(0, 0), (1, 0), (2, 1), (3, 0)]
    ours = clsp_interpolation_sample(
        cond_unet, build_sampler("ddim", noise_scheduler), anchors_model_range, _gens(keys), num_steps=4, eta=0.1,
        weight=weight, class_labels=labels, guidance_scale=scale,
    )
    ref = _reference(cond_unet, noise_scheduler, anchors_model_range, labels, keys, 4, scale, weight)
    assert (ref.abs() < 0.999).float().mean() > 0.2, "saturated samples would prove little"
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@torch.no_grad()
def _official_conditional_ddim(unet, alphas_cumprod, labels, generators, shape, num_steps, eta, w):
    """CLSP's ``GaussianDiffusionSampler.ddim`` with labels (ddpm.py:200-237), written out: plain DDIM from
    noise on the official timesteps, eps = (1 + w) eps(x, t, y) - w eps(x, t, null), no anchor."""
    steps = np.linspace(-1, len(alphas_cumprod) - 1, num_steps + 1).astype(int)[::-1].tolist()
    null = torch.full_like(labels, CLASSES)  # the official null class is 0 with labels shifted by 1; ours is the last
    x = _draw(generators, shape).double()
    for t, prev in zip(steps[:-1], steps[1:]):
        _draw(generators, shape)  # our sampler's anchor re-noising: drawn, unused without interpolation
        z = _draw(generators, shape).double()
        tt = torch.tensor(t)
        eps = (1 + w) * unet(x.float(), tt, class_labels=labels).sample.double() \
            - w * unet(x.float(), tt, class_labels=null).sample.double()
        a_t = alphas_cumprod[t].double()
        a_prev = alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if prev < 0:
            x = x0  # the official last step returns x_start
            continue
        sigma = eta * ((1 - a_t / a_prev) * (1 - a_prev) / (1 - a_t)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
    return x.float().clamp(-1.0, 1.0)


def test_official_conditional_recipe_samples_as_the_official_code(cond_unet, anchors_model_range) -> None:
    """configs/cifar10/generator_conditional.yaml (guidance 2.8 = 1 + w, interpolation weight 1) is CLSP's
    conditional DDIM with w = 1.8 (generate_synthetic_dataset_conditional.py:102-105)."""
    from pathlib import Path

    from synthpos.config import load_config

    recipe = load_config(Path(__file__).resolve().parents[2] / "configs/cifar10/generator_conditional.yaml").generate
    assert (recipe.interpolation_weight, recipe.guidance_scale, recipe.eta, recipe.sampler) == (1.0, 2.8, 0.1, "ddim")
    # T = 1000 as the official run; beta_end 0.002 keeps an untrained UNet's samples informative. 10 steps keep it fast.
    noise_scheduler = build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=1000, beta_end=0.002))
    labels = torch.tensor([0, 2, 1, 2])
    keys = [(0, 0), (1, 0), (2, 1), (3, 0)]
    ours = clsp_interpolation_sample(
        cond_unet, build_sampler(recipe.sampler, noise_scheduler), anchors_model_range, _gens(keys), num_steps=10,
        eta=recipe.eta, weight=recipe.interpolation_weight, class_labels=labels, guidance_scale=recipe.guidance_scale,
    )
    ref = _official_conditional_ddim(cond_unet, noise_scheduler.alphas_cumprod, labels, _gens(keys),
                                     anchors_model_range.shape[1:], 10, 0.1, w=1.8)
    assert (ref.abs() < 0.999).float().mean() > 0.2, "saturated samples would prove little"
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    # Not the anchors' neighbourhood: the interpolated variant (ours) gives other samples.
    ours_interpolated = clsp_interpolation_sample(
        cond_unet, build_sampler("ddim", noise_scheduler), anchors_model_range, _gens(keys), num_steps=10, eta=0.1,
        weight=0.1, class_labels=labels, guidance_scale=2.8,
    )
    assert (ours_interpolated - ref).abs().max() > 1e-2


def test_official_conditional_unet_layout() -> None:
    """CLSP's conditional UNet: attention after every down ResBlock and in the middle, none in the up blocks."""
    from pathlib import Path

    from synthpos.config import load_config
    from synthpos.generators.clsp import unet_decode, unet_encode

    recipe = load_config(Path(__file__).resolve().parents[2] / "configs/cifar10/generator_conditional.yaml").train_generator.unet
    small = recipe.model_copy(update={"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4, "dropout": 0.0})
    torch.manual_seed(0)
    unet = build_unet(small, 16, 3, num_classes=CLASSES).eval()
    attentions = lambda block: len(getattr(block, "attentions", None) or [])  # noqa: E731
    assert [attentions(b) for b in unet.down_blocks] == [2, 2, 2, 2]  # one per ResBlock: num_res_blocks 2
    assert [attentions(b) for b in unet.up_blocks] == [0, 0, 0, 0]
    assert attentions(unet.mid_block) == 1
    # The symmetric default is unchanged, and the interpolation's encoder/decoder split still equals the forward.
    assert [attentions(b) for b in build_unet(TINY_UNET, 8, 1).up_blocks] == [2, 0]  # layers_per_block + 1 each
    x, t, labels = torch.randn(2, 3, 16, 16), torch.tensor(7), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(unet_decode(unet, *unet_encode(unet, x, t, labels)), unet(x, t, class_labels=labels).sample)
    with pytest.raises(ValueError, match="up_attention_levels"):
        UNetConfig(block_out_channels=[8, 16], norm_num_groups=4, up_attention_levels=[2])


def test_labels_and_guidance_change_the_samples(cond_unet, anchors_model_range) -> None:
    sched = build_sampler("dpmsolver++", make_noise_scheduler(100))
    keys = [(0, 0), (1, 0)]

    def sample(labels, scale):
        return clsp_interpolation_sample(
            cond_unet, sched, anchors_model_range[:2], _gens(keys), num_steps=4, weight=0.1,
            class_labels=torch.tensor(labels), guidance_scale=scale,
        )

    base = sample([0, 1], 1.0)
    assert (sample([2, 2], 1.0) - base).abs().max() > 1e-2
    assert (sample([0, 1], 3.0) - base).abs().max() > 1e-2
    # s = 0 ignores the labels: null class only.
    torch.testing.assert_close(sample([0, 1], 0.0), sample([2, 2], 0.0), atol=1e-6, rtol=0)


def test_guidance_with_k_candidates_per_anchor_and_shared_noise(cond_unet, anchors_model_range) -> None:
    """Each row is predicted under its own anchor's label, batched or alone."""
    sched = build_sampler("dpmsolver++", make_noise_scheduler(100))
    labels = torch.tensor([2, 0])
    keys = [(a, c) for a in (0, 1) for c in range(2)]
    anchor_gens = lambda ids: [torch.Generator().manual_seed(derive_seed(0, a, 7)) for a in ids]  # noqa: E731
    together = clsp_interpolation_sample(
        cond_unet, sched, anchors_model_range[:2], _gens(keys), num_steps=4, weight=0.1, class_labels=labels,
        guidance_scale=2.0, anchor_index=torch.tensor([0, 0, 1, 1]), anchor_generators=anchor_gens([0, 1]),
    )
    for i, (a, c) in enumerate(keys):
        alone = clsp_interpolation_sample(
            cond_unet, sched, anchors_model_range[a: a + 1], _gens([(a, c)]), num_steps=4, weight=0.1,
            class_labels=labels[a: a + 1], guidance_scale=2.0, anchor_generators=anchor_gens([a]),
        )
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)


def test_conditional_unet_needs_labels(cond_unet, anchors_model_range) -> None:
    with pytest.raises(ValueError, match="class-conditional"):
        clsp_interpolation_sample(cond_unet, build_sampler("ddim", make_noise_scheduler(100)), anchors_model_range[:1],
                                  _gens([(0, 0)]), num_steps=2)


# ----------------------------------------------------------------------------- training


def _train_config(**kw) -> TrainGeneratorConfig:
    base = dict(unet=TINY_UNET, num_train_timesteps=50, warmup_steps=0, batch_size=16, max_steps=6, checkpoint_every=100,
                precision="fp32", channels_last=False, class_conditional=True, label_dropout=0.25)
    return TrainGeneratorConfig(**{**base, **kw})


def _labelled_images(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8), rng.integers(0, CLASSES, size=n)


def _record_training_labels(monkeypatch) -> list[torch.Tensor]:
    """The class labels of every training forward, recorded."""
    seen: list[torch.Tensor] = []
    forward = UNet2DModel.forward

    def recording(self, sample, timestep, class_labels=None, **kw):
        if self.training:
            seen.append(class_labels.clone())
        return forward(self, sample, timestep, class_labels=class_labels, **kw)

    monkeypatch.setattr(UNet2DModel, "forward", recording)
    return seen


def test_train_conditional_generator_and_label_dropout(tmp_path, monkeypatch) -> None:
    images, labels = _labelled_images()
    labels[:] = 1  # every image is class 1: a passed label that is not the null class must be 1
    seen = _record_training_labels(monkeypatch)
    model_dir = train_generator(images, _train_config(max_steps=20, batch_size=32), tmp_path / "gen", labels=labels,
                                num_classes=CLASSES, show_progress=False)
    passed = torch.cat(seen)
    assert len(seen) == 20 and passed.shape == (20 * 32,)
    assert set(passed.unique().tolist()) == {1, CLASSES}
    dropped = (passed == CLASSES).float().mean().item()
    # 640 draws at p = 0.25: standard error 0.017; 0.06 is 3.5 of them.
    assert abs(dropped - 0.25) < 0.06, dropped

    config = json.loads((model_dir / "unet" / "config.json").read_text())
    assert config["num_class_embeds"] == CLASSES + 1
    unet, _ = load_generator(model_dir)
    assert num_classes(unet) == CLASSES


def test_label_dropout_zero_never_passes_the_null_class(tmp_path, monkeypatch) -> None:
    images, labels = _labelled_images()
    seen = _record_training_labels(monkeypatch)
    train_generator(images, _train_config(label_dropout=0.0), tmp_path / "gen", labels=labels, show_progress=False)
    passed = torch.cat(seen)
    assert passed.max().item() < CLASSES and len(passed.unique()) == CLASSES


def test_conditional_training_without_labels_raises(tmp_path) -> None:
    images, labels = _labelled_images()
    with pytest.raises(SynthposError, match="no class labels"):
        train_generator(images, _train_config(), tmp_path / "gen", show_progress=False)
    with pytest.raises(SynthposError, match="0..2"):
        train_generator(images, _train_config(), tmp_path / "gen2", labels=np.where(labels == 0, -1, labels),
                        num_classes=CLASSES, show_progress=False)


# ----------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def cond_generator_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cond") / "gen"
    save_pipeline(_conditional_unet(), make_noise_scheduler(50), path)
    return path


SETTINGS = GenerateConfig(candidates=2, num_steps=3, shard_size=4, batch_size=4, precision="fp32", channels_last=False,
                          sampler="dpmsolver++", guidance_scale=2.0)


def _generate(images, labels, generator_dir, path, settings=SETTINGS):
    return generate_store(images, "toy", "train", generator_dir, path, settings, seed=0, device="cpu", show_progress=False,
                          labels=labels)


def test_conditional_store_is_complete_and_follows_the_labels(tmp_path, cond_generator_dir) -> None:
    images, labels = _labelled_images(10)
    store = _generate(images, labels, cond_generator_dir, tmp_path / "store")
    assert store.complete and len(store) == 10 and store[9].shape == (2, 8, 8, 1)
    record = store.manifest["generator"]
    assert record["num_classes"] == CLASSES and record["guidance_scale"] == 2.0 and record["sampler"] == "dpmsolver++"
    # Other labels, other candidates (the store is a function of the labels).
    other = _generate(images, (labels + 1) % CLASSES, cond_generator_dir, tmp_path / "other")
    assert any((store[i] != other[i]).any() for i in range(10))
    # Pretraining reads it as any store.
    assert SyntheticStore.open(tmp_path / "store", "toy", "train", images).complete


def test_conditional_store_without_labels_raises(tmp_path, cond_generator_dir) -> None:
    images, labels = _labelled_images(10)
    with pytest.raises(SynthposError, match="class-conditional .*no class labels"):
        _generate(images, None, cond_generator_dir, tmp_path / "store")
    assert not (tmp_path / "store").exists()
    with pytest.raises(SynthposError, match="classes 0..2"):
        _generate(images, np.full(10, CLASSES), cond_generator_dir, tmp_path / "store")


def test_guidance_on_an_unconditional_generator_raises(tmp_path, generator_dir, anchor_images) -> None:
    with pytest.raises(SynthposError, match="guidance_scale=2.0 needs a conditional generator"):
        _generate(anchor_images, None, generator_dir, tmp_path / "store", SETTINGS)


def test_generate_stage_passes_the_dataset_labels(tmp_path, cond_generator_dir) -> None:
    """Stage 2 from a run config on real Fashion-MNIST (10 classes, resized to 8 px)."""
    from synthpos.config import load_config
    from synthpos.generators.generate import generate_stage

    torch.manual_seed(0)
    ten = build_unet(TINY_UNET, sample_size=8, channels=1, num_classes=10).eval()
    save_pipeline(ten, make_noise_scheduler(50), tmp_path / "gen10")

    def config(generator):
        return load_config(None, [f"run_dir={tmp_path / generator.name}", "data.subset=6", "data.image_size=8",
                                  f"generate.generator={generator}", "generate.candidates=1", "generate.num_steps=2",
                                  "generate.sampler=dpmsolver++", "generate.precision=fp32"])

    store = generate_stage(config(tmp_path / "gen10"), show_progress=False)
    assert store.complete and len(store) == 6
    # A 3-class generator cannot follow Fashion-MNIST's 10 labels: the stage says so.
    with pytest.raises(SynthposError, match=r"labels run 0\.\.\d but the generator knows classes 0\.\.2"):
        generate_stage(config(cond_generator_dir), show_progress=False)
