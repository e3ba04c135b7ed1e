"""A plugin generator with settings of its own passes the generator contract and runs from a recipe.

The plugin (tests/plugins/scratch_components.py) is written to a temporary folder and imported from
there, as a user's module: ``shift`` owns ``generate.shift.*`` and declares its moved key
``generate.shift_amount``; ``stripes`` owns ``data.stripes.*``. The recipe test runs the real CLI in a
fresh process that finds both through ``SYNTHPOS_PLUGINS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_generator_contract import GeneratorContract

sys.path.insert(0, str(Path(__file__).parents[1] / "plugins"))
from loader import forget_plugin, import_plugin, write_plugin  # noqa: E402

from synthpos.config import GenerateConfig  # noqa: E402

SRC = Path(__file__).parents[2] / "src"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    module = import_plugin(tmp_path_factory.mktemp("plugin"))
    yield module
    forget_plugin()


class TestShiftPlugin(GeneratorContract):
    """The user's generator passes the contract every built-in one does."""

    kind = "shift"

    @pytest.fixture(scope="class", autouse=True)
    def _registered(self, plugin):
        return plugin

    def weights_and_settings(self, tmp_path_factory, generator_dir, **update):
        settings = GenerateConfig(kind="shift", candidates=2, batch_size=4, shift={"amount": 5})
        return generator_dir, settings.model_copy(update=update)

    def test_its_settings_are_its_own_section(self, made) -> None:
        assert made.generator.options.amount == 5 and made.generator.record()["amount"] == 5
        # candidate c: the anchor + 5 (c + 1) grey levels, give or take the jitter (where not clipped at 255)
        anchors, whole = made.anchors.astype(int), made.whole.astype(int)
        for c in range(2):
            room = anchors + 5 * (c + 1) + 2 <= 255
            assert np.abs(whole[:, c] - anchors - 5 * (c + 1))[room].max() <= 2


def test_a_plugin_generator_and_dataset_run_from_a_recipe(tmp_path: Path) -> None:
    plugins = write_plugin(tmp_path / "mods")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stripes.txt").write_text("3")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "data": {"name": "stripes", "root": str(tmp_path / "data"), "stripes": {"count": 8, "side": 6}},
        "generate": {"kind": "shift", "shift_amount": 4, "candidates": 2, "shard_size": 4},  # the moved key
    }))
    env = {**os.environ, "SYNTHPOS_PLUGINS": "scratch_components",
           "PYTHONPATH": os.pathsep.join([str(plugins), str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "synthpos.cli", "generate", "--config", str(recipe), "-q"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    deprecations = [line for line in done.stderr.splitlines() if "deprecated" in line]
    assert deprecations == ["synthpos: 'generate.shift_amount' is deprecated; write 'generate.shift.amount' instead "
                            "(docs/architecture.md: moved keys)"]
    store = tmp_path / "run" / "store"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["generator"] == {"kind": "shift", "amount": 4, "jitter": 2, "seed": 0}
    shards = sorted(store.glob("shard-*.npy"))
    candidates = np.concatenate([np.load(s) for s in shards])
    assert candidates.shape == (8, 2, 6, 6, 1) and candidates.dtype == np.uint8
    record = json.loads((store / "stage_record.json").read_text())
    assert record["settings"]["data.stripes.count"] == 8 and record["settings"]["data.name"] == "stripes"
