"""Fixtures of the dataset tests (tests/data/dataset_sources mirrors src/synthpos/data/datasets)."""

import pytest


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not depend on the developer's $SYNTHPOS_DATA.
    monkeypatch.delenv("SYNTHPOS_DATA", raising=False)
