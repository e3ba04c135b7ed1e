"""Import the papers' published synthetic sets into a synthpos store.

Three on-disk layouts, each as the official code writes it:

* ``clsp``: one ``.npy`` array, uint8 (N, K, H, W, 3), candidate k of training image n at
  ``[n, k]`` in the dataset's own order (dewenzeng/clsp ``generate_synthetic_dataset.py``
  stacks K arrays of (N, 32, 32, 3) along axis 1; ``utils/utils.py`` reads ``[index, k]``).
* ``generativessl``: a tree mirroring the training folder, variant k of ``<class>/<stem>.<ext>``
  at ``<class>/<stem>_<k>.<ext>`` (VectorInstitute/GenerativeSSL
  ``data_generation/img2img_stable_diff.py`` ``_save_images``; its loaders read
  ``<stem>_<k>.JPEG`` for k in ``synthetic_index_min..max``, by default 0..9).
* ``genview``: a tree mirroring the training folder with one variation per image under the
  same relative path (xiaojieli0903/genview ``mmpretrain/datasets/imagenet.py``: the real
  path with ``data_root`` replaced by ``gen_data_root``).

The store is fingerprinted against the local training split (:func:`dataset_fingerprint`),
so using it with other data later is a one-line error, and an array or tree that does not
fit the local data (count, image size, a missing variant) is refused before anything is
written. Tree images are resized to the dataset's image size; into a store of encoded shards
(``generate.store_format``), a tree's files already in the store's codec and at the dataset's
size are copied as they are, never decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from synthpos.data.datasets import ImageDataset, read_image
from synthpos.data.store.encoded_shards import encode_image
from synthpos.data.store.manifest import dataset_fingerprint
from synthpos.data.store.store import SyntheticStore
from synthpos.errors import SynthposError
from synthpos.provenance import provenance as make_provenance

if TYPE_CHECKING:
    from synthpos.config import RunConfig

Layout = Literal["clsp", "generativessl", "genview"]
LAYOUTS: tuple[str, ...] = ("clsp", "generativessl", "genview")


def read_clsp_array(path: Path, dataset: ImageDataset) -> np.ndarray:
    """The memory-mapped CLSP array, checked against ``dataset``. Shape: (N, K, H, W, C).

    Raises:
        SynthposError: not a .npy file, not uint8 (N, K, H, W, C), or N / H, W, C differ from the dataset's.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthposError(f"{path} does not exist; pass --source with CLSP's synthetic_<dataset>_..._candidates.npy")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise SynthposError(f"{path} is not a .npy array ({err}); pass CLSP's released synthetic .npy file") from err
    if array.dtype != np.uint8 or array.ndim != 5:
        raise SynthposError(f"{path} holds {array.dtype} {tuple(array.shape)}; a CLSP set is uint8 (N, K, H, W, 3)")
    n, _, *shape = array.shape
    if n != len(dataset):
        raise SynthposError(f"{path} has candidates for {n} images but the {dataset.name} training split has "
                            f"{len(dataset)}; set data.subset={n} if it was made for the first {n}, or use the set made for this dataset")
    if tuple(shape) != dataset.image_shape:
        raise SynthposError(f"{path} holds {tuple(shape)} images, the dataset has {dataset.image_shape}; "
                            "set data.image_size to match, or use the set made for this dataset")
    return array


def variant_paths(files: list[Path], data_root: Path, source: Path, layout: Layout, variants: int) -> list[list[Path]]:
    """For each training file, the paths of its ``variants`` synthetic images in ``source``.

    Raises:
        SynthposError: a file lies outside ``data_root``, or a variant is missing.
    """
    out: list[list[Path]] = []
    missing: list[Path] = []
    for file in files:
        try:
            rel = file.relative_to(data_root)
        except ValueError as err:
            raise SynthposError(f"{file} is not under the data folder {data_root}") from err
        if layout == "genview":
            candidates = [[source / rel]]
        else:
            # The generator keeps the real file's extension; the loaders read .JPEG (ImageNet's own).
            candidates = [[source / rel.parent / f"{rel.stem}_{k}{ext}" for ext in dict.fromkeys((rel.suffix, ".JPEG"))]
                          for k in range(variants)]
        found = []
        for options in candidates:
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                missing.append(options[0])
            found.append(hit)
        out.append(found)
    if missing:
        raise SynthposError(f"{len(missing)} synthetic images are missing from {source}, e.g. {missing[0]}; "
                            f"point --source at the folder that mirrors {data_root}"
                            + ("" if layout == "genview" else f", or lower --variants (now {variants})"))
    return out


def _codec_and_side(path: Path) -> tuple[str | None, int | None]:
    """An image file's codec (``png``, ``jpeg``, ``webp``; None for others) and side (None unless square),
    from its header alone: nothing is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            codec = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}.get(picture.format or "")
            width, height = picture.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None, None  # read_image says what is wrong with it when the import decodes it
    return codec, width if width == height else None


def import_store(
    source: Path,
    layout: Layout,
    dataset: ImageDataset,
    store_path: Path,
    files: list[Path] | None = None,
    data_root: Path | None = None,
    variants: int = 10,
    shard_size: int = 500,
    progress: Callable[[int], None] | None = None,
    store_format: str = "raw",
    quality: int = 95,
) -> SyntheticStore:
    """Write the published synthetic set at ``source`` as a synthpos store for ``dataset``.

    Args:
        source: the CLSP .npy file, or the root of a GenerativeSSL / GenView tree.
        layout: ``clsp``, ``generativessl`` or ``genview`` (see the module docstring).
        dataset: the local training split the set was made from (its first ``len(dataset)`` images).
        store_path: where the store goes (resumes an import with the same settings).
        files, data_root: tree layouts: the dataset's files in its order (:func:`image_folder_files`) and its folder.
        variants: generativessl: K, the variants 0..K-1 of each image (GenerativeSSL: 10).
        shard_size: anchors per shard.
        progress: called with the number of anchors done after each shard.
        store_format, quality: the shard format (``generate.store_format``; ``auto`` takes a tree's own codec
            above 64 px). A tree's files already in the store's codec and size are kept byte for byte, undecoded.

    Raises:
        SynthposError: the set does not fit the local dataset, or the store exists with other settings.
    """
    source = Path(source)
    if layout == "clsp":
        array = read_clsp_array(source, dataset)
        candidates = array.shape[1]

        def shard_of(start: int, end: int) -> np.ndarray:
            return np.ascontiguousarray(array[start:end])
    elif layout in ("generativessl", "genview"):
        if files is None or data_root is None:
            raise ValueError("tree layouts need the dataset's files and data_root")
        if not source.is_dir():
            raise SynthposError(f"--source {source} is not a folder; pass the root of the {layout} tree")
        if len(files) != len(dataset):
            raise ValueError(f"{len(files)} files for {len(dataset)} images")
        if variants < 1:
            raise SynthposError(f"--variants must be at least 1, got {variants}")
        paths = variant_paths(files, Path(data_root), source, layout, 1 if layout == "genview" else variants)
        candidates = len(paths[0])
        size = dataset.image_shape[0]
        if dataset.image_shape[0] != dataset.image_shape[1] or dataset.image_shape[2] != 3:
            raise SynthposError(f"tree layouts need square RGB images, the dataset has {dataset.image_shape}; set data.image_size")

        def shard_of(start: int, end: int) -> np.ndarray:
            return np.stack([np.stack([read_image(p, size) for p in paths[i]]) for i in range(start, end)])

        def encoded_of(start: int, end: int, codec: str) -> list[bytes]:
            return [p.read_bytes() if _codec_and_side(p) == (codec, size) else
                    encode_image(read_image(p, size), codec, quality) for i in range(start, end) for p in paths[i]]
    else:
        raise SynthposError(f"--layout {layout!r} is unknown; use one of {', '.join(LAYOUTS)}")

    store = SyntheticStore.create(
        store_path,
        dataset_fingerprint(dataset.name, dataset.split, dataset.images),
        candidates=int(candidates),
        shard_size=shard_size,
        generator={"kind": "imported", "layout": layout, "source": str(source.resolve()), "candidates": int(candidates)},
        provenance=make_provenance(),
        store_format=store_format,
        quality=quality,
        prefer=_codec_and_side(paths[0][0])[0] if layout != "clsp" else None,
    )
    codec = getattr(store.shard_format, "codec", None)
    for shard in store.missing_shards():
        start, end = store.layout.shard_range(shard)
        if codec is not None and layout != "clsp":
            store.write_encoded_shard(shard, encoded_of(start, end, codec))
        else:
            store.write_shard(shard, shard_of(start, end))
        if progress is not None:
            progress(end - start)
    return store


def import_store_stage(config: RunConfig, source: Path, layout: str, store: Path | None, variants: int,
                       show_progress: bool = True) -> SyntheticStore:
    """``synthpos import-store`` from a run config: its training split (``data``), its store path.

    The split is opened as ``data.stream`` says: only its length, shape and the fingerprint's few
    sampled images are read from it, so a streamed ImageNet is never decoded whole.
    """
    from synthpos.data.datasets import find_data_root, image_folder_files
    from synthpos.data.stream import open_dataset
    from synthpos.progress import progress_bar

    if layout not in LAYOUTS:
        raise SynthposError(f"--layout {layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    if layout != "clsp" and config.data.name != "image_folder":
        raise SynthposError(f"--layout {layout} mirrors an image folder; set data.name=image_folder and data.root "
                            f"to the training images (not {config.data.name})")
    dataset = open_dataset(config.data, "train")
    files = data_root = None
    if layout != "clsp":
        data_root = find_data_root("image_folder", config.data.root)
        files = image_folder_files(data_root)[: len(dataset)]
    with progress_bar("import", total=len(dataset), enabled=show_progress) as bar:
        return import_store(Path(source), layout, dataset, store or config.store_dir, files, data_root, variants,
                            config.generate.shard_size, progress=bar.update,
                            store_format=config.generate.store_format, quality=config.generate.store_quality)
