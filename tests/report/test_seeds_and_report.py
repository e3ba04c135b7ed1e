"""Several seeds (t intervals against scipy, paired differences by hand, `synthpos run --seeds`) and the HTML report
of that run, rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthpos.cli import app
from synthpos.config import load_config
from synthpos.evaluation.seeds import mean_interval, paired_difference, t_quantile_975
from synthpos.stages.seeds import covers, run_seeds, seed_configs
from synthpos.generators.registry import CandidateGenerator, register_generator
from synthpos.registry import GENERATORS

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 80):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df


def test_mean_interval_by_hand() -> None:
    out = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975, 2} = 4.3027
    assert out["mean"] == 2.0 and out["sd"] == pytest.approx(1.0)
    assert out["ci95"] == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)], abs=1e-4)
    assert "ci95" not in mean_interval([0.5])


def test_paired_difference_uses_the_common_seeds() -> None:
    a = {"per_seed": {"0": {"x": 0.5}, "1": {"x": 0.6}, "2": {"x": 0.7}}}
    b = {"per_seed": {"0": {"x": 0.6}, "1": {"x": 0.8}, "5": {"x": 0.0}}}
    out = paired_difference(a, b)
    assert out["seeds"] == [0, 1]
    d = out["difference"]["x"]
    assert d["values"] == pytest.approx([0.1, 0.2]) and d["mean"] == pytest.approx(0.15)
    assert d["half_width"] == pytest.approx(12.7062 * (0.1 / math.sqrt(2)) / math.sqrt(2), rel=1e-4)


def test_seed_configs_share_the_generator_and_store_unless_asked() -> None:
    cfg = load_config(None, ["run_dir=r", "seeds=[3, 4]", "pretrain.synthetic.mode=clsp"])
    a, b = seed_configs(cfg)
    assert (a.seed, b.seed) == (3, 4) and a.run_dir != b.run_dir
    assert a.store_dir == b.store_dir == Path("r/store") and a.generation_seed == b.generation_seed == 3
    assert a.generator_model == b.generator_model == Path("r/generator/model")
    a, b = seed_configs(cfg.model_copy(update={"seed_store": "per-seed"}))
    assert a.store_dir != b.store_dir and (a.generation_seed, b.generation_seed) == (3, 4)


class _PretrainedGenerator(CandidateGenerator):
    """A generator that loads its weights (as unclip does): stage 1 never trains it."""

    trains_on_data = False

    def record(self):
        return {"kind": "scratch_pretrained"}

    def generate(self, anchors, first_index, labels=None, bar=None):
        raise NotImplementedError


@pytest.fixture
def _scratch_generator():
    """Registered only while the test runs, so no other test sees it among the known generators."""
    register_generator("scratch_pretrained")(_PretrainedGenerator)
    yield
    GENERATORS.unregister("scratch_pretrained")


@pytest.mark.parametrize(("mode", "kind", "trained"), [
    ("clsp", "clsp", True),
    ("mochi", "clsp", False),  # mixes in embedding space: no store, so no generator
    ("none", "clsp", False),
    ("clsp", "scratch_pretrained", False),  # a generator that loads weights is not trained on the data
])
def test_run_seeds_trains_the_shared_generator_only_when_a_store_needs_one(mode, kind, trained, tmp_path,
                                                                           _scratch_generator) -> None:
    cfg = load_config(None, [f"run_dir={tmp_path}", "seeds=[0, 1]", f"pretrain.synthetic.mode={mode}",
                             f"generate.kind={kind}"])
    trainings, runs = [], []

    def run_one(sub):
        runs.append(sub)
        return {"results": {"toy": {"knn": 0.5 + sub.seed / 100}}}

    result = run_seeds(cfg, run_one, trainings.append)
    assert len(trainings) == int(trained) and len(runs) == 2
    # Each seed's run is told to use the shared generator only when one was trained for it.
    assert all((sub.generate.generator == tmp_path / "generator" / "model") == trained for sub in runs)
    assert ("no store in this run" in result["covers"]) == (mode != "clsp") == ("no store" in covers(cfg))


TINY = [
    "data.subset=64", "generate.generator=builtin:fashion_mnist", "generate.candidates=2", "generate.num_steps=2",
    "generate.shard_size=32", "generate.batch_size=64", "generate.precision=fp32", "pretrain.synthetic.mode=clsp",
    "pretrain.backbone.name=convnet", "pretrain.backbone.width=8", "pretrain.projector_hidden_dim=32",
    "pretrain.projector_out_dim=16", "pretrain.batch_size=32", "pretrain.epochs=1", "pretrain.precision=fp32",
    "pretrain.accelerator=cpu", "pretrain.augment.crop_size=28", "evaluate.max_train=300",
    "evaluate.linear.epochs=2", "evaluate.linear_paper.epochs=2", "evaluate.linear.lr_grid=null",
]


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> tuple[Path, str]:
    """A tiny two-seed CLSP run (shared store), made once for the tests below."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    run = tmp_path_factory.mktemp("seeds") / "run"
    args = ["run", "-q", "--seeds", "0,1", "--set", f"run_dir={run}"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args, env={**os.environ, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.mark.slow
def test_run_with_seeds_writes_per_seed_runs_and_intervals(seeded_run) -> None:
    run, output = seeded_run
    seeds = json.loads((run / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1] and "not generation" in seeds["covers"]
    m0 = json.loads((run / "seed-0" / "evaluate" / "metrics.json").read_text())
    m1 = json.loads((run / "seed-1" / "evaluate" / "metrics.json").read_text())
    assert (m0["seed"], m1["seed"]) == (0, 1) and m0["backbone_sha256"] != m1["backbone_sha256"]
    knn = seeds["summary"]["fashion_mnist/knn_top1"]
    assert knn["values"] == [m0["results"]["fashion_mnist"]["knn_top1"], m1["results"]["fashion_mnist"]["knn_top1"]]
    assert knn["ci95"][0] <= knn["mean"] <= knn["ci95"][1]
    # One store for both seeds, made with the first seed; no per-seed store.
    manifest = json.loads((run / "store" / "manifest.json").read_text())
    assert manifest["generator"]["seed"] == 0
    assert not (run / "seed-0" / "store").exists() and not (run / "seed-1" / "store").exists()
    assert "fashion_mnist/knn_top1" in output and "95% CI" in output
    assert f"report: {run / 'report.html'}" in output and (run / "report.html").is_file()


SECTIONS = ["configs", "positives", "store", "curves", "results", "label-efficiency", "cka", "timings"]
CHECK = """<script>window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", String(img.naturalWidth));
  document.body.setAttribute("data-checked", String(document.images.length));
});</script></body>"""


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.slow
def test_report_renders_in_a_real_browser(seeded_run, tmp_path: Path) -> None:
    from synthpos.report.html import write_report

    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium: install the Debian package chromium (scripts/setup.sh --test does, as root)")
    run, _ = seeded_run
    page = write_report([run], tmp_path / "report.html", cka_images=200)
    html = page.read_text()
    # Self-contained: no address the page would fetch.
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert html.count('src="data:image/png;base64,') >= 4
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("</body>", CHECK))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-checked="' in dom, dom[-2000:]
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == int(re.search(r'data-checked="(\d+)"', dom).group(1)) >= 4
    assert all(w > 0 for w in widths), widths  # every image decoded
    for section in SECTIONS:
        assert re.search(rf'<section id="{section}">\s*<h2>', dom), section
    assert "± " in dom and "mean of 2 seeds" in dom  # the interval with two seeds
    assert "linear CKA" in dom
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2400", page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000
    if os.environ.get("SYNTHPOS_REPORT_SHOT"):  # keep the screenshot to look at
        shutil.copy(shot, os.environ["SYNTHPOS_REPORT_SHOT"])
