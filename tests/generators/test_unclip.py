"""Stable unCLIP variations through the real diffusers pipeline, on tiny random components saved to disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from synthpos.config import GenerateConfig  # noqa: E402
from synthpos.errors import SynthposError  # noqa: E402
from synthpos.generators.clsp import derive_seed  # noqa: E402
from synthpos.generators.adaptive_noise import AdaptiveNoiseSettings as AdaptiveNoiseConfig  # noqa: E402
from synthpos.generators.registry import build_generator  # noqa: E402
from synthpos.generators.unclip import FIT_FILE, UnCLIPGenerator, check_unclip_layout, variations_to_images  # noqa: E402
from synthpos.generators.unclip import UnCLIPSettings as UnCLIPConfig  # noqa: E402

EMBED = 16  # CLIP width = projection = normaliser size
UNCLIP = UnCLIPConfig(num_steps=4, guidance_scale=3.0)
SETTINGS = GenerateConfig(kind="unclip", candidates=2, batch_size=3, precision="fp32", unclip=UNCLIP)


def build_tiny_unclip(path: Path, variant: str | None = None) -> Path:
    """A randomly initialised StableUnCLIPImg2ImgPipeline, saved as the real folder layout.

    The shapes follow diffusers' tests (tests/pipelines/stable_unclip/test_stable_unclip_img2img.py),
    smaller: 32 px CLIP input in 8 px patches (a 4x4 grid), an 8x8x4 latent UNet and a
    two-level VAE, so images come out at 16x16.
    """
    torch.manual_seed(0)
    tok = path.parent / f"{path.name}-vocab"
    tok.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=EMBED, projection_dim=EMBED, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, intermediate_size=32, patch_size=8)).eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED).eval(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=8),
        text_encoder=CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=EMBED, projection_dim=EMBED,
            intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=len(vocab),
            max_position_embeddings=8)).eval(),
        unet=UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16), norm_num_groups=4,
            attention_head_dim=(2, 4), class_embed_type="projection", projection_class_embeddings_input_dim=2 * EMBED,
            cross_attention_dim=EMBED, layers_per_block=1, upcast_attention=True, use_linear_projection=True).eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                          sample_size=16).eval(),
    )
    pipe.save_pretrained(path, variant=variant)
    return path


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory) -> Path:
    return build_tiny_unclip(tmp_path_factory.mktemp("unclip") / "model")


@pytest.fixture(scope="module")
def grey_anchors() -> np.ndarray:
    """Five grey anchors with a bright centred blob of growing size. Shape: (5, 8, 8, 1)."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 60, size=(5, 8, 8, 1), dtype=np.uint8)
    for i, image in enumerate(images):
        image[3 - i // 2: 5 + i // 2, 3 - i // 2: 5 + i // 2] = 230
    return images


@pytest.fixture(scope="module")
def generator(unclip_dir) -> UnCLIPGenerator:
    return build_generator("unclip", unclip_dir, SETTINGS, seed=0, device="cpu")


def _settings(**unclip) -> GenerateConfig:
    return SETTINGS.model_copy(update={"unclip": UNCLIP.model_copy(update=unclip)})


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float kernels that differ with the batch size: at most one grey level, rarely."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())


def direct_variations(pipe, anchor: np.ndarray, index: int, candidates: int, noise_level: int, seed: int = 0,
                      prompt: str | None = None) -> np.ndarray:
    """What the pipeline makes of the anchor itself as a PIL image (it encodes the image on its own)."""
    image = Image.fromarray(anchor[..., 0] if anchor.shape[-1] == 1 else anchor).convert("RGB")
    out = pipe(
        image=[image] * candidates,
        **({} if prompt is None else {"prompt": [prompt] * candidates}),
        noise_level=noise_level,
        num_inference_steps=UNCLIP.num_steps,
        guidance_scale=UNCLIP.guidance_scale,
        eta=UNCLIP.eta,
        generator=[torch.Generator().manual_seed(derive_seed(seed, index, v)) for v in range(candidates)],
        output_type="pt",
    ).images
    return variations_to_images(out, anchor.shape[:2], anchor.shape[-1])


# ----------------------------------------------------------------------------- the folder


def test_layout_errors_name_what_is_missing_and_the_expected_layout(tmp_path, unclip_dir) -> None:
    with pytest.raises(SynthposError, match="does not exist.*stable-diffusion-2-1-unclip-small"):
        check_unclip_layout(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(unclip_dir, broken)
    shutil.rmtree(broken / "unet")
    (broken / "vae" / "config.json").unlink()
    with pytest.raises(SynthposError) as err:
        build_generator("unclip", broken, SETTINGS, seed=0, device="cpu")
    message = str(err.value)
    assert "unet/" in message and "vae/config.json" in message and "image_noising_scheduler" in message
    assert "huggingface-cli download stabilityai/stable-diffusion-2-1-unclip-small" in message and "\n" not in message
    # The tokenizer may come as tokenizer.json (save_pretrained) or vocab.json + merges.txt (the Hub's files).
    tokenizer_only = tmp_path / "tokenizer_files"
    shutil.copytree(unclip_dir, tokenizer_only)
    (tokenizer_only / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(SynthposError, match=r"missing tokenizer/vocab.json \+ merges.txt \(or tokenizer.json\)"):
        check_unclip_layout(tokenizer_only)
    for name in ("vocab.json", "merges.txt"):
        (tokenizer_only / "tokenizer" / name).write_text("{}")
    assert check_unclip_layout(tokenizer_only) is None


def test_without_transformers_the_registry_says_what_to_install(monkeypatch, unclip_dir) -> None:
    import importlib.util
    import sys

    from synthpos.generators import registry

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "transformers" else find_spec(name, *args))
    monkeypatch.delitem(sys.modules, "synthpos.generators.unclip")
    # The registry as a fresh process without transformers finds it (the other modules stay imported).
    monkeypatch.setattr(registry.GENERATORS, "_entries", {k: v for k, v in registry.GENERATORS.items() if k != "unclip"})
    monkeypatch.setattr(registry.GENERATORS, "_loaded", False)
    monkeypatch.setattr(registry.GENERATORS, "not_loaded", {})
    with pytest.raises(SynthposError, match=r"generate.kind='unclip' is not a known generator; known: clsp.*"
                                            r"synthpos.generators.unclip is not loaded .*pip install 'synthpos\[unclip\]'") as err:
        registry.build_generator("unclip", unclip_dir, SETTINGS, 0, "cpu")
    assert "\n" not in str(err.value)


def test_the_registry_builds_it_and_the_recipe_selects_it(unclip_dir) -> None:
    from synthpos.config import load_config
    from synthpos.generators.registry import build_generator

    assert isinstance(build_generator("unclip", unclip_dir, SETTINGS, 0, "cpu"), UnCLIPGenerator)
    recipe = Path(__file__).parents[2] / "configs" / "fashion_mnist" / "unclip_simclr.yaml"
    config = load_config(recipe, ["generate.unclip.adaptive_noise.enabled=true"])
    assert config.generate.kind == "unclip" and config.generate.candidates == 10
    assert (config.generate.unclip.num_steps, config.generate.unclip.eta) == (10, 0.0)
    assert config.generate.unclip.adaptive_noise.enabled and config.pretrain.synthetic.mode == "replace"


def test_missing_weights_are_one_clear_error(tmp_path, unclip_dir) -> None:
    broken = tmp_path / "no_weights"
    shutil.copytree(unclip_dir, broken)
    for weights in [*(broken / "unet").glob("*.safetensors"), *(broken / "text_encoder").glob("*.safetensors")]:
        weights.unlink()
    with pytest.raises(SynthposError, match=r"no weights in text_encoder/, unet/.*download the model again"):
        build_generator("unclip", broken, SETTINGS, seed=0, device="cpu")


def test_half_precision_download_loads_as_the_fp16_variant(tmp_path, unclip_dir, grey_anchors) -> None:
    half = build_tiny_unclip(tmp_path / "half", variant="fp16")
    assert list((half / "unet").glob("*.safetensors"))[0].name == "diffusion_pytorch_model.fp16.safetensors"
    assert check_unclip_layout(unclip_dir) is None and check_unclip_layout(half) == "fp16"
    out = build_generator("unclip", half, SETTINGS, seed=0, device="cpu").generate(grey_anchors[:1], 0)
    assert out.shape == (1, 2, 8, 8, 1)


def test_a_corrupt_weights_file_is_a_clear_error(tmp_path, unclip_dir, grey_anchors) -> None:
    broken = tmp_path / "corrupt"
    shutil.copytree(unclip_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    generator = build_generator("unclip", broken, SETTINGS, seed=0, device="cpu")  # cheap: nothing loads yet
    with pytest.raises(SynthposError, match="could not load the unCLIP pipeline"):
        generator.generate(grey_anchors[:1], 0)
    # Through stage 2 it fails before the store is created, so fixing the weights is enough to go on.
    from synthpos.generators.generate import generate_store

    with pytest.raises(SynthposError, match="could not load the unCLIP pipeline"):
        generate_store(grey_anchors, "toy", "train", broken, tmp_path / "store", SETTINGS, seed=0, device="cpu", show_progress=False)
    assert not (tmp_path / "store").exists()


# ----------------------------------------------------------------------------- candidates


def test_candidates_have_the_dataset_shape_and_depend_on_anchor_and_candidate(generator, grey_anchors) -> None:
    out = generator.generate(grey_anchors[:3], first_index=0)
    assert out.shape == (3, 2, 8, 8, 1) and out.dtype == np.uint8
    assert (out[:, 0] != out[:, 1]).any(axis=(1, 2, 3)).all()  # each candidate has its own noise
    assert (generator.generate(grey_anchors[:1], first_index=7) != out[:1]).any()  # the anchor index enters the seed
    np.testing.assert_array_equal(generator.generate(grey_anchors[:3], first_index=0), out)  # and nothing else does


@pytest.mark.slow
def test_a_candidate_does_not_depend_on_batch_size_or_shard(unclip_dir, generator, grey_anchors) -> None:
    reference = generator.generate(grey_anchors, first_index=0)
    for batch_size in (1, 10):
        other = build_generator("unclip", unclip_dir, SETTINGS.model_copy(update={"batch_size": batch_size}), seed=0, device="cpu")
        _close(other.generate(grey_anchors, first_index=0), reference)
    # Shards: anchors 2..4 made on their own, at their dataset index.
    _close(generator.generate(grey_anchors[2:], first_index=2), reference[2:])


def test_candidates_are_the_pipelines_own_variations_of_the_anchor(generator, grey_anchors) -> None:
    """Encoding once and passing the embedding gives what the pipeline makes from the image, seed for seed."""
    out = generator.generate(grey_anchors, first_index=10)
    for a in (0, 4):
        _close(out[a], direct_variations(generator.pipeline, grey_anchors[a], 10 + a, 2, noise_level=0))


def test_the_prompt_reaches_the_pipeline(unclip_dir, generator, grey_anchors) -> None:
    # GenView passes a fixed text prompt (generate_image_variations_noiselevels.py:77); Ayromlou et al. none.
    one = _settings(prompt="a photo").model_copy(update={"candidates": 1})
    prompted = build_generator("unclip", unclip_dir, one, seed=0, device="cpu")
    out = prompted.generate(grey_anchors[:1], first_index=0)
    _close(out[0], direct_variations(prompted.pipeline, grey_anchors[0], 0, 1, noise_level=0, prompt="a photo"))
    # The prompt matters (so the equality above could not hold by accident).
    assert np.abs(out[0].astype(int) - direct_variations(prompted.pipeline, grey_anchors[0], 0, 1, noise_level=0)).max() > 1
    assert prompted.record()["prompt"] == "a photo" and "prompt" not in generator.record()


def test_rgb_anchors_and_the_configured_schedule(unclip_dir) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 12, 10, 3), dtype=np.uint8)
    generator = build_generator("unclip", unclip_dir, _settings(image_size=24), seed=1, device="cpu")
    out = generator.generate(rgb, 0)
    assert out.shape == (2, 2, 12, 10, 3)
    assert not (out[..., 0] == out[..., 1]).all()  # colour, not grey
    scheduler = generator.pipeline.scheduler
    assert isinstance(scheduler, DDIMScheduler)
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    plain = build_generator("unclip", unclip_dir, _settings(trailing_zero_snr=False), seed=1, device="cpu").pipeline.scheduler
    assert plain.config.timestep_spacing == "leading" and not plain.config.rescale_betas_zero_snr


def test_bf16_runs_and_is_recorded(unclip_dir, grey_anchors) -> None:
    from synthpos.precision import bf16_blocked

    if why := bf16_blocked(torch.device("cpu")):  # torch's bf16 attention fails there (synthpos.precision)
        pytest.skip(why)
    generator = build_generator("unclip", unclip_dir, SETTINGS.model_copy(update={"precision": "bf16"}), seed=0,
                                device="cpu")
    out = generator.generate(grey_anchors[:1], 0)
    assert out.shape == (1, 2, 8, 8, 1)
    assert generator.pipeline.unet.dtype == torch.bfloat16 and generator.record()["precision"] == "bf16"


def test_progress_bar_counts_candidates(generator, grey_anchors) -> None:
    counted: list[int] = []

    class Bar:
        def update(self, count: int) -> None:
            counted.append(count)

    generator.generate(grey_anchors[:3], 0, bar=Bar())
    assert sum(counted) == 6 and max(counted) <= SETTINGS.batch_size


# ----------------------------------------------------------------------------- adaptive noise


def _patch_tokens(unclip_dir: Path, anchors: np.ndarray) -> np.ndarray:
    """The encoder's patch tokens after its final LayerNorm, computed with transformers directly."""
    processor = CLIPImageProcessor.from_pretrained(unclip_dir / "feature_extractor")
    encoder = CLIPVisionModelWithProjection.from_pretrained(unclip_dir / "image_encoder").eval()
    pixels = processor(images=[Image.fromarray(a[..., 0]).convert("RGB") for a in anchors], return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden = encoder(pixels).last_hidden_state
        return encoder.vision_model.post_layernorm(hidden[:, 1:]).numpy()


@pytest.mark.slow
def test_adaptive_noise_levels_reach_the_pipeline(tmp_path, unclip_dir, grey_anchors, monkeypatch) -> None:
    adaptive = AdaptiveNoiseConfig(enabled=True, fit_images=4)
    first = build_generator("unclip", unclip_dir, _settings(adaptive_noise=adaptive), seed=0, device="cpu")
    first.prepare(grey_anchors, None, tmp_path)
    fit = json.loads((tmp_path / FIT_FILE).read_text())
    assert fit["made_with"]["fit_images"] == 4 and len(fit["component"]) == EMBED
    # The ratio from the saved fit, written plainly.
    tokens = _patch_tokens(unclip_dir, grey_anchors)
    scores = fit["sign"] * ((tokens - np.array(fit["mean"])) @ np.array(fit["component"]))
    ratios = (scores > fit["threshold"]).mean(axis=1)
    assert len(set(ratios)) > 1
    # Bins at the median ratio split the anchors over two levels (same fit settings: the saved fit is reused).
    cut = float(np.median(ratios))
    settings = _settings(adaptive_noise=adaptive.model_copy(update={"bins": [cut], "levels": [50, 300]}))
    generator = build_generator("unclip", unclip_dir, settings, seed=0, device="cpu")
    generator.prepare(grey_anchors, None, tmp_path)
    expected = np.where(ratios >= cut, 300, 50)
    assert set(expected) == {50, 300}

    calls: list[tuple[int, int]] = []
    original = StableUnCLIPImg2ImgPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append((kwargs["noise_level"], len(kwargs["prompt"])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableUnCLIPImg2ImgPipeline, "__call__", spy)
    out = generator.generate(grey_anchors, first_index=0)
    rows = {level: sum(n for lv, n in calls if lv == level) for level in (50, 300)}
    assert rows == {level: 2 * int((expected == level).sum()) for level in (50, 300)}
    monkeypatch.setattr(StableUnCLIPImg2ImgPipeline, "__call__", original)
    for a in range(len(grey_anchors)):
        _close(out[a], direct_variations(generator.pipeline, grey_anchors[a], a, 2, noise_level=int(expected[a])))
    # The level matters: the other level gives other images.
    a = int(np.argmax(expected == 300))
    wrong = direct_variations(generator.pipeline, grey_anchors[a], a, 2, noise_level=50)
    assert np.abs(out[a].astype(int) - wrong).max() > 1


def test_a_saved_fit_is_reused_and_a_different_one_refused(tmp_path, unclip_dir, grey_anchors) -> None:
    adaptive = AdaptiveNoiseConfig(enabled=True, fit_images=3)
    generator = build_generator("unclip", unclip_dir, _settings(adaptive_noise=adaptive), seed=0, device="cpu")
    record = generator.record()  # `synthpos run` compares records before anything is prepared
    assert record["noise"] == {"adaptive": {"bins": [0.2, 0.4, 0.6, 0.8], "levels": [0, 100, 200, 300, 400],
                                            "fit_images": 3, "foreground_share": 0.6}}
    generator.prepare(grey_anchors, None, tmp_path)
    saved = (tmp_path / FIT_FILE).read_bytes()
    assert generator.record() == record
    again = build_generator("unclip", unclip_dir, _settings(adaptive_noise=adaptive), seed=0, device="cpu")
    (tmp_path / "manifest.json").write_text("{}")  # the store exists: a resumed run
    again.prepare(grey_anchors, None, tmp_path)
    assert (tmp_path / FIT_FILE).read_bytes() == saved and again.record() == record
    assert again._pipe is None  # reusing the fit of an existing store loads nothing
    for changed, seed in ((adaptive.model_copy(update={"foreground_share": 0.3}), 0), (adaptive, 1)):
        other = build_generator("unclip", unclip_dir, _settings(adaptive_noise=changed), seed=seed, device="cpu")
        with pytest.raises(SynthposError, match="fitted with other data"):
            other.prepare(grey_anchors, None, tmp_path)
    with pytest.raises(SynthposError, match="fitted with other data"):
        again.prepare(255 - grey_anchors, None, tmp_path)
    # A store whose fit is gone is not refitted behind the shards' back.
    (tmp_path / FIT_FILE).unlink()
    with pytest.raises(SynthposError, match="has no adaptive_noise.json"):
        again.prepare(grey_anchors, None, tmp_path)


# ----------------------------------------------------------------------------- record and checks


def test_record_says_what_made_the_candidates(tmp_path, unclip_dir, generator) -> None:
    record = generator.record()
    assert record == {
        "kind": "unclip", "weights_sha256": record["weights_sha256"], "variant": None,
        "scheduler": "ddim_trailing_zero_snr", "num_steps": 4, "eta": 0.0, "guidance_scale": 3.0, "image_size": 16,
        "noise": {"noise_level": 0}, "seed": 0, "precision": "fp32",
    }
    json.dumps(record)
    assert build_generator("unclip", unclip_dir, _settings(num_steps=5), seed=0, device="cpu").record()["num_steps"] == 5
    assert build_generator("unclip", unclip_dir, SETTINGS, seed=3, device="cpu").record()["seed"] == 3
    # Other weights (one byte in the UNet) are another generator.
    other = tmp_path / "other"
    shutil.copytree(unclip_dir, other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert build_generator("unclip", other, SETTINGS, seed=0, device="cpu").record()["weights_sha256"] != record["weights_sha256"]


def test_bad_images_and_noise_levels_are_refused(unclip_dir, generator) -> None:
    with pytest.raises(SynthposError, match="uint8 grey or RGB"):
        generator.check_images(np.zeros((2, 8, 8, 1), dtype=np.float32))
    with pytest.raises(SynthposError, match="uint8 grey or RGB"):
        generator.check_images(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(SynthposError, match="below 1000"):
        build_generator("unclip", unclip_dir, _settings(noise_level=1000), seed=0, device="cpu")
    with pytest.raises(SynthposError, match="below 1000"):
        adaptive = AdaptiveNoiseConfig(enabled=True, bins=[0.5], levels=[0, 1200])
        build_generator("unclip", unclip_dir, _settings(adaptive_noise=adaptive), seed=0, device="cpu")


def test_variations_to_images_matches_pil() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    as_uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    # Same size: only the conversion.
    np.testing.assert_array_equal(variations_to_images(images, (16, 16), 3), as_uint8)
    grey = variations_to_images(images, (16, 16), 1)[..., 0]
    pil_grey = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in as_uint8])
    assert np.abs(grey.astype(int) - pil_grey).max() <= 1
    # Downsizing is antialiased like PIL's bilinear (which quantises first: within two levels).
    small = variations_to_images(images, (8, 8), 3)
    pil_small = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BILINEAR)) for im in as_uint8])
    assert np.abs(small.astype(int) - pil_small).max() <= 2
    plain_average = as_uint8.reshape(2, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    assert np.abs(small - plain_average).mean() < np.abs(as_uint8[:, ::2, ::2] - plain_average).mean()


# ----------------------------------------------------------------------------- end to end: stage 2 into a store


def _shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("shard-*.npy"))}


@pytest.mark.slow
def test_generate_store_fills_a_store_that_pretraining_reads(tmp_path, unclip_dir, grey_anchors) -> None:
    from synthpos.data.datasets import ImageDataset
    from synthpos.data.synthetic_store import SyntheticStore
    from synthpos.generators.generate import generate_store
    from synthpos.methods.pretrain import PretrainBatches

    adaptive = AdaptiveNoiseConfig(enabled=True, fit_images=4, bins=[0.5], levels=[0, 200])
    settings = _settings(adaptive_noise=adaptive).model_copy(update={"shard_size": 2})
    path = tmp_path / "store"
    for rank in (0, 1):  # two processes' shares of one store
        generate_store(grey_anchors, "toy", "train", unclip_dir, path, settings, seed=0, device="cpu",
                       rank=rank, world_size=2, show_progress=False)
    store = SyntheticStore.open(path, "toy", "train", grey_anchors)
    assert store.complete and len(store) == 5 and store.candidates == 2 and store[4].shape == (2, 8, 8, 1)
    assert (path / FIT_FILE).is_file()
    generator = build_generator("unclip", unclip_dir, settings, seed=0, device="cpu")
    generator.prepare(grey_anchors, None, path)  # reuses the store's fit
    assert store.manifest["generator"] == generator.record()
    # The candidates are the generator's, shard by shard (same batches: same bytes).
    for shard in range(3):
        start, end = store.layout.shard_range(shard)
        np.testing.assert_array_equal(np.load(store.shard_path(shard)), generator.generate(grey_anchors[start:end], start))
    # One uninterrupted process writes the same bytes.
    single = tmp_path / "single"
    generate_store(grey_anchors, "toy", "train", unclip_dir, single, settings, seed=0, device="cpu", show_progress=False)
    assert _shard_bytes(single) == _shard_bytes(path)
    # Pretraining's batches read it as they read any store (Ayromlou et al.'s replace mode).
    dataset = ImageDataset("toy", "train", grey_anchors, np.arange(5) % 2, ["a", "b"], (0.5,), (0.25,))
    batch = PretrainBatches(dataset, store, seed=0, mode="replace", replace_prob=1.0).__getitems__([0, 3, 4])
    assert batch.second.shape == (3, 1, 8, 8) and batch.second.dtype == torch.uint8
    assert all(any(torch.equal(batch.second[i], torch.from_numpy(store[a][c]).permute(2, 0, 1)) for c in range(2))
               for i, a in enumerate([0, 3, 4]))
