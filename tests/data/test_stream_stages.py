"""``generate`` and ``evaluate`` on a streamed image folder (data.stream=true) of real JPEG files.

Two things are checked against the in-memory path (data.stream=false) on the same folder:
nothing decodes more than a batch, a shard or a statistics chunk at once (the whole split is
never an array), and the outputs are the same: the store's shards byte for byte, the metrics
number for number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthpos.config import BackboneConfig, TrainGeneratorConfig, UNetConfig, load_config
from synthpos.data import stream
from synthpos.data.stream import LazyImages
from synthpos.evaluation.evaluate import evaluate_stage, labelled_splits
from synthpos.evaluation.features import extract_features
from synthpos.generators.diffusion import build_noise_scheduler, build_unet, save_pipeline
from synthpos.generators.generate import generate_stage
from synthpos.models.backbones import build_backbone, save_backbone

from test_stream import write_jpeg_folder

PER_CLASS_TRAIN, PER_CLASS_TEST, SIZE = 8, 3, 8  # 24 training images, 9 test images, decoded at 8 x 8
SHARD, BATCH, CHUNK = 5, 4, 6  # at most this many images are decoded at once
ANCHORS = 12  # generated for: three shards, the last one short
CONVNET = BackboneConfig(name="convnet", width=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    write_jpeg_folder(root / "train", per_class=PER_CLASS_TRAIN, seed=0)
    write_jpeg_folder(root / "test", per_class=PER_CLASS_TEST, seed=1)
    return root


@pytest.fixture
def decoded_at_once(monkeypatch) -> list[int]:
    """The images each LazyImages read decodes at once; a read of more than a shard fails the test."""
    sizes: list[int] = []
    original = LazyImages.__getitem__

    def bounded(self, key):
        if not isinstance(key, (slice, int, np.integer)):
            sizes.append(len(key))
            assert len(key) <= max(SHARD, BATCH, CHUNK), f"{len(key)} images decoded at once"
        return original(self, key)

    monkeypatch.setattr(LazyImages, "__getitem__", bounded)
    monkeypatch.setattr(stream, "STATS_CHUNK", CHUNK)
    return sizes


def _data(folders: Path, streamed: bool) -> list[str]:
    return ["data.name=image_folder", f"data.root={folders / 'train'}", f"data.test_root={folders / 'test'}",
            f"data.image_size={SIZE}", f"data.stream={str(streamed).lower()}", "data.num_workers=0"]


def _generator(path: Path) -> Path:
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0,
                                 norm_num_groups=4), sample_size=SIZE, channels=3).eval()
    save_pipeline(unet, build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=50, beta_end=0.02)), path)
    return path


def test_generate_streams_shard_by_shard_and_writes_the_in_memory_bytes(folders, tmp_path, decoded_at_once) -> None:
    generator = _generator(tmp_path / "gen")
    stores = {}
    for streamed in (True, False):
        config = load_config(None, [f"run_dir={tmp_path / f'run-{streamed}'}", *_data(folders, streamed),
                                    f"generate.generator={generator}", f"generate.num_anchors={ANCHORS}", "generate.candidates=2", "generate.clsp.num_steps=2",
                                    f"generate.shard_size={SHARD}", f"generate.batch_size={BATCH}",
                                    "generate.precision=fp32", "generate.channels_last=false"])
        stores[streamed] = generate_stage(config, show_progress=False)
        if streamed:
            assert decoded_at_once and max(decoded_at_once) <= max(SHARD, CHUNK)  # a shard or a statistics chunk
    on, off = stores[True], stores[False]
    assert on.complete and len(on) == len(off) == ANCHORS
    shards = sorted(p.name for p in on.path.glob("shard-*"))
    assert shards and shards == sorted(p.name for p in off.path.glob("shard-*"))
    for name in shards:
        assert (on.path / name).read_bytes() == (off.path / name).read_bytes(), name
    assert on.manifest["dataset"] == off.manifest["dataset"]  # the same anchors' fingerprint


def test_evaluate_streams_batch_by_batch_and_gives_the_in_memory_metrics(folders, tmp_path, decoded_at_once) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(CONVNET, 3).eval()
    metrics, features = {}, {}
    for streamed in (True, False):
        config = load_config(None, [
            f"run_dir={tmp_path / f'run-{streamed}'}", *_data(folders, streamed), f"evaluate.batch_size={BATCH}",
            "evaluate.knn_k=[3]", "evaluate.linear_protocols=[fast, paper]", "evaluate.linear.epochs=2", "evaluate.linear_paper.epochs=2",
            "evaluate.linear.lr_grid=null", "evaluate.linear.weight_decay_grid=null", "evaluate.label_fractions=[1.0]",
            f"evaluate.feature_size={SIZE}"])
        config.backbone_path.parent.mkdir(parents=True, exist_ok=True)
        save_backbone(backbone, CONVNET, 3, config.backbone_path)
        splits = labelled_splits(config.data, config.evaluate)
        assert stream.is_streamed(splits["train"]) is streamed
        features[streamed] = extract_features(backbone, splits["test"].images, SIZE, splits["test"].mean,
                                              splits["test"].std, BATCH)
        metrics[streamed] = evaluate_stage(config, show_progress=False)
        if streamed:
            assert decoded_at_once and max(decoded_at_once) <= max(BATCH, CHUNK)
            cached = sorted(p.name for p in (config.evaluate_dir / "features").glob("*.pt"))
            assert len(cached) == 3 and any(name.endswith("-mirror.pt") or "-mirror-" in name for name in cached)
    # The statistics: a float64 sum per chunk instead of over all pixels at once (at most 1e-9 apart, so the
    # normalised inputs and the features agree to float32 rounding); the metrics are the same numbers.
    torch.testing.assert_close(features[True], features[False], rtol=1e-5, atol=1e-6)
    assert metrics[True]["results"] == metrics[False]["results"]
    strip = [{k: v for k, v in r.items() if k not in ("features_sha256",)} for r in metrics[True]["records"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("features_sha256",)} for r in metrics[False]["records"]]


def test_a_replaced_file_is_a_new_feature_cache_entry(folders, tmp_path) -> None:
    """A streamed split's cache key comes from its files' sizes and times, not its pixels: a replaced file changes it."""
    from synthpos.config import DataConfig
    from synthpos.evaluation.features import images_digest, mirrored

    root = tmp_path / "train"
    files = write_jpeg_folder(root, per_class=2)
    config = DataConfig(name="image_folder", root=root, image_size=SIZE, stream=True)
    images = stream.open_dataset(config, "train").images
    before = images_digest(images)
    assert before == images_digest(stream.open_dataset(config, "train").images)
    assert images_digest(mirrored(images)) != before
    np.testing.assert_array_equal(np.asarray(mirrored(images)), np.asarray(images)[:, :, ::-1])
    files[1].write_bytes(files[0].read_bytes())
    assert images_digest(stream.open_dataset(config, "train").images) != before


def test_worker_processes_decode_the_same_features_and_leave_the_global_random_state(folders) -> None:
    from synthpos.config import DataConfig

    config = DataConfig(name="image_folder", root=folders / "test", image_size=SIZE, stream=True)
    streamed = stream.open_dataset(config, "train")
    memory = stream.open_dataset(config.model_copy(update={"stream": False}), "train")
    torch.manual_seed(0)
    backbone = build_backbone(CONVNET, 3).eval()
    reference = extract_features(backbone, memory.images, SIZE, streamed.mean, streamed.std, BATCH)
    state = torch.get_rng_state()
    parallel = extract_features(backbone, streamed.images, SIZE, streamed.mean, streamed.std, BATCH, num_workers=1)
    assert torch.equal(torch.get_rng_state(), state)  # what the probes draw next does not depend on the workers
    assert torch.equal(parallel, reference)  # in order, the same pixels, the same normalisation
    chunks = list(stream.decoded_chunks(streamed.images, BATCH, workers=1))
    assert [len(c) for c in chunks] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), memory.images)


def test_grey_and_rgb_of_a_streamed_split_are_the_in_memory_conversions(folders) -> None:
    from synthpos.config import DataConfig
    from synthpos.evaluation.evaluate import match_channels

    config = DataConfig(name="image_folder", root=folders / "test", image_size=SIZE, stream=True)
    streamed = stream.open_dataset(config, "train")
    memory = stream.open_dataset(config.model_copy(update={"stream": False}), "train")
    grey, grey_memory = match_channels(streamed, 1), match_channels(memory, 1)
    assert stream.is_streamed(grey) and grey.images.shape == grey_memory.images.shape == (9, SIZE, SIZE, 1)
    np.testing.assert_array_equal(np.asarray(grey.images), grey_memory.images)
    np.testing.assert_array_equal(grey.images[2:5][np.array([0, 2])], grey_memory.images[[2, 4]])
    np.testing.assert_array_equal(np.asarray(match_channels(grey, 3).images), match_channels(grey_memory, 3).images)
    np.testing.assert_allclose(grey.mean, grey_memory.mean, atol=1e-9)


def test_import_store_on_a_streamed_split_decodes_only_its_sample_and_writes_the_same_store(
        tmp_path, decoded_at_once) -> None:
    from PIL import Image

    from synthpos.data.import_store import import_store_stage
    from test_import_store import _image_tree

    train = tmp_path / "imagenet" / "train"
    for rel in _image_tree(train):  # GenView's layout: the same relative paths, another colour
        (tmp_path / "genview" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), (200, 30, 90)).save(tmp_path / "genview" / rel, quality=100)
    stores = {}
    for streamed in (True, False):
        config = load_config(None, ["data.name=image_folder", f"data.root={train}", f"data.image_size={SIZE}",
                                    f"data.stream={str(streamed).lower()}", f"run_dir={tmp_path / f'run-{streamed}'}",
                                    "generate.shard_size=4"])
        stores[streamed] = import_store_stage(config, tmp_path / "genview", "genview", None, 1, show_progress=False)
    on, off = stores[True], stores[False]
    assert on.manifest["dataset"] == off.manifest["dataset"] and len(on) == 6
    for shard in sorted(p.name for p in off.path.glob("shard-*")):
        assert (on.path / shard).read_bytes() == (off.path / shard).read_bytes()
