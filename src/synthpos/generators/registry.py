"""The generator registry: every way of filling a synthetic store is one class.

A generator turns anchors into K candidates each. Stage 2 (``generate_store``) owns
everything else: the store, its shards, resuming, splitting the work over processes.
A new generator (IC-GAN, say) is one class registered under a name, chosen with
``generate.kind`` in the run config::

    @register_generator("icgan")
    class ICGANGenerator(CandidateGenerator):
        def __init__(self, generator_dir, settings, seed, device): ...
        def record(self): return {"kind": "icgan", ...}
        def generate(self, anchors, first_index, labels=None, bar=None): ...

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
from typing import Any, ClassVar

import numpy as np

from synthpos.errors import SynthposError

__all__ = ["CandidateGenerator", "GENERATORS", "build_generator", "generator_class", "register_generator"]


class CandidateGenerator(ABC):
    """Makes K synthetic candidates for each anchor image."""

    #: images per anchor; set by the subclass from its settings
    candidates: int
    #: whether stage 1 (``train-generator``) trains this generator on the run's data; a generator
    #: that loads pretrained weights (unclip) says False, and ``run`` then skips stage 1
    trains_on_data: ClassVar[bool] = False

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


GENERATORS: dict[str, type[CandidateGenerator]] = {}


def register_generator(name: str) -> Callable[[type[CandidateGenerator]], type[CandidateGenerator]]:
    """Class decorator: make a generator available as ``generate.kind: NAME``."""

    def add(cls: type[CandidateGenerator]) -> type[CandidateGenerator]:
        if name in GENERATORS and GENERATORS[name] is not cls:
            raise ValueError(f"a generator named {name!r} is already registered ({GENERATORS[name].__name__})")
        GENERATORS[name] = cls
        return cls

    return add


def _load_builtin_generators() -> None:
    # Importing a module registers its generators; heavy imports stay lazy until used.
    import synthpos.generators.anchors  # noqa: F401  (anchors: the real-view control)
    import synthpos.generators.clsp_generator  # noqa: F401  (clsp)
    try:
        import synthpos.generators.unclip  # noqa: F401  (unclip, needs transformers)
    except ModuleNotFoundError as err:
        if err.name not in ("transformers", "synthpos.generators.unclip"):
            raise


def generator_class(kind: str) -> type[CandidateGenerator]:
    """The class registered as ``kind`` (what it declares, such as ``trains_on_data``, without loading weights).

    Raises:
        SynthposError: no generator of that name is registered.
    """
    _load_builtin_generators()
    if kind not in GENERATORS:
        known = ", ".join(sorted(GENERATORS)) or "none"
        hint = " (install the 'unclip' extra: pip install 'synthpos[unclip]')" if kind == "unclip" else ""
        raise SynthposError(f"generate.kind={kind!r} is not a known generator{hint}; known: {known}")
    return GENERATORS[kind]


def build_generator(kind: str, generator_dir: Path, settings: Any, seed: int, device: Any) -> CandidateGenerator:
    """The registered generator ``kind``, loaded from ``generator_dir``.

    Raises:
        SynthposError: no generator of that name is registered.
    """
    return generator_class(kind)(generator_dir, settings, seed, device)
