"""`synthpos run` skips a stage only when its output is there and still valid."""

import json

import numpy as np
import torch

from synthpos.config import load_config
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.generators.generate import generator_record
from synthpos.pipeline import run_pipeline, stage_done


def _config(tmp_path, *extra):
    return load_config(None, [f"run_dir={tmp_path}", "pretrain.synthetic.mode=clsp",
                              "generate.generator=builtin:fashion_mnist", "generate.candidates=2", *extra])


def test_generate_is_skipped_only_for_a_store_made_with_these_settings(tmp_path):
    config = _config(tmp_path)
    images = np.zeros((4, 28, 28, 1), dtype=np.uint8)
    record = generator_record(config.generator_model, config.generate, config.seed, torch.device("cpu"))
    store = SyntheticStore.create(config.store_dir, dataset_fingerprint("fashion_mnist", "train", images), 2, 4, record)
    assert stage_done(config, "generate") is None  # incomplete
    store.write_shard(0, np.zeros((4, 2, 28, 28, 1), dtype=np.uint8))
    assert "adopted" in stage_done(config, "generate")  # no record yet: its manifest's generator record matches
    assert stage_done(_config(tmp_path, "generate.interpolation_weight=0.5"), "generate") is None
    assert stage_done(_config(tmp_path, "generate.num_steps=7"), "generate") is None


def test_a_stage_that_runs_makes_the_later_ones_run(tmp_path, monkeypatch):
    config = _config(tmp_path, "pretrain.synthetic.mode=none")
    calls = []

    def fake(name, output=None):
        def stage(cfg, show_progress=True):
            calls.append(name)
            if output:
                output(cfg)
        return stage

    def write_metrics(cfg):
        cfg.evaluate_dir.mkdir(parents=True, exist_ok=True)
        (cfg.evaluate_dir / "metrics.json").write_text(json.dumps({"results": {"run": len(calls)}}))

    monkeypatch.setattr("synthpos.methods.pretrain.pretrain_stage", fake("pretrain"))
    monkeypatch.setattr("synthpos.evaluation.evaluate.evaluate_stage", fake("evaluate", write_metrics))
    write_metrics(config)  # metrics of an earlier backbone exist; the backbone does not
    metrics = run_pipeline(config, show_progress=False)
    assert calls == ["pretrain", "evaluate"]
    assert metrics["results"]["run"] == 2  # the new metrics, not the stale ones
