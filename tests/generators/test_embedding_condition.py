"""The DDPM conditioned on each image's own embedding: training, the saved folder, guided sampling, no labels.

The guidance reference calls the plain ``unet(x, t, class_labels=projected)`` (mid-block hooks for the
interpolated bottleneck) and combines the predictions by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from synthpos.config import BackboneConfig, EmbeddingConditionConfig, GenerateConfig, TrainGeneratorConfig, UNetConfig
from synthpos.errors import SynthposError
from synthpos.generators.registry import build_generator
from synthpos.generators.clsp import derive_seed, embedding_conditioned
from synthpos.generators.clsp_generator import generator_id
from synthpos.generators.diffusion import load_generator, train_generator
from synthpos.generators.embedding_condition import (
    CONDITION_DIR,
    EmbeddingCondition,
    load_condition_data,
    nearest_neighbours,
)
from synthpos.models.backbones import build_backbone, save_backbone

TINY_UNET = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)
MEAN, STD = (0.3,), (0.3,)


def _images(n: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def _encoder(tmp: Path) -> Path:
    torch.manual_seed(0)
    config = BackboneConfig(name="convnet", width=4)
    path = tmp / "encoder" / "backbone.pt"
    save_backbone(build_backbone(config, 1), config, 1, path)
    return path


def _train(tmp: Path, images: np.ndarray, encoder: Path, steps: int = 3, name: str = "gen", **condition) -> Path:
    spec = EmbeddingConditionConfig(encoder=encoder, **condition)
    config = TrainGeneratorConfig(unet=TINY_UNET, num_train_timesteps=50, batch_size=8, max_steps=steps, warmup_steps=0,
                                  checkpoint_every=steps, precision="fp32", channels_last=False, condition=spec)
    data = load_condition_data(encoder, images, 8, MEAN, STD, spec.neighbours if spec.neighbour_prob else None, tmp / "emb")
    return train_generator(images, config, tmp / name, seed=0, device="cpu", show_progress=False, condition=data)


def _settings(**kw) -> GenerateConfig:
    return GenerateConfig(**{"candidates": 2, "num_steps": 4, "precision": "fp32", "channels_last": False,
                             "interpolation_weight": 0.5, **kw})


def test_nearest_neighbours_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1)[:, :3]
    assert np.array_equal(nearest_neighbours(x, 3, chunk=7), expected)


def test_training_writes_a_folder_that_samples_alone(tmp_path: Path) -> None:
    images = _images()
    model_dir = _train(tmp_path, images, _encoder(tmp_path), neighbour_prob=0.5, neighbours=3)
    unet, _ = load_generator(model_dir)
    assert embedding_conditioned(unet) and unet.config.resnet_time_scale_shift == "scale_shift"
    condition = EmbeddingCondition.load(model_dir)
    emb = condition.embed(images[:4])
    assert emb.shape == (4, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The folder is self-contained: delete the original encoder and sample.
    (tmp_path / "encoder" / "backbone.pt").unlink()
    gen = build_generator("clsp", model_dir, _settings(guidance_scale=2.0), seed=0, device="cpu")
    out = gen.generate(images[:3], first_index=5)
    assert out.shape == (3, 2, 8, 8, 1) and out.dtype == np.uint8
    # Per-candidate seeding: the same anchor at the same index gives the same bytes in another batch.
    again = gen.generate(images[1:3], first_index=6)
    assert np.array_equal(out[1:], again)
    record = gen.record()
    assert record["guidance_scale"] == 2.0 and record["encoder_sha256"] == condition.encoder_sha256


def test_the_projection_and_encoder_are_part_of_the_generator_id(tmp_path: Path) -> None:
    model_dir = _train(tmp_path, _images(), _encoder(tmp_path))
    before = generator_id(model_dir)
    weights = model_dir / CONDITION_DIR / "encoder" / "backbone.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert generator_id(model_dir) != before


def test_guided_sampling_matches_a_hand_written_reference(tmp_path: Path) -> None:
    images = _images()
    model_dir = _train(tmp_path, images, _encoder(tmp_path))
    with torch.no_grad():
        _check_guided_sampling(model_dir, images)


def _check_guided_sampling(model_dir: Path, images: np.ndarray) -> None:
    unet, noise_scheduler = load_generator(model_dir)
    condition = EmbeddingCondition.load(model_dir)
    # Scale the projection so the condition clearly matters in an untrained model.
    for p in condition.projection.parameters():
        p.mul_(5.0)
    anchors_u8 = images[:2]
    cond = condition.project(torch.from_numpy(condition.embed(anchors_u8)))
    null = condition.null()
    scale, w, steps = 2.5, 0.5, 4
    gen = build_generator("clsp", model_dir, _settings(guidance_scale=scale, interpolation_weight=w, sampler="ddim", eta=0.0,
                                             num_steps=steps, candidates=1), seed=0, device="cpu")
    gen.condition = condition  # the scaled projection
    got = gen.generate(anchors_u8, first_index=0)

    anchors = torch.from_numpy(anchors_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    sched = DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True,
                                      clip_sample=False)
    sched.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(derive_seed(0, a, 0)) for a in range(2)]
    draw = lambda: torch.stack([torch.randn((1, 8, 8), generator=g) for g in gens])  # noqa: E731
    x = draw()

    def eps(x, t, c, noisy_anchor):
        captured = {}
        h = unet.mid_block.register_forward_hook(lambda m, a, out: captured.setdefault("h", out.clone()))
        unet(noisy_anchor, t, class_labels=c)
        h.remove()
        h = unet.mid_block.register_forward_hook(lambda m, a, out: w * out + (1 - w) * captured["h"])
        out = unet(x, t, class_labels=c).sample
        h.remove()
        return out

    for t in sched.timesteps:
        a_t = noise_scheduler.alphas_cumprod[int(t)]
        noisy = a_t.sqrt() * anchors + (1 - a_t).sqrt() * draw()
        e_null, e_cond = eps(x, t, null.expand_as(cond), noisy), eps(x, t, cond, noisy)
        draw()  # the DDIM variance noise, drawn (and unused at eta 0) as the sampler draws it
        x = sched.step(e_null + scale * (e_cond - e_null), t, x, eta=0.0).prev_sample
    expected = x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(got[:, 0].astype(int) - expected.astype(int)).max() <= 1


def test_labels_never_reach_the_generator(tmp_path: Path) -> None:
    """The condition comes from the images alone: training and sampling take no labels."""
    images = _images()
    encoder = _encoder(tmp_path)
    a = _train(tmp_path, images, encoder, name="a", neighbour_prob=0.5, neighbours=3)
    b = _train(tmp_path, images, encoder, name="b", neighbour_prob=0.5, neighbours=3)
    assert generator_id(a) == generator_id(b)
    gen = build_generator("clsp", a, _settings(), seed=0, device="cpu")
    labels = np.arange(4) % 3
    assert np.array_equal(gen.generate(images[:4], 0, labels), gen.generate(images[:4], 0, labels[::-1].copy()))
    assert np.array_equal(gen.generate(images[:4], 0, None), gen.generate(images[:4], 0, labels))


def test_a_condition_folder_missing_its_encoder_is_one_clear_error(tmp_path: Path) -> None:
    model_dir = _train(tmp_path, _images(), _encoder(tmp_path))
    (model_dir / CONDITION_DIR / "encoder" / "backbone.pt").unlink()
    with pytest.raises(SynthposError, match="condition/encoder/backbone.pt is missing"):
        build_generator("clsp", model_dir, _settings(), seed=0, device="cpu")


def test_class_labels_and_an_embedding_condition_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        TrainGeneratorConfig(class_conditional=True, condition=EmbeddingConditionConfig(encoder=tmp_path / "x.pt"))


def test_condition_noise_gives_each_candidate_its_own_condition_and_stays_deterministic(tmp_path: Path) -> None:
    images = _images()
    model_dir = _train(tmp_path, images, _encoder(tmp_path))
    plain = build_generator("clsp", model_dir, _settings(), seed=0, device="cpu")
    noisy = build_generator("clsp", model_dir, _settings(condition_noise=0.5), seed=0, device="cpu")
    with torch.no_grad():
        for p in (*plain.condition.projection.parameters(), *noisy.condition.projection.parameters()):
            p.mul_(5.0)  # an untrained projection is too weak to show the condition
    base = torch.from_numpy(plain.condition.embed(images[:2]))
    per_row = noisy._conditions(None, base, 0, 2, range(7, 9))
    assert per_row.shape == (4, noisy.condition.projection.time_embed_dim)  # K = 2 rows per anchor
    assert not torch.allclose(per_row[0], per_row[1])  # two candidates of one anchor differ
    # The same candidate's condition whatever the batch: anchor 8 alone gives rows 2-3 again.
    alone = noisy._conditions(None, base[1:], 0, 1, range(8, 9))
    assert torch.allclose(alone, per_row[2:])
    out = noisy.generate(images[:2], first_index=7)
    assert np.array_equal(out[1:], noisy.generate(images[1:2], first_index=8))
    assert not np.array_equal(out, plain.generate(images[:2], first_index=7))
    assert noisy.record()["condition_noise"] == 0.5 and noisy.record() != plain.record()
    # With shared anchor noise, per-candidate conditions replay the anchor's shared draws row by row.
    shared = build_generator("clsp", model_dir, _settings(condition_noise=0.5, share_anchor_noise=True), seed=0, device="cpu")
    shared.condition = noisy.condition
    assert np.array_equal(shared.generate(images[:2], 7)[1:], shared.generate(images[1:2], 8))


@pytest.mark.parametrize("dial", ["condition_noise", "neighbour_blend"])
def test_embedding_dials_need_an_embedding_conditioned_generator(tmp_path: Path, tiny_unet, dial: str) -> None:
    from synthpos.generators.diffusion import build_noise_scheduler, save_pipeline

    save_pipeline(tiny_unet, build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=50)), tmp_path / "plain")
    with pytest.raises(SynthposError, match=f"generate.clsp.{dial}=0.1 needs an embedding-conditioned generator"):
        build_generator("clsp", tmp_path / "plain", _settings(clsp={dial: 0.1}), seed=0, device="cpu")


def _blending(model_dir: Path, blend: float, neighbours: int, **kw):
    gen = build_generator("clsp", model_dir, _settings(clsp={"neighbour_blend": blend, "neighbours": neighbours, **kw}),
                          seed=0, device="cpu")
    with torch.no_grad():
        for p in gen.condition.projection.parameters():
            p.mul_(5.0)  # an untrained projection is too weak to show the condition
    return gen


def test_neighbour_blend_conditions_each_candidate_on_its_anchor_blended_with_a_neighbour(tmp_path: Path) -> None:
    """Closed form: candidate c of anchor a is conditioned on normalise((1 - b) e_a + b e_n), n one of a's nearest
    other images (brute-force cosine over the split), drawn per candidate; the same in any batch; no label read."""
    images = _images()
    model_dir = _train(tmp_path, images, _encoder(tmp_path))
    gen = _blending(model_dir, 0.4, 3)
    with pytest.raises(RuntimeError, match="call prepare"):
        gen.generate(images[:2], 0)
    gen.prepare(images, None, tmp_path / "store")
    emb = gen.condition.embed(images)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    near = np.argsort(-sim, axis=1)[:, :3]
    rows = gen._conditions(None, torch.from_numpy(emb[7:9]), 0, 2, range(7, 9))
    assert rows.shape == (4, gen.condition.projection.time_embed_dim)
    picked = []
    for row, anchor in zip(rows, [7, 7, 8, 8]):
        blends = [emb[anchor] * 0.6 + emb[j] * 0.4 for j in near[anchor]]
        options = gen.condition.project(torch.from_numpy(np.stack([b / np.linalg.norm(b) for b in blends])))
        match = [j for j, option in zip(near[anchor], options) if torch.allclose(row, option, atol=1e-5)]
        assert len(match) == 1, anchor
        picked.append(match[0])
    assert gen._conditions(None, torch.from_numpy(emb[8:9]), 0, 1, range(8, 9)).allclose(rows[2:])
    # Drawn per candidate from its own stream: over the split, the ranks of the neighbours picked vary.
    every = gen._conditions(None, torch.from_numpy(emb), 0, 24, range(24)).reshape(24, 2, -1)
    ranks = np.array([[next(r for r, j in enumerate(near[a]) if torch.allclose(every[a, c], gen.condition.project(
        torch.from_numpy((0.6 * emb[a] + 0.4 * emb[j])[None] / np.linalg.norm(0.6 * emb[a] + 0.4 * emb[j])))[0],
        atol=1e-5)) for c in range(2)] for a in range(24)])
    assert len(set(ranks[:, 0])) == 3 and (ranks[:, 0] != ranks[:, 1]).any()
    # b = 1 with one neighbour: exactly the nearest image's own embedding.
    whole = _blending(model_dir, 1.0, 1)
    whole.prepare(images, None, tmp_path / "store1")
    expected = whole.condition.project(torch.from_numpy(emb[near[[7, 7, 8, 8], 0]]))
    assert torch.allclose(whole._conditions(None, torch.from_numpy(emb[7:9]), 0, 2, range(7, 9)), expected, atol=1e-5)
    out = gen.generate(images[7:9], 7)
    assert np.array_equal(out[1:], gen.generate(images[8:9], 8))
    assert np.array_equal(out, gen.generate(images[7:9], 7, np.array([2, 0])))  # labels are not read
    plain = build_generator("clsp", model_dir, _settings(), seed=0, device="cpu")
    assert "neighbour_blend" not in plain.record()  # stores made before the dial stay current
    assert gen.record()["neighbour_blend"] == 0.4 and gen.record()["neighbours"] == 3


def test_neighbour_blend_keeps_its_neighbours_in_the_store_and_refuses_others(tmp_path: Path) -> None:
    images = _images()
    model_dir = _train(tmp_path, images, _encoder(tmp_path))
    store = tmp_path / "store"
    _blending(model_dir, 0.5, 3).prepare(images, None, store)
    saved = json.loads((store / "condition_neighbours.json").read_text())
    assert np.asarray(saved["neighbours"]).shape == (24, 3)
    _blending(model_dir, 0.5, 3).prepare(images, None, store)  # the same settings read it back
    with pytest.raises(SynthposError, match="another encoder, data or generate.clsp.neighbours"):
        _blending(model_dir, 0.5, 4).prepare(images, None, store)
    with pytest.raises(SynthposError, match="another encoder, data or generate.clsp.neighbours"):
        _blending(model_dir, 0.5, 3).prepare(images[::-1].copy(), None, store)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{}")
    with pytest.raises(SynthposError, match="has no condition_neighbours.json"):
        _blending(model_dir, 0.5, 3).prepare(images, None, tmp_path / "old")
    with pytest.raises(SynthposError, match="neighbours=3 needs more than 3 training images, but the split has 3"):
        _blending(model_dir, 0.5, 3).prepare(images[:3], None, tmp_path / "small")
