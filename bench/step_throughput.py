"""img/s of the 64-px DCGAN training step (ngf = ndf = 64, nz = 100, Adam, bce), data already on the
device: fp32 eager vs bf16 autocast + channels_last, at batch 64 and 512. Prints a table and appends
it to bench/RESULTS.md with the device, date and command.

    python bench/step_throughput.py [--device cuda] [--steps 200] [--batches 64,512]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from orchestrator.config import TrialConfig
from orchestrator.data import DeviceImages
from orchestrator.shapes import draw_shapes
from orchestrator.train import build_state, train_step

RESULTS = Path(__file__).with_name("RESULTS.md")


def measure(device: torch.device, batch: int, fast: bool, steps: int, warmup: int) -> float:
    images, _ = draw_shapes("train", 64, 4096)
    data = DeviceImages(images, device, channels_last=fast)
    state = build_state(TrialConfig(batch_size=batch), 3, 64, device, seed=0, fast=fast)
    for _ in range(warmup):
        train_step(state, data)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, data)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batches", default="64,512")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        fp32 = measure(device, batch, fast=False, steps=args.steps, warmup=args.warmup)
        bf16 = measure(device, batch, fast=True, steps=args.steps, warmup=args.warmup)
        rows.append(f"| {batch} | {fp32:,.0f} | {bf16:,.0f} | {bf16 / fp32:.2f}x |")
    table = ["| batch | fp32 eager img/s | bf16 + channels_last img/s | ratio |", "| --- | --- | --- | --- |",
             *rows]
    header = (f"\n## step_throughput: {device_name(device)}, torch {torch.__version__}, "
              f"{datetime.date.today()}\n\n`python {' '.join(sys.argv)}`\n")
    print(header + "\n".join(table))
    with RESULTS.open("a") as f:
        f.write(header + "\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
