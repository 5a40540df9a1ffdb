"""Does the search earn its name? TPE + ASHA against random + ASHA and TPE + FIFO, same budget and seeds.

Three searches of the same space through ``python -m orchestrator.search`` (same data, seed, trial
count, evaluation budget):

- ``tpe_asha``: the search as it ships (the space's start points, then TPE; ASHA's rungs);
- ``random_asha``: the space's start points, then configurations drawn by Optuna's RandomSampler
  with ``--seed``, all written as start points, so TPE never samples; the same ASHA;
- ``tpe_fifo``: the search as it ships with ``grace_period = max_evals``: no rung below the end, every
  trial runs its whole budget (the space format's way to say "never stop early").

Reports, for each: the best FID (its N in the name) and the compute spent (GPU-seconds: trial seconds
times the GPU share; on the CPU, trial-seconds), the compute at which each first came within 10% of
the best FID any of them found, and a plot of best FID against cumulative compute. From the FIFO
search, where every trial ran to the end: the Spearman correlation between a trial's FID at the first
rung (evaluation ``grace_period``) and its final FID, i.e. whether ASHA's early cut ranks GAN trials
as their end does. One run of each is one draw: the noise between seeds is of the order of the
differences at small sizes, so a CPU run checks the machinery, not the claim.

    PYTHONPATH=. python bench/search_quality.py                 # GPU sizes: 16 trials on shapes
    PYTHONPATH=. python bench/search_quality.py --device cpu --num-samples 6 --max-concurrent 2 \
        --eval-every 20 --max-evals 3 --fid-n 64 --limit 500    # the machinery, minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from asha_vs_fifo import evaluations, reached, sample_configs, write_space
from common import BENCH, add_common_args, on_cuda, report, run_search, table

from orchestrator.metrics.registry import objective
from orchestrator.space.sampling import load_space, space_path

ARMS = ("tpe_asha", "random_asha", "tpe_fifo")


def argv_for(name: str, space_file: Path, folder: Path, args: argparse.Namespace) -> list[str]:
    argv = [args.dataset, "--space", str(space_file), "--name", name, "--storage", str(folder / "runs"),
            "--cache-dir", str(folder / "cache"), "--seed", str(args.seed), "--num-samples",
            str(args.num_samples), "--max-concurrent", str(args.max_concurrent),
            "--device", "cuda" if on_cuda(args.device) else "cpu"]
    argv += ["--gpus-per-trial", str(args.gpus_per_trial)] if on_cuda(args.device) else []
    return argv + (["--limit", str(args.limit)] if args.limit else [])


def rung_vs_final(experiment: Path, key: str, rung: int) -> tuple[float, int]:
    """Spearman's rho between each trial's FID at evaluation ``rung`` and at its last evaluation,
    over the trials that reached both with finite values; and how many did."""
    pairs = []
    for path in pd.read_csv(experiment / "results.csv")["path"]:
        lines = (Path(path) / "result.json").read_text().splitlines()
        history = sorted((json.loads(line) for line in lines), key=lambda r: r["training_iteration"])
        fids = np.array([float(r.get(key, np.inf)) for r in history])
        if len(fids) > rung and np.isfinite(fids[[rung - 1, -1]]).all():
            pairs.append((fids[rung - 1], fids[-1]))
    if len(pairs) < 3:
        return float("nan"), len(pairs)
    frame = pd.DataFrame(pairs, columns=["rung", "final"])
    return float(frame["rung"].corr(frame["final"], method="spearman")), len(pairs)


def plot(curves: dict[str, pd.DataFrame], unit: str, key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, events in curves.items():
        finite = events[np.isfinite(events["best"])]
        ax.step(finite["device_s"], finite["best"], where="post", label=name.replace("_", " + ").upper())
    ax.set(xlabel=f"cumulative {unit}", ylabel=f"best {key} so far",
           title="search quality: same budget, same seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--dataset", default="shapes", help="a dataset with a search space file")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-concurrent", type=int, default=4)
    p.add_argument("--gpus-per-trial", type=float, default=0.25)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--max-evals", type=int, default=9)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--fid-n", type=int, default=2000)
    p.add_argument("--limit", type=int, help="training images (default: all)")
    p.add_argument("--plot", type=Path, default=BENCH / "search_quality.png")
    args = p.parse_args()
    space = load_space(space_path(args.dataset))
    budget = {"eval_every": args.eval_every, "max_evals": args.max_evals, "grace_period": args.grace_period,
              "reduction_factor": args.reduction_factor, "fid_n": args.fid_n}
    plans = {  # (budget, start points) of each arm
        "tpe_asha": (budget, [dict(s) for s in space.start]),
        "random_asha": (budget, sample_configs(space, args.num_samples, args.seed)),
        "tpe_fifo": ({**budget, "grace_period": args.max_evals}, [dict(s) for s in space.start]),
    }
    key = objective(args.fid_n).key
    share = args.gpus_per_trial if on_cuda(args.device) else 1.0
    unit = "GPU-seconds" if on_cuda(args.device) else "trial-seconds (CPU)"

    curves, tables, walls = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        folder = Path(tmp)
        for name in ARMS:
            arm_budget, points = plans[name]
            space_file = write_space(space, points, arm_budget, folder / f"{name}.yaml")
            argv = argv_for(name, space_file, folder, args)
            _, walls[name], code = run_search(argv, folder / f"{name}.log")
            if code != 0:
                raise SystemExit(f"the {name} search exited with status {code}")
            curves[name], tables[name] = evaluations(folder / "runs" / name, key, share)
        rho, pairs = rung_vs_final(folder / "runs" / "tpe_fifo", key, args.grace_period)

    overall = min(float(events["best"].iloc[-1]) for events in curves.values())
    rows = []
    for name in ARMS:
        events, trials = curves[name], tables[name]
        outcomes = ", ".join(f"{n} {o}" for o, n in trials["outcome"].value_counts().items())
        rows.append([name.replace("_", " + "), f"{len(trials)} ({outcomes})", len(events),
                     f"{events['device_s'].iloc[-1]:.1f}", f"{events['best'].iloc[-1]:.3f}",
                     f"{reached(events, 1.1 * overall):.1f}", f"{walls[name]:.0f}"])
    lines = table(["search", "trials", "evaluations", unit, f"best {key}",
                   f"{unit} to within 10% of the best of all", "wall s"], rows)
    lines += ["", f"FIFO: Spearman rho between a trial's {key} at the first rung (evaluation "
              f"{args.grace_period}) and its final {key}: {rho:.2f} over {pairs} trials. {args.dataset}, "
              f"{args.num_samples} trials per search, {args.max_evals} x {args.eval_every} steps at most, "
              f"ASHA grace {args.grace_period} reduction {args.reduction_factor:g}, FID on {args.fid_n} "
              f"images, {args.max_concurrent} at once, seed {args.seed}. Plot: {args.plot.name}."]
    plot(curves, unit, key, args.plot)
    report("search_quality", args.device, lines, args)


if __name__ == "__main__":
    main()
