"""ASHA vs FIFO on the same configurations: the best FID each finds, and the compute each spends.

Draws ``--num-samples`` (16) configurations of the MNIST space up front (the space's own start
points first, then Optuna's RandomSampler with ``--seed``), and writes them as the start points of
two copies of the space, so both searches run exactly those configurations in that order (TPE
never samples: there are as many start points as trials). The copies differ only in the budget:

- ASHA: ``grace_period`` and ``reduction_factor`` as given (rungs at 1, 3, 9 evaluations by default);
- FIFO: ``grace_period = max_evals``, so ASHA has no rung below the end and every trial runs to full
  budget (the CLI has no scheduler switch; this is how its space format says "never stop early").

Both run through ``python -m orchestrator.search mnist`` (32 px) with the same seed, data and cache.
Each evaluation's FID and ``time_this_iter_s`` are read from Tune's ``result.json`` of every trial;
device-seconds are trial seconds times the trial's GPU share (on the CPU: trial seconds). Reports
the best FID against cumulative device-seconds for both (plotted to ``--plot``), and the ratios:
ASHA's best FID within 10 % of FIFO's, with at most 1/3 of its device-seconds.

MNIST: ``--data-root`` holding ``MNIST/raw/`` (torchvision's layout) or ``mnist/*.gz`` (the layout of
../shared/data, decompressed here into a temporary folder).

    PYTHONPATH=. python bench/asha_vs_fifo.py [--device cuda] [--data-root ../shared/data]
    PYTHONPATH=. python bench/asha_vs_fifo.py --device cpu --num-samples 4 --max-concurrent 2 \
        --eval-every 2 --max-evals 3 --reduction-factor 2 --fid-n 16 --limit 300 \
        --plot /tmp/asha_vs_fifo.png --no-record                          # a check that it runs
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from common import BENCH, add_common_args, on_cuda, report, run_search, shared_data, table

from orchestrator.metrics.frechet import metric_name
from orchestrator.space.sampling import SearchSpace, load_space, space_path

DEFAULT_GPU_SHARE = 0.25  # the search's own default with a GPU (orchestrator/search.py)
RUNS = ("asha", "fifo")


def sample_configs(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """The space's start points, then random draws of its sampled keys, ``n`` in all."""
    points = [dict(p) for p in space.start][:n]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(points) < n:
        trial = study.ask()
        space.define_by_run(trial)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return points


def write_space(space: SearchSpace, points: list[dict[str, Any]], budget: dict[str, Any], path: Path) -> Path:
    raw = copy.deepcopy(dict(space.raw))
    raw["budget"], raw["start"] = budget, points
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def mnist_root(root: Path, scratch: Path) -> Path:
    """A folder with MNIST/raw/ for torchvision: ``root`` itself, or the .gz files decompressed."""
    if (root / "MNIST" / "raw").is_dir():
        return root
    archives = sorted((root / "mnist").glob("*.gz"))
    if not archives:
        raise SystemExit(f"no MNIST under {root}: expected MNIST/raw/ or mnist/*.gz (../shared/ASSETS.md)")
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in archives:
        (raw / archive.stem).write_bytes(gzip.decompress(archive.read_bytes()))
    return scratch


def search_argv(name: str, space_file: Path, root: Path, folder: Path, args: argparse.Namespace) -> list[str]:
    argv = ["mnist", "--space", str(space_file), "--name", name, "--storage", str(folder / "runs"),
            "--cache-dir", str(folder / "cache"), "--data-root", str(root), "--seed", str(args.seed),
            "--num-samples", str(args.num_samples), "--max-concurrent", str(args.max_concurrent),
            "--device", "cuda" if on_cuda(args.device) else "cpu"]
    argv += ["--gpus-per-trial", str(args.gpus_per_trial)] if on_cuda(args.device) else []
    return argv + (["--limit", str(args.limit)] if args.limit else [])


def evaluations(experiment: Path, key: str, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every evaluation of every trial in time order, with cumulative device-seconds and the best
    FID so far (failed trials spend time but never count as best); and the per-trial table."""
    trials = pd.read_csv(experiment / "results.csv")
    failed = set(trials.loc[trials["outcome"] == "failed", "trial_id"].astype(str))
    rows = []
    for path in trials["path"]:
        for line in (Path(path) / "result.json").read_text().splitlines():
            r = json.loads(line)
            trial = str(r["trial_id"])
            rows.append({"trial_id": trial, "at": r["reported_at"], "seconds": r["time_this_iter_s"] * share,
                         "config": json.dumps(r["config"], sort_keys=True),
                         "fid": math.inf if trial in failed else float(r.get(key, math.inf))})
    events = pd.DataFrame(rows).sort_values("at", kind="stable").reset_index(drop=True)
    events["device_s"] = events["seconds"].cumsum()
    events["best"] = events["fid"].cummin()
    return events, trials


def reached(events: pd.DataFrame, level: float) -> float:
    """Device-seconds spent when the best FID first came within ``level``; inf if never."""
    hit = events.loc[events["best"] <= level, "device_s"]
    return float(hit.iloc[0]) if len(hit) else math.inf


def plot(curves: dict[str, pd.DataFrame], unit: str, key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, events in curves.items():
        finite = events[np.isfinite(events["best"])]
        ax.step(finite["device_s"], finite["best"], where="post", label=name.upper())
        ax.plot(finite["device_s"].iloc[-1:], finite["best"].iloc[-1:], "o", color=ax.lines[-1].get_color())
    ax.set_xlabel(f"cumulative {unit}")
    ax.set_ylabel(f"best {key} so far")
    ax.set_title("ASHA vs FIFO on the same configurations")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--data-root", type=Path, default=shared_data())
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="draws the configurations; seeds every trial")
    p.add_argument("--max-concurrent", type=int, default=4)
    p.add_argument("--gpus-per-trial", type=float, default=DEFAULT_GPU_SHARE)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--max-evals", type=int, default=9)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--fid-n", type=int, default=2000)
    p.add_argument("--limit", type=int, help="training images (default: all 60k)")
    p.add_argument("--plot", type=Path, default=BENCH / "asha_vs_fifo.png")
    args = p.parse_args()
    space = load_space(space_path("mnist"))
    points = sample_configs(space, args.num_samples, args.seed)
    budget = {"eval_every": args.eval_every, "max_evals": args.max_evals, "grace_period": args.grace_period,
              "reduction_factor": args.reduction_factor, "fid_n": args.fid_n}
    budgets = {"asha": budget, "fifo": {**budget, "grace_period": args.max_evals}}
    key = metric_name(args.fid_n)
    share = args.gpus_per_trial if on_cuda(args.device) else 1.0
    unit = "GPU-seconds" if on_cuda(args.device) else "trial-seconds (CPU)"

    curves, tables, walls = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as tmp:
        folder = Path(tmp)
        root = mnist_root(args.data_root, folder / "data")
        for name in RUNS:
            space_file = write_space(space, points, budgets[name], folder / f"{name}.yaml")
            _, walls[name], code = run_search(search_argv(name, space_file, root, folder, args),
                                              folder / f"{name}.log")
            if code != 0:
                raise SystemExit(f"the {name} search exited with status {code}")
            curves[name], tables[name] = evaluations(folder / "runs" / name, key, share)

    same = sorted(set(curves["asha"]["config"])) == sorted(set(curves["fifo"]["config"]))
    fifo_best = float(curves["fifo"]["best"].iloc[-1])
    rows = []
    for name in RUNS:
        events, trials = curves[name], tables[name]
        outcomes = ", ".join(f"{n} {o}" for o, n in trials["outcome"].value_counts().items())
        rows.append([name.upper(), f"{len(trials)} ({outcomes})", len(events),
                     f"{events['device_s'].iloc[-1]:.1f}", f"{events['best'].iloc[-1]:.3f}",
                     f"{reached(events, 1.1 * fifo_best):.1f}", f"{walls[name]:.0f}"])
    lines = table(["scheduler", "trials", "evaluations", unit, f"best {key}",
                   f"{unit} to within 10% of FIFO's best", "wall s"], rows)
    fid_ratio = float(curves["asha"]["best"].iloc[-1]) / fifo_best
    cost_ratio = float(curves["asha"]["device_s"].iloc[-1] / curves["fifo"]["device_s"].iloc[-1])
    lines += ["", f"ASHA / FIFO: best FID {fid_ratio:.3f} (target <= 1.10), {unit} {cost_ratio:.3f} "
              f"(target <= 0.33); same configurations in both: {same}. mnist 32 px, {args.num_samples} "
              f"trials, {args.max_evals} x {args.eval_every} steps at most, ASHA grace {args.grace_period} "
              f"reduction {args.reduction_factor:g}, FID on {args.fid_n} images, {args.max_concurrent} at "
              f"once, seed {args.seed}. Plot: {args.plot.name}."]
    plot(curves, unit, key, args.plot)
    report("asha_vs_fifo", args.device, lines, args)


if __name__ == "__main__":
    main()
