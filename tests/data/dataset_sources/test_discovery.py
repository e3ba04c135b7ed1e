"""Where the data is found: data.root alone when given, else $SYNTHPOS_DATA (and its <name>), then the system copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_files import fake_fashion_mnist

from synthpos.config import DataConfig
from synthpos.data.datasets import find_data_root, load_dataset
from synthpos.errors import SynthposError


def test_missing_data_names_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    monkeypatch.setattr("synthpos.data.datasets.fashion_mnist.FashionMNIST.system_root", tmp_path / "no-system")
    with pytest.raises(SynthposError) as err:
        find_data_root("fashion_mnist", None)
    message = str(err.value)
    assert "\n" not in message
    assert "data.root (unset)" in message and "$SYNTHPOS_DATA (unset)" in message and str(tmp_path / "no-system") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message

    # A folder the user names is the only place looked at, even when the data exists elsewhere.
    fake_fashion_mnist(tmp_path / "no-system")
    with pytest.raises(SynthposError) as err:
        find_data_root("fashion_mnist", empty)
    assert f"data.root={empty}" in str(err.value) and "SYNTHPOS_DATA" not in str(err.value)

    env = tmp_path / "env"
    monkeypatch.setenv("SYNTHPOS_DATA", str(env))
    with pytest.raises(SynthposError, match="CIFAR-10 not found") as err:
        load_dataset(DataConfig(name="cifar10"), "train")
    assert str(env) in str(err.value) and str(env / "cifar10") in str(err.value)


def test_data_root_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    fake_fashion_mnist(explicit)
    fake_fashion_mnist(env / "fashion_mnist")
    monkeypatch.setattr("synthpos.data.datasets.fashion_mnist.FashionMNIST.system_root", tmp_path / "no-system")
    monkeypatch.setenv("SYNTHPOS_DATA", str(env))
    assert find_data_root("fashion_mnist", explicit) == explicit
    assert find_data_root("fashion_mnist", None) == env / "fashion_mnist"  # the <name> sub-folder
    fake_fashion_mnist(env)
    assert find_data_root("fashion_mnist", None) == env


def test_an_image_folder_looks_only_in_its_own_sub_folder_of_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$SYNTHPOS_DATA holds the other datasets: read as one image folder it would mix them up."""
    (tmp_path / "env" / "cifar10").mkdir(parents=True)
    monkeypatch.setenv("SYNTHPOS_DATA", str(tmp_path / "env"))
    with pytest.raises(SynthposError, match=r"\$SYNTHPOS_DATA/image_folder="):
        find_data_root("image_folder", None)
    (tmp_path / "env" / "image_folder").mkdir()
    assert find_data_root("image_folder", None) == tmp_path / "env" / "image_folder"


def test_an_unknown_dataset_is_one_line() -> None:
    with pytest.raises(SynthposError, match="'nope' is not a known dataset"):
        find_data_root("nope", None)
