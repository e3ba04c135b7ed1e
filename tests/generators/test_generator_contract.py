"""One contract for every registered generator, by inheritance (after diffusers' SchedulerCommonTest).

:class:`GeneratorContract` holds the checks; a generator's test is a subclass that says how
to get small weights and settings for it (``weights_and_settings``) and how exactly its
candidates repeat (``exact``). ``test_every_generator_has_a_contract`` fails for a registered
generator without a subclass, so a new one (built in or a plugin) is checked the day it
registers. Tolerance: clsp's candidates are equal byte for byte. unclip's are equal up to one
grey level in under 2% of the pixels: its CLIP and UNet kernels (attention, conv) block their
float sums by batch size on CPU, and the 8-bit output rounds a few of the differences to a
level apart (the same tolerance as tests/generators/test_unclip.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from synthpos.config import GenerateConfig, load_config
from synthpos.errors import SynthposError
from synthpos.generators.registry import CandidateGenerator, build_generator, generator_class
from synthpos.registry import GENERATORS


class GeneratorContract:
    """What every generator guarantees: a JSON record that names what makes its candidates and
    changes with the seed, and candidates that depend on (seed, anchor, candidate) only."""

    #: the name it registers under (``generate.kind``)
    kind: ClassVar[str]
    #: candidates equal byte for byte across batch sizes and shards (else within one grey level)
    exact: ClassVar[bool] = True
    #: whether the seed decides the candidates (a generator that draws nothing, like anchors, ignores it)
    seeded: ClassVar[bool] = True

    def weights_and_settings(self, tmp_path_factory, generator_dir: Path, **update: Any) -> tuple[Path, GenerateConfig]:
        """Small weights for this generator and settings (two candidates), ``update`` applied."""
        raise NotImplementedError

    def _equal(self, a: np.ndarray, b: np.ndarray) -> None:
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        if self.exact:
            assert np.array_equal(a, b)
        else:
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())

    @pytest.fixture(scope="class")
    def made(self, tmp_path_factory, generator_dir, anchor_images) -> SimpleNamespace:
        """Each generator built and run once per class: the same weights and settings twice, another
        seed, another batch size; their records and candidates for four anchors."""
        anchors = anchor_images[:4]
        weights, settings = self.weights_and_settings(tmp_path_factory, generator_dir)
        _, small = self.weights_and_settings(tmp_path_factory, generator_dir, batch_size=1)

        def build(seed: int, s: GenerateConfig) -> CandidateGenerator:
            generator = build_generator(self.kind, weights, s, seed, "cpu")
            generator.prepare(anchors, None, tmp_path_factory.mktemp(f"{self.kind}_fit"))
            return generator

        generator, again, other_seed, one_by_one = build(0, settings), build(0, settings), build(1, settings), build(0, small)
        return SimpleNamespace(anchors=anchors, settings=settings, generator=generator, again=again, other_seed=other_seed,
                               one_by_one=one_by_one, whole=generator.generate(anchors, first_index=0))

    def test_it_is_registered_under_its_kind_and_says_whether_stage_one_trains_it(self) -> None:
        cls = generator_class(self.kind)
        assert issubclass(cls, CandidateGenerator) and cls.name == self.kind
        assert isinstance(cls.trains_on_data, bool)
        assert load_config(None, [f"generate.kind={self.kind}"]).generate.kind == self.kind

    def test_the_record_is_json_and_the_same_for_the_same_weights_and_settings(self, made) -> None:
        record = made.generator.record()
        assert json.loads(json.dumps(record)) == record
        assert made.again.record() == record

    def test_another_seed_makes_other_candidates_and_says_so(self, made) -> None:
        other = made.other_seed.generate(made.anchors, first_index=0)
        if not self.seeded:  # the same bytes and the same record, so every seed shares one store
            assert made.other_seed.record() == made.generator.record() and np.array_equal(other, made.whole)
            return
        assert made.other_seed.record() != made.generator.record()
        assert not np.array_equal(other, made.whole)

    def test_candidates_do_not_depend_on_the_batch_size_or_the_shard(self, made) -> None:
        assert made.whole.shape == (4, made.settings.candidates, *made.anchors.shape[1:])
        self._equal(made.one_by_one.generate(made.anchors, first_index=0), made.whole)
        # Anchors 2-3 made on their own, knowing their index, as another shard would.
        self._equal(made.generator.generate(made.anchors[2:], first_index=2), made.whole[2:])


class TestCLSP(GeneratorContract):
    kind = "clsp"

    def weights_and_settings(self, tmp_path_factory, generator_dir, **update):
        settings = GenerateConfig(kind="clsp", candidates=2, num_steps=3, batch_size=4, precision="fp32")
        return generator_dir, settings.model_copy(update=update)


class TestAnchors(GeneratorContract):
    kind = "anchors"
    seeded = False

    def weights_and_settings(self, tmp_path_factory, generator_dir, **update):
        settings = GenerateConfig(kind="anchors", candidates=3, batch_size=4)
        return generator_dir, settings.model_copy(update=update)

    def test_candidates_are_the_anchor_itself(self, made) -> None:
        assert np.array_equal(made.whole, np.repeat(made.anchors[:, None], 3, axis=1))


class TestUnCLIP(GeneratorContract):
    kind = "unclip"
    exact = False

    def weights_and_settings(self, tmp_path_factory, generator_dir, **update):
        pytest.importorskip("transformers")
        from test_unclip import build_tiny_unclip  # the tiny pipeline of tests/generators/test_unclip.py

        from synthpos.generators.unclip import UnCLIPSettings

        path = tmp_path_factory.getbasetemp() / "contract_unclip"
        if not path.is_dir():
            build_tiny_unclip(path)
        settings = GenerateConfig(kind="unclip", candidates=2, batch_size=3, precision="fp32",
                                  unclip=UnCLIPSettings(num_steps=2, guidance_scale=3.0))
        return path, settings.model_copy(update=update)


def test_every_generator_has_a_contract() -> None:
    covered = {c.kind for c in GeneratorContract.__subclasses__()}
    assert set(GENERATORS) <= covered, f"write a GeneratorContract subclass for {sorted(set(GENERATORS) - covered)}"


def test_an_unknown_kind_is_one_line_when_the_config_is_read() -> None:
    with pytest.raises(SynthposError, match=r"generate.kind.*'no_such_generator' is not a known generator; known: .*clsp") as err:
        load_config(None, ["generate.kind=no_such_generator"])
    assert "\n" not in str(err.value)
