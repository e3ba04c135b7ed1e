"""A plugin dataset with settings of its own (``data.stripes.*``) passes the dataset contract.

The plugin (tests/plugins/scratch_components.py) is written to a temporary folder and imported
from there, as a user's module; tests/generators/test_plugin_generator.py runs it from a recipe
through ``SYNTHPOS_PLUGINS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_dataset_contract import DatasetContract

sys.path.insert(0, str(Path(__file__).parents[2] / "plugins"))
from loader import forget_plugin, import_plugin  # noqa: E402

from synthpos.config import DataConfig, load_config  # noqa: E402
from synthpos.data.datasets import load_dataset  # noqa: E402
from synthpos.errors import SynthposError  # noqa: E402


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    module = import_plugin(tmp_path_factory.mktemp("plugin"))
    yield module
    forget_plugin()


class TestStripesPlugin(DatasetContract):
    """The user's dataset passes the contract every built-in one does."""

    name = "stripes"

    @pytest.fixture(autouse=True)
    def _registered(self, plugin):
        return plugin

    def write(self, root):
        root.mkdir(parents=True, exist_ok=True)
        (root / "stripes.txt").write_text("5")
        return DataConfig(name=self.name, root=root, stripes={"count": 7, "side": 12})

    def test_its_settings_are_its_own_section(self, config: DataConfig) -> None:
        assert len(load_dataset(config, "train")) == 7
        assert load_dataset(config, "train").image_shape == (12, 12, 1)
        assert config.model_dump()["stripes"] == {"count": 7, "side": 12}
        recipe = load_config(None, ["data.name=stripes", f"data.root={config.root}", "data.stripes.count=4"])
        assert recipe.data.section("stripes").count == 4 and recipe.data.stripes.side == 8
        with pytest.raises(SynthposError, match=r"unknown key 'data\.stripes\.colour'"):
            load_config(None, ["data.name=stripes", f"data.root={config.root}", "data.stripes.colour=1"])
        with pytest.raises(SynthposError, match=r"data\.stripes\.count"):
            load_config(None, ["data.name=stripes", f"data.root={config.root}", "data.stripes.count=1"])
