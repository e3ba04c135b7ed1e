"""Streaming (synthpos.data.stream, synthpos.data.webdataset) on real JPEG files written by PIL.

The in-memory image folder is the reference: a streamed split must give the same pixels,
labels and classes, hold no decoded image, and feed the same pretraining (any worker count,
resumed mid-epoch or not) bit for bit on the CPU.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthpos.config import DataConfig, load_config
from synthpos.data import load_dataset
from synthpos.data import stream
from synthpos.data.stream import (
    AUTO_STREAM_BYTES,
    EpochLoader,
    LazyImages,
    bounded_sample,
    decoded_bytes,
    is_streamed,
    open_dataset,
    sample_statistics,
)
from synthpos.errors import SynthposError

CLASSES = ("ant", "bee", "cat")


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photograph, unlike uniform noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0, 255, 3) * x[..., None] + rng.uniform(0, 255, 3) * y[..., None]
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def write_jpeg_folder(root: Path, per_class: int, seed: int = 0) -> list[Path]:
    """``root/<class>/<i>.jpg`` of a few sizes around 20 x 16 px; the files in the loader's order."""
    rng = np.random.default_rng(seed)
    files = []
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / c / f"{i:03d}.jpg"
            path.write_bytes(jpeg_bytes(_photo(rng, 16 + i % 3, 20 + i % 2)))
            files.append(path)
    return files


def write_shards(folder: Path, samples: list[tuple[bytes, int | None]], per_shard: int) -> None:
    """WebDataset-style tar shards: ``<key>.jpg`` and (labelled) ``<key>.cls``, the class before the image in odd samples."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(samples), per_shard):
        with tarfile.open(folder / f"shard-{s // per_shard:05d}.tar", "w") as tar:
            for i, (data, label) in enumerate(samples[s: s + per_shard], start=s):
                members = [(f"s{i:06d}.jpg", data)]
                if label is not None:
                    members.append((f"s{i:06d}.cls", str(label).encode()))
                for name, payload in (members[::-1] if i % 2 else members):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def shards_like(folder: Path, files: list[Path], labels: np.ndarray, per_shard: int = 4) -> None:
    write_shards(folder, [(p.read_bytes(), int(c)) for p, c in zip(files, labels)], per_shard)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list[Path]]:
    return tmp_path / "train", write_jpeg_folder(tmp_path / "train", per_class=4)


def _arrays(obj, seen=None) -> list[np.ndarray]:
    """Every numpy array reachable from ``obj`` through attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, torch.Tensor):
        return [obj.numpy()]
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return []
    return [a for child in children for a in _arrays(child, seen)]


def test_a_streamed_folder_gives_the_in_memory_pixels_labels_and_classes(tree) -> None:
    root, files = tree
    config = DataConfig(name="image_folder", root=root, image_size=12, stream=True)
    streamed, memory = open_dataset(config, "train"), load_dataset(config, "train")
    assert is_streamed(streamed) and not is_streamed(memory)
    assert streamed.images.shape == memory.images.shape == (12, 12, 12, 3)
    np.testing.assert_array_equal(np.asarray(streamed.images), memory.images)
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    assert streamed.classes == memory.classes == list(CLASSES)
    # 12 images <= the statistics sample: the same numbers as over all pixels.
    np.testing.assert_allclose(streamed.mean, memory.mean, atol=1e-9)
    np.testing.assert_allclose(streamed.std, memory.std, atol=1e-9)
    images, labels = streamed.batch([7, 0, 7])
    np.testing.assert_array_equal(images.numpy(), memory.batch([7, 0, 7])[0].numpy())
    index, image, label = streamed[5]
    assert index == 5 and label == memory.labels[5] and torch.equal(image, memory[5][1])
    # subset keeps the first N, as in memory
    head = open_dataset(config.model_copy(update={"subset": 5}), "train")
    assert is_streamed(head) and len(head) == 5
    np.testing.assert_array_equal(head.images[np.arange(5)], memory.images[:5])


def test_a_streamed_split_holds_no_decoded_image(tree) -> None:
    root, _ = tree
    dataset = open_dataset(DataConfig(name="image_folder", root=root, image_size=32, stream=True), "train")
    dataset.batch(np.arange(len(dataset)))  # every image decoded once: nothing may stay behind
    held = _arrays(dataset)
    one_image = 32 * 32 * 3
    assert not [a.shape for a in held if a.dtype == np.uint8 and a.ndim >= 3]
    # What it holds is the file table and the byte ranges: less than two decoded images for twelve.
    assert sum(a.nbytes for a in held) < 2 * one_image, [(a.dtype, a.shape) for a in held]
    assert len(pickle.dumps(dataset)) < 2 * one_image  # what a DataLoader worker would receive


def test_auto_streams_above_200_mb_only(tree, monkeypatch) -> None:
    root, _ = tree
    assert decoded_bytes(50_000, (32, 32)) < AUTO_STREAM_BYTES < decoded_bytes(1_600, (224, 224))  # CIFAR-10 / the tree
    config = DataConfig(name="image_folder", root=root, image_size=12)
    assert config.stream == "auto" and not is_streamed(open_dataset(config, "train"))
    monkeypatch.setattr(stream, "AUTO_STREAM_BYTES", decoded_bytes(12, (12, 12)) - 1)
    assert is_streamed(open_dataset(config, "train"))
    assert not is_streamed(open_dataset(config.model_copy(update={"stream": False}), "train"))


def test_stream_true_on_a_source_without_files_is_one_line(tmp_path) -> None:
    from dataset_files import fake_fashion_mnist as _fake_fashion_mnist

    _fake_fashion_mnist(tmp_path)
    with pytest.raises(SynthposError, match="data.stream=true but fashion_mnist"):
        open_dataset(DataConfig(name="fashion_mnist", root=tmp_path, stream=True), "train")
    assert not is_streamed(open_dataset(DataConfig(name="fashion_mnist", root=tmp_path), "train"))


def test_a_damaged_file_and_mixed_sizes_are_one_line(tree) -> None:
    root, files = tree
    dataset = open_dataset(DataConfig(name="image_folder", root=root, image_size=12, stream=True), "train")
    files[3].write_bytes(b"not a jpeg")
    with pytest.raises(SynthposError, match=f"{files[3].name} cannot be read as an image") as err:
        dataset.batch([3])
    assert "\n" not in str(err.value) and "0x" not in str(err.value)
    files[3].unlink()
    with pytest.raises(SynthposError, match="set data.image_size=N"):  # the statistics' sample reads them all
        open_dataset(DataConfig(name="image_folder", root=root, stream=True), "train")


def test_statistics_and_the_monitor_sample_are_bounded_and_seeded(tree) -> None:
    root, _ = tree
    dataset = open_dataset(DataConfig(name="image_folder", root=root, image_size=12, stream=True), "train")
    whole = np.asarray(dataset.images).reshape(-1, 3) / 255.0
    mean, std = sample_statistics(dataset.images, n=len(dataset))
    np.testing.assert_allclose(mean, whole.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(std, whole.std(axis=0), atol=1e-9)
    sample = bounded_sample(dataset, 5, seed=3)
    assert not is_streamed(sample) and len(sample) == 5 and isinstance(sample.images, np.ndarray)
    again = bounded_sample(dataset, 5, seed=3)
    np.testing.assert_array_equal(sample.images, again.images)
    picked = np.sort(np.random.default_rng(3).choice(len(dataset), 5, replace=False))
    np.testing.assert_array_equal(sample.images, np.asarray(dataset.images)[picked])
    np.testing.assert_array_equal(sample.labels, dataset.labels[picked])
    assert len(set(sample.labels)) > 1  # spread over the classes, not the first five files (one class)


def test_tar_shards_stream_the_same_samples_as_the_folder(tree, tmp_path) -> None:
    root, files = tree
    memory = load_dataset(DataConfig(name="image_folder", root=root, image_size=12), "train")
    shards_like(tmp_path / "shards", files, memory.labels, per_shard=5)
    (tmp_path / "shards" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    config = DataConfig(name="webdataset", root=tmp_path / "shards", image_size=12, stream=True)
    streamed = open_dataset(config, "train")
    assert is_streamed(streamed) and len(streamed) == len(files)
    np.testing.assert_array_equal(np.asarray(streamed.images), memory.images)
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    assert streamed.classes == list(CLASSES)
    in_memory = open_dataset(config.model_copy(update={"stream": False}), "train")
    np.testing.assert_array_equal(in_memory.images, memory.images)


def test_bad_shards_are_one_line(tmp_path) -> None:
    data = jpeg_bytes(np.zeros((8, 8, 3), np.uint8))
    write_shards(tmp_path / "mixed", [(data, 1), (data, None)], per_shard=2)
    with pytest.raises(SynthposError, match="1 of 2 samples have no .cls"):
        open_dataset(DataConfig(name="webdataset", root=tmp_path / "mixed", stream=True), "train")
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "a.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)
    with pytest.raises(SynthposError, match="cannot be read as an uncompressed tar"):
        open_dataset(DataConfig(name="webdataset", root=tmp_path / "gz", stream=True), "train")


class _Boom(Exception):
    pass


@pytest.mark.slow
def test_pretraining_is_the_same_whatever_the_workers_and_resumes_mid_epoch(tmp_path, monkeypatch) -> None:
    """3 epochs of 4 steps on a streamed folder: 0 workers, 2 persistent workers, and 2 workers stopped
    after step 6 (epoch 1, batch 2) then resumed all end with the same weights, bit for bit."""
    import synthpos.resumable as resumable
    from synthpos.methods.pretrain import pretrain

    root = tmp_path / "train"
    write_jpeg_folder(root, per_class=11)  # 33 images: 32 in 4 batches of 8, one dropped
    config = load_config(None, [
        "data.name=image_folder", f"data.root={root}", "data.image_size=16", "data.stream=true",
        "pretrain.backbone.name=convnet", "pretrain.backbone.width=4", "pretrain.projector_hidden_dim=16",
        "pretrain.projector_out_dim=8", "pretrain.batch_size=8", "pretrain.epochs=3", "pretrain.precision=fp32",
        "pretrain.augment.crop_size=16", "pretrain.optimizer.warmup_epochs=0", "pretrain.accelerator=cpu",
        "pretrain.num_threads=1", "pretrain.checkpoint_every_minutes=null", "pretrain.checkpoint_every_epochs=100",
    ])
    dataset = open_dataset(config.data, "train")
    assert is_streamed(dataset)

    def run(name: str, workers: int) -> dict[str, torch.Tensor]:
        path = pretrain(config.pretrain, dataset, tmp_path / name, seed=0, show_progress=False, num_workers=workers)
        return torch.load(path, weights_only=True)

    threads = torch.get_num_threads()
    try:
        reference = run("w0", 0)
        two = run("w2", 2)
        real = resumable.ResumableCheckpoint.on_train_batch_start

        def stop_after_step_6(self, trainer, pl_module, batch, batch_idx):
            real(self, trainer, pl_module, batch, batch_idx)
            if trainer.global_step == 6:
                self._save(trainer)
                raise _Boom

        monkeypatch.setattr(resumable.ResumableCheckpoint, "on_train_batch_start", stop_after_step_6)
        with pytest.raises(_Boom):
            run("resumed", 2)
        monkeypatch.setattr(resumable.ResumableCheckpoint, "on_train_batch_start", real)
        resumed = run("resumed", 1)
    finally:
        torch.set_num_threads(threads)
    for other in (two, resumed):
        assert other.keys() == reference.keys()
        for key in reference:
            assert torch.equal(other[key], reference[key]), key


def test_epoch_loader_advances_the_global_generator_as_a_fresh_loader_does(tree) -> None:
    root, _ = tree
    dataset = open_dataset(DataConfig(name="image_folder", root=root, image_size=8, stream=True), "train")
    from synthpos.methods.pretrain import PretrainBatches, _first
    from synthpos.resumable import ResumableBatchSampler

    def draws(workers: int) -> list[tuple[list[list[int]], float]]:
        torch.manual_seed(0)
        sampler = ResumableBatchSampler(len(dataset), 4, 0)
        loader = EpochLoader(PretrainBatches(dataset, None, 0, "none"), batch_sampler=sampler, collate_fn=_first,
                             num_workers=workers, persistent_workers=workers > 0)
        out = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = [b.indices.tolist() for b in loader]
            out.append((batches, float(torch.rand(()))))  # what the training step would draw next
        return out

    assert draws(0) == draws(2)


def test_fine_tuning_a_streamed_split_decodes_its_label_share_one_batch_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """evaluate.finetune on a streamed split: the label share stays lazy (each training batch decoded when its step
    comes, every epoch; never the whole share up front), and the fine-tuned numbers equal those of the same images
    held in memory, with and without decoding workers."""
    import dataclasses

    from synthpos.config import BackboneConfig, EvaluateConfig
    from synthpos.evaluation.finetune import finetune_protocols
    from synthpos.models.backbones import build_backbone

    write_jpeg_folder(tmp_path / "tree", per_class=8)
    write_jpeg_folder(tmp_path / "test", per_class=2, seed=1)
    config = DataConfig(name="image_folder", root=tmp_path / "tree", test_root=tmp_path / "test", image_size=16,
                        stream=True)
    train, test = open_dataset(config, "train"), open_dataset(config, "test")
    assert is_streamed(train)
    in_memory = {s: dataclasses.replace(d, images=np.asarray(d.images)) for s, d in (("train", train), ("test", test))}
    evaluate = EvaluateConfig(finetune={"fractions": [0.5], "epochs": [2], "lr_grid": [0.05], "batch_size": 4})
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="convnet", width=4), 3)

    reads: list[int] = []  # rows of every array read
    decoded = []  # every image decoded
    original_get, original_checked = LazyImages.__getitem__, LazyImages._checked

    def counted_get(self, key):
        out = original_get(self, key)
        if isinstance(out, np.ndarray) and out.ndim == 4:
            reads.append(len(out))
        return out

    def counted_checked(self, i):
        decoded.append(i)
        return original_checked(self, i)

    monkeypatch.setattr(LazyImages, "__getitem__", counted_get)
    monkeypatch.setattr(LazyImages, "_checked", counted_checked)
    streamed, _ = finetune_protocols(backbone, train, test, 16, evaluate, seed=1)
    share = 12  # half of each class's 8 images of the 3 classes
    # Every training step read its own batch of 4 (2 epochs x 3 steps), nothing larger before the first step
    # (only the 2-image probe of the input shape); then one pass over the share (train top-1) and the 6 test images.
    assert reads.count(4) == 2 * share // 4
    assert max(reads[: reads.index(4)]) < share
    assert len(decoded) == 2 + 2 * share + share + len(test)
    monkeypatch.setattr(LazyImages, "__getitem__", original_get)
    monkeypatch.setattr(LazyImages, "_checked", original_checked)
    held, _ = finetune_protocols(backbone, in_memory["train"], in_memory["test"], 16, evaluate, seed=1)
    assert streamed == held
    workers, _ = finetune_protocols(backbone, train, test, 16, evaluate, seed=1, num_workers=2)
    assert workers == held
