"""How much of a search's wall clock its trials spend training and evaluating.

Runs one real search (``python -m orchestrator.search``, a child process) of short trials into a
temporary folder with a fresh cache, times its wall clock from launch, then reads the
``results.csv`` it writes: ``seconds`` is Tune's ``time_total_s`` of each trial, ``started`` /
``ended`` its first and last wall-clock moments. Reports

- efficiency = sum(trial seconds) / (wall x concurrent slots), target >= 0.85; also over the span
  from the first trial's start to the last one's end, which leaves out start-up and shut-down;
- the time from launch until the first trial started (Ray, data cache, FID reference statistics);
- the peak number of trials seen running at once.

Slots: min(--max-concurrent, 1 / GPU share per trial) on CUDA, --max-concurrent on the CPU.

    PYTHONPATH=. python bench/orchestration.py [--device cuda] [--num-samples 16] [--max-evals 3]
    PYTHONPATH=. python bench/orchestration.py --device cpu --num-samples 4 --max-concurrent 2 \
        --eval-every 2 --max-evals 2 --fid-n 16 --limit 200 --no-record   # a check that it runs
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import pandas as pd
from common import add_common_args, on_cuda, report, run_search, table

DEFAULT_GPU_SHARE = 0.25  # the search's own default with a GPU (orchestrator/search.py)


def search_argv(args: argparse.Namespace, folder: Path) -> list[str]:
    argv = [args.dataset, "--name", "bench", "--storage", str(folder / "runs"),
            "--cache-dir", str(args.cache_dir or folder / "cache"), "--seed", "0",
            "--num-samples", str(args.num_samples), "--max-concurrent", str(args.max_concurrent),
            "--eval-every", str(args.eval_every), "--max-evals", str(args.max_evals),
            "--fid-n", str(args.fid_n), "--limit", str(args.limit),
            "--device", "cuda" if on_cuda(args.device) else "cpu"]
    if on_cuda(args.device):
        argv += ["--gpus-per-trial", str(args.gpus_per_trial)]
    return argv + args.search_args.split()


def peak_concurrency(trials: pd.DataFrame) -> int:
    events = sorted([(t, 1) for t in trials["started"]] + [(t, -1) for t in trials["ended"]])
    running = peak = 0
    for _, delta in events:  # at equal times an end sorts first: a handover is not an overlap
        running += delta
        peak = max(peak, running)
    return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--dataset", default="shapes", help="built in, so no data needs staging")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-concurrent", type=int, default=4, help="the search's default")
    p.add_argument("--gpus-per-trial", type=float, default=DEFAULT_GPU_SHARE)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-evals", type=int, default=3)
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--cache-dir", type=Path, help="reuse a cache (default: a fresh one, as a first search)")
    p.add_argument("--search-args", default="", help="more flags for the search, e.g. '--data-root DIR'")
    args = p.parse_args()
    slots = args.max_concurrent
    if on_cuda(args.device):
        slots = min(slots, math.floor(1 / args.gpus_per_trial + 1e-9))

    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        folder = Path(tmp)
        launched, wall, code = run_search(search_argv(args, folder), folder / "search.log")
        if code != 0:
            raise SystemExit(f"the search exited with status {code}")
        trials = pd.read_csv(folder / "runs" / "bench" / "results.csv")

    busy = float(trials["seconds"].sum())
    span = float(trials["ended"].max() - trials["started"].min())
    outcomes = ", ".join(f"{n} {o}" for o, n in trials["outcome"].value_counts().items())
    rows = [
        ["trials", f"{len(trials)} ({outcomes})"],
        ["concurrent slots (peak seen)", f"{slots} ({peak_concurrency(trials)})"],
        ["wall clock from launch", f"{wall:.1f} s"],
        ["launch until the first trial started", f"{trials['started'].min() - launched:.1f} s"],
        ["sum of trial seconds (Tune time_total_s)", f"{busy:.1f} s"],
        ["efficiency: busy / (wall x slots)", f"{busy / (wall * slots):.2f} (target >= 0.85)"],
        ["efficiency over the trials' span", f"{busy / (span * slots):.2f} (span {span:.1f} s)"],
    ]
    lines = table(["measure", "value"], rows)
    lines += ["", f"{args.dataset}, {args.num_samples} trials of at most {args.max_evals} x "
              f"{args.eval_every} steps, FID on {args.fid_n} images, at most {args.max_concurrent} at once, "
              f"fresh cache: {args.cache_dir is None}."]
    report("orchestration", args.device, lines, args)


if __name__ == "__main__":
    main()
