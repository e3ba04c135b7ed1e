"""One contract for every registered generator: record stable, candidates independent of batch size and shard.

Each generator needs weights, so each has a factory here; a generator registered without
one fails ``test_every_generator_has_a_contract``. Tolerance: clsp's candidates are equal
byte for byte. unclip's are equal up to one grey level in under 2% of the pixels: its
CLIP and UNet kernels (attention, conv) block their float sums by batch size on CPU, and
the 8-bit output rounds a few of the differences to a level apart (the same tolerance as
tests/generators/test_unclip.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthpos.config import GenerateConfig, UnCLIPConfig
from synthpos.generators.registry import GENERATORS, _load_builtin_generators, build_generator


def _clsp(tmp_path_factory, generator_dir, **update):
    settings = GenerateConfig(kind="clsp", candidates=2, num_steps=3, batch_size=4, precision="fp32").model_copy(update=update)
    return generator_dir, settings


def _unclip(tmp_path_factory, generator_dir, **update):
    pytest.importorskip("transformers")
    from test_unclip import build_tiny_unclip  # the tiny pipeline of tests/generators/test_unclip.py

    path = tmp_path_factory.getbasetemp() / "contract_unclip"
    if not path.is_dir():
        build_tiny_unclip(path)
    settings = GenerateConfig(kind="unclip", candidates=2, batch_size=3, precision="fp32",
                              unclip=UnCLIPConfig(num_steps=2, guidance_scale=3.0)).model_copy(update=update)
    return path, settings


def _anchors(tmp_path_factory, generator_dir, **update):
    # No weights: the folder is ignored (a path that does not exist shows it is never read).
    settings = GenerateConfig(kind="anchors", candidates=3, batch_size=4).model_copy(update=update)
    return tmp_path_factory.getbasetemp() / "no_weights", settings


FACTORIES = {"clsp": _clsp, "unclip": _unclip, "anchors": _anchors}
EXACT = {"clsp": True, "unclip": False, "anchors": True}
#: whether the seed changes the candidates (anchors: copies of the anchor, the same under every seed)
SEEDED = {"clsp": True, "unclip": True, "anchors": False}


def _equal(kind: str, a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    if EXACT[kind]:
        assert np.array_equal(a, b)
    else:
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())


def test_every_generator_has_a_contract() -> None:
    _load_builtin_generators()
    assert set(GENERATORS) <= set(FACTORIES), f"add a factory for {set(GENERATORS) - set(FACTORIES)}"


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_generator_contract(kind, tmp_path_factory, generator_dir, anchor_images) -> None:
    _load_builtin_generators()
    if kind not in GENERATORS:
        pytest.skip(f"{kind} is not registered here (its extra is not installed)")
    anchors = anchor_images[:4]
    weights, settings = FACTORIES[kind](tmp_path_factory, generator_dir)
    generator = build_generator(kind, weights, settings, 0, "cpu")
    generator.prepare(anchors, None, tmp_path_factory.mktemp(f"{kind}_fit"))
    # Record: JSON data, the same from a second instance built from the same weights and settings.
    record = generator.record()
    assert json.loads(json.dumps(record)) == record
    again = build_generator(kind, weights, settings, 0, "cpu")
    again.prepare(anchors, None, tmp_path_factory.mktemp(f"{kind}_fit2"))
    assert again.record() == record
    # Another seed makes other candidates, and says so in the record (a generator that draws nothing:
    # the same candidates and the same record, so every seed shares its store).
    other_seed = build_generator(kind, weights, settings, 1, "cpu")
    other_seed.prepare(anchors, None, tmp_path_factory.mktemp(f"{kind}_fit3"))
    assert (other_seed.record() != record) == SEEDED[kind]
    whole = generator.generate(anchors, first_index=0)
    assert whole.shape == (4, settings.candidates, *anchors.shape[1:])
    # The same candidates in another batch size ...
    _, small = FACTORIES[kind](tmp_path_factory, generator_dir, batch_size=1)
    one_by_one = build_generator(kind, weights, small, 0, "cpu")
    one_by_one.prepare(anchors, None, tmp_path_factory.mktemp(f"{kind}_fit4"))
    _equal(kind, one_by_one.generate(anchors, first_index=0), whole)
    # ... and in another shard (anchors 2-3 made on their own, knowing their index).
    _equal(kind, generator.generate(anchors[2:], first_index=2), whole[2:])
    assert np.array_equal(other_seed.generate(anchors, first_index=0), whole) != SEEDED[kind]
