"""The generator registry: every way of filling a synthetic store is one class.

A generator turns anchors into K candidates each; it registers in
:data:`synthpos.registry.GENERATORS`, which imports every module of this package on its first
look-up (so no list of generators is kept anywhere). Stage 2 (``generate_store``) owns
everything else: the store, its shards, resuming, splitting the work over processes.
A new generator (IC-GAN, say) is one class registered under a name, chosen with
``generate.kind`` in the run config; its settings are a pydantic model it declares, read
from ``generate.<name>`` (as diffusers' ``ConfigMixin`` keeps a class's config with it)::

    class ICGANSettings(BaseModel):
        truncation: float = 1.0

    @register_generator("icgan")
    class ICGANGenerator(CandidateGenerator):
        settings = ICGANSettings              # generate.icgan.truncation
        def __init__(self, generator_dir, settings, seed, device, *, candidates, batch_size=128,
                     precision="auto", channels_last=True, compile=False): ...
        def record(self): return {"kind": "icgan", ...}
        def generate(self, anchors, first_index, labels=None, bar=None): ...

It is built from its own settings and plain arguments (:meth:`CandidateGenerator.from_config`
reads them out of the ``generate`` section), never from the run's config.

The contract that keeps stores correct:

- ``record()`` is JSON data that says what makes the candidates (weights hash, sampler
  settings, seed, precision). It is written to the store's manifest; a store is resumed
  or reused only when the record is equal.
- ``generate()`` is deterministic per candidate: the candidates of anchor ``first_index + i``
  do not depend on which shard, batch or process made them (seed every draw from
  ``derive_seed(seed, anchor, candidate)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from synthpos.registry import GENERATORS

if TYPE_CHECKING:
    from synthpos.config import GenerateConfig, TrainGeneratorConfig

__all__ = ["CandidateGenerator", "GENERATORS", "build_generator", "generator_class", "register_generator"]


class CandidateGenerator(ABC):
    """Makes K synthetic candidates for each anchor image."""

    #: images per anchor; set by the subclass from its settings
    candidates: int
    #: whether stage 1 (``train-generator``) trains this generator on the run's data; a generator
    #: that loads pretrained weights (unclip) says False, and ``run`` then skips stage 1
    trains_on_data: ClassVar[bool] = False
    #: the generator's own settings (``generate.<name>``); None: it has none
    settings: ClassVar[type[BaseModel] | None] = None
    #: keys of the ``generate`` section that moved into this generator's own: old key -> key in ``generate.<name>``
    #: (each still works, with one deprecation line)
    moved: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_config(cls, generator_dir: Path, config: GenerateConfig, seed: int, device: Any) -> CandidateGenerator:
        """Built from the ``generate`` section: the generator's own settings (``generate.<name>``) and the
        store's that every generator takes, as plain arguments."""
        own = config.section(cls.name) if cls.settings is not None else None
        return cls(generator_dir, own, seed, device, candidates=config.candidates, batch_size=config.batch_size,
                   precision=config.precision, channels_last=config.channels_last, compile=config.compile)

    @classmethod
    def check_training(cls, settings: BaseModel | None, train: TrainGeneratorConfig) -> None:
        """When stage 1 trains this generator in the same run (``trains_on_data``): raise ValueError (one
        line, naming the keys) when ``settings`` ask what ``train`` will not give; default: nothing to check."""

    def prepare(self, images: np.ndarray, labels: np.ndarray | None, work_dir: Path) -> None:
        """Once per store, before any shard: fit what the generator needs from the data.

        ``work_dir`` is the store directory; anything fitted (a PCA, thresholds) is saved
        there so that a resumed or distributed run uses the same fit. Default: nothing.
        """

    def check_images(self, images: np.ndarray) -> None:
        """Raise :class:`SynthposError` when the generator cannot make candidates for these images."""

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """JSON description of what makes the candidates (goes into the store manifest)."""

    @abstractmethod
    def generate(
        self, anchors: np.ndarray, first_index: int, labels: np.ndarray | None = None, bar: Any = None
    ) -> np.ndarray:
        """K candidates per anchor.

        Args:
            anchors: uint8 images. Shape: (n, H, W, C).
            first_index: the dataset index of ``anchors[0]`` (for per-candidate seeds).
            labels: class labels of the anchors (n,), for class-conditional generators.
            bar: a progress bar with ``update(count)``, advanced per candidate made.

        Returns:
            uint8 candidates. Shape: (n, K, H, W, C).
        """


def register_generator(name: str, default: bool = False) -> Callable[[type[CandidateGenerator]], type[CandidateGenerator]]:
    """Class decorator: make a generator available as ``generate.kind: NAME`` (in :data:`synthpos.registry.GENERATORS`);
    ``default=True``: the one a config that sets no ``generate.kind`` gets."""
    return GENERATORS.register(name, default=default)


def generator_class(kind: str) -> type[CandidateGenerator]:
    """The class registered as ``kind`` (what it declares, such as ``trains_on_data``, without loading weights).

    Raises:
        SynthposError: no generator of that name is registered (one line: the known ones, and a
            built-in one whose extra is not installed, with the command that installs it).
    """
    return GENERATORS.get(kind)


def build_generator(kind: str, generator_dir: Path, settings: GenerateConfig, seed: int, device: Any) -> CandidateGenerator:
    """The registered generator ``kind``, loaded from ``generator_dir``, with the ``generate`` section ``settings``.

    Raises:
        SynthposError: no generator of that name is registered.
    """
    return generator_class(kind).from_config(generator_dir, settings, seed, device)
