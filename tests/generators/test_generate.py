"""generate_store end to end on a tiny UNet: complete, resumable, splittable, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import GenerateConfig
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.errors import SynthposError
from synthpos.generators.registry import build_generator
from synthpos.generators.clsp import clsp_interpolation_sample, ddim_scheduler
from synthpos.generators.diffusion import images_to_model_range, load_generator, model_range_to_images, save_pipeline
from synthpos.generators.generate import generate_store

SETTINGS = GenerateConfig(candidates=2, num_steps=3, shard_size=4, batch_size=3, precision="fp32", channels_last=False)
NUM_SHARDS = 3  # 10 anchors, 4 per shard


def _shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("shard-*.npy"))}


@pytest.fixture(scope="module")
def generate_settings() -> GenerateConfig:
    return SETTINGS


# ----------------------------------------------------------------------------- (a) a complete store


def test_store_is_complete_with_the_right_shapes(reference_store, anchor_images) -> None:
    store = SyntheticStore.open(reference_store, "toy", "train", anchor_images)
    assert store.complete and len(store) == 10 and store.candidates == 2
    assert sorted(_shard_bytes(reference_store)) == [f"shard-{i:05d}.npy" for i in range(NUM_SHARDS)]
    shapes = [np.load(store.shard_path(i)).shape for i in range(NUM_SHARDS)]
    assert shapes == [(4, 2, 8, 8, 1), (4, 2, 8, 8, 1), (2, 2, 8, 8, 1)]
    assert store[9].shape == (2, 8, 8, 1) and store[9].dtype == np.uint8
    everything = np.stack([store[i] for i in range(10)])
    assert everything.std() > 1.0, "candidates should not be constant"
    # Candidates of one anchor come from different noise, so they differ.
    assert all((store[i][0] != store[i][1]).any() for i in range(10))
    assert not [p for p in reference_store.iterdir() if ".tmp" in p.name]
    generator = store.manifest["generator"]
    assert generator["num_steps"] == 3 and generator["seed"] == 0 and generator["interpolation_weight"] == SETTINGS.interpolation_weight


def test_shard_equals_the_sampler_called_directly(reference_store, anchor_images, generator_dir) -> None:
    """Anchor a, candidate c of the store is clsp_interpolation_sample seeded from (seed, a, c)."""
    from synthpos.generators.clsp import derive_seed

    unet, noise_scheduler = load_generator(generator_dir)
    store = SyntheticStore.open(reference_store)
    for a, c in [(0, 0), (5, 1), (9, 0)]:
        anchor = images_to_model_range(torch.from_numpy(anchor_images[a: a + 1]))
        sample = clsp_interpolation_sample(
            unet, ddim_scheduler(noise_scheduler), anchor, [torch.Generator().manual_seed(derive_seed(0, a, c))],
            num_steps=SETTINGS.num_steps, eta=SETTINGS.eta, weight=SETTINGS.interpolation_weight,
        )
        expected = model_range_to_images(sample)[0].numpy()
        # Batch size differs from the store's (1 vs 3): allow one grey level.
        assert np.abs(expected.astype(int) - store[a][c].astype(int)).max() <= 1


# ----------------------------------------------------------------------------- (b) interrupted + resumed


def test_resumed_equals_uninterrupted(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes, monkeypatch) -> None:
    path = tmp_path / "store"
    # Interrupt the first run while it writes shard 1: a half-written .tmp file is left behind.
    original_save = np.save
    calls = []

    def crashing_save(fh, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            fh.write(b"\x93NUMPY")
            raise KeyboardInterrupt
        return original_save(fh, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        generate(anchor_images, generator_dir, path)
    monkeypatch.setattr(np, "save", original_save)
    store = SyntheticStore.open(path, require_complete=False)
    assert store.missing_shards() == [1, 2]
    assert len(calls) == 2, "the run should have been interrupted while writing shard 1"
    (path / "shard-00002.npy.tmp-99999").write_bytes(b"\x93NUMPY")  # and a stray one from a killed process
    shard0 = store.shard_path(0).stat()

    count_writes.clear()
    resumed = generate(anchor_images, generator_dir, path)
    assert count_writes == [1, 2], "the resumed run must do only the missing shards"
    assert resumed.complete
    assert _shard_bytes(path) == _shard_bytes(reference_store)
    after = store.shard_path(0).stat()
    assert (after.st_ino, after.st_mtime_ns) == (shard0.st_ino, shard0.st_mtime_ns), "a complete shard was rewritten"


def test_deleted_shards_are_regenerated_identically(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes) -> None:
    path = tmp_path / "store"
    shutil.copytree(reference_store, path)
    for shard in (0, 2):
        (path / f"shard-{shard:05d}.npy").unlink()
    (path / "shard-00000.npy.tmp-99999").write_bytes(b"junk")
    kept = (path / "shard-00001.npy").stat()
    count_writes.clear()
    generate(anchor_images, generator_dir, path)
    assert count_writes == [0, 2]
    assert _shard_bytes(path) == _shard_bytes(reference_store)
    now = (path / "shard-00001.npy").stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_rerunning_a_complete_store_writes_nothing(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes) -> None:
    path = tmp_path / "store"
    shutil.copytree(reference_store, path)
    def files() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()}

    before = files()
    count_writes.clear()
    store = generate(anchor_images, generator_dir, path)
    assert count_writes == [] and store.complete
    # A copied store is hashed once (new inodes: its stamp does not vouch for these files), and stamped anew ...
    after = files()
    assert {k: v for k, v in after.items() if k != "verified.json"} == {k: v for k, v in before.items() if k != "verified.json"}
    assert after["verified.json"] != before["verified.json"]
    # ... after which a rerun touches nothing at all.
    generate(anchor_images, generator_dir, path)
    assert count_writes == [] and files() == after


def test_resuming_with_other_generation_settings_raises(generate, tmp_path, reference_store, anchor_images, generator_dir) -> None:
    path = tmp_path / "store"
    shutil.copytree(reference_store, path)
    for change in ({"num_steps": 4}, {"eta": 0.0}, {"interpolation_weight": 0.5}, {"clip_x0": True}, {"candidates": 3}, {"shard_size": 5}):
        with pytest.raises(SynthposError):
            generate(anchor_images, generator_dir, path, SETTINGS.model_copy(update=change))
    with pytest.raises(SynthposError):
        generate_store(anchor_images, "toy", "train", generator_dir, path, SETTINGS, seed=1, device="cpu", show_progress=False)
    changed = anchor_images.copy()
    changed[0, 0, 0, 0] ^= 1
    with pytest.raises(SynthposError):
        generate(changed, generator_dir, path)


# ----------------------------------------------------------------------------- (c) split across processes


def test_split_across_ranks_equals_a_single_run(generate, tmp_path, reference_store, anchor_images, generator_dir, count_writes) -> None:
    path = tmp_path / "store"
    count_writes.clear()
    first = generate(anchor_images, generator_dir, path, rank=0, world_size=2)
    assert count_writes == [0, 2] and first.missing_shards() == [1]
    count_writes.clear()
    second = generate(anchor_images, generator_dir, path, rank=1, world_size=2)
    assert count_writes == [1] and second.complete
    assert _shard_bytes(path) == _shard_bytes(reference_store)


def test_rank_and_world_size_from_the_environment(generate, tmp_path, anchor_images, generator_dir, count_writes, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    count_writes.clear()
    generate(anchor_images, generator_dir, tmp_path / "store")
    assert count_writes == [1]


# ----------------------------------------------------------------------------- (d) batch size


@pytest.mark.parametrize("batch_size", [1, 8])
def test_batch_size_does_not_change_the_bytes(generate, tmp_path, reference_store, anchor_images, generator_dir, batch_size) -> None:
    path = tmp_path / "store"
    generate(anchor_images, generator_dir, path, SETTINGS.model_copy(update={"batch_size": batch_size}))
    ours, ref = _shard_bytes(path), _shard_bytes(reference_store)
    assert ours.keys() == ref.keys()
    if ours != ref:
        # Float kernels may differ with the batch size; the uint8 images then differ by at
        # most one grey level, and only rarely.
        a = np.concatenate([np.load(path / n).ravel() for n in ours]).astype(int)
        b = np.concatenate([np.load(reference_store / n).ravel() for n in ref]).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


def test_generate_a_shard_directly(reference_store, anchor_images, generator_dir) -> None:
    generator = build_generator("clsp", generator_dir, SETTINGS, 0, "cpu")
    out = generator.generate(anchor_images[4:8], 4)
    assert out.shape == (4, 2, 8, 8, 1) and out.dtype == np.uint8
    # The store's shard 1 holds anchors 4..7: the same candidates.
    assert np.array_equal(out, np.load(SyntheticStore.open(reference_store).shard_path(1)))
    # first_index enters the seeds: the same anchors at another index give other candidates.
    other = generator.generate(anchor_images[4:8], 0)
    assert (out != other).any()


# ----------------------------------------------------------------------------- (e) bad generators


def test_generator_for_other_image_size_raises(generate, tmp_path, anchor_images, unet_factory, scheduler_factory) -> None:
    gen = tmp_path / "gen16"
    save_pipeline(unet_factory(sample_size=16), scheduler_factory(50), gen)
    with pytest.raises(SynthposError, match="16x16x1"):
        generate(anchor_images, gen, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_generator_for_other_channels_raises(generate, tmp_path, anchor_images, generator_dir) -> None:
    rgb = np.repeat(anchor_images, 3, axis=-1)
    with pytest.raises(SynthposError, match="8x8x1"):
        generate(rgb, generator_dir, tmp_path / "store")


def test_missing_generator_dir_raises(generate, tmp_path, anchor_images) -> None:
    with pytest.raises(SynthposError, match="DDPMPipeline") as err:
        generate(anchor_images, tmp_path / "no_such_generator", tmp_path / "store")
    assert "no_such_generator" in str(err.value)
    assert not (tmp_path / "store").exists()


def test_incomplete_generator_dir_names_the_layout(generate, tmp_path, anchor_images, generator_dir) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SynthposError) as err:
        generate(anchor_images, empty, tmp_path / "store")
    for part in ("unet/config.json", "diffusion_pytorch_model", "scheduler/scheduler_config.json"):
        assert part in str(err.value)
    partial = tmp_path / "partial"
    shutil.copytree(generator_dir, partial)
    shutil.rmtree(partial / "scheduler")
    with pytest.raises(SynthposError, match="scheduler/scheduler_config.json"):
        generate(anchor_images, partial, tmp_path / "store")


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_more_steps_than_the_trained_timesteps_raises_before_the_store(generate, tmp_path, anchor_images, generator_dir, sampler) -> None:
    # DPM-Solver++ would repeat a timestep, divide by a zero step and write NaN images.
    settings = SETTINGS.model_copy(update={"sampler": sampler, "num_steps": 51})
    with pytest.raises(SynthposError, match="at most 50"):
        generate(anchor_images, generator_dir, tmp_path / "store", settings)
    assert not (tmp_path / "store").exists()


def test_a_unet_bottleneck_interpolation_cannot_split_raises_before_the_store(generate, tmp_path, anchor_images, unet_factory, scheduler_factory) -> None:
    unet = unet_factory()
    unet.register_to_config(center_input_sample=True)
    gen = tmp_path / "centred"
    save_pipeline(unet, scheduler_factory(50), gen)
    with pytest.raises(SynthposError, match="cannot make CLSP positives.*center_input_sample"):
        generate(anchor_images, gen, tmp_path / "store")
    assert not (tmp_path / "store").exists()


# ----------------------------------------------------------------------------- (f) sampler settings in the store


FAST = SETTINGS.model_copy(update={"sampler": "dpmsolver++", "share_anchor_noise": True, "num_steps": 4})


@pytest.fixture(scope="module")
def fast_store(tmp_path_factory, anchor_images, generator_dir, generate) -> Path:
    path = tmp_path_factory.mktemp("fast") / "store"
    generate(anchor_images, generator_dir, path, FAST)
    return path


def _assert_same_images(path: Path, ref: Path) -> None:
    ours, theirs = _shard_bytes(path), _shard_bytes(ref)
    assert ours.keys() == theirs.keys()
    if ours != theirs:
        # As above: other batch sizes may take other float kernels (at most one grey level, rarely).
        a = np.concatenate([np.load(path / n).ravel() for n in ours]).astype(int)
        b = np.concatenate([np.load(ref / n).ravel() for n in theirs]).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_shared_anchor_noise_store_is_the_same_in_any_batch_size(generate, tmp_path, fast_store, anchor_images, generator_dir, batch_size) -> None:
    path = tmp_path / "store"
    generate(anchor_images, generator_dir, path, FAST.model_copy(update={"batch_size": batch_size}))
    _assert_same_images(path, fast_store)


def test_shared_anchor_noise_store_split_across_ranks(generate, tmp_path, fast_store, anchor_images, generator_dir) -> None:
    path = tmp_path / "store"
    for rank in (1, 0):
        generate(anchor_images, generator_dir, path, FAST, rank=rank, world_size=2)
    assert _shard_bytes(path) == _shard_bytes(fast_store)


def test_dpmsolver_store_equals_the_sampler_called_directly(fast_store, reference_store, anchor_images, generator_dir) -> None:
    from synthpos.generators.clsp import SHARED_ANCHOR_NOISE, derive_seed
    from synthpos.generators.samplers import dpmsolver_scheduler

    unet, noise_scheduler = load_generator(generator_dir)
    store = SyntheticStore.open(fast_store)
    for a in (0, 6, 9):
        anchor = images_to_model_range(torch.from_numpy(anchor_images[a: a + 1]))
        sample = clsp_interpolation_sample(
            unet, dpmsolver_scheduler(noise_scheduler), anchor, [torch.Generator().manual_seed(derive_seed(0, a, c)) for c in (0, 1)],
            num_steps=FAST.num_steps, weight=FAST.interpolation_weight, anchor_index=torch.tensor([0, 0]),
            anchor_generators=[torch.Generator().manual_seed(derive_seed(0, a, SHARED_ANCHOR_NOISE))],
        )
        expected = model_range_to_images(sample).numpy()
        assert np.abs(expected.astype(int) - store[a].astype(int)).max() <= 1
    # And the fast settings make other candidates than the paper's sampler.
    assert not np.array_equal(np.load(store.shard_path(0)), np.load(SyntheticStore.open(reference_store).shard_path(0)))


def test_record_holds_what_changes_the_bytes(fast_store, reference_store, generator_dir) -> None:
    from synthpos.generators.generate import generator_record

    fast = SyntheticStore.open(fast_store).manifest["generator"]
    assert fast == generator_record(generator_dir, FAST, 0, torch.device("cpu"))
    assert fast["kind"] == "clsp" and fast["sampler"] == "dpmsolver++" and fast["solver_order"] == 2
    assert fast["share_anchor_noise"] is True and fast["eta"] is None and fast["num_classes"] is None
    paper = SyntheticStore.open(reference_store).manifest["generator"]
    assert paper["sampler"] == "ddim" and paper["eta"] == SETTINGS.eta and paper["share_anchor_noise"] is False
    # Speed-only settings are not in it: a store made with them is reused as it is.
    for change in ({"batch_size": 7}, {"compile": True}, {"num_threads": 1}, {"channels_last": True}):
        assert generator_record(generator_dir, FAST.model_copy(update=change), 0, torch.device("cpu")) == fast
    for change in ({"sampler": "ddim"}, {"share_anchor_noise": False}, {"num_steps": 5}, {"clip_x0": True}):
        assert generator_record(generator_dir, FAST.model_copy(update=change), 0, torch.device("cpu")) != fast


def test_resuming_with_another_sampler_raises(generate, tmp_path, fast_store, anchor_images, generator_dir, count_writes) -> None:
    path = tmp_path / "store"
    shutil.copytree(fast_store, path)
    for change in ({"sampler": "ddim"}, {"share_anchor_noise": False}):
        with pytest.raises(SynthposError, match="different generator"):
            generate(anchor_images, generator_dir, path, FAST.model_copy(update=change))
    count_writes.clear()
    generate(anchor_images, generator_dir, path, FAST.model_copy(update={"batch_size": 1}))
    assert count_writes == []
