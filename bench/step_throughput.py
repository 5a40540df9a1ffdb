"""img/s of one trial's training step, and whether the fast path trains the same.

The 64-px DCGAN step (ngf = ndf = 64, nz = 100, Adam, bce; ``--resolution`` and ``--width`` change
the net), data already on the device, run as a
trial runs it (``orchestrator.train.train_steps``: statistics read every 16 steps, both columns):
plain fp32 eager vs the product's fast path (bf16 autocast + channels_last, the default on CUDA),
and fp16 autocast + channels_last with its loss scalers (the default on GPUs without native bf16),
at batch 64 and 512; each rate the median of ``--repeats`` timed windows.
Target (issue 6): the fast path at batch 64 >= 2.5x fp32 eager on a GPU (exit status 1 and a
``FAIL target:`` line when missed; on a CPU, or without batch 64, an ``INFO`` line).

Then the loss curves: ``--curve-steps`` steps at batch 64 from one seed, fp32 and fast, each loss
smoothed by a trailing mean of ``--smooth`` steps; the max and mean relative difference of the
smoothed curves, beside the same numbers for fp32 with another seed (what a curve's own noise
looks like). Target: fast-vs-fp32 within that noise.

    PYTHONPATH=. python bench/step_throughput.py [--device cuda] [--steps 200] [--batches 64,512]
        [--curve-steps 500] [--no-record]
    PYTHONPATH=. python bench/step_throughput.py --device cpu --resolution 32 --width 32 --threads 1 \
        --batches 64 --no-fp16 --curve-steps 2000    # the CPU space's net, one trial's thread (issue 23)
    PYTHONPATH=. python bench/step_throughput.py --device cpu --steps 2 --warmup 1 --repeats 1 \
        --batches 4 --curve-steps 6 --curve-batch 4 --smooth 3 --no-record    # a check that it runs
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from common import add_common_args, median, rate, report, table, target, timed

from orchestrator.config import TrialConfig
from orchestrator.data.dataset import DeviceImages
from orchestrator.data.shapes import draw_shapes
from orchestrator.gan.placement import place
from orchestrator.gan.step import GANState, build_state, train_step, train_steps

SHAPES_IMAGES = 4096
NET = {"resolution": 64, "width": 64}  # the GPU space's net; --resolution 32 --width 32 is the CPU space's


def make(device: torch.device, batch: int, precision: str = "auto", seed: int = 0
         ) -> tuple[GANState, DeviceImages]:
    """A trial's state and data; ``auto`` is the product's default on ``device``, an explicit
    precision runs channels_last unless it is fp32 (the eager baseline)."""
    placement = place(device, precision, channels_last=None if precision == "auto" else precision != "fp32")
    images, _ = draw_shapes("train", NET["resolution"], SHAPES_IMAGES)
    data = DeviceImages(images, device, channels_last=placement.channels_last)
    config = TrialConfig(batch_size=batch, ngf=NET["width"], ndf=NET["width"])
    return build_state(config, 3, NET["resolution"], placement, seed=seed), data


def throughput(device: torch.device, batch: int, precision: str, args: argparse.Namespace) -> float:
    """img/s: the median of ``repeats`` windows of ``steps`` steps, after ``warmup`` steps."""
    state, data = make(device, batch, precision)
    train_steps(state, data, args.warmup)

    def window() -> None:
        train_steps(state, data, args.steps)

    return args.steps * batch / median([timed(window, device) for _ in range(args.repeats)])


def losses(device: torch.device, precision: str, seed: int, steps: int, batch: int) -> np.ndarray:
    """[steps, 2]: d_loss and g_loss of every step."""
    state, data = make(device, batch, precision, seed)
    rows = []
    for _ in range(steps):
        stats = train_step(state, data)
        rows.append((stats.d_loss, stats.g_loss))
    return np.asarray(rows, np.float64)


def smoothed(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing means over ``window`` steps, from the first full window on."""
    c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
    return (c[window:] - c[:-window]) / window


def relative_difference(a: np.ndarray, b: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per loss: max and mean over steps of |smooth(a) - smooth(b)| / |smooth(b)|."""
    sa, sb = smoothed(a, window), smoothed(b, window)
    rel = np.abs(sa - sb) / np.maximum(np.abs(sb), 1e-8)
    return rel.max(0), rel.mean(0)


def curve_rows(device: torch.device, args: argparse.Namespace) -> list[list[str]]:
    n, w, b = args.curve_steps, min(args.smooth, args.curve_steps), args.curve_batch
    fp32, fast, other_seed = (losses(device, "fp32", 0, n, b), losses(device, "bf16", 0, n, b),
                              losses(device, "fp32", 1, n, b))
    rows = []
    for label, (mx, mean) in (("fast vs fp32, seed 0", relative_difference(fast, fp32, w)),
                              ("fp32 seed 1 vs seed 0 (noise)", relative_difference(other_seed, fp32, w))):
        rows.append([label, f"{mx[0]:.2%}", f"{mean[0]:.2%}", f"{mx[1]:.2%}", f"{mean[1]:.2%}"])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--steps", type=int, default=200, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--batches", default="64,512")
    p.add_argument("--curve-steps", type=int, default=500, help="loss-curve comparison length; 0 skips it")
    p.add_argument("--curve-batch", type=int, default=64)
    p.add_argument("--smooth", type=int, default=50, help="trailing-mean window for the loss curves")
    p.add_argument("--resolution", type=int, default=64, help="32 or 64 (default 64)")
    p.add_argument("--width", type=int, default=64, help="ngf = ndf (default 64)")
    p.add_argument("--threads", type=int, help="torch threads (default torch's)")
    p.add_argument("--no-fp16", action="store_true", help="leave out fp16 (a CPU has no fast fp16)")
    args = p.parse_args()
    NET.update(resolution=args.resolution, width=args.width)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows, speedups = [], {}
    for batch in (int(b) for b in args.batches.split(",")):
        fp32 = throughput(device, batch, "fp32", args)
        fast = throughput(device, batch, "bf16", args)
        speedups[batch] = fast / fp32
        half = [rate(h := throughput(device, batch, "fp16", args)), f"{h / fp32:.2f}x"] if not args.no_fp16 \
            else ["skipped (--no-fp16)", ""]
        rows.append([batch, rate(fp32), rate(fast), f"{fast / fp32:.2f}x", *half])
    lines = table(["batch", "fp32 eager img/s", "bf16 + channels_last img/s", "speed-up",
                   "fp16 + channels_last + loss scaling img/s", "speed-up"], rows)
    # "fp32" is PyTorch's default, which lets cuDNN use tf32 for convolutions: say which it was
    tf32 = torch.backends.cudnn.allow_tf32
    lines += ["", f"{NET['resolution']} px, ngf = ndf = {NET['width']}, nz 100, Adam, bce. "
              f"fp32 eager as PyTorch's defaults leave it: cudnn.allow_tf32={tf32}, "
              f"float32 matmul precision {torch.get_float32_matmul_precision()!r}; median of {args.repeats} "
              f"windows of {args.steps} steps after {args.warmup} warm-up steps."]
    if args.curve_steps > 0:
        window = min(args.smooth, args.curve_steps)
        lines += ["", f"Loss curves over {args.curve_steps} steps at batch {args.curve_batch}, trailing mean "
                  f"of {window} steps; relative difference of the smoothed curves:", ""]
        lines += table(["runs compared", "d_loss max", "d_loss mean", "g_loss max", "g_loss mean"],
                       curve_rows(device, args))
    report("step_throughput", device, lines, args)
    judged = device.type == "cuda" and 64 in speedups
    return target(speedups.get(64, 0.0) >= 2.5 if judged else None,
                  "the fast path at batch 64 >= 2.5x fp32 eager: "
                  + (f"{speedups[64]:.2f}x" if 64 in speedups else "batch 64 not measured")
                  + ("" if judged else " (judged on a GPU only)"))


if __name__ == "__main__":
    sys.exit(main())
