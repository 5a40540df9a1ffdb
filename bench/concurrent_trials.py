"""Aggregate img/s of k trials sharing one device, each its own OS process, as Ray runs them.

Each worker (started with multiprocessing's spawn, as Ray's are fresh processes) builds the 64-px
DCGAN trial of bench/step_throughput.py with the product's defaults for the device (bf16 +
channels_last on CUDA), takes ``--warmup`` steps, waits at a barrier with the others, then times
``--steps`` steps of ``train_step`` at batch 64. The aggregate rate is all workers' images over the
span from the first start to the last end. Compared with one trial alone (k = 1) and with one
process at batch 512 (what one trial could do with the whole device to itself).

Recommends a trials-per-GPU default: the smallest k whose aggregate reaches ``--target`` (3.5) times
one trial alone; failing that, the knee (the last k whose doubling still added ``--knee-gain``).
The search's default is 4 (``--gpus-per-trial 0.25``).

    PYTHONPATH=. python bench/concurrent_trials.py [--device cuda] [--ks 1,2,4,8] [--steps 300]
    PYTHONPATH=. python bench/concurrent_trials.py --device cpu --ks 1,2 --batch 8 --big-batch 16 \
        --steps 3 --warmup 1 --no-record                                  # a check that it runs
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import queue as queues
import time
from typing import Any

import torch
from common import add_common_args, rate, report, sync, table
from step_throughput import make

from orchestrator.gan.step import train_step

START_TIMEOUT_S = 600  # building a worker: importing torch, a CUDA context, the data


def worker(device: str, batch: int, steps: int, warmup: int, threads: int, barrier: Any, out: Any) -> None:
    """Runs in its own process: warm up, meet the others, time ``steps`` steps, put (start, end)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    state, data = make(dev, batch)  # the product's default on each device
    for _ in range(warmup):
        train_step(state, data)
    sync(dev)
    barrier.wait(timeout=START_TIMEOUT_S)
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
    for _ in range(steps):
        train_step(state, data)
    sync(dev)
    out.put((start, time.monotonic()))


def run_group(k: int, batch: int, args: argparse.Namespace) -> float:
    """Aggregate img/s of ``k`` concurrent workers at ``batch``."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(k), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // k)
    work = (args.device, batch, args.steps, args.warmup, threads, barrier, out)
    procs = [ctx.Process(target=worker, args=work) for _ in range(k)]
    for proc in procs:
        proc.start()
    spans = []
    try:
        while len(spans) < k:
            try:
                spans.append(out.get(timeout=5))
            except queues.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"a worker of k={k} exited with status {failed[0]}") from None
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return k * args.steps * batch / wall


def recommend(rates: dict[int, float], target: float, knee_gain: float) -> str:
    ks = sorted(rates)
    one = rates[ks[0]]
    reaching = [k for k in ks if rates[k] >= target * one]
    if reaching:
        return f"{reaching[0]} trials per GPU (the fewest reaching {target:g}x one trial alone)"
    knee = ks[0]
    for prev, k in itertools.pairwise(ks):
        if rates[k] < (1 + knee_gain) * rates[prev]:
            break
        knee = k
    best = max(rates[k] / one for k in ks)
    why = (f"the largest tried, still adding {knee_gain:.0%} or more: try more" if knee == ks[-1]
           else f"the knee: more added under {knee_gain:.0%}")
    return f"{knee} trials per GPU ({why}); no k reached {target:g}x one trial (best {best:.2f}x)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--ks", default="1,2,4,8", help="concurrent trial counts; the first is the baseline")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--big-batch", type=int, default=512, help="the single-process comparison")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--target", type=float, default=3.5)
    p.add_argument("--knee-gain", type=float, default=0.15)
    args = p.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})
    big = run_group(1, args.big_batch, args)
    rates = {k: run_group(k, args.batch, args) for k in ks}
    one = rates[ks[0]]
    rows = [[k, rate(r), rate(r / k), f"{r / one:.2f}x", f"{r / big:.2f}"] for k, r in rates.items()]
    rows.append([f"1 at batch {args.big_batch}", rate(big), rate(big), f"{big / one:.2f}x", "1.00"])
    lines = table([f"trials (batch {args.batch})", "aggregate img/s", "img/s per trial", "vs one alone",
                   f"vs one at batch {args.big_batch}"], rows)
    lines += ["", f"Recommended default: {recommend(rates, args.target, args.knee_gain)}; "
              f"{args.steps} timed steps per worker after {args.warmup} warm-up steps."]
    report("concurrent_trials", args.device, lines, args)


if __name__ == "__main__":
    main()
