"""Encoded shards: each candidate a PNG, JPEG or WebP file, packed into one file per shard with an offset index.

A shard ``shard-NNNNN.<codec>.pack`` is::

    b"SPPACK01"                     magic (8 bytes)
    uint32 LE L, then L bytes       JSON header: {"codec": "png", "shape": [n, K, H, W, C]}
    uint64 LE offsets[n*K + 1]      candidate (i, k)'s bytes are data[offsets[i*K + k] : offsets[i*K + k + 1]]
    data                            the encoded images, one after another

so one candidate is read by one slice of the memory-mapped file and one decode (per-candidate
random access), and a cut or padded file is found by its size (the index says where the data
ends). The codec's bytes are kept as they are: an imported JPEG is stored verbatim
(:meth:`EncodedShards.write_encoded`), never decoded and encoded again. Records (size and
SHA-256) and repair are those of every format: the file is hashed as written.

PNG is lossless; JPEG and WebP are lossy at ``quality`` (a JPEG is written 4:4:4: candidates
are small, and 4:2:0 halves their colour resolution; lossy WebP is always 4:2:0, and WebP at
quality 100 is lossless WebP). Decoding goes through Pillow, as
:func:`~synthpos.data.datasets.read_image` does, so an image decodes here to the same pixels
as when it is read from a folder.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from synthpos.data.store.shard_format import ShardDamaged, ShardFormat
from synthpos.errors import SynthposError

MAGIC = b"SPPACK01"
_LEN = struct.Struct("<I")


def encode_image(image: np.ndarray, codec: str, quality: int) -> bytes:
    """One uint8 (H, W, C) image (C = 1 or 3) as the bytes of a ``codec`` file."""
    from PIL import Image

    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image, "L" if image.shape[-1] == 1 else "RGB")
    buf = io.BytesIO()
    if codec == "png":
        picture.save(buf, "PNG")
    elif codec == "jpeg":
        picture.save(buf, "JPEG", quality=quality, subsampling=0)
    else:  # libwebp's lossy mode is always 4:2:0; quality 100 is its lossless mode instead
        picture.save(buf, "WEBP", quality=quality, method=4, lossless=quality == 100)
    return buf.getvalue()


def decode_image(data: bytes | memoryview, channels: int) -> np.ndarray:
    """The bytes of one image file as uint8 (H, W, channels), converted as ``read_image`` converts."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        array = np.asarray(picture.convert("L" if channels == 1 else "RGB"))
    return array[..., None] if channels == 1 else array


class PackReader:
    """An open pack file, indexed like a uint8 (n, K, H, W, C) array (see :class:`ShardReader`)."""

    def __init__(self, path: Path, shape: tuple[int, ...], codec: str) -> None:
        self.path, self.shape = path, tuple(shape)
        try:
            self._bytes = np.memmap(path, dtype=np.uint8, mode="r")
        except ValueError as err:  # an empty file cannot be mapped
            raise ShardDamaged(f"cannot be mapped: {err}") from err
        buf = self._bytes
        if len(buf) < len(MAGIC) + _LEN.size or bytes(buf[: len(MAGIC)]) != MAGIC:
            raise ShardDamaged("not a synthpos pack file (its first bytes differ)")
        (length,) = _LEN.unpack(bytes(buf[len(MAGIC): len(MAGIC) + _LEN.size]))
        start = len(MAGIC) + _LEN.size
        try:
            header = json.loads(bytes(buf[start: start + length]))
            found = (header["codec"], tuple(header["shape"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ShardDamaged("its header is not readable") from err
        if found != (codec, self.shape):
            raise ShardDamaged(f"holds {found[0]} {found[1]}, expected {codec} {self.shape}")
        count = int(np.prod(self.shape[:2]))
        index_at = start + length
        self._data_at = index_at + 8 * (count + 1)
        if len(buf) < self._data_at:
            raise ShardDamaged(f"cut short: {len(buf)} bytes, its index ends at {self._data_at}")
        self._offsets = np.frombuffer(buf[index_at: self._data_at], dtype="<u8").astype(np.int64)
        if (self._offsets[0] != 0 or np.any(np.diff(self._offsets) < 0)
                or self._data_at + int(self._offsets[-1]) != len(buf)):
            raise ShardDamaged(f"its index does not match its {len(buf)} bytes (cut short, padded or overwritten)")

    def _decode(self, flat: int) -> np.ndarray:
        a, b = self._data_at + self._offsets[flat], self._data_at + self._offsets[flat + 1]
        try:
            image = decode_image(memoryview(self._bytes[a:b]), self.shape[-1])
        except (OSError, ValueError, SyntaxError) as err:  # Pillow's words for a corrupt file
            image, detail = None, str(err)
        if image is None or image.shape != self.shape[2:]:
            anchor, k = divmod(flat, self.shape[1])
            what = detail if image is None else f"decodes to {image.shape}, expected {self.shape[2:]}"
            raise SynthposError(f"{self.path} is damaged (candidate {k} of its anchor {anchor}: {what}); run "
                                "`synthpos generate --config FILE` with the store's config to remake it")
        return image

    def __getitem__(self, index: Any) -> np.ndarray:
        k = self.shape[1]
        if isinstance(index, tuple):  # (offsets, candidates): one candidate per anchor
            flat = np.asarray(index[0], dtype=np.int64) * k + np.asarray(index[1], dtype=np.int64)
            out = np.empty((len(flat), *self.shape[2:]), dtype=np.uint8)
            for row, i in enumerate(flat.tolist()):
                out[row] = self._decode(i)
            return out
        anchor = int(index)
        if not 0 <= anchor < self.shape[0]:
            raise IndexError(f"anchor {anchor} outside this shard's 0..{self.shape[0] - 1}")
        return np.stack([self._decode(anchor * k + c) for c in range(k)])


class EncodedShards(ShardFormat):
    """Candidates as encoded image files in one pack per shard; a subclass per codec."""

    codec: ClassVar[str]

    def __init__(self, quality: int = 95) -> None:
        if not 1 <= quality <= 100:
            raise SynthposError(f"generate.store_quality must be in 1..100, got {quality}")
        self.quality = quality

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> ShardFormat:
        return cls(int(entry.get("quality", 95)))

    def manifest_entry(self) -> dict[str, Any]:
        return {"name": self.name, **({} if self.codec == "png" else {"quality": self.quality})}

    def exact_bytes(self, shape: tuple[int, ...]) -> None:
        return None  # an encoded image's size depends on its content: the record has it

    def write(self, out: BinaryIO, candidates: np.ndarray) -> None:
        n, k = candidates.shape[:2]
        blobs = [encode_image(candidates[i, c], self.codec, self.quality) for i in range(n) for c in range(k)]
        self.write_encoded(out, blobs, candidates.shape)

    def write_encoded(self, out: BinaryIO, blobs: Sequence[bytes], shape: tuple[int, ...]) -> None:
        """Pack already-encoded files (this codec's, of images of ``shape[2:]``), anchor-major, as they are."""
        if len(blobs) != int(np.prod(shape[:2])):
            raise ValueError(f"{len(blobs)} encoded images for a shard of {shape[0]} x {shape[1]} candidates")
        header = json.dumps({"codec": self.codec, "shape": [int(s) for s in shape]}).encode()
        offsets = np.zeros(len(blobs) + 1, dtype="<u8")
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        out.write(MAGIC + _LEN.pack(len(header)) + header + offsets.tobytes())
        for blob in blobs:
            out.write(blob)

    def open(self, path: Path, shape: tuple[int, ...]) -> PackReader:
        return PackReader(path, shape, self.codec)


class PngShards(EncodedShards):
    name: ClassVar[str] = "png"
    codec: ClassVar[str] = "png"
    suffix: ClassVar[str] = ".png.pack"


class JpegShards(EncodedShards):
    name: ClassVar[str] = "jpeg"
    codec: ClassVar[str] = "jpeg"
    suffix: ClassVar[str] = ".jpeg.pack"


class WebpShards(EncodedShards):
    name: ClassVar[str] = "webp"
    codec: ClassVar[str] = "webp"
    suffix: ClassVar[str] = ".webp.pack"
