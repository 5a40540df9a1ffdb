"""TPE over a bounded history against Optuna's TPE over the whole study (issue 28): what a
suggestion costs as the trials grow, and what the bound costs the search, over many seeds.

Both samplers have the product's settings (``make_sampler``: multivariate, grouped, constant liar,
its random start), over a space file (shapes by default), in a journal study as a search keeps it,
with ``--at-once`` trials running (the oldest told first). A trial's value is where a synthetic
learning curve of its configuration ends (``replay_trial.synthetic_floor``: 40 plus 200 times the
mean squared distance from a hidden optimum drawn from the seed, 5 % noise); a tenth of the trials
fail. Both samplers of a seed see the same optimum and noise, and suggest the same configurations
until ``best + recent`` trials have finished: a paired comparison.

Per seed and sampler: the best value by each size, how many trials came within ``--good`` of the
floor of 40 (a search's good GANs), and the median suggestion time around each size. Each seed's
row is appended to ``--csv`` as it ends; a rerun skips the seeds it holds (run in the background).

    python bench/tpe_window.py --trials 1000 --seeds 10
"""

from __future__ import annotations

import argparse
import collections
import csv
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from common import add_common_args, report, table
from replay import scales
from replay_trial import hidden_optimum, synthetic_floor

from orchestrator.space.sampling import load_space, make_sampler, space_path
from orchestrator.space.study import open_study_storage

SIZES = (50, 250, 500, 1000, 2000)
WINDOW = 20  # suggestions a size's median time is taken over (the ones just before it)
SAMPLERS = ("whole", "bounded")


def whole_study(sampler: optuna.samplers.TPESampler) -> optuna.samplers.TPESampler:
    """The same TPE reading the whole study: Optuna's own class with the product's arguments."""
    whole = optuna.samplers.TPESampler.__new__(optuna.samplers.TPESampler)
    whole.__dict__.update({k: v for k, v in sampler.__dict__.items() if k != "_window"})
    return whole


def search(space_name: str, kind: str, seed: int, trials: int, at_once: int) -> dict[str, Any]:
    """One search: per size, the best value, the good trials and the median suggestion ms."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_path(space_name))
    keys, rng = scales(space), np.random.default_rng(seed)
    optimum = hidden_optimum(keys, rng)
    sampler = make_sampler(space, seed, trials)
    values, seconds, running = [], [], collections.deque()
    with tempfile.TemporaryDirectory() as folder:
        study = optuna.create_study(storage=open_study_storage(f"{folder}/optuna.log"), direction="minimize",
                                    sampler=sampler if kind == "bounded" else whole_study(sampler))
        for _ in range(trials):
            if len(running) == at_once:
                trial, value = running.popleft()
                if math.isnan(value):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            started = time.perf_counter()
            trial = study.ask()
            space.define_by_run(trial)
            seconds.append(time.perf_counter() - started)
            value = synthetic_floor(trial.params, keys, optimum, seed) * float(rng.lognormal(0, 0.05))
            values.append(float("nan") if rng.uniform() < 0.1 else value)
            running.append((trial, values[-1]))
    return {"values": np.array(values), "seconds": np.array(seconds)}


def row(kind: str, seed: int, run: dict[str, Any], good: float) -> dict[str, Any]:
    out: dict[str, Any] = {"sampler": kind, "seed": seed}
    for n in (n for n in SIZES if n <= len(run["values"])):
        seen = run["values"][:n]
        out[f"best_{n}"] = float(np.nanmin(seen))
        out[f"good_{n}"] = int(np.sum(seen < 40.0 + good))
        out[f"ms_{n}"] = 1000 * float(np.median(run["seconds"][n - WINDOW:n]))
    return out


def interval(xs: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """The median and a 95 % bootstrap interval of the median."""
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(xs, (2000, len(xs))), axis=1)
    return float(np.median(xs)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def summarise(rows: list[dict[str, Any]], trials: int) -> list[str]:
    by = {(r["sampler"], int(r["seed"])): r for r in rows}
    seeds = sorted({s for k, s in by if all((x, s) in by for x in SAMPLERS)})
    sizes = [n for n in SIZES if n <= trials]
    lines = [f"{len(seeds)} seeds; median over seeds [95 % bootstrap interval of the median]; "
             "paired: bounded minus whole, seed by seed.", ""]
    body = []
    def cell(xs: np.ndarray, sign: str = "") -> str:
        mid, lo, hi = interval(xs)
        return f"{mid:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]"

    for what, label in (("ms", "suggestion, ms"), ("best", "best value by then"),
                        ("good", "good trials by then")):
        for n in sizes:
            pair = np.array([[float(by[(k, s)][f"{what}_{n}"]) for k in SAMPLERS] for s in seeds])
            body.append([label, n, cell(pair[:, 0]), cell(pair[:, 1]), cell(pair[:, 1] - pair[:, 0], "+")])
    return lines + table(["what", "trials", "whole study", "bounded", "paired difference"], body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="shapes")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--at-once", type=int, default=64)
    p.add_argument("--good", type=float, default=10.0, help="a good trial ends within this of the floor, 40")
    p.add_argument("--csv", type=Path, default=Path(__file__).resolve().parent / "curves" / "tpe-window.csv")
    add_common_args(p, device=False)
    args = p.parse_args(argv)
    if args.trials < SIZES[0] or args.seeds < 2 or args.at_once < 1:
        print(f"tpe_window: --trials at least {SIZES[0]}, --seeds at least 2, --at-once at least 1",
              file=sys.stderr)
        return 2
    rows = list(csv.DictReader(args.csv.open())) if args.csv.is_file() else []
    done = {(r["sampler"], int(r["seed"])) for r in rows}
    for seed in range(args.seeds):
        for kind in SAMPLERS:
            if (kind, seed) in done:
                continue
            new = row(kind, seed, search(args.space, kind, seed, args.trials, args.at_once), args.good)
            print(new, flush=True)
            with args.csv.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(new))
                writer.writeheader() if f.tell() == 0 else None
                writer.writerow(new)
            rows.append(new)
    lines = [f"The product's TPE reading the whole study or a bounded one (best 25, newest 300 finished, "
             f"the running), {args.trials} trials of `{args.space}`, {args.at_once} at once, synthetic "
             f"values (a good trial within {args.good:g} of the floor).", "",
             *summarise([r for r in rows if int(r["seed"]) < args.seeds], args.trials)]
    report("tpe_window", "cpu", lines, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
