"""One contract for every registered method and synthetic mode (after diffusers' SchedulerCommonTest).

:class:`MethodContract` and :class:`ModeContract` hold the checks; each component's test is a
small subclass naming it, and a method's checks run once per mode it takes (the modes come from
the registry, so a new mode is stepped through every method that declares it). A registered
method or mode without a subclass fails ``test_every_method_and_mode_has_a_contract``. The
scratch method and mode defined here, as a user's module would, pass the same contract. Models
are tiny (8 px, a ConvNet of width 4, heads of 8-16 units).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from synthpos.config import AugmentConfig, PretrainConfig, RunConfig, SyntheticConfig, dump_config, load_config
from synthpos.data import ImageDataset
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.methods.base import SSLMethod, register_method
from synthpos.methods.pretrain import PretrainBatches, build_augment
from synthpos.models.heads import mlp
from synthpos.modes.base import SyntheticMode, register_mode
from synthpos.pipeline import stage_done
from synthpos.registry import METHODS, MODES

A, K, S = 16, 3, 8  # anchors, candidates per anchor, image side


# --- a user's own components, registered from outside the package ---------------------------

class ScratchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


@register_method("scratch_cosine")
class ScratchCosine(SSLMethod):
    """The smallest method: ``scale * (2 - 2 cos(z1, z2))`` between the two views' projections."""

    settings = ScratchSettings
    modes = ("scratch_noise",)

    def build_heads(self) -> None:
        c = self.config
        self.projector = mlp(self.backbone.feature_dim, c.projector_hidden_dim, c.projector_out_dim)

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.projector(self.backbone(x))}

    def pair_loss(self, outputs, views, batch, weights):
        loss = self.options.scale * (2 - 2 * F.cosine_similarity(outputs[0]["z"], outputs[1]["z"]).mean())
        return loss, {"scratch": loss}


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strength: int = Field(20, ge=0, le=255)


@register_mode("scratch_noise")
class ScratchNoise(SyntheticMode):
    """A mode without a store: a third view of each image with pixel noise, pulled towards view 1."""

    needs_store = False
    needs = "to list scratch_noise in its modes"
    settings = NoiseSettings

    def sources(self, batch):
        noise = torch.randint(-self.options.strength, self.options.strength + 1, batch.images.shape, device=batch.images.device)
        noisy = (batch.images.int() + noise).clamp(0, 255).to(torch.uint8)
        return [*super().sources(batch), noisy]

    def loss(self, method, views, outputs, batch):
        loss, logs = method.pair_loss(outputs[:2], views[:2], batch, None)
        extra = (2 - 2 * F.cosine_similarity(outputs[0]["z"], outputs[2]["z"])).mean()
        return loss + extra, {**logs, "noise": extra, "loss": loss + extra}


@pytest.fixture(scope="module", autouse=True)
def _scratch_components_leave_with_this_module():
    yield
    METHODS.unregister("scratch_cosine")
    MODES.unregister("scratch_noise")


# --- the cases: one subclass per component, checked complete against the registries -----------

def _supports(method, mode) -> bool:
    return mode.for_every_method or mode.name in method.modes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A method's contract runs once per mode it takes (``mode``) and once per mode it does not (``other_mode``)."""
    cls = metafunc.cls
    if cls is None or not issubclass(cls, MethodContract):
        return
    method = METHODS.get(cls.name)
    for argument, wanted in (("mode", True), ("other_mode", False)):
        if argument in metafunc.fixturenames:
            modes = [m for m, mode in MODES.items() if _supports(method, mode) == wanted]
            metafunc.parametrize(argument, modes or [pytest.param(None, marks=pytest.mark.skip(reason="it takes every mode"))])


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 256, size=(A, S, S, 1), dtype=np.uint8)
    return ImageDataset("toy", "train", images, np.arange(A) % 2, ["a", "b"], (0.5,), (0.25,))


@pytest.fixture(scope="module")
def store(tmp_path_factory, dataset) -> SyntheticStore:
    path = tmp_path_factory.mktemp("contract") / "store"
    store = SyntheticStore.create(path, dataset_fingerprint("toy", "train", dataset.images), candidates=K, shard_size=8,
                                  generator={"kind": "test"})
    noisy = dataset.images[:, None].astype(int) + np.random.default_rng(1).integers(-30, 30, size=(A, K, S, S, 1))
    data = np.clip(noisy, 0, 255).astype(np.uint8)
    for s in range(store.layout.num_shards):
        start, end = store.layout.shard_range(s)
        store.write_shard(s, data[start:end])
    return SyntheticStore.open(path, "toy", "train", dataset.images)


class TinyBackbone(torch.nn.Module):
    """Conv + BatchNorm + pooling: every kind of layer a backbone has, at the smallest size."""

    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UniformScorer:
    """quality's frozen scorer, stubbed: weights that differ per pair and average one."""

    def pair_weights(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        w = torch.linspace(0.5, 1.5, len(view1))
        return w / w.mean()


def _config(method: str, mode: str) -> PretrainConfig:
    synthetic = SyntheticConfig(mode=mode, positives=2, scorer="stub.pt" if mode == "quality" else None,
                                mochi={"hardest": 8, "mixes": 4, "query_mixes": 2})
    return PretrainConfig(method=method, synthetic=synthetic,
                          projector_hidden_dim=16, projector_out_dim=8, predictor_hidden_dim=16, queue_size=16,
                          channels_last=False, augment=AugmentConfig(crop_size=S), batch_size=8)


def _check_settings_section(registry, where: str, name: str, chosen: list[str]) -> None:
    """A component's settings: a section of its own, its defaults recorded when it is chosen, unknown keys refused."""
    settings = registry.get(name).settings()
    assert type(settings).model_validate(settings.model_dump()) == settings
    config = load_config(None, chosen)
    section = config.pretrain if where == "pretrain" else config.pretrain.synthetic
    assert section.section(name) == settings  # the component in use records its (default) settings
    key = where.split(".")[-1]
    assert config.model_dump(mode="json")["pretrain"].get(name) == settings.model_dump(mode="json") or \
        config.model_dump(mode="json")["pretrain"][key].get(name) == settings.model_dump(mode="json")
    with pytest.raises(SynthposError, match=f"unknown key '{where}.{name}.no_such_key'"):
        load_config(None, [*chosen, f"{where}.{name}.no_such_key=1"])


class MethodContract:
    """What every method guarantees: a step with each mode it takes has a finite loss and a gradient
    for every trained parameter; a mode it does not take is one line when the config is read; its
    settings round-trip and form its own section."""

    #: the name it registers under (``pretrain.method``)
    name: ClassVar[str]

    def test_a_step_has_a_finite_loss_and_a_gradient_for_every_trained_parameter(self, mode, dataset, store) -> None:
        method = self.name
        torch.manual_seed(0)
        cfg = _config(method, mode)
        scorer = UniformScorer() if mode == "quality" else MODES.get(mode).frozen_model(cfg, dataset, 0)
        model = METHODS.get(method)(TinyBackbone(), build_augment(cfg, dataset), cfg, scorer)
        model.setup("fit")
        batches = PretrainBatches(dataset, store if MODES.get(mode).needs_store else None, 0, cfg.synthetic)
        loss, logs = model.compute_loss(batches.__getitems__(list(range(8))))
        assert loss.dim() == 0 and torch.isfinite(loss), loss
        assert logs["loss"] is loss or torch.equal(logs["loss"], loss)
        assert all(torch.isfinite(v).all() for v in logs.values())
        loss.backward()
        without = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
        assert not without, f"{method}/{mode}: no (finite) gradient for {without}"

    def test_a_mode_it_does_not_declare_is_one_line_when_the_config_is_read(self, other_mode) -> None:
        extra = ["pretrain.synthetic.scorer=x.pt"] if other_mode == "quality" else []
        with pytest.raises(SynthposError, match=f"mode={other_mode} needs .*{self.name} has none") as err:
            load_config(None, [f"pretrain.method={self.name}", f"pretrain.synthetic.mode={other_mode}", *extra])
        assert "\n" not in str(err.value)

    def test_settings_round_trip_through_the_run_config(self, tmp_path: Path) -> None:
        config = RunConfig(pretrain=PretrainConfig(method=self.name))
        assert RunConfig.model_validate(config.model_dump(mode="json")) == config
        dump_config(config, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == config  # what a stage records reads back as what it ran

    def test_it_owns_its_settings_section(self) -> None:
        if not METHODS.get(self.name).settings:
            pytest.skip(f"{self.name} has no settings of its own")
        _check_settings_section(METHODS, "pretrain", self.name, [f"pretrain.method={self.name}"])


class ModeContract:
    """What every synthetic mode guarantees: it declares whether it reads a store and what a method
    needs for it, some method takes it, and its settings form its own section. (Its steps run in
    each method's contract.)"""

    #: the name it registers under (``pretrain.synthetic.mode``)
    name: ClassVar[str]

    def test_it_declares_what_it_needs(self) -> None:
        mode = MODES.get(self.name)
        assert isinstance(mode.needs_store, bool) and isinstance(mode.for_every_method, bool)
        # A mode that adds nothing synthetic reads no store (the stage table then plans no generation).
        assert isinstance(mode.synthetic, bool) and (mode.synthetic or not mode.needs_store)
        assert mode.for_every_method or (isinstance(mode.needs, str) and mode.needs)
        assert any(_supports(method, mode) for _, method in METHODS.items()), f"no method takes {self.name}"

    def test_it_owns_its_settings_section(self) -> None:
        if not MODES.get(self.name).settings:
            pytest.skip(f"{self.name} has no settings of its own")
        user = next(n for n, m in METHODS.items() if _supports(m, MODES.get(self.name)))
        _check_settings_section(MODES, "pretrain.synthetic", self.name,
                                [f"pretrain.synthetic.mode={self.name}", f"pretrain.method={user}"])


class TestSimCLR(MethodContract):
    name = "simclr"


class TestMoCoV2Plus(MethodContract):
    name = "mocov2plus"


class TestMoCoV3(MethodContract):
    name = "mocov3"


class TestBYOL(MethodContract):
    name = "byol"


class TestSimSiam(MethodContract):
    name = "simsiam"


class TestBarlowTwins(MethodContract):
    name = "barlow_twins"


class TestVICReg(MethodContract):
    name = "vicreg"


class TestNNCLR(MethodContract):
    name = "nnclr"


class TestDCL(MethodContract):
    name = "dcl"


class TestDCLW(MethodContract):
    name = "dclw"


class TestAll4One(MethodContract):
    name = "all4one"


class TestSupCon(MethodContract):
    name = "supcon"


class TestScratchCosine(MethodContract):
    """The user's method above passes the same contract."""

    name = "scratch_cosine"


class TestNoneMode(ModeContract):
    name = "none"


class TestCLSPMode(ModeContract):
    name = "clsp"


class TestReplaceMode(ModeContract):
    name = "replace"


class TestMultiposMode(ModeContract):
    name = "multipos"


class TestQualityMode(ModeContract):
    name = "quality"


class TestMoCHiMode(ModeContract):
    name = "mochi"


class TestScratchNoiseMode(ModeContract):
    name = "scratch_noise"


@pytest.mark.parametrize(("registry", "contract"), [(METHODS, MethodContract), (MODES, ModeContract)], ids=["methods", "modes"])
def test_every_method_and_mode_has_a_contract(registry, contract) -> None:
    covered = {c.name for c in contract.__subclasses__()}
    assert set(registry) <= covered, f"write a {contract.__name__} subclass for {sorted(set(registry) - covered)}"


def test_the_scratch_components_work_from_a_recipe_and_need_no_store() -> None:
    config = load_config(None, ["pretrain.method=scratch_cosine", "pretrain.synthetic.mode=scratch_noise",
                                "pretrain.scratch_cosine.scale=2", "pretrain.synthetic.scratch_noise.strength=5"])
    assert config.pretrain.section("scratch_cosine").scale == 2
    assert config.pretrain.synthetic.section("scratch_noise").strength == 5
    assert "needs no store" in stage_done(config, "train-generator")
    with pytest.raises(SynthposError, match="mode=scratch_noise needs to list scratch_noise in its modes; simclr has none"):
        load_config(None, ["pretrain.synthetic.mode=scratch_noise"])


def test_registering_another_class_under_a_taken_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_method("simclr")(type("Other", (ScratchCosine,), {}))


def test_a_plugin_module_named_in_the_environment_registers_for_the_cli(tmp_path: Path) -> None:
    (tmp_path / "my_plugin.py").write_text(
        "from synthpos.methods.simclr import SimCLR\n"
        "from synthpos.methods.base import register_method\n"
        "@register_method('my_simclr')\n"
        "class MySimCLR(SimCLR):\n"
        "    pass\n"
    )
    import os
    import subprocess
    import sys

    env = dict(os.environ, SYNTHPOS_PLUGINS="my_plugin",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1] / "src")]))
    code = ("from synthpos.config import load_config; "
            "print(load_config(None, ['pretrain.method=my_simclr', 'pretrain.synthetic.mode=multipos']).pretrain.method)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "my_simclr", out.stderr


def test_a_plugin_that_cannot_be_imported_is_one_clear_error(monkeypatch) -> None:
    from synthpos.registry import PLUGINS_ENV, Registry

    monkeypatch.setenv(PLUGINS_ENV, "no_such_plugin_module")
    with pytest.raises(SynthposError, match="SYNTHPOS_PLUGINS names 'no_such_plugin_module', which cannot be imported"):
        Registry("thing", "x.kind").names()
