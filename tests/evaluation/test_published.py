"""A recipe's published numbers, printed beside the run's own at the end of `synthpos run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import synthpos.cli as cli
import synthpos.stages.run as pipeline
from synthpos.config import PublishedConfig, load_config
from synthpos.errors import SynthposError
from synthpos.evaluation.published import compare_published

METRICS = {"cifar10": {"knn_top1": 0.9012, "linear_top1": 0.9150, "linear_paper_top1": 0.9310}}


def test_the_paper_protocol_number_is_compared_with_its_difference() -> None:
    published = PublishedConfig(source="CLSP README", protocol="linear, 100 epochs", linear_top1=94.45, knn_top1=90.0)
    lines = compare_published(published, METRICS)
    assert lines[0] == "published (CLSP README; linear, 100 epochs):"
    assert lines[1] == "  linear_top1: published 94.45, this run 93.10 (linear_paper_top1), -1.35 points"
    assert lines[2] == "  knn_top1: published 90.00, this run 90.12 (knn_top1), +0.12 points"


def test_seeds_show_their_mean_and_interval_and_a_missing_metric_says_so() -> None:
    published = PublishedConfig(source="s", linear_top1=94.0, knn_top1=None)
    summary = {"cifar10/linear_paper_top1": {"n": 3, "mean": 0.935, "ci95": [0.93, 0.94]}}
    lines = compare_published(published, intervals=summary)
    assert lines[1] == "  linear_top1: published 94.00, this run 93.50 (linear_paper_top1, 95% CI 93.00 .. 94.00 over 3 seeds), -0.50 points"
    assert len(lines) == 2  # no kNN number was published
    assert compare_published(published, {"cifar10": {"knn_top1": 0.9}})[1] == "  linear_top1: published 94.00, not measured by this run"


def test_a_published_value_out_of_range_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SynthposError, match="published.linear_top1"):
        load_config(None, [f"run_dir={tmp_path}", "published.source=x", "published.linear_top1=194"])


def test_run_prints_the_recipes_published_numbers_at_the_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, show_progress=True: {"results": METRICS})
    monkeypatch.setattr(pipeline, "_write_report", lambda run_dir: run_dir / "report.html")
    recipe = Path(__file__).resolve().parents[2] / "configs" / "cifar10" / "clsp_simclr.yaml"
    result = CliRunner().invoke(cli.app, ["run", "--config", str(recipe), "--set", f"run_dir={tmp_path}", "--quiet"])
    assert result.exit_code == 0, result.output
    tail = result.output[result.output.index("published ("):]
    assert "CLSP official README.md:19-38" in tail
    assert "linear_top1: published 94.45, this run 93.10 (linear_paper_top1), -1.35 points" in tail
    assert json.loads(result.output[: result.output.index("published (")].split("run directory")[0])["cifar10"]
