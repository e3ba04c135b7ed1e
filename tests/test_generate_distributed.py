"""Generation on several processes: ranks create one store together, write disjoint shards,
wait for each other at the end, and a killed run resumes; the bytes equal a single process's.

The torchrun tests launch real processes (``torchrun --standalone``, gloo on the CPU) around
the installed ``synthpos`` script, as a user would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.distributed import launched_world_size, wait_for_launched_processes
from synthpos.errors import SynthposError

BIN = Path(sys.executable).parent
TORCHRUN, SYNTHPOS = BIN / "torchrun", BIN / "synthpos"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
LAUNCH_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")  # CPU processes, also on a GPU machine
    return env


# ----------------------------------------------------------------------------- creating one store from many processes


def _fingerprint() -> dict:
    return dataset_fingerprint("toy", "train", np.zeros((6, 2, 2, 1), np.uint8))


def _create(path: Path, generator: dict) -> SyntheticStore:
    return SyntheticStore.create(path, _fingerprint(), candidates=2, shard_size=4, generator=generator)


def _race_with(tmp_path: Path, monkeypatch, generator: dict) -> None:
    """Make another process's manifest (for ``generator``) land between our existence check and our link."""
    other = _create(tmp_path / "other", generator).path / "manifest.json"
    real_link = os.link

    def link_after_another_process(src, dst):
        shutil.copyfile(other, dst)
        return real_link(src, dst)  # raises FileExistsError, as it would in the race

    monkeypatch.setattr(os, "link", link_after_another_process)


def test_create_accepts_an_equal_manifest_that_lands_first(tmp_path, monkeypatch) -> None:
    _race_with(tmp_path, monkeypatch, {"kind": "test"})
    store = _create(tmp_path / "store", {"kind": "test"})
    assert store.manifest == json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["manifest.json"], "the temporary file must go"


def test_create_refuses_another_manifest_that_lands_first(tmp_path, monkeypatch) -> None:
    _race_with(tmp_path, monkeypatch, {"kind": "test", "seed": 1})
    with pytest.raises(SynthposError, match="different generator"):
        _create(tmp_path / "store", {"kind": "test", "seed": 0})
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["generator"]["seed"] == 1, "the first one stays"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["manifest.json"]


def test_create_without_hard_links_still_writes_the_manifest(tmp_path, monkeypatch) -> None:
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = _create(tmp_path / "store", {"kind": "test"})
    assert json.loads((tmp_path / "store" / "manifest.json").read_text()) == store.manifest
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["manifest.json"]


def _create_at_once(path: str, start, generator: dict, results) -> None:
    start.wait()
    try:
        _create(Path(path), generator)
        results.put("ok")
    except SynthposError as err:
        results.put(f"error: {err}")


@pytest.mark.parametrize("same", [True, False])
def test_processes_creating_one_store_at_once(tmp_path, same) -> None:
    """Six processes race to create one store: with one manifest they all go on; with
    two, one of them is refused and the manifest on disk is whole and the first one's."""
    context = multiprocessing.get_context("fork")  # cheap, and the children only touch files
    start, results = context.Barrier(6), context.Queue()
    generators = [{"kind": "test", "seed": 0 if same or i % 2 else 1} for i in range(6)]
    procs = [context.Process(target=_create_at_once, args=(str(tmp_path / "store"), start, g, results)) for g in generators]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = [results.get(timeout=10) for _ in procs]
    written = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["manifest.json"]
    if same:
        assert outcomes == ["ok"] * 6
    else:
        winners = [g for g in generators if g == written["generator"]]
        assert outcomes.count("ok") == len(winners) == 3
        assert all("different generator" in o for o in outcomes if o != "ok")


# ----------------------------------------------------------------------------- the barrier


def test_no_barrier_without_a_launcher(monkeypatch) -> None:
    for key in LAUNCH_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # alone it names no rendezvous: nothing to wait for
    monkeypatch.setenv("RANK", "0")
    assert launched_world_size() == 1
    started = time.monotonic()
    wait_for_launched_processes("test")
    assert time.monotonic() - started < 1
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert launched_world_size() == 2


BARRIER_SCRIPT = """
import datetime, json, os, sys, time
from pathlib import Path
import torch, torch.distributed as dist
from synthpos.distributed import launched_world_size, wait_for_launched_processes

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
assert launched_world_size() == 2
if rank == 1:
    time.sleep(3)
    (out / "late").write_text("done")
wait_for_launched_processes("test")
seen = (out / "late").exists()
wait_for_launched_processes("test")  # the same name again
# What Lightning does next in `synthpos run`: a default group on torchrun's rendezvous store.
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
total = torch.tensor([rank + 1])
dist.all_reduce(total)
dist.destroy_process_group()
(out / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "sum": int(total)}))
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_barrier_under_torchrun_then_a_default_group(tmp_path) -> None:
    script = tmp_path / "barrier.py"
    script.write_text(BARRIER_SCRIPT)
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
                            env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["seen"], "rank 0 left the barrier before rank 1 reached it"
    assert [r["sum"] for r in ranks] == [3, 3]


# ----------------------------------------------------------------------------- generation under torchrun

ANCHORS, SHARD = 48, 2  # 24 shards: enough left to interrupt after the first appears


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A randomly initialised 28x28 DDPM and a config that generates with it for 48 Fashion-MNIST anchors."""
    import torch

    from synthpos.config import TrainGeneratorConfig, UNetConfig
    from synthpos.generators.diffusion import build_noise_scheduler, build_unet, save_pipeline

    root = tmp_path_factory.mktemp("torchrun")
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0,
                                 norm_num_groups=4), sample_size=28, channels=1).eval()
    save_pipeline(unet, build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=50)), root / "generator")
    config = {
        "data": {"name": "fashion_mnist", "root": str(FMNIST), "subset": ANCHORS},
        "generate": {"generator": str(root / "generator"), "candidates": 2, "num_steps": 5, "shard_size": SHARD,
                     "batch_size": 4, "precision": "fp32", "channels_last": False, "num_threads": 1, "clip_x0": True},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _shards(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.glob("shard-*.npy"))}


@pytest.mark.distributed
@pytest.mark.slow
@needs_fmnist
def test_torchrun_generation_killed_and_resumed_equals_one_process(tiny_run, monkeypatch) -> None:
    import torch

    from synthpos.config import load_config
    from synthpos.generators import generate

    monkeypatch.setattr(generate, "default_device", lambda: torch.device("cpu"))  # the torchrun processes see no GPU

    root, config = tiny_run, tiny_run / "config.yaml"
    threads = torch.get_num_threads()
    try:
        generate.generate_stage(load_config(config, [f"run_dir={root / 'single'}"]), show_progress=False)
    finally:
        torch.set_num_threads(threads)  # generate.num_threads=1 set it for this whole process
    reference = _shards(root / "single" / "store")
    assert len(reference) == ANCHORS // SHARD

    store = root / "multi" / "store"
    launch = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]
    args = ["generate", "-q", "--config", str(config), "--set", f"run_dir={root / 'multi'}"]
    # 1. Both ranks create the store at once and write their shards; Ctrl-C after the first shard.
    proc = subprocess.Popen([*launch, "--no-python", str(SYNTHPOS), *args], env=_clean_env(), cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(store.glob("shard-*.npy")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0
    assert err.count("interrupted: finished work is kept") == 2, err[-3000:]  # each rank stopped cleanly
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.glob("shard-*.npy")}
    assert 1 <= len(done) < len(reference), f"{len(done)} shards: the run was not interrupted part-way"
    assert not [p.name for p in store.iterdir() if ".tmp" in p.name]
    for name in done:
        assert (store / name).read_bytes() == reference[name]

    # 2. The same command again (here as `torchrun -m synthpos.cli`) finishes the store.
    result = subprocess.run([*launch, "-m", "synthpos.cli", *args], env=_clean_env(), cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("store written to") == 1, "only rank 0 reports"
    assert _shards(store) == reference
    for name, (inode, mtime) in done.items():
        assert ((store / name).stat().st_ino, (store / name).stat().st_mtime_ns) == (inode, mtime), f"{name} was rewritten"
    assert SyntheticStore.open(store).complete and not [p.name for p in store.iterdir() if ".tmp" in p.name]
    # Rank 0 folded every rank's shard records into the manifest and stamped the full check.
    assert sorted(json.loads((store / "manifest.json").read_text())["shards"]) == sorted(reference)
    assert not list(store.glob("*.record.json"))
    assert {s["state"] for s in json.loads((store / "verified.json").read_text())["shards"]} == {"ok"}
