"""Reading a config is light: it imports every method, mode, generator and dataset module (their settings
are part of the schema), so none of them may import Lightning or the generator libraries at module level;
training imports Lightning only when it starts (synthpos.methods.training.lightning_class), a generator
imports diffusers only where it builds or loads a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("lightning", "pytorch_lightning", "diffusers", "transformers")

_LOAD = """
import json, sys
from synthpos.config import load_config
from synthpos.registry import DATASETS, GENERATORS, METHODS, MODES
seen = {}
for path in sys.argv[1:]:
    config = load_config(path)
    METHODS.get(config.pretrain.method), MODES.get(config.pretrain.synthetic.mode)
    GENERATORS.get(config.generate.kind).settings, DATASETS.get(config.data.name)
    seen[path] = [m for m in %r if m in sys.modules]
print(json.dumps(seen))
""" % (HEAVY,)


def _heavy_modules_after_loading(recipes: list[Path]) -> dict[str, list[str]]:
    """Each recipe -> the heavy packages in ``sys.modules`` after loading it (and every recipe before it) and
    looking its method, mode, generator and dataset up in their registries, in one fresh process."""
    out = subprocess.run([sys.executable, "-c", _LOAD, *map(str, recipes)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reading_every_recipe_imports_none_of_the_heavy_libraries() -> None:
    # Every recipe, those of the unCLIP and class-conditional generators included: checking a generate
    # section imports every generator module (their settings are part of the schema), which import
    # diffusers only where they build or load a model.
    recipes = sorted((ROOT / "configs").glob("*/*.yaml"))
    assert len(recipes) > 20
    kinds = {path.name for path in recipes}
    assert {"unclip_simclr.yaml", "generator_conditional.yaml"} <= kinds  # the ones that once imported diffusers
    seen = _heavy_modules_after_loading(recipes)
    assert seen == {str(path): [] for path in recipes}


def test_the_lightning_class_of_a_method_is_the_method_and_a_lightning_module() -> None:
    import lightning as L

    from synthpos.methods.simclr import SimCLR
    from synthpos.methods.training import lightning_class

    trainable = lightning_class(SimCLR)
    assert trainable is lightning_class(SimCLR)  # made once per class
    assert issubclass(trainable, SimCLR) and issubclass(trainable, L.LightningModule)
    assert not issubclass(SimCLR, L.LightningModule)
    assert trainable.name == "simclr"
    # The method's own hooks come first: Lightning calls them, not its empty defaults.
    assert trainable.setup is SimCLR.setup and trainable.forward is SimCLR.forward
