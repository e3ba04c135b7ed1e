"""The code users copy: every example in examples/ and every ```python block of README.md runs as it is.

Each runs in a fresh interpreter, in an empty directory, with this checkout's synthpos first on the path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import synthpos

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _readme_blocks() -> list[str]:
    return PYTHON_BLOCK.findall((ROOT / "README.md").read_text())


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    package_root = str(Path(synthpos.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_examples_and_blocks_are_found() -> None:
    assert [p.name for p in EXAMPLES] == ["lightly_ntxent.py", "lightning_clsp.py", "plain_pytorch.py"]
    assert len(_readme_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_a_few_steps(example: Path, tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    done = _run([str(example), "--steps", "3", "--work", str(tmp_path / "work")], tmp_path / "cwd")
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", done.stdout)]
    assert losses and all(0 < x < 100 for x in losses), done.stdout
    assert (tmp_path / "work" / "store" / "manifest.json").is_file(), "the example made its own store"
    assert list((tmp_path / "cwd").iterdir()) == [], "nothing written to the working directory"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_python_block_runs_on_its_own(index: int, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(_readme_blocks()[index])
    cwd = tmp_path / "empty"
    cwd.mkdir()
    done = _run([str(script)], cwd)
    assert done.returncode == 0, f"README block {index}:\n{_readme_blocks()[index]}\n{done.stderr[-3000:]}"
