"""Faults a user meets on a shared machine, through the `synthpos` command (in this process, via
``synthpos.cli.main``, so its error handling is the one under test): a damaged store, a second
launch, a full disk, a bad path. Each ends in one line and exit 2, or in a correct resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")

N = 16
# The shipped generator, 2 sampling steps, 4 shards of 4 anchors: about a second.
GENERATE = ["run_dir=run", f"data.subset={N}", "pretrain.synthetic.mode=clsp", "generate.generator=builtin:fashion_mnist",
            "generate.candidates=2", "generate.num_steps=2", "generate.shard_size=4", "generate.batch_size=8",
            "generate.precision=fp32", "generate.num_threads=1"]
PRETRAIN = ["pretrain.backbone.name=convnet", "pretrain.backbone.width=4", "pretrain.projector_hidden_dim=16",
            "pretrain.projector_out_dim=8", "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.precision=fp32",
            "pretrain.augment.crop_size=28", "pretrain.accelerator=cpu", "pretrain.num_threads=1",
            "pretrain.knn_every_epochs=0"]
# A toy DDPM: 4 steps, a checkpoint every 2.
TRAIN_GENERATOR = ["train_generator.unet.block_out_channels=[8,16]", "train_generator.unet.attention_levels=[1]",
                   "train_generator.unet.layers_per_block=1", "train_generator.unet.norm_num_groups=4",
                   "train_generator.num_train_timesteps=50", "train_generator.warmup_steps=1",
                   "train_generator.batch_size=8", "train_generator.max_steps=4", "train_generator.checkpoint_every=2",
                   "train_generator.precision=fp32", "train_generator.num_threads=1"]
EVALUATE = ["evaluate.max_train=16", "evaluate.knn_k=3", "evaluate.linear.epochs=1", "evaluate.linear_protocols=[fast]",
            "evaluate.label_fractions=[1.0]", "evaluate.validation_fraction=0.25"]


def sets(*groups: list[str]) -> list[str]:
    return [arg for group in groups for value in group for arg in ("--set", value)]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``synthpos ARGS`` in this process: (exit code, stdout, stderr)."""
    from synthpos.cli import main

    capsys.readouterr()
    argv, sys.argv = sys.argv, ["synthpos", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, *needles: str) -> str:
    """Exit 2 and exactly one line on stderr, starting 'error: ', without a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err[-3000:])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree(path: Path) -> dict[str, str]:
    """Every file and folder under ``path`` with its content hash ('dir' for folders): to check nothing changed."""
    out = {}
    for p in sorted(path.rglob("*")):
        out[str(p.relative_to(path))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def made_store(tmp_path_factory) -> Path:
    """A folder with run/store made by `synthpos generate` (copied into each test's folder)."""
    root = tmp_path_factory.mktemp("made")
    from _pytest.monkeypatch import MonkeyPatch

    with MonkeyPatch.context() as mp:
        mp.chdir(root)
        from synthpos.cli import main

        argv, sys.argv = sys.argv, ["synthpos", "generate", "-q", *sets(GENERATE)]
        try:
            main()
        finally:
            sys.argv = argv
    return root


def _copy(made: Path, tmp_path: Path, monkeypatch) -> Path:
    shutil.copytree(made / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run" / "store"


def _damage(store: Path, kind: str) -> None:
    shard = store / "shard-00002.npy"
    if kind == "missing":
        shard.unlink()
    elif kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif kind == "zeroed":
        shard.write_bytes(bytes(shard.stat().st_size))
    elif kind == "flipped":  # one byte of the data changed, size and header intact
        data = bytearray(shard.read_bytes())
        data[-7] ^= 0xFF
        shard.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- item 2: the store is part of generate's state


@needs_fmnist
@pytest.mark.parametrize("kind", ["missing", "truncated", "zeroed", "flipped"])
def test_a_damaged_store_is_remade_by_the_command_pretrain_advises(made_store, tmp_path, monkeypatch, capsys, kind) -> None:
    store = _copy(made_store, tmp_path, monkeypatch)
    before = {p.name: p.read_bytes() for p in sorted(store.glob("shard-*.npy"))}
    _damage(store, kind)

    code, _, err = cli(capsys, "pretrain", "-q", *sets(GENERATE, PRETRAIN))
    line = one_line(code, err, "shard-00002.npy", "synthpos generate")
    assert {"missing": "incomplete", "truncated": "truncated", "zeroed": "sha256 differs",
            "flipped": "sha256 differs"}[kind] in line
    assert not (tmp_path / "run" / "pretrain").exists()

    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))  # the advised command, with the same config
    assert code == 0, err
    assert "skip generate" not in err
    assert {p.name: p.read_bytes() for p in sorted(store.glob("shard-*.npy"))} == before  # byte for byte

    code, _, err = cli(capsys, "pretrain", "-q", *sets(GENERATE, PRETRAIN))
    assert code == 0, err
    assert (tmp_path / "run" / "pretrain" / "backbone.pt").is_file()


@needs_fmnist
def test_a_verified_store_is_not_hashed_again_and_a_changed_shard_is(made_store, tmp_path, monkeypatch, capsys) -> None:
    from synthpos.data import store_integrity

    store = _copy(made_store, tmp_path, monkeypatch)
    hashed: list[str] = []
    original = store_integrity.file_digest
    monkeypatch.setattr(store_integrity, "file_digest", lambda path: hashed.append(Path(path).name) or original(path))
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    assert code == 0 and "skip generate: done" in err, err
    # The copy has new inodes, so that status check hashed every shard (and, a status check, wrote no stamp).
    assert sorted(hashed) == [f"shard-{s:05d}.npy" for s in range(4)]
    from synthpos.data.synthetic_store import SyntheticStore
    store_integrity.ensure_verified(SyntheticStore.open(store), "always")  # a stamp for these very files
    hashed.clear()
    assert cli(capsys, "generate", "-q", *sets(GENERATE))[0] == 0
    assert hashed == [], "a stamped store must not be hashed by a status check"
    (store / "shard-00001.npy").write_bytes(bytes((store / "shard-00001.npy").stat().st_size))
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    assert code == 0 and "skip generate" not in err and "shard-00001.npy is damaged" in err, err
    assert hashed[0] == "shard-00001.npy", hashed  # the status check hashed the changed shard alone


@needs_fmnist
def test_a_shard_the_manifest_does_not_know_is_reported(made_store, tmp_path, monkeypatch, capsys) -> None:
    store = _copy(made_store, tmp_path, monkeypatch)
    shutil.copy(store / "shard-00000.npy", store / "shard-00009.npy")
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    assert code == 0 and "skip generate: done" in err, err
    assert "shard-00009.npy" in err and "manifest does not" in " ".join(err.split()), err
    assert (store / "shard-00009.npy").is_file()  # reported, not removed


# ----------------------------------------------------------------------------- item 3: one run directory, one writer

HOLDER = """
import os, sys, time
from synthpos.run_lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(run_dir: Path, tmp_path: Path, **env: str):
    """A second real process that takes ``run_dir``'s lock and sleeps; returns it once it holds the lock."""
    import os
    import subprocess

    script = tmp_path / "hold.py"
    script.write_text(HOLDER)
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**environment, **env})
    assert proc.stdout.readline().strip() == "held"
    return proc


@needs_fmnist
def test_a_second_launch_is_refused_and_a_dead_holder_taken_over(made_store, tmp_path, monkeypatch, capsys) -> None:
    import json
    import signal

    _copy(made_store, tmp_path, monkeypatch)
    run = tmp_path / "run"
    holder = _hold(run, tmp_path)
    try:
        before = tree(run)
        for command in (["pretrain", *sets(GENERATE, PRETRAIN)], ["generate", *sets(GENERATE)],
                        ["run", *sets(GENERATE, PRETRAIN, EVALUATE)]):
            code, _, err = cli(capsys, *command[:1], "-q", *command[1:])
            line = one_line(code, err, f"pid {holder.pid}", "since", "run/.synthpos.lock", f"kill {holder.pid}")
            assert tree(run) == before, command[0]  # refused: the run directory is byte-identical
        assert json.loads((run / ".synthpos.lock").read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL leaves the lock behind; its process is gone, so the next command takes it over.
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    assert code == 0 and f"taking over the lock of run from pid {holder.pid}" in " ".join(err.split()), err
    assert not (run / ".synthpos.lock").exists(), "removed on exit"
    assert line


@needs_fmnist
def test_inspect_store_beside_a_live_holder_verifies_read_only_and_inspects_not_at_all(made_store, tmp_path, monkeypatch,
                                                                                       capsys) -> None:
    """inspect-store while a real second process holds the run's lock: --verify only reads, so it runs, names the
    holder, writes no stamp, and calls a shard not there yet unfinished (not damaged, and not the `generate` advice
    the holder may be carrying out); a damaged shard is still damage. Plain inspect-store writes into the run
    (<store>/inspect, fidelity/), so it is refused like a second stage. Then, the holder gone, --verify stamps."""
    import signal

    store = _copy(made_store, tmp_path, monkeypatch)
    run = tmp_path / "run"
    (store / "verified.json").unlink(missing_ok=True)
    verify = ["inspect-store", "--verify", *sets(GENERATE)]
    holder = _hold(run, tmp_path)
    try:
        before = tree(tmp_path)
        code, out, err = cli(capsys, *verify)
        assert code == 0 and f"pid {holder.pid}" in " ".join(out.split()) and "no stamp" in out, (code, out, err)
        assert tree(tmp_path) == before, "a reader beside a writer writes nothing"

        (store / "shard-00003.npy").unlink()  # not written yet
        before = tree(tmp_path)
        code, _, err = cli(capsys, *verify)
        one_line(code, err, "1 of 4 shards are not written yet", f"pid {holder.pid}", "inspect-store --verify` again")
        assert tree(tmp_path) == before

        _damage(store, "zeroed")  # shard-00002: damage whoever holds the run
        before = tree(tmp_path)
        code, _, err = cli(capsys, *verify)
        one_line(code, err, "shard-00002.npy is damaged", "synthpos generate", f"once pid {holder.pid}")
        assert tree(tmp_path) == before

        code, _, err = cli(capsys, "inspect-store", *sets(GENERATE))
        one_line(code, err, f"pid {holder.pid}", "run/.synthpos.lock", f"kill {holder.pid}")
        assert tree(tmp_path) == before, "refused: nothing written"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder is gone (its lock left behind by SIGKILL): --verify is the run's again, and stamps what it hashed.
    code, out, err = cli(capsys, *verify)
    one_line(code, err, "shard-00002.npy is damaged", "and 1 more shard", "synthpos generate")
    assert "no stamp" not in out and (store / "verified.json").is_file()


def test_a_lock_from_another_host_is_refused_with_the_command_that_clears_it(tmp_path, monkeypatch, capsys) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".synthpos.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "2026-01-01 00:00:00"}))
    before = tree(tmp_path)
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    one_line(code, err, "pid 1 on elsewhere since 2026-01-01 00:00:00", "`rm run/.synthpos.lock`")
    assert tree(tmp_path) == before


def test_the_lock_is_reentrant_removed_on_every_exit_and_shared_by_one_launch(tmp_path, monkeypatch) -> None:
    import signal

    from synthpos.errors import SynthposError
    from synthpos.run_lock import run_lock

    run = tmp_path / "a" / "run"
    with run_lock(run):
        with run_lock(run):  # `run` holds it and each stage takes it again
            assert (run / ".synthpos.lock").is_file()
        assert (run / ".synthpos.lock").is_file()
    assert not (tmp_path / "a").exists(), "the folders made for the lock go with it"
    with pytest.raises(SynthposError), run_lock(run):
        raise SynthposError("a refused input")
    assert not (tmp_path / "a").exists()

    # A torchrun launch: rank 0 holds it; rank 1 of the same launch shares it, a rank of another launch is refused.
    holder = _hold(run, tmp_path, TORCHELASTIC_RUN_ID="launch-1", RANK="0", LOCAL_RANK="0")
    try:
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")
        with run_lock(run):
            pass
        assert (run / ".synthpos.lock").is_file(), "a non-zero rank never removes the launch's lock"
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")
        with pytest.raises(SynthposError, match=f"pid {holder.pid}"), run_lock(run):
            pass
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(SynthposError, match=f"pid {holder.pid}"), run_lock(run):
            pass
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait()


# ----------------------------------------------------------------------------- item 4: a full disk is one line

SEED = int(__import__("os").environ.get("SYNTHPOS_FAULT_SEED", "0"))


def _fill_disk_after_seeded_shards(made_store: Path, monkeypatch) -> tuple[int, int, object]:
    """A disk with room for between 1 and 3 of made_store's shards (a seeded size): the store write that crosses
    it fails with ENOSPC. Returns (the room in bytes, one shard's bytes, the real write, to free the space)."""
    import random

    from synthpos.data import store_integrity

    shard_bytes = (made_store / "run" / "store" / "shard-00000.npy").stat().st_size
    room = random.Random(SEED).randrange(shard_bytes, 3 * shard_bytes)
    written = [0]
    original = store_integrity.HashingWriter.write

    def write(self, data: bytes) -> int:
        written[0] += len(data)
        if written[0] > room:
            raise _no_space()
        return original(self, data)

    monkeypatch.setattr(store_integrity.HashingWriter, "write", write)
    return room, shard_bytes, original


def _no_space(path: str = "") -> OSError:
    import errno

    return OSError(errno.ENOSPC, "No space left on device", path or None)


@needs_fmnist
def test_a_full_disk_in_generate_is_one_line_and_the_same_command_resumes(made_store, tmp_path, monkeypatch, capsys) -> None:
    from synthpos.data import store_integrity
    from synthpos.data.synthetic_store import SyntheticStore

    monkeypatch.chdir(tmp_path)
    room, shard_bytes, original = _fill_disk_after_seeded_shards(made_store, monkeypatch)
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    line = one_line(code, err, "no space left on device", "run/store/shard-0000", "needs about", "run the same command again")
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "store").glob("shard-*.npy")}
    assert len(kept) == room // shard_bytes, (line, kept)
    assert not list((tmp_path / "run" / "store").glob("*.tmp-*")), "no half-written file left"

    monkeypatch.setattr(store_integrity.HashingWriter, "write", original)  # space freed
    code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
    assert code == 0, err
    store = tmp_path / "run" / "store"
    assert all(store.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in kept.items()), "finished shards kept"
    assert [s.state for s in store_integrity.ensure_verified(SyntheticStore.open(store), "always")] == ["ok"] * 4
    for shard in sorted(store.glob("shard-*.npy")):  # as an uninterrupted generation made them
        assert shard.read_bytes() == (made_store / "run" / "store" / shard.name).read_bytes()


TORCH_SAVE = torch.save


def _fail_nth_save(monkeypatch, n: int) -> list[str]:
    """torch.save fails with ENOSPC (after writing a little) at its n-th call; returns the files it was asked for."""
    calls: list[str] = []
    original = TORCH_SAVE

    def save(obj, f, *args, **kwargs):
        calls.append(str(f))
        if len(calls) == n:
            Path(f).write_bytes(b"partial")
            raise _no_space(str(f))
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


# The fault matrix's full-disk cells besides generate's (above): a seeded torch.save of the stage fails.
OUTPUT = {"train-generator": "generator/COMPLETE", "pretrain": "pretrain/backbone.pt", "evaluate": "evaluate/metrics.json"}


@needs_fmnist
@pytest.mark.parametrize("stage", ["train-generator", "pretrain", "evaluate"])
def test_a_full_disk_in_each_stage_is_one_line_and_resumable(made_store, tmp_path, monkeypatch, capsys, stage) -> None:
    import random

    _copy(made_store, tmp_path, monkeypatch)
    args = sets(GENERATE, TRAIN_GENERATOR, PRETRAIN, EVALUATE)
    if stage == "evaluate":
        assert cli(capsys, "pretrain", "-q", *args)[0] == 0
    # Count the stage's torch.save calls, then fail a seeded one of them in a fresh copy.
    calls = _fail_nth_save(monkeypatch, 10**9)
    probe = tmp_path / "probe"
    shutil.copytree(tmp_path / "run", probe / "run")
    monkeypatch.chdir(probe)
    assert cli(capsys, stage, "-q", *args)[0] == 0
    monkeypatch.chdir(tmp_path)
    assert calls, f"{stage} wrote nothing with torch.save"
    n = random.Random(SEED).randrange(1, len(calls) + 1)
    calls = _fail_nth_save(monkeypatch, n)
    code, _, err = cli(capsys, stage, "-q", *args)
    one_line(code, err, "no space left on device", Path(calls[-1]).name.split(".tmp-")[0], "run the same command again")
    assert not (tmp_path / "run" / OUTPUT[stage]).exists()
    monkeypatch.setattr(torch, "save", TORCH_SAVE)  # space freed
    code, _, err = cli(capsys, stage, "-q", *args)
    assert code == 0, err
    assert (tmp_path / "run" / OUTPUT[stage]).is_file()


@needs_fmnist
@pytest.mark.parametrize("stage", ["train-generator", "generate", "pretrain", "evaluate", "report", "import-store"])
def test_a_second_launch_of_each_stage_is_refused_with_nothing_changed(done_run, tmp_path, monkeypatch, capsys, stage) -> None:
    """The fault matrix's second-launch cells: another process holds the run (a stage still running)."""
    import signal

    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    _clsp_array(done_run, tmp_path / "clsp.npy")
    args = {"report": ["report", "run"], "import-store": [*IMPORT, *sets(GENERATE)]}.get(
        stage, [stage, "-q", *sets(GENERATE, TRAIN_GENERATOR, PRETRAIN, EVALUATE_GRID)])
    holder = _hold(tmp_path / "run", tmp_path)
    try:
        before = tree(tmp_path)
        code, _, err = cli(capsys, *args)
        one_line(code, err, f"in use by pid {holder.pid}")
        assert tree(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_no_space_and_no_memory_anywhere_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    import dataclasses
    import errno

    import synthpos.stages as stages
    from synthpos.atomic import NoSpaceError, atomic_path

    # torch's writer loses the errno; on a nearly full file system its failure is a full disk.
    monkeypatch.setattr("synthpos.atomic.free_bytes", lambda path: 1000)
    with pytest.raises(NoSpaceError, match="no space left on device writing .*x.pt: it needs more than the 7 bytes"):
        with atomic_path(tmp_path / "x.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed")
    assert list(tmp_path.iterdir()) == []
    for i, (fault, needles) in enumerate([
            (OSError(errno.EDQUOT, "Disk quota exceeded"), ("disk quota exceeded", "under run")),
            (MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000,)"),
             ("out of memory: Unable to allocate 7.45 GiB", "batch_size")),
            (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 800 bytes"),
             ("out of memory", "800 bytes"))]):
        def fail(config, show_progress, fault=fault):
            raise fault

        # The generate stage's work fails with ``fault`` (any stage's would go the same way: cli.main decides).
        monkeypatch.setitem(stages.BY_NAME, "generate", dataclasses.replace(stages.BY_NAME["generate"], run=fail))
        (tmp_path / str(i)).mkdir()
        monkeypatch.chdir(tmp_path / str(i))
        code, _, err = cli(capsys, "generate", "-q", *sets(GENERATE))
        one_line(code, err, *needles)


# ----------------------------------------------------------------------------- item 5: nothing moved before the inputs are known good

# A grid of k: the carve of 16 images leaves about 12 to fit on, so 15 is dropped with a notice.
EVALUATE_GRID = [*EVALUATE[:1], "evaluate.knn_k=[3,15]", *EVALUATE[2:]]


@pytest.fixture(scope="module")
def done_run(made_store, tmp_path_factory) -> Path:
    """A folder whose run/ has every stage done (the shipped generator, so train-generator is not part of it)."""
    root = tmp_path_factory.mktemp("done")
    shutil.copytree(made_store / "run", root / "run")
    from _pytest.monkeypatch import MonkeyPatch

    from synthpos.cli import main

    with MonkeyPatch.context() as mp:
        mp.chdir(root)
        for command in ("pretrain", "evaluate"):
            if command == "evaluate":  # its atomic publishes, for the seeded stops of the fault matrix
                publishes = _count_publishes(mp)
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # as a forked child must (_stop_at_publish): the same bytes
            argv, sys.argv = sys.argv, ["synthpos", command, "-q", *sets(GENERATE, PRETRAIN, EVALUATE_GRID)]
            try:
                main()
            finally:
                sys.argv = argv
        torch.set_num_threads(threads)
    assert (root / "run" / "evaluate" / "metrics.json").is_file()
    (root / "evaluate-publishes.txt").write_text("\n".join(publishes))
    return root


def _bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (the command's arguments, what its one line must say)."""
    torch.save({"weight": torch.zeros(3)}, root / "plain.pt")  # a state_dict, not a synthpos backbone
    torch.save({"weight": torch.zeros(3)}, root / "described.pt")
    (root / "described.json").write_text('{"not": "a backbone description"}')
    (root / "scorer.pt").write_bytes(b"neither a backbone nor TorchScript")
    full = sets(GENERATE, PRETRAIN, EVALUATE_GRID)
    return {
        "evaluate-plain-state-dict": (["evaluate", *full, "--set", "evaluate.checkpoint=plain.pt"], "evaluate.checkpoint=plain.pt"),
        "run-plain-state-dict": (["run", *full, "--set", "evaluate.checkpoint=plain.pt"], "evaluate.checkpoint=plain.pt"),
        "evaluate-foreign-json": (["evaluate", *full, "--set", "evaluate.checkpoint=described.pt"], "not a synthpos backbone"),
        "evaluate-missing": (["evaluate", *full, "--set", "evaluate.checkpoint=nowhere.pt"], "nowhere.pt does not exist"),
        "pretrain-store": (["pretrain", *full, "--set", "pretrain.store=nowhere"], "no synthetic store at nowhere"),
        "generate-generator": (["generate", *full, "--set", "generate.generator=nowhere"], "generate.generator=nowhere"),
        "run-generator": (["run", *full, "--set", "generate.generator=nowhere"], "generate.generator=nowhere"),
        "pretrain-scorer": (["pretrain", *full, "--set", "pretrain.synthetic.mode=quality", "--set",
                             "pretrain.synthetic.scorer=scorer.pt"], "scorer.pt is neither"),
        "evaluate-knn-k": (["evaluate", *full, "--set", "evaluate.max_train=null", "--set", "evaluate.knn_k=1000000"],
                           "evaluate.knn_k=1000000 is more than the 60000"),
        "run-knn-k": (["run", *full, "--set", "evaluate.max_train=null", "--set", "evaluate.knn_k=1000000"],
                      "evaluate.knn_k=1000000"),
    }


@needs_fmnist
def test_a_bad_path_or_value_leaves_the_run_directory_byte_identical(done_run, tmp_path, monkeypatch, capsys) -> None:
    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    cases = _bad_inputs(tmp_path)
    before = tree(tmp_path)
    for name, (args, needle) in cases.items():
        code, _, err = cli(capsys, args[0], "-q", *args[1:])
        one_line(code, err, needle)
        assert tree(tmp_path) == before, name  # nothing moved, written or removed


@needs_fmnist
def test_knn_grid_values_above_the_carved_set_are_dropped_with_a_notice(done_run) -> None:
    import json

    metrics = json.loads((done_run / "run" / "evaluate" / "metrics.json").read_text())
    knn = next(r for r in metrics["records"] if r["probe"] == "knn")
    assert list(knn["selection"]["validation_top1"]) == ["3"], knn["selection"]  # 15 > the 12 left after the carve
    assert knn["hyper_parameters"]["k"] == 3


# ----------------------------------------------------------------------------- item 6: the fault matrix's remaining cells
# The matrix itself (every stage x fault, and which test exercises it) is tests/test_fault_matrix.py.

def _count_publishes(monkeypatch) -> list[str]:
    """Patch os.replace to note each target (in this process); returns the list it fills."""
    import os

    real, targets = os.replace, []

    def replace(src, dst, *args, **kwargs):
        targets.append(str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return targets


@dataclasses.dataclass
class Stopped:
    returncode: int  # the exit code, or minus the signal that ended it
    stderr: str


def _stop_at_publish(cwd: Path, n: int, signal_name: str, when: str, args: list[str]) -> Stopped:
    """``synthpos ARGS`` in a forked child (a real process, without a second interpreter's imports) that sends
    itself ``signal_name`` at its n-th atomic publish (an os.replace: a record, a features cache, a shard,
    metrics.json, report.html), just before or just after it: a seeded point in the stage's own sequence of
    writes, the same on every machine, where a wall-clock kill would land anywhere or nowhere."""
    import os
    import signal
    import tempfile

    log = Path(tempfile.mkstemp(prefix="synthpos-stopped-")[1])
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            sys.stdout = sys.stderr = open(log, "w", buffering=1)
            os.chdir(cwd)
            # OpenMP's thread pool does not survive a fork; one thread, as the references are computed with.
            torch.set_num_threads(1)
            real, calls, signum = os.replace, [0], getattr(signal, signal_name)

            def replace(src, dst, *rest, **kwargs):
                calls[0] += 1
                if calls[0] == n and when == "before":
                    os.kill(os.getpid(), signum)
                real(src, dst, *rest, **kwargs)
                if calls[0] == n and when == "after":
                    os.kill(os.getpid(), signum)

            os.replace = replace
            sys.argv = ["synthpos", *args]
            from synthpos.cli import main

            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    text = log.read_text()
    log.unlink()
    return Stopped(code, text)


def _stopped_as_promised(proc: Stopped, signal_name: str, run: Path) -> None:
    """SIGKILL: the process died there. SIGTERM: one line, exit 143, no traceback, the lock removed."""
    import signal

    if signal_name == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
        return
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("terminated (SIGTERM)") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (run / ".synthpos.lock").exists(), "SIGTERM removes the lock on its way out"


def _seeded_point(stage: str, signal_name: str, publishes: int) -> tuple[int, str]:
    import random

    rng = random.Random(f"{SEED}-{stage}-{signal_name}")
    return rng.randrange(1, publishes + 1), rng.choice(["before", "after"])


@needs_fmnist
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_evaluate_stopped_at_a_seeded_write_resumes_to_the_same_metrics(done_run, tmp_path, monkeypatch, capsys,
                                                                        signal_name) -> None:
    """Evaluate x SIGKILL / SIGTERM: what the stopped process left is never taken as current (metrics.json is
    absent or whole), and the same command ends with the uninterrupted run's metrics.json, byte for byte."""
    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    evaluate_dir = tmp_path / "run" / "evaluate"
    reference = (done_run / "run" / "evaluate" / "metrics.json").read_bytes()
    shutil.rmtree(evaluate_dir)
    publishes = (done_run / "evaluate-publishes.txt").read_text().splitlines()  # the uninterrupted run's
    n, when = _seeded_point("evaluate", signal_name, len(publishes))
    args = ["evaluate", "-q", *sets(GENERATE, PRETRAIN, EVALUATE_GRID)]
    proc = _stop_at_publish(tmp_path, n, signal_name, when, args)
    print(f"fault seed {SEED}: evaluate got {signal_name} {when} publish {n} of {len(publishes)} "
          f"({Path(publishes[n - 1]).name})")
    _stopped_as_promised(proc, signal_name, tmp_path / "run")
    metrics = evaluate_dir / "metrics.json"
    assert not metrics.exists() or metrics.read_bytes() == reference, "a half-written metrics.json"

    torch.set_num_threads(1)  # as the reference was made
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert metrics.read_bytes() == reference


def _clsp_array(made: Path, path: Path) -> None:
    """The made store's candidates as CLSP releases them: one uint8 (N, K, H, W, C) .npy (import-store's input)."""
    import numpy as np

    shards = sorted((made / "run" / "store").glob("shard-*.npy"))
    np.save(path, np.concatenate([np.load(shard) for shard in shards]))


IMPORT = ["import-store", "--source", "clsp.npy", "--layout", "clsp", "-q"]


@pytest.fixture(scope="module")
def clsp_import(made_store, tmp_path_factory) -> tuple[Path, int]:
    """(a folder with clsp.npy, the made store's candidates; how many atomic publishes importing it takes)."""
    from _pytest.monkeypatch import MonkeyPatch

    from synthpos.cli import main

    root = tmp_path_factory.mktemp("import")
    _clsp_array(made_store, root / "clsp.npy")
    with MonkeyPatch.context() as mp:
        mp.chdir(root)
        publishes = _count_publishes(mp)
        argv, sys.argv = sys.argv, ["synthpos", *IMPORT, *sets(GENERATE)]
        try:
            main()
        finally:
            sys.argv = argv
    _same_shards(root / "run" / "store", made_store)
    shutil.rmtree(root / "run")
    return root, len(publishes)


def _same_shards(store: Path, made: Path) -> None:
    """An imported store of the made store's candidates holds the very shard files generate wrote."""
    from synthpos.data import store_integrity
    from synthpos.data.synthetic_store import SyntheticStore

    assert [s.state for s in store_integrity.ensure_verified(SyntheticStore.open(store), "always")] == ["ok"] * 4
    for shard in sorted((made / "run" / "store").glob("shard-*.npy")):
        assert (store / shard.name).read_bytes() == shard.read_bytes(), shard.name


@needs_fmnist
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_import_store_stopped_at_a_seeded_write_resumes_to_the_same_shards(made_store, clsp_import, tmp_path, monkeypatch,
                                                                           capsys, signal_name) -> None:
    source, publishes = clsp_import
    shutil.copy(source / "clsp.npy", tmp_path / "clsp.npy")
    monkeypatch.chdir(tmp_path)
    args = [*IMPORT, *sets(GENERATE)]
    n, when = _seeded_point("import-store", signal_name, publishes)
    proc = _stop_at_publish(tmp_path, n, signal_name, when, args)
    print(f"fault seed {SEED}: import-store got {signal_name} {when} publish {n} of {publishes}")
    _stopped_as_promised(proc, signal_name, tmp_path / "run")
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    _same_shards(tmp_path / "run" / "store", made_store)


@needs_fmnist
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_report_stopped_at_its_write_leaves_no_half_page(done_run, tmp_path, monkeypatch, capsys, signal_name) -> None:
    """Report x SIGKILL / SIGTERM: report.html is there whole or not at all, and the same command writes it."""
    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    n, when = _seeded_point("report", signal_name, 1)  # its one publish: report.html
    proc = _stop_at_publish(tmp_path, n, signal_name, when, ["report", "run"])
    _stopped_as_promised(proc, signal_name, tmp_path / "run")
    page = tmp_path / "run" / "report.html"
    assert page.is_file() == (when == "after"), when
    assert not page.exists() or page.read_text().rstrip().endswith("</html>")
    assert not list((tmp_path / "run").glob("report.html.tmp-*")) or signal_name == "SIGKILL"
    page.unlink(missing_ok=True)
    code, _, err = cli(capsys, "report", "run")
    assert code == 0, err
    assert page.read_text().rstrip().endswith("</html>")


@needs_fmnist
@pytest.mark.parametrize("where", ["figure", "page"])
def test_a_full_disk_in_report_is_one_line_and_nothing_half_written(done_run, tmp_path, monkeypatch, capsys, where) -> None:
    import matplotlib.figure

    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    if where == "figure":  # a plot into the temporary folder (the system's, often a small disk)
        def savefig(self, fname, *args, **kwargs):
            raise _no_space(str(fname))

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    else:  # the page itself, into the run
        real = Path.write_text

        def write_text(self, data, *args, **kwargs):
            if self.name.startswith("report.html"):
                real(self, data[:100], *args, **kwargs)
                raise _no_space()
            return real(self, data, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = cli(capsys, "report", "run")
    one_line(code, err, "no space left on device", ".png" if where == "figure" else "run/report.html",
             "run the same command again")
    assert tree(tmp_path) == before, "nothing half-written, the lock removed"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "report", "run")[0] == 0


@needs_fmnist
def test_a_full_disk_in_import_store_is_one_line_and_the_same_command_resumes(made_store, clsp_import, tmp_path,
                                                                              monkeypatch, capsys) -> None:
    from synthpos.data import store_integrity

    shutil.copy(clsp_import[0] / "clsp.npy", tmp_path / "clsp.npy")
    monkeypatch.chdir(tmp_path)
    room, shard_bytes, original = _fill_disk_after_seeded_shards(made_store, monkeypatch)
    code, _, err = cli(capsys, *IMPORT, *sets(GENERATE))
    one_line(code, err, "no space left on device", "run/store/shard-0000", "run the same command again")
    store = tmp_path / "run" / "store"
    kept = {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*.npy")}
    assert len(kept) == room // shard_bytes and not list(store.glob("*.tmp-*"))
    assert not (tmp_path / "run" / ".synthpos.lock").exists()
    monkeypatch.setattr(store_integrity.HashingWriter, "write", original)  # space freed
    code, _, err = cli(capsys, *IMPORT, *sets(GENERATE))
    assert code == 0, err
    assert {name: (store / name).stat().st_mtime_ns for name in kept} == kept, "finished shards kept"
    _same_shards(store, made_store)


@needs_fmnist
@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_backbone_is_remade_by_the_command_evaluate_advises(done_run, tmp_path, monkeypatch, capsys,
                                                                      damage) -> None:
    """Evaluate x damaged input: one line naming the file and `pretrain`; pretrain then remakes it (its record says
    done, but a backbone cut short is not a finished output), and evaluate ends with the same metrics.json."""
    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    backbone = tmp_path / "run" / "pretrain" / "backbone.pt"
    whole = backbone.read_bytes()
    backbone.write_bytes(whole[:2000] if damage == "truncated" else bytes(len(whole)))
    shutil.rmtree(tmp_path / "run" / "evaluate")
    full = sets(GENERATE, PRETRAIN, EVALUATE_GRID)
    before = tree(tmp_path)
    code, _, err = cli(capsys, "evaluate", "-q", *full)
    one_line(code, err, "run/pretrain/backbone.pt", "pretrain again")
    assert tree(tmp_path) == before
    code, _, err = cli(capsys, "pretrain", "-q", *full)  # the advised command
    assert code == 0 and "skip pretrain" not in err, err
    assert backbone.read_bytes() == whole, "remade bit for bit"
    torch.set_num_threads(1)  # as the reference metrics were made
    assert cli(capsys, "evaluate", "-q", *full)[0] == 0
    assert (tmp_path / "run" / "evaluate" / "metrics.json").read_bytes() == \
        (done_run / "run" / "evaluate" / "metrics.json").read_bytes()


@needs_fmnist
def test_damaged_generator_weights_are_one_line_and_remade_by_the_train_generator_it_advises(tmp_path, monkeypatch,
                                                                                            capsys) -> None:
    """Train-generator x damaged input (and generate's): the trained generator's weights cut short before `generate`
    are one line naming them and `train-generator`, exit 2, nothing written; train-generator is not done while they
    are damaged and writes them again from its last checkpoint, byte for byte; generate then runs. Zeroed weights
    before train-generator resumes (killed after its last checkpoint, before COMPLETE): the resume rewrites them."""
    monkeypatch.chdir(tmp_path)
    own = sets([g for g in GENERATE if not g.startswith("generate.generator=")], TRAIN_GENERATOR)
    code, _, err = cli(capsys, "train-generator", "-q", *own)
    assert code == 0, err
    weights = tmp_path / "run" / "generator" / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    whole = weights.read_bytes()

    weights.write_bytes(whole[: len(whole) // 3])
    before = tree(tmp_path)
    code, _, err = cli(capsys, "generate", "-q", *own)
    one_line(code, err, "run/generator/model/unet/diffusion_pytorch_model.safetensors are damaged",
             "`synthpos train-generator`")
    assert tree(tmp_path) == before, "refused before anything was written or moved"
    code, _, err = cli(capsys, "train-generator", "-q", *own)  # the advised command
    assert code == 0 and "skip train-generator" not in err, err
    assert weights.read_bytes() == whole, "written again from the last checkpoint, byte for byte"
    code, _, err = cli(capsys, "generate", "-q", *own)
    assert code == 0, err

    weights.write_bytes(bytes(len(whole)))
    (tmp_path / "run" / "generator" / "COMPLETE").unlink()
    code, _, err = cli(capsys, "train-generator", "-q", *own)
    assert code == 0, err
    assert weights.read_bytes() == whole and (tmp_path / "run" / "generator" / "COMPLETE").is_file()


@needs_fmnist
def test_damaged_weights_of_a_training_ended_by_its_time_limit_are_rewritten_not_trained_on(tmp_path, monkeypatch,
                                                                                           capsys) -> None:
    """A training that ended on train_generator.max_minutes (or a minutes-cadence stop) has steps left: the repair
    of its damaged weights writes the same weights at the same step and keeps COMPLETE, rather than training on."""
    monkeypatch.chdir(tmp_path)
    own = sets([g for g in GENERATE if not g.startswith("generate.generator=")], TRAIN_GENERATOR,
               ["train_generator.max_steps=100000", "train_generator.max_minutes=0.0001"])  # stops after one step
    code, _, err = cli(capsys, "train-generator", "-q", *own)
    assert code == 0, err
    gen = tmp_path / "run" / "generator"
    weights = gen / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    whole, complete = weights.read_bytes(), (gen / "COMPLETE").read_text()
    assert json.loads(complete)["step"] < 100000
    weights.write_bytes(bytes(len(whole)))
    code, _, err = cli(capsys, "train-generator", "-q", *own)
    assert code == 0 and "skip train-generator" not in err, err
    assert weights.read_bytes() == whole and (gen / "COMPLETE").read_text() == complete
    weights.unlink()  # deleted, not damaged: not a whole generator either
    code, _, err = cli(capsys, "train-generator", "-q", *own)
    assert code == 0 and "skip train-generator" not in err, err
    assert weights.read_bytes() == whole and (gen / "COMPLETE").read_text() == complete


@needs_fmnist
def test_a_damaged_source_of_import_store_is_one_line_with_nothing_written(clsp_import, tmp_path, monkeypatch,
                                                                            capsys) -> None:
    """Import-store x damaged input: a released .npy cut short (a broken download)."""
    data = (clsp_import[0] / "clsp.npy").read_bytes()
    (tmp_path / "clsp.npy").write_bytes(data[: len(data) // 2])
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    code, _, err = cli(capsys, *IMPORT, *sets(GENERATE))
    one_line(code, err, "clsp.npy is not a .npy array")
    assert tree(tmp_path) == before, "no run directory, store or lock left"


# A metrics.json as a user meets it damaged: cut short (a full disk before atomic writes, a copy stopped half-way),
# overwritten with something else, or valid JSON of the wrong shape (edited by hand, another tool's file).
METRICS_DAMAGE = {
    "truncated": (lambda text: text[:300], "not JSON"),
    "garbage": (lambda text: "\x00" * 64 + "not json at all", "not JSON"),
    "list": (lambda text: "[1, 2, 3]", "a JSON list"),
    "results-string": (lambda text: '{"results": "0.81", "records": []}', "'results' is str"),
}


@needs_fmnist
def test_damaged_metrics_are_one_line_in_report_and_remade_by_the_evaluate_it_advises(done_run, tmp_path, monkeypatch,
                                                                                      capsys) -> None:
    """Report x damaged input: a run whose metrics.json cannot be read back is not reported without its numbers as if
    it had none: one line naming the file and `synthpos evaluate`, exit 2, nothing written (neither report.html in the
    run nor the folder of --out); evaluate is not done while the file is damaged, so the advised command remakes it
    (the same bytes) and the report is then written."""
    shutil.copytree(done_run / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "run" / "evaluate" / "metrics.json"
    whole = metrics.read_bytes()
    for damage, (change, said) in METRICS_DAMAGE.items():
        metrics.write_text(change(whole.decode()))
        before = tree(tmp_path)
        for out in ([], ["--out", "elsewhere/page.html"]):
            code, _, err = cli(capsys, "report", "run", *out)
            one_line(code, err, "run/evaluate/metrics.json is damaged", said, "`synthpos evaluate`")
            assert tree(tmp_path) == before, (damage, out)  # no report.html, no `elsewhere/`, the lock removed
    metrics.write_text(whole.decode()[:300])
    torch.set_num_threads(1)  # as the reference metrics were made
    code, _, err = cli(capsys, "evaluate", "-q", *sets(GENERATE, PRETRAIN, EVALUATE_GRID))  # the advised command
    assert code == 0 and "skip evaluate" not in err, err
    assert metrics.read_bytes() == whole, "remade, the same numbers"
    code, _, err = cli(capsys, "report", "run")
    assert code == 0, err
    assert (tmp_path / "run" / "report.html").read_text().rstrip().endswith("</html>")


def test_damaged_weights_left_by_another_generator_kind_do_not_stop_generate(tmp_path) -> None:
    """generate's weight check is for the generator it runs: the anchors kind trains nothing and reads no weights,
    so a damaged folder a clsp run left is not its concern (advising train-generator would train a DDPM for nothing)."""
    from synthpos.config import load_config
    from synthpos.errors import SynthposError
    from synthpos.stages.checks import check_generate

    def config(kind: str):
        return load_config(None, [f"run_dir={tmp_path / 'run'}", f"generate.kind={kind}"])

    weights = config("clsp").generator_model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(bytes(64))  # zeroed
    with pytest.raises(SynthposError, match="are damaged"):
        check_generate(config("clsp"), explicit=True, upfront=False)
    check_generate(config("anchors"), explicit=True, upfront=False)
