"""The fault matrix's larger sweep (outside CI): each stage stopped at many seeded points, then resumed.

For each stage (train-generator, generate, pretrain, evaluate, import-store, report) at toy size on
Fashion-MNIST: an uninterrupted run lists the stage's atomic publishes (every ``os.replace``: a
record, a checkpoint, a shard, a features cache, metrics.json, report.html). Then ``--points``
seeded points (publish n, just before or just after it, SIGKILL or SIGTERM; all of them when there
are fewer) each stop a fresh copy of the stage's inputs there, and the same command resumes it. The data is
the first 512 training and 256 test images (``data.root`` on a copy), of which the stages use 16.
Each trial checks:

* the stop: SIGKILL ends the process there; SIGTERM ends it with exit 143, one line starting
  ``terminated (SIGTERM)``, no traceback, the run's lock removed;
* the resume: exit 0, and the outputs equal the uninterrupted run's (bytes; ``.pt`` files tensor by
  tensor; report.html, which carries the time and the load, is checked whole instead).

Each run is a forked child of this process (imports paid once; one torch thread, as OpenMP's pool
does not survive a fork), so a trial costs the stage's own work. The tests run one seeded point
per cell (tests/test_fault_matrix.py); this runs many.

Run::

    python benchmarks/fault_sweep.py                 # --points 6 per stage: a few minutes of CPU
    python benchmarks/fault_sweep.py --points 20 --seed 3 --stages evaluate,import-store
    python benchmarks/fault_sweep.py --smoke         # one point of import-store (checks the script; runs/smoke/)

Writes ``benchmarks/results/fault_sweep.json`` (``--out``): the machine (CPU model, load), the
points tried per stage and the outcome of each trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "fault_sweep.json"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def sets(*groups: list[str]) -> list[str]:
    return [arg for group in groups for value in group for arg in ("--set", value)]


# The toy settings of tests/test_faults.py, a little longer where a stage has few publishes otherwise.
GENERATE = ["run_dir=run", "data.subset=16", "pretrain.synthetic.mode=clsp", "generate.generator=builtin:fashion_mnist",
            "generate.candidates=2", "generate.num_steps=2", "generate.shard_size=4", "generate.batch_size=8",
            "generate.precision=fp32", "generate.num_threads=1"]
PRETRAIN = ["pretrain.backbone.name=convnet", "pretrain.backbone.width=4", "pretrain.projector_hidden_dim=16",
            "pretrain.projector_out_dim=8", "pretrain.batch_size=8", "pretrain.epochs=3", "pretrain.precision=fp32",
            "pretrain.augment.crop_size=28", "pretrain.accelerator=cpu", "pretrain.num_threads=1",
            "pretrain.knn_every_epochs=0", "pretrain.checkpoint_every_epochs=1", "pretrain.checkpoint_every_minutes=null"]
TRAIN_GENERATOR = ["train_generator.unet.block_out_channels=[8,16]", "train_generator.unet.attention_levels=[1]",
                   "train_generator.unet.layers_per_block=1", "train_generator.unet.norm_num_groups=4",
                   "train_generator.num_train_timesteps=50", "train_generator.warmup_steps=1",
                   "train_generator.batch_size=8", "train_generator.max_steps=8", "train_generator.checkpoint_every=2",
                   "train_generator.checkpoint_every_minutes=null", "train_generator.precision=fp32",
                   "train_generator.num_threads=1"]
EVALUATE = ["evaluate.max_train=16", "evaluate.knn_k=3", "evaluate.linear.epochs=1", "evaluate.linear_protocols=[fast]",
            "evaluate.label_fractions=[1.0]", "evaluate.validation_fraction=0.25"]
ALL = sets(GENERATE, TRAIN_GENERATOR, PRETRAIN, EVALUATE)

# stage: (its command, the inputs it starts from, the outputs compared with the uninterrupted run's)
STAGES: dict[str, tuple[list[str], str, list[str]]] = {
    "train-generator": (["train-generator", "-q", *ALL], "empty", ["run/generator/model/**/*", "run/generator/COMPLETE"]),
    "generate": (["generate", "-q", *ALL], "empty", ["run/store/shard-*.npy", "run/store/manifest.json"]),
    "pretrain": (["pretrain", "-q", *ALL], "generated", ["run/pretrain/backbone.pt", "run/pretrain/backbone.json"]),
    "evaluate": (["evaluate", "-q", *ALL], "pretrained", ["run/evaluate/metrics.json"]),
    "import-store": (["import-store", "--layout", "clsp", "-q", *ALL], "empty", ["run/store/shard-*.npy",
                                                                               "run/store/manifest.json"]),
    "report": (["report", "run"], "evaluated", ["run/report.html"]),
}
IMPORTS = {"train-generator": ["synthpos.generators.diffusion"], "generate": ["synthpos.generators.generate"],
           "pretrain": ["synthpos.generators.generate", "synthpos.methods.pretrain"],
           "evaluate": ["synthpos.generators.generate", "synthpos.methods.pretrain", "synthpos.evaluation.evaluate"],
           "import-store": ["synthpos.data.import_store"],
           "report": ["synthpos.generators.generate", "synthpos.methods.pretrain", "synthpos.report.html"]}
# what each start needs: the state it is made from and the command that makes it
STARTS = {"empty": None, "generated": ("empty", "generate"), "pretrained": ("generated", "pretrain"),
          "evaluated": ("pretrained", "evaluate")}


def run_child(cwd: Path, args: list[str], stop: tuple[int, str, str] | None = None) -> dict[str, Any]:
    """``synthpos ARGS`` in a forked child, stopped at ``stop`` = (n, when, signal) if given: the signal is sent
    just before or just after its n-th os.replace. Returns exit code (minus the signal), stderr, publishes."""
    log = Path(tempfile.mkstemp(prefix="sweep-")[1])
    publishes = Path(tempfile.mkstemp(prefix="sweep-publishes-")[1])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(log, "w", buffering=1)
            os.chdir(cwd)
            import torch

            torch.set_num_threads(1)  # OpenMP's thread pool does not survive a fork
            real, done = os.replace, []
            n, when, signum = (stop[0], stop[1], getattr(signal, stop[2])) if stop else (0, "", 0)

            def replace(src, dst, *rest, **kwargs):
                done.append(str(Path(dst).relative_to(cwd)) if Path(dst).is_absolute() else str(dst))
                publishes.write_text("\n".join(done))
                if len(done) == n and when == "before":
                    os.kill(os.getpid(), signum)
                real(src, dst, *rest, **kwargs)
                if len(done) == n and when == "after":
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
    out = {"code": code, "stderr": log.read_text(), "publishes": [p for p in publishes.read_text().splitlines() if p]}
    log.unlink()
    publishes.unlink()
    return out


def outputs(folder: Path, patterns: list[str]) -> dict[str, Any]:
    """relative path -> what is compared: the bytes' hash, a .pt file's tensors, report.html's completeness."""
    import hashlib

    import torch

    found: dict[str, Any] = {}
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            if not path.is_file():
                continue
            rel = str(path.relative_to(folder))
            if path.name == "report.html":  # the time and the load are in it: whole, not equal
                found[rel] = path.read_text().rstrip().endswith("</html>")
            elif path.suffix == ".pt":
                state = torch.load(path, weights_only=True)
                found[rel] = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in sorted(state.items())}
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stopped_as_promised(result: dict[str, Any], signal_name: str, run: Path) -> tuple[bool, str]:
    err = result["stderr"]
    if signal_name == "SIGKILL":
        return result["code"] == -signal.SIGKILL, f"exit {result['code']}"
    lines = [line for line in err.splitlines() if line.strip()]
    ok = (result["code"] == 143 and bool(lines) and lines[-1].startswith("terminated (SIGTERM)")
          and "Traceback" not in err and not (run / ".synthpos.lock").exists())
    return ok, f"exit {result['code']}: {lines[-1][:160] if lines else ''}"


def points(publishes: int, wanted: int, rng: random.Random) -> list[tuple[int, str, str]]:
    """``wanted`` distinct seeded (publish, before/after, signal), or all of them when there are fewer."""
    every = [(n, when, sig) for n in range(1, publishes + 1) for when in ("before", "after")
             for sig in ("SIGKILL", "SIGTERM")]
    return sorted(every if wanted >= len(every) else rng.sample(every, wanted))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=6, help="seeded stop points per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="one point of import-store (checks the script)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.points, args.stages = 1, "import-store"
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(chosen) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"Fashion-MNIST is not under {FMNIST} (the Debian package dataset-fashion-mnist)")
    import torch

    torch.set_num_threads(1)  # before any torch work: the forked children then start from a clean pool
    # What the chosen stages import, imported once here for every forked run (diffusers and Lightning cost seconds).
    import importlib

    for module in ["synthpos.cli", "synthpos.stages", *{m for stage in chosen for m in IMPORTS[stage]}]:
        importlib.import_module(module)
    from synthpos.config import load_config

    load_config(None, [])  # builds the schema from the registries (imports every component): once, here

    from _smoke import smoke_out, tiny_fashion_mnist

    if args.smoke and args.out == DEFAULT_OUT:
        args.out = smoke_out("fault_sweep")
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="fault-sweep-")) if args.work is None else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The first 512 / 256 images: the stages read the split whole, and a sweep re-reads it in every run.
    data = ["--set", f"data.root={tiny_fashion_mnist(work / 'data', 512, 256)}"]
    started = time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

    starts: dict[str, Path] = {}

    def start(name: str) -> Path:
        """The folder a stage starts from (made once, by forked runs of the stages before it)."""
        if name not in starts:
            folder = work / f"start-{name}"
            if folder.exists():
                shutil.rmtree(folder)
            if STARTS[name] is None:
                folder.mkdir()
            else:
                before, command = STARTS[name]
                shutil.copytree(start(before), folder)
                made = run_child(folder, STAGES[command][0] + data)
                if made["code"] != 0:
                    raise SystemExit(f"making the {name} start failed: {made['stderr'][-2000:]}")
            starts[name] = folder
        return starts[name]

    source = None
    if "import-store" in chosen:  # the released set import-store reads: uint8 (N, K, H, W, C) in one .npy
        import numpy as np

        source = work / "clsp.npy"
        np.save(source, np.random.default_rng(args.seed).integers(0, 256, (16, 2, 28, 28, 1), dtype=np.uint8))

    results: dict[str, Any] = {}
    for stage in chosen:
        command, begin, compared = STAGES[stage]
        if stage == "import-store":
            command = [command[0], "--source", str(source), *command[1:]]
        if stage != "report":  # report reads the run's saved config
            command = command + data
        reference = work / f"{stage}-reference"
        if reference.exists():
            shutil.rmtree(reference)
        shutil.copytree(start(begin), reference)
        t0 = time.perf_counter()
        uninterrupted = run_child(reference, command)
        if uninterrupted["code"] != 0:
            raise SystemExit(f"{stage} failed uninterrupted: {uninterrupted['stderr'][-2000:]}")
        expected = outputs(reference, compared)
        rng = random.Random(f"{args.seed}-{stage}")
        trials = []
        for n, when, signal_name in points(len(uninterrupted["publishes"]), args.points, rng):
            trial = work / f"{stage}-{n}-{when}-{signal_name}"
            if trial.exists():
                shutil.rmtree(trial)
            shutil.copytree(start(begin), trial)
            t1 = time.perf_counter()
            stopped = run_child(trial, command, (n, when, signal_name))
            stop_ok, stop_said = stopped_as_promised(stopped, signal_name, trial / "run")
            resumed = run_child(trial, command)
            got = outputs(trial, compared)
            trials.append({
                "publish": n, "of": len(uninterrupted["publishes"]), "when": when, "signal": signal_name,
                "file": uninterrupted["publishes"][n - 1], "stop_ok": stop_ok, "stop": stop_said,
                "resume_exit": resumed["code"], "identical": resumed["code"] == 0 and got == expected,
                "differs": sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k)),
                "seconds": round(time.perf_counter() - t1, 2),
            })
            if resumed["code"] != 0:
                trials[-1]["resume_error"] = resumed["stderr"][-500:]
            shutil.rmtree(trial)
        ok = sum(t["stop_ok"] and t["identical"] for t in trials)
        results[stage] = {"publishes": uninterrupted["publishes"], "uninterrupted_s": round(time.perf_counter() - t0, 2),
                          "compared": sorted(expected), "points": len(trials), "passed": ok, "trials": trials}
        print(f"{stage:16s} {len(uninterrupted['publishes']):3d} publishes, {len(trials):3d} points, {ok} passed "
              f"(stopped as promised and resumed to the uninterrupted outputs)", flush=True)

    self_cpu, children_cpu = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = sum(getattr(after, f) - getattr(before, f) for after, before in
                ((self_cpu, cpu_before[0]), (children_cpu, cpu_before[1])) for f in ("ru_utime", "ru_stime"))
    report = {
        "benchmark": "fault_sweep", "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/fault_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed, "points_per_stage": args.points, "smoke": args.smoke,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(cpu_s, 1),
        "stages": results,
        "all_passed": all(r["passed"] == r["points"] for r in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'all passed' if report['all_passed'] else 'FAILURES'}; {report['wall_s']} s wall, {report['cpu_s']} s CPU; "
          f"written to {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
