"""``run --seeds``: the generator the seeds share is made through the stage table, with its record."""

from __future__ import annotations

import dataclasses
import json

from synthpos.config import load_config
from synthpos.stages import BY_NAME
from synthpos.stages.seeds import run_seeds


def test_the_shared_generator_is_made_once_and_redone_only_for_other_settings(tmp_path, monkeypatch):
    trained = []

    def fake_train(cfg, show_progress=True):  # stands in for the DDPM's training: what a finished one leaves
        trained.append(cfg.generation_seed)
        unet = cfg.generator_dir / "model" / "unet"
        unet.mkdir(parents=True)
        header = b"{}"  # a whole, empty safetensors file: train-generator is done only while its weights are whole
        (unet / "diffusion_pytorch_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        (cfg.generator_dir / "COMPLETE").write_text("")
        return cfg.generator_dir / "model"

    monkeypatch.setitem(BY_NAME, "train-generator", dataclasses.replace(BY_NAME["train-generator"], run=fake_train))
    runs = []

    def run_one(sub):
        runs.append(sub)
        return {"results": {"toy": {"knn": 0.5 + sub.seed / 100}}}

    overrides = [f"run_dir={tmp_path}", "seeds=[3, 4]", "pretrain.synthetic.mode=clsp"]
    run_seeds(load_config(None, overrides), run_one)
    run_seeds(load_config(None, overrides), run_one)  # done: its record matches these settings
    assert trained == [3] and len(runs) == 4
    record = json.loads((tmp_path / "generator" / "stage_record.json").read_text())
    assert record["complete"] and record["resolved"]["generation_seed"] == 3
    assert all(sub.generate.generator == tmp_path / "generator" / "model" for sub in runs)

    # A setting of the generator's changed: trained again, the one made before kept under previous/.
    run_seeds(load_config(None, overrides + ["train_generator.learning_rate=0.001"]), run_one)
    assert trained == [3, 3]
    assert (tmp_path / "previous" / "train-generator" / "generator" / "COMPLETE").is_file()
