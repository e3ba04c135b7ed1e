"""benchmarks/gpu_check.sh passes on the CPU at toy size (--cpu), through the shell script, with the
package from src/ as the GPU machine runs it: every section ok and its JSON complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]


def test_gpu_check_passes_on_the_cpu_at_toy_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(scratch)}
    env.pop("PYTHONPATH", None)  # the script sets it to this tree's src/
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(out),
                           "--bundle", str(tmp_path / "no-bundle")], env=env, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + json.dumps(sections)[:2000]
    assert list(sections) == ["environment", "imports", "generator_training", "clsp_sampling", "pretraining",
                              "clsp_simclr_fashion_mnist"]
    assert all(s["status"] == "ok" for s in sections.values())
    # It ran this tree's package, and nothing came from a bundle (none was given).
    assert sections["environment"]["added_from_bundle"] == {}
    assert report["machine"]["cpu_model"]
    assert sections["imports"]["imported"] > 50
    precisions = set(sections["generator_training"]["results"])
    assert "fp32" in precisions and sections["generator_training"]["train_generator"]["model_dir_written"]
    assert {k.split("/")[0] for k in sections["clsp_sampling"]["results"]} == {"ddim3", "dpmsolver++2"}
    assert {k.split("/")[0] for k in sections["pretraining"]["results"]} == {"simclr", "clsp_simclr"}
    assert all(r["images_per_s"] > 0 for r in sections["pretraining"]["results"].values())
    assert 0 <= sections["clsp_simclr_fashion_mnist"]["knn_top1"] <= 1
    # Its working folder (models, stores: 12 MB) is gone when it ends.
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("synthpos-gpu-check-")]


def test_bundled_wheels_are_added_only_where_missing(tmp_path):
    """A wheel whose package is installed stays out; one for a missing package is unpacked and importable."""
    import zipfile

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    wheels = tmp_path / "wheels"
    wheels.mkdir()

    def wheel(name: str, version: str, module: str, requires: str = "") -> None:
        with zipfile.ZipFile(wheels / f"{name}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{module}/__init__.py", f"__version__ = '{version}'\n")
            zf.writestr(f"{name}-{version}.dist-info/METADATA",
                        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}")

    import numpy

    wheel("numpy", "0.0.1", "numpy")  # installed here: must not shadow the real one
    wheel("synthpos_probe_pkg", "1.0", "synthpos_probe_pkg", "Requires-Dist: synthpos-probe-dep>=2.0\n")
    wheel("synthpos_probe_dep", "2.1", "synthpos_probe_dep")
    # pytest is installed; a missing package pinning another version of it brings the bundled one.
    wheel("synthpos_probe_pin", "1.0", "synthpos_probe_pin", "Requires-Dist: pytest==0.0.2\n")
    wheel("pytest", "0.0.2", "synthpos_probe_fake_pytest")
    info = gpu_check.add_missing_wheels(wheels, tmp_path / "site")
    try:
        assert info["present"]["numpy"] == numpy.__version__
        assert info["added_from_bundle"] == {"synthpos-probe-pkg": "1.0", "synthpos-probe-dep": "2.1",
                                             "synthpos-probe-pin": "1.0", "pytest": "0.0.2"}
        import synthpos_probe_pkg

        assert synthpos_probe_pkg.__version__ == "1.0" and numpy.__version__ != "0.0.1"
    finally:
        sys.path.remove(str(tmp_path / "site"))
        sys.modules.pop("synthpos_probe_pkg", None)
