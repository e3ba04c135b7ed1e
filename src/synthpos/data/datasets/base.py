"""``DatasetSource``, the base of every registered dataset (``data.name``), and ``register_dataset``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from synthpos.data.datasets.discovery import candidate_folders
from synthpos.data.datasets.image_dataset import ImageDataset
from synthpos.data.encoded import EncodedSplit
from synthpos.errors import SynthposError
from synthpos.registry import DATASETS

if TYPE_CHECKING:
    from synthpos.config import DataConfig

#: class decorator ``@register_dataset("name")`` (``default=True``: the dataset of a recipe that names none)
register_dataset = DATASETS.register


class DatasetSource:
    """A registered dataset (``data.name``): :meth:`load` reads one split into memory.

    Register one with ``@register_dataset("name")``; ``load_dataset`` then applies the
    config's ``subset`` and ``image_size`` to whatever it returns. What is known about a
    dataset without reading it is declared here, on its class (as timm declares a model's
    facts beside its entry point): the config checks limits with it, and :meth:`find_root`
    finds the data with it, so a plugin dataset is found like a built-in one.
    """

    name: ClassVar[str]
    #: how messages name it
    pretty: ClassVar[str] = ""
    #: training images, classes and the images' side, when fixed (None: known only by reading it)
    train_images: ClassVar[int | None] = None
    num_classes: ClassVar[int | None] = None
    native_side: ClassVar[int | None] = None
    #: per-channel mean and std of the training split in [0, 1] (population std): fixed constants,
    #: so a subset or a resized copy normalises like the full set; None: computed from the images
    stats: ClassVar[tuple[tuple[float, ...], tuple[float, ...]] | None] = None
    #: where a distribution package installs the data (Debian: dataset-fashion-mnist)
    system_root: ClassVar[Path | None] = None
    #: the end of the "not found" message: how to get the data
    how_to_fix: ClassVar[str] = "pass --set data.root=DIR with the data or set $SYNTHPOS_DATA"
    #: the source resizes each image itself while reading (image folders: files differ in size)
    resized_on_load: ClassVar[bool] = False
    #: data.root must be given (no default place to look)
    needs_root: ClassVar[bool] = False
    #: $SYNTHPOS_DATA holds other datasets beside this one: only its sub-folder ``<name>`` is looked in
    env_subfolder_only: ClassVar[bool] = False
    #: the dataset's own settings (``data.<name>``); None: it has none
    settings: ClassVar[type[BaseModel] | None] = None
    #: keys of the ``data`` section that moved into this dataset's own: old key -> key in ``data.<name>``
    moved: ClassVar[dict[str, str]] = {}

    @classmethod
    def load(cls, split: str, root: Path | None, settings: BaseModel | None = None, *,
             test_root: Path | None = None, image_size: int | None = None) -> ImageDataset:
        """One split in memory, from plain arguments: the folder (``data.root``; None: look in the default
        places, :meth:`find_root`), the dataset's own settings (``data.<name>``), the evaluation split's folder
        where the dataset keeps it apart (``data.test_root``), and the side a ``resized_on_load`` source reads
        its images at (``data.image_size``; others are resized by :func:`load_dataset`)."""
        raise NotImplementedError

    @classmethod
    def encoded(cls, split: str, root: Path | None, *, test_root: Path | None = None) -> EncodedSplit | None:
        """Where the split's encoded images are, without decoding them (streaming reads from it), from the
        same plain arguments as :meth:`load`; None: the source is read into memory only (the default)."""
        return None

    @classmethod
    def from_config(cls, config: DataConfig, split: str) -> ImageDataset:
        """:meth:`load` with the ``data`` section's values (its own settings from ``data.<name>``)."""
        if "root" not in inspect.signature(cls.load).parameters:
            # A plugin written for synthpos before datasets took plain arguments: load(config, split).
            from synthpos.config import deprecated_key

            deprecated_key(f"{cls.__qualname__}.load(config, split)",
                           f"{cls.__qualname__}.load(split, root, settings, *, test_root, image_size)")
            return cls.load(config, split)
        own = config.section(cls.name) if cls.settings is not None else None
        return cls.load(split, config.root, own, test_root=config.test_root, image_size=config.image_size)

    @classmethod
    def has_data(cls, folder: Path) -> bool:
        """Whether ``folder`` holds the dataset in a layout :meth:`load` reads (default: it is a folder)."""
        return folder.is_dir()

    @classmethod
    def find_root(cls, root: Path | None) -> Path:
        """The folder that holds the data.

        Looks only in ``root`` when it is given; otherwise in ``$SYNTHPOS_DATA`` and its
        sub-folder ``<name>``, then in :attr:`system_root`.

        Raises:
            SynthposError: no place holds the data; the message names every place tried.
        """
        paths, described = candidate_folders(cls, root)
        for path in paths:
            if path.is_dir() and cls.has_data(path):
                return path
        raise SynthposError(f"{cls.pretty or cls.name} not found: looked in {', '.join(described)}; {cls.how_to_fix}")
