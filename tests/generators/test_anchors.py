"""``generate.kind: anchors``, the real-view control: K copies of each anchor, no training, no weights.

The generator contract (record, batch and shard independence) is checked with every other
generator in test_generator_contract.py; here: the candidates are the anchors, ``run`` trains
no generator for it, and ``synthpos generate`` fills a normal store with exactly the anchors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthpos.config import GenerateConfig, load_config
from synthpos.data import load_dataset
from synthpos.data.synthetic_store import SyntheticStore
from synthpos.generators.registry import build_generator, generator_class

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SCRIPT = Path(sys.executable).parent / "synthpos"


def test_candidates_are_copies_of_their_anchor(anchor_images) -> None:
    generator = build_generator("anchors", Path("unused"), GenerateConfig(kind="anchors", candidates=4), 0, "cpu")
    out = generator.generate(anchor_images, first_index=3)
    assert out.shape == (10, 4, 8, 8, 1) and out.dtype == np.uint8 and out.flags.writeable
    for k in range(4):
        assert np.array_equal(out[:, k], anchor_images)
    out[0, 0] += 1  # a copy: writing it leaves the anchors alone
    assert not np.array_equal(out[0, 0], anchor_images[0])
    assert generator.record() == {"kind": "anchors", "candidates": 4}


def test_run_trains_no_generator_for_it(tmp_path) -> None:
    from synthpos.stages import BY_NAME, needed

    assert generator_class("anchors").trains_on_data is False
    anchors = load_config(None, [f"run_dir={tmp_path}", "generate.kind=anchors", "pretrain.synthetic.mode=multipos"])
    clsp = load_config(None, [f"run_dir={tmp_path}", "generate.kind=clsp", "pretrain.synthetic.mode=multipos"])
    assert "not trained on the data" in needed(BY_NAME["train-generator"], anchors)
    assert needed(BY_NAME["generate"], anchors) is None  # the store is still made (and read by pretraining)
    assert needed(BY_NAME["train-generator"], clsp) is None


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_cli_generate_makes_a_store_of_exactly_the_anchors(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SYNTHPOS_DATA", None)
    result = subprocess.run(
        [str(SCRIPT), "generate", "-q", "--set", "run_dir=run", "--set", "data.subset=40",
         "--set", "generate.kind=anchors", "--set", "generate.candidates=3", "--set", "generate.shard_size=16"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "run" / "generator").exists()  # no generator trained or looked for
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", "data.subset=40"])
    train = load_dataset(config.data, "train")
    store = SyntheticStore.open(tmp_path / "run" / "store", train.name, train.split, train.images)
    assert store.manifest["generator"] == {"kind": "anchors", "candidates": 3}
    assert len(store) == 40 and store.candidates == 3 and store.complete
    every = np.stack([store[a] for a in range(len(store))])  # (40, 3, 28, 28, 1)
    assert np.array_equal(every, np.repeat(train.images[:, None], 3, axis=1))
