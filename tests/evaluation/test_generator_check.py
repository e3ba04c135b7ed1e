"""The generator's training-time check, run once on a real generator: it builds the run's
generator through the registry (``generate.kind``), judges its positives and logs one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthpos.config import load_config
from synthpos.evaluation import generator_check
from synthpos.evaluation.fidelity import Classifier

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_a_check_makes_and_judges_the_generators_positives(tmp_path: Path, monkeypatch) -> None:
    # The judge, untrained (training and scoring it is inspect-store's, tested there): what is
    # checked here is the way from the run's settings to a generator, its positives and the log.
    torch.manual_seed(0)
    judge = Classifier(1, 10, 4, 28).eval()
    monkeypatch.setattr(generator_check, "fidelity_classifier", lambda *args: (judge, {"test_top1": 0.1}))
    config = load_config(None, [f"run_dir={tmp_path}", "train_generator.check.anchors=6", "train_generator.check.candidates=2",
                                "generate.num_steps=2", "generate.precision=fp32"])
    check = generator_check.GeneratorCheck(config, tmp_path / "checks.jsonl")
    result = check(Path("builtin:fashion_mnist"), step=7)
    assert (result["step"], result["anchors"], result["candidates"]) == (7, 6, 2)
    assert 0 <= result["fidelity"] <= 1 and result["sampling"]["num_steps"] == 2
    assert result["diversity"]["pixel"]["candidate_to_anchor"] > 0 and result["classifier_test_top1"] == 0.1
    assert check.history() == [json.loads(json.dumps(result))]


@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_a_check_prepares_the_generator_as_generation_does(tmp_path: Path, monkeypatch) -> None:
    """A setting that fits something from the data first (the neighbour blend's neighbours) works in a check too."""
    torch.manual_seed(0)
    judge = Classifier(1, 10, 4, 28).eval()
    monkeypatch.setattr(generator_check, "fidelity_classifier", lambda *args: (judge, {"test_top1": 0.1}))
    real_load = generator_check.load_dataset

    def first_200(data, split):  # the check reads the whole split: 200 images keep the neighbour search short
        dataset = real_load(data, split)
        dataset.images, dataset.labels = dataset.images[:200], dataset.labels[:200]
        return dataset

    monkeypatch.setattr(generator_check, "load_dataset", first_200)
    config = load_config(None, [f"run_dir={tmp_path}", "train_generator.check.anchors=4",
                                "generate.clsp.num_steps=2", "generate.precision=fp32", "generate.clsp.neighbour_blend=0.5",
                                "generate.clsp.neighbours=2"])
    result = generator_check.GeneratorCheck(config, tmp_path / "checks.jsonl")(
        Path("builtin:fashion_mnist_conditioned"), step=3)
    assert result["anchors"] == 4 and result["sampling"]["neighbour_blend"] == 0.5


def test_a_check_line_cut_short_by_a_kill_is_cut_off_so_the_check_is_made_again(tmp_path) -> None:
    from synthpos.errors import SynthposError
    from synthpos.evaluation.generator_check import GeneratorCheck

    log = tmp_path / "checks.jsonl"
    log.write_text('{"step": 2, "fidelity": 0.6}\n{"step": 4, "fidel')  # killed during the append
    check = object.__new__(GeneratorCheck)  # only its log is read: no classifier, no data
    check.log = log
    assert [c["step"] for c in check.history()] == [2]
    assert log.read_text() == '{"step": 2, "fidelity": 0.6}\n', "the next check's line is appended whole"
    log.write_text('{"step": 2}\nnot json\n')
    with pytest.raises(SynthposError, match="checks.jsonl is damaged"):
        check.history()
