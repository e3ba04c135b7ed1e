"""Ctrl-C during a long stage: exit 130, a one-line hint, finished work kept and resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SYNTHPOS = str(Path(sys.executable).with_name("synthpos"))


@pytest.mark.slow
def test_ctrl_c_during_generate_keeps_finished_shards_and_resumes(tmp_path):
    store = tmp_path / "run" / "store"
    cmd = [SYNTHPOS, "generate", "-q", "--set", f"run_dir={tmp_path / 'run'}", "--set", "pretrain.synthetic.mode=clsp",
           "--set", "generate.generator=builtin:fashion_mnist", "--set", "data.subset=300", "--set", "generate.candidates=2",
           "--set", "generate.num_steps=5", "--set", "generate.shard_size=25", "--set", "generate.batch_size=50"]
    # Background processes may inherit SIGINT as ignored; a terminal's Ctrl-C is not.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (store / "shard-00000.npy").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: finished work is kept")
    shards = sorted(store.glob("shard-*.npy"))
    assert 1 <= len(shards) < 12
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list(store.glob("shard-*.npy"))) == 12
    assert all((store / name).stat().st_mtime_ns == mtime for name, mtime in before.items())
    assert not [p for p in os.listdir(store) if ".tmp" in p]
