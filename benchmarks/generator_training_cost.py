"""What a generator costs to train on this machine: the shipped DDPMs against the paper's.

Each UNet is built from its recipe's ``train_generator.unet`` (through
:func:`synthpos.generators.diffusion.build_unet`, as ``synthpos train-generator`` builds it):

* ``builtin:fashion_mnist`` (the reference): ``configs/fashion_mnist/generator_cpu.yaml``;
* ``builtin:fashion_mnist_small``: ``configs/fashion_mnist/generator_small_cpu.yaml``;
* the paper's DDPM (CLSP's CIFAR-10 UNet, ch 128, mult 1-2-2-2): ``configs/cifar10/generator.yaml``,

each on 1-channel Fashion-MNIST at the side ``train-generator`` would give it (28 px for three
levels, padded to 32 for four: :func:`~synthpos.generators.diffusion.fitting_sample_size`).

A step costs what one of ``train-generator`` does: the UNet's noise prediction at random
timesteps, a mean squared error (unweighted: the weighting is a few elementwise products),
backward, Adam; at the same batch for every UNet, in fp32 and
in bf16 autocast, one untimed warm-up step first. ``images/s`` = batch x timed steps / wall
seconds. From it, the days the recipe's ``max_steps`` at its own batch would take here (the
shipped generator stopped at step 34,925 of its cap, by its stop rule, src/synthpos/checkpoints/fashion_mnist/training.json).

Run (on an idle machine, about 3 minutes on 2 cores)::

    python benchmarks/generator_training_cost.py

Writes ``benchmarks/results/generator_training_cost.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _machine import machine_info  # benchmarks/_machine.py

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEFAULT_OUT = ROOT / "results" / "generator_training_cost.json"
IMAGE_SIDE, CHANNELS = 28, 1  # Fashion-MNIST
#: (name, recipe); the first is the reference.
UNETS = (
    ("builtin:fashion_mnist", "configs/fashion_mnist/generator_cpu.yaml"),
    ("builtin:fashion_mnist_small", "configs/fashion_mnist/generator_small_cpu.yaml"),
    ("paper DDPM (CLSP's CIFAR-10 UNet), Fashion-MNIST padded to 32 px", "configs/cifar10/generator.yaml"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images per training step, the same for every UNet")
    p.add_argument("--steps", type=int, default=None, help="timed steps per UNet and precision "
                   "(default: 10, and 3 for the paper's UNet)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/generator_training_cost.json; "
                   "with --smoke runs/smoke/generator_training_cost.json)")
    p.add_argument("--smoke", action="store_true", help="checks the script: every UNet for 1 step of batch 2 at 8 px; measures nothing")
    args = p.parse_args(argv)
    args.precisions = args.precisions.split(",")
    if args.smoke:
        from _smoke import THREADS

        args.batch, args.steps, args.threads = 2, 1, THREADS
    return args


def train_rate(unet, side: int, channels: int, batch: int, steps: int, precision: str) -> float:
    """Training images/s of ``unet`` (one untimed warm-up step first)."""
    import torch

    from synthpos.precision import autocast

    x = torch.randn(batch, channels, side, side)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,))
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    unet.train()

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            loss = torch.nn.functional.mse_loss(unet(x, t).sample.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from synthpos.config import load_config
    from synthpos.generators.diffusion import build_unet, count_parameters, fitting_sample_size

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": "generator_training_cost",
        "command": "python benchmarks/generator_training_cost.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info("diffusers") | {"smoke": args.smoke},
        "batch": args.batch, "reference": UNETS[0][0], "rows": [],
    }
    # --smoke: the code paths, not the numbers; 8 px passes every level of both shapes.
    image_side, channels = (8 if args.smoke else IMAGE_SIDE), CHANNELS
    for name, recipe in UNETS:
        tg = load_config(REPO / recipe).train_generator
        side = fitting_sample_size(image_side, len(tg.unet.block_out_channels))
        torch.manual_seed(0)
        unet = build_unet(tg.unet, side, channels)
        steps = args.steps or (3 if tg.unet.block_out_channels[0] >= 128 else 10)
        for precision in args.precisions:
            rate = train_rate(unet, side, channels, args.batch, steps, precision)
            report["rows"].append({
                "unet": name, "recipe": recipe, "unet_config": tg.unet.model_dump(mode="json"),
                "parameters_M": round(count_parameters(unet) / 1e6, 2),
                "side_px": side, "channels": channels, "precision": precision, "timed_steps": steps,
                "train_images_per_s": round(rate, 2),
                "recipe_batch": tg.batch_size, "recipe_max_steps": tg.max_steps,
                "days_for_recipe_max_steps": round(tg.max_steps * tg.batch_size / rate / 86400, 2),
            })
            print(f"{name:66s} {precision}  {rate:8.1f} images/s", flush=True)
    ref = {r["precision"]: r["train_images_per_s"] for r in report["rows"] if r["unet"] == UNETS[0][0]}
    for row in report["rows"]:
        row["cost_vs_reference"] = round(ref[row["precision"]] / row["train_images_per_s"], 2)
    if args.smoke:
        from _smoke import smoke_out

        out = args.out or smoke_out("generator_training_cost")
    else:
        out = args.out or DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
