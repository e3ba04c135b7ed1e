"""One contract for every registered dataset, by inheritance (after diffusers' SchedulerCommonTest).

:class:`DatasetContract` holds the checks; a dataset's test is a subclass that writes a tiny
copy of it in its on-disk format (``write``). ``test_every_dataset_has_a_contract`` fails for a
registered dataset without a subclass. The format details of each reader (byte layouts,
garbled files) are tested beside it (test_fashion_mnist.py, test_cifar.py, test_image_folder.py);
the subclasses write their copies with the same writers (dataset_files.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from dataset_files import fake_fashion_mnist, png, write_cifar

from synthpos.config import DataConfig
from synthpos.data.datasets import DatasetSource, load_dataset, register_dataset
from synthpos.errors import SynthposError
from synthpos.registry import DATASETS


class DatasetContract:
    """What every dataset guarantees: each split in memory as uint8 (N, H, W, C) with its
    statistics, labels in range (or none), ``subset`` and ``image_size`` applied, and missing
    data as one line."""

    #: the name it registers under (``data.name``)
    name: ClassVar[str]

    def write(self, root: Path) -> DataConfig:
        """Write a tiny copy (a few images a split, at least 3 in train) under ``root``; the config that reads it."""
        raise NotImplementedError

    @pytest.fixture
    def config(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataConfig:
        # Only the written copy may be found, never the machine's own data.
        monkeypatch.delenv("SYNTHPOS_DATA", raising=False)
        monkeypatch.setattr(DATASETS.get(self.name), "system_root", None)
        return self.write(tmp_path / "data")

    def test_its_declared_facts_match_what_it_loads(self, config: DataConfig) -> None:
        """The facts a dataset declares (read by the config before any data is) agree with its data."""
        source = DATASETS.get(self.name)
        train = load_dataset(config, "train")
        if source.native_side is not None and not source.resized_on_load:
            assert train.images.shape[1] == train.images.shape[2] == source.native_side
        if source.stats is not None:
            assert (tuple(train.mean), tuple(train.std)) == tuple(map(tuple, source.stats))
        if source.num_classes is not None:
            assert len(train.classes) == source.num_classes
        assert source.pretty and source.how_to_fix

    def test_a_plugin_dataset_finds_its_data_like_a_built_in_one(self, tmp_path: Path, monkeypatch) -> None:
        """find_root works from the class's own facts: $SYNTHPOS_DATA/<name>, then its system root."""
        source = DATASETS.get(self.name)
        monkeypatch.setattr(source, "has_data", classmethod(lambda cls, folder: (folder / "marker").is_file()))
        (tmp_path / "env" / self.name).mkdir(parents=True)
        (tmp_path / "env" / self.name / "marker").write_text("")
        monkeypatch.setenv("SYNTHPOS_DATA", str(tmp_path / "env"))
        assert source.find_root(None) == tmp_path / "env" / self.name

    def test_it_is_registered_under_its_name(self, config: DataConfig) -> None:
        source = DATASETS.get(self.name)
        assert issubclass(source, DatasetSource) and source.name == self.name
        assert isinstance(source.resized_on_load, bool)
        assert DataConfig.model_validate(config.model_dump()) == config

    @pytest.mark.parametrize("split", ["train", "test"])
    def test_a_split_is_uint8_images_with_their_statistics_and_labels(self, config: DataConfig, split: str) -> None:
        data = load_dataset(config, split)
        assert (data.name, data.split) == (self.name, split)
        images = data.images
        assert images.dtype == np.uint8 and images.ndim == 4 and images.flags.c_contiguous and len(data) == len(images) > 0
        assert data.channels == images.shape[-1] in (1, 3)
        assert len(data.mean) == len(data.std) == data.channels and all(s > 0 for s in data.std)
        if data.labels is not None:
            assert data.labels.dtype == np.int64 and data.labels.shape == (len(images),)
            assert 0 <= data.labels.min() and data.labels.max() < data.num_classes == len(data.classes)
        index, image, label = data[len(data) - 1]
        assert index == len(data) - 1 and image.dtype == torch.uint8
        assert image.shape == (images.shape[3], *images.shape[1:3])  # (C, H, W)
        assert label == (-1 if data.labels is None else data.labels[-1])

    def test_subset_and_image_size_apply(self, config: DataConfig) -> None:
        resized = load_dataset(config.model_copy(update={"image_size": 8}), "train")
        head = load_dataset(config.model_copy(update={"image_size": 8, "subset": 2}), "train")
        assert head.image_shape[:2] == (8, 8) and len(head) == 2
        np.testing.assert_array_equal(head.images, resized.images[:2])
        with pytest.raises(SynthposError, match=f"data.subset={len(resized) + 1}"):
            load_dataset(config.model_copy(update={"subset": len(resized) + 1}), "train")

    def test_missing_data_is_one_line(self, config: DataConfig, tmp_path: Path) -> None:
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(SynthposError) as err:
            load_dataset(config.model_copy(update={"root": empty}), "train")
        assert "\n" not in str(err.value)


class TestFashionMNIST(DatasetContract):
    name = "fashion_mnist"

    def write(self, root):
        fake_fashion_mnist(root)
        return DataConfig(name=self.name, root=root)


class TestCIFAR10(DatasetContract):
    name = "cifar10"

    def write(self, root):
        write_cifar(root / "cifar-10-batches-py", hundred=False, per_batch=1)
        return DataConfig(name=self.name, root=root)


class TestCIFAR100(DatasetContract):
    name = "cifar100"

    def write(self, root):
        write_cifar(root / "cifar-100-python", hundred=True, per_batch=2)
        return DataConfig(name=self.name, root=root)


class TestImageFolder(DatasetContract):
    name = "image_folder"

    def write(self, root):
        for i, (label, colour) in enumerate([("cat", (255, 0, 0)), ("cat", (200, 10, 0)), ("dog", (0, 0, 255))]):
            png(root / "train" / label / f"{i}.png", (12, 10), colour)
        png(root / "test" / "dog" / "t.png", (12, 10), (0, 0, 250))
        return DataConfig(name=self.name, root=root / "train", test_root=root / "test")


def without_contract() -> list[str]:
    """The registered datasets that no DatasetContract subclass (at any depth) names."""
    covered, todo = set(), list(DatasetContract.__subclasses__())
    while todo:
        cls = todo.pop()
        covered.add(getattr(cls, "name", None))
        todo += cls.__subclasses__()
    return sorted(set(DATASETS) - covered)


def test_every_dataset_has_a_contract() -> None:
    missing = without_contract()
    assert not missing, f"write a DatasetContract subclass for {missing}"


def test_a_dataset_registered_without_a_contract_is_named() -> None:
    """The completeness check has teeth: a new dataset with no subclass is reported by name."""

    class Unchecked(DatasetSource):
        pretty, how_to_fix = "Unchecked", "nothing"

    register_dataset("unchecked_scratch")(Unchecked)
    try:
        assert "unchecked_scratch" in without_contract()
    finally:
        DATASETS.unregister("unchecked_scratch")
    assert "unchecked_scratch" not in without_contract()


class TestWebDataset(DatasetContract):
    name = "webdataset"

    def write(self, root):
        from test_stream import jpeg_bytes, write_shards

        image = lambda v: jpeg_bytes(np.full((10, 12, 3), v, np.uint8))  # noqa: E731
        write_shards(root / "train", [(image(250), 0), (image(200), 0), (image(10), 1)], per_shard=2)
        write_shards(root / "test", [(image(12), 1)], per_shard=2)
        return DataConfig(name=self.name, root=root / "train", test_root=root / "test")
