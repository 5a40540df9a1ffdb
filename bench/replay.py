"""Does the search find better GANs per compute than a plain sweep? Replays of recorded learning
curves through the product's driver (issue 27, part 2).

A replay is one search: the plan ``python -m orchestrator.search ARGS`` makes from the same
arguments, its Tune configuration as the runner builds it (Optuna's TPE with the space's start
points, the ASHA that survives a resume), and trials that serve recorded curves instead of training
(``replay_trial.ReplayTrial``: a suggestion meets the table at its nearest recorded configuration).
A strategy swaps the sampler (``random``: Optuna's RandomSampler, the start points first) or the
scheduler (``fifo``: every trial runs its whole budget; ``wandb``: W&B's hyperband early termination,
which ranks the raw metric of each evaluation at the bands, where the product's ASHA ranks each
trial's best so far), and may change ASHA's numbers: ``tpe+asha:grace=2,rf=3,every=2`` (grace period
and reduction factor in evaluations, and ``every``: evaluate every that many recorded evaluations,
the skipped ones' training still counted, their evaluation not).

Per replay: the best value of the search's metric against cumulative compute (the recorded
device-seconds of every evaluation served, in the order the results arrived); the compute it took
to come within 5 % of the best any recorded evaluation reached; the best reached by a fixed compute
(``--at``, default half of what a FIFO sweep of the same trials spends). Per strategy, over
``--replays`` seeds: medians with 95 % bootstrap intervals, and a plot of best against compute with
the band between the replays' 2.5th and 97.5th percentiles.

``--bias``: how the nearest-configuration mapping bends random sampling. Drawn from the space, the
recorded configurations are not hit equally often (their cells in the space's scaling differ in
size), so a replay of random sampling picks some more often than a draw from the table would; the
section reports the hit frequencies against uniform and the expected best value of N trials
both ways.

    PYTHONPATH=. python bench/replay.py shapes --table bench/curves/shapes-cpu.csv --replays 20
    PYTHONPATH=. python bench/replay.py shapes --table T.csv --replays 2 --num-samples 4 --no-record

Any other flag of ``python -m orchestrator.search`` is taken and means what it means there.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import add_common_args, report, table
from replay_trial import DEVICE_SECONDS, Curves, ReplayTrial, Scale

from orchestrator.metrics.registry import objective
from orchestrator.search.cli import parse_args as search_args
from orchestrator.search.plan import Plan, make_plan
from orchestrator.space.sampling import SearchSpace
from orchestrator.space.schema import walk_params

SAMPLERS, SCHEDULERS = ("tpe", "random"), ("asha", "fifo", "wandb")
STRATEGIES = ("tpe+asha", "random+asha", "tpe+fifo", "random+fifo")  # the default set
OPTIONS = {"grace": "--grace-period", "rf": "--reduction-factor", "every": None}


@dataclasses.dataclass(frozen=True)
class Strategy:
    """``SAMPLER+SCHEDULER[:key=value,...]``, e.g. ``random+asha`` or ``tpe+asha:grace=2,rf=3``."""

    name: str
    sampler: str
    scheduler: str
    flags: tuple[str, ...] = ()  # the search's own flags for ASHA's numbers
    every: int = 1

    @classmethod
    def parse(cls, text: str) -> Strategy:
        head, _, options = text.partition(":")
        sampler, _, scheduler = head.partition("+")
        if sampler not in SAMPLERS or scheduler not in SCHEDULERS:
            raise ValueError(f"{text!r}: a strategy is SAMPLER+SCHEDULER, of {SAMPLERS} and {SCHEDULERS}")
        flags, every = [], 1
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key not in OPTIONS or not value.isdigit() or int(value) < 1:
                raise ValueError(f"{text!r}: options are {', '.join(OPTIONS)}, each a positive whole number")
            if key == "every":
                every = int(value)
            else:
                flags += [str(OPTIONS[key]), value]
        return cls(text, sampler, scheduler, tuple(flags), every)
WITHIN = 0.05  # "found a good GAN": within 5 % of the best recorded value


def scales(space: SearchSpace) -> dict[str, Scale]:
    """Each sampled key's scale, from its distribution in the space (its first occurrence)."""
    found: dict[str, Scale] = {}
    for param, _ in walk_params(space.params):
        d = param.distribution
        if param.name in found:
            continue
        if hasattr(d, "choices"):
            found[param.name] = Scale("category")
        else:
            kind = "log" if getattr(d, "log", False) else "linear"
            found[param.name] = Scale(kind, float(d.low), float(d.high))
    return found


def tune_config(plan: Plan, sampler: str, scheduler: str) -> Any:
    """The runner's own Tune configuration, with the sampler or the scheduler a strategy swaps."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from orchestrator.search.runner import _tune_config
    from orchestrator.space.sampling import make_searcher

    config = _tune_config(plan)
    if sampler == "random":  # the runner's searcher, start points first, with random draws after
        goal = objective(plan.settings.fid_n)
        searcher = make_searcher(plan.space, metric=goal.best_key, mode=goal.mode, seed=plan.settings.seed,
                                 num_samples=plan.num_samples,
                                 sampler=optuna.samplers.RandomSampler(seed=plan.settings.seed))
        config = dataclasses.replace(config, search_alg=ConcurrencyLimiter(searcher, plan.max_concurrent))
    if scheduler == "fifo":
        config = dataclasses.replace(config, scheduler=FIFOScheduler())
    if scheduler == "wandb":  # the same bands, judged on each evaluation's own value
        goal = objective(plan.settings.fid_n)
        config = dataclasses.replace(config, scheduler=ASHAScheduler(
            time_attr="training_iteration", metric=goal.key, mode=goal.mode, max_t=plan.max_evals,
            grace_period=plan.grace_period, reduction_factor=plan.reduction_factor))
    return config


def replay_once(argv: list[str], curves: Curves, strategy: Strategy, seed: int,
                scratch: Path) -> pd.DataFrame:
    """One replay: every result served, in arrival order, with the compute spent up to it."""
    from ray import tune

    name = "".join(c if c.isalnum() else "-" for c in strategy.name) + f"-{seed}"
    plan = make_plan(search_args([*argv, *strategy.flags, "--seed", str(seed), "--storage", str(scratch),
                                  "--name", name]))
    sampler, scheduler = strategy.sampler, strategy.scheduler
    curves = dataclasses.replace(curves, seed=seed, every=strategy.every)
    tuner = tune.Tuner(
        tune.with_parameters(ReplayTrial, curves=curves),
        tune_config=tune_config(plan, sampler, scheduler),
        run_config=tune.RunConfig(name=name, storage_path=str(scratch), verbose=0,
                                  stop={"training_iteration": plan.max_evals},
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0)),
    )
    results = tuner.fit()
    if results.errors:  # a replay that lost trials measures nothing
        raise RuntimeError(f"replay {name}: {len(results.errors)} trials failed: {results.errors[0]}")
    rows = [row for result in results if result.metrics_dataframe is not None
            for row in result.metrics_dataframe.to_dict("records")]
    served = pd.DataFrame(rows).sort_values("reported_at", kind="stable").reset_index(drop=True)
    served["compute"] = served[DEVICE_SECONDS].cumsum()
    served["best"] = served[curves.metric].cummin()
    served["strategy"], served["replay"] = strategy.name, seed
    return served


def compute_to_reach(served: pd.DataFrame, target: float) -> float:
    reached = served[served["best"] <= target]
    return float(reached["compute"].iloc[0]) if len(reached) else math.inf


def best_by(served: pd.DataFrame, compute: float) -> float:
    spent = served[served["compute"] <= compute]
    return float(spent["best"].iloc[-1]) if len(spent) else math.inf


def median_interval(values: list[float], rng: np.random.Generator, draws: int = 2000) -> tuple[float, ...]:
    """The median and its 95 % percentile-bootstrap interval (inf where a replay never got there)."""
    x = np.asarray(values, dtype=float)
    medians = np.median(rng.choice(x, size=(draws, len(x)), replace=True), axis=1)
    # "nearest": an interval reaching a replay that never got there is inf, not inf - inf
    low, high = np.percentile(medians, [2.5, 97.5], method="nearest")
    return float(np.median(x)), float(low), float(high)


def mapping_bias(curves: Curves, space: SearchSpace, draws: int, n: int,
                 rng: np.random.Generator) -> list[str]:
    """How often random draws from the space land on each recorded configuration, and the expected
    best value (each configuration at its best evaluation) of ``n`` trials drawn that way against ``n``
    drawn from the table uniformly."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=int(rng.integers(1 << 30))))
    hits: dict[int, int] = dict.fromkeys(curves.configs, 0)
    for _ in range(draws):
        trial = study.ask()
        space.define_by_run(trial)
        hits[curves.nearest(dict(trial.params))[0]] += 1
        study.tell(trial, 0.0)
    ids = sorted(hits)
    p = np.array([hits[i] for i in ids], dtype=float) / draws
    # what a trial of each configuration finds: its best evaluation (the search keeps the best so far)
    best = curves.rows.groupby("config_id")[curves.metric].min().reindex(ids).to_numpy()
    picks_mapped = rng.choice(len(ids), size=(4000, n), p=p)
    picks_uniform = rng.integers(0, len(ids), size=(4000, n))
    mapped, uniform = best[picks_mapped].min(1).mean(), best[picks_uniform].min(1).mean()
    return [f"Mapping bias ({draws} random draws from the space, {len(ids)} recorded configurations): each "
            f"recorded configuration is hit {p.min():.3f} to {p.max():.3f} of the time (uniform: "
            f"{1 / len(ids):.3f}); the expected best {curves.metric} of {n} random trials is {mapped:.2f} "
            f"through the mapping and {uniform:.2f} drawing the table's configurations uniformly."]


def plot(served: pd.DataFrame, path: Path, metric: str) -> Path:
    """Best so far against compute, the median and the 2.5-97.5 percentile band over replays: the
    samplers and schedulers in one panel, ASHA's settings (beside the default) in a second."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(served["strategy"]))
    panels = [[n for n in names if ":" not in n]]
    if variants := [n for n in names if ":" in n]:
        panels.append([n for n in names if n == "tpe+asha"] + variants)
    fig = Figure(figsize=(7 * len(panels), 4.5), layout="constrained")
    grid = np.linspace(0, served["compute"].max(), 200)
    for ax, shown in zip(fig.subplots(1, len(panels), squeeze=False).ravel(), panels, strict=True):
        for strategy in shown:
            rows = served[served["strategy"] == strategy]
            curves = np.array([[best_by(r, c) for c in grid] for _, r in rows.groupby("replay")])
            curves[~np.isfinite(curves)] = np.nan  # before a replay's first result: nothing found yet
            with warnings.catch_warnings():  # columns where no replay has a result yet stay empty
                warnings.simplefilter("ignore", RuntimeWarning)
                median, low, high = (np.nanmedian(curves, 0), np.nanpercentile(curves, 2.5, 0),
                                     np.nanpercentile(curves, 97.5, 0))
            line = ax.plot(grid / 3600, median, label=f"{strategy} (median)")[0]
            ax.fill_between(grid / 3600, low, high, color=line.get_color(), alpha=0.12)
        ax.set(xlabel="compute spent (device-hours, recorded)", ylabel=f"best {metric} so far", yscale="log")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path

def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=Path, required=True,
                   help="a learning-curve table (bench/learning_curves.py)")
    p.add_argument("--replays", type=int, default=20, help="replays per strategy, each its own seed")
    p.add_argument("--strategies", default=";".join(STRATEGIES), help="separated by ';', each "
                   "SAMPLER+SCHEDULER[:grace=G,rf=R,every=K] (default: " + "; ".join(STRATEGIES) + ")")
    p.add_argument("--time-scale", type=float, default=1 / 600, help="wall seconds slept per recorded second")
    p.add_argument("--at", type=float, help="the fixed compute (device-seconds) to compare the best at")
    p.add_argument("--bias-draws", type=int, default=2000,
                   help="random draws for the mapping's bias (0: none)")
    p.add_argument("--plot", type=Path, help="default: beside the table, TABLE-replay.png")
    p.add_argument("--out", type=Path, help="every served result as CSV, gzipped when it ends .gz (default: "
                   "beside the table, gzipped: a 16-trial replay of 20 seeds is 1.4 MB as text)")
    add_common_args(p, device=False)
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    try:
        strategies = [Strategy.parse(s.strip()) for s in args.strategies.split(";") if s.strip()]
    except ValueError as err:
        print(f"replay: --strategies {err}", file=sys.stderr)
        return 2
    if not args.table.is_file() or args.replays < 1:
        print(f"replay: no table {args.table}" if not args.table.is_file() else
              "replay: --replays must be at least 1", file=sys.stderr)
        return 2
    plan = make_plan(search_args([*rest, "--storage", tempfile.gettempdir()]))
    metric = objective(plan.settings.fid_n).key
    curves = Curves.read(args.table, metric, scales(plan.space), time_scale=args.time_scale)
    import ray

    # a Ray of its own, never one another process left running on this machine
    ray.init(address="local", num_cpus=plan.max_concurrent, include_dashboard=False, log_to_driver=False)
    started, parts = time.time(), []
    with tempfile.TemporaryDirectory() as scratch:
        for strategy in strategies:
            for seed in range(args.replays):
                parts.append(replay_once(rest, curves, strategy, seed, Path(scratch)))
                print(f"replay {strategy.name} seed {seed}: best {parts[-1]['best'].min():.2f} after "
                      f"{parts[-1]['compute'].iloc[-1] / 3600:.2f} device-hours", flush=True)
    ray.shutdown()
    served = pd.concat(parts, ignore_index=True)
    out = args.out or args.table.with_name(args.table.stem + "-replays.csv.gz")
    served.drop(columns=[c for c in served if c.startswith("config/")]).to_csv(out, index=False)
    lines = [*summarise(served, curves, args, plan), "", *what_the_metric_tells(curves, served, plan)]
    if args.bias_draws:
        rng = np.random.default_rng(0)
        lines += ["", *mapping_bias(curves, plan.space, args.bias_draws, plan.num_samples, rng)]
    figure = plot(served, args.plot or args.table.with_name(args.table.stem + "-replay.png"), metric)
    lines += ["", f"{len(served)} results served in {time.time() - started:.0f} s; every result in {out}, "
              f"the plot in {figure}."]
    report("replay", "cpu", lines, args)
    return 0


def summarise(served: pd.DataFrame, curves: Curves, args: argparse.Namespace, plan: Plan) -> list[str]:
    best = curves.best()
    target = best * (1 + WITHIN)
    sweep = served[served["strategy"].str.contains("+fifo", regex=False)].groupby("replay")["compute"].max()
    at = args.at or (float(sweep.median()) / 2 if len(sweep) else float(served["compute"].max()) / 2)
    rng = np.random.default_rng(0)
    rows = []
    for strategy, group in served.groupby("strategy", sort=False):
        replays = [r for _, r in group.groupby("replay")]
        reach = median_interval([compute_to_reach(r, target) for r in replays], rng)
        by = median_interval([best_by(r, at) for r in replays], rng)
        found = sum(compute_to_reach(r, target) < math.inf for r in replays)
        rows.append([strategy, len(replays), f"{found} of {len(replays)}",
                     f"{reach[0] / 3600:.2f} [{reach[1] / 3600:.2f}, {reach[2] / 3600:.2f}]",
                     f"{by[0]:.2f} [{by[1]:.2f}, {by[2]:.2f}]"])
    return [f"Table `{args.table}`: {len(curves.configs)} recorded configurations, best {curves.metric} "
            f"{best:.2f}; a replay is {plan.num_samples} trials, {plan.max_concurrent} at once, at most "
            f"{plan.max_evals} evaluations (ASHA: grace {plan.grace_period}, reduction "
            f"{plan.reduction_factor:g}). Medians over replays with 95 % bootstrap intervals; compute in "
            "recorded device-hours.", "",
            *table(["strategy", "replays", f"within {WITHIN:.0%} of the best", "device-hours to get there",
                    f"best {curves.metric} by {at / 3600:.2f} device-hours"], rows)]



def what_the_metric_tells(curves: Curves, served: pd.DataFrame, plan: Plan) -> list[str]:
    """What ASHA bets on, read from the table: does a run's metric at evaluation k rank runs as their
    final one does (Spearman's rho over the table's runs), how often ASHA's stops in the replays
    ended a configuration that finishes in the table's top 3, and, on ``shapes``, whether the metric
    ranks generators as the exact decoder's mode coverage does (and KID beside it)."""
    from scipy.stats import spearmanr

    rows, metric = curves.rows, curves.metric
    final = rows.sort_values("eval").groupby("run")[metric].last()
    cells = []
    for k in range(1, plan.max_evals + 1):
        at = rows[rows["eval"] == k].set_index("run")[metric]
        both = pd.concat([at, final], axis=1, join="inner").dropna()
        if len(both) >= 3:
            rho = spearmanr(both.iloc[:, 0], both.iloc[:, 1]).statistic
            cells.append(f"eval {k}: {rho:+.2f} ({len(both)})")
    lines = [f"Rank at evaluation k against the final {metric} (Spearman's rho, runs): " + "; ".join(cells)
             if cells else "Too few runs in the table to rank (fewer than 3)."]
    top3 = set(rows.sort_values("eval").groupby("config_id")[metric].last().nsmallest(3).index)
    recorded = rows.groupby("config_id")["eval"].max()  # how far each configuration's curve goes
    asha = served[served["strategy"].str.contains("+asha", regex=False)
                  & ~served["strategy"].str.contains("every", regex=False)]
    if len(asha):
        ends = asha.groupby(["strategy", "replay", "trial_id"]).agg(
            evals=("training_iteration", "max"), config=("config_id", "first"))
        left = recorded.reindex(ends["config"]).to_numpy()
        stopped = ends[(ends["evals"] < plan.max_evals) & (ends["evals"] < left)]  # cut, not ended
        hit = int(stopped["config"].isin(top3).sum())
        lines.append(f"ASHA's stops in the replays: {len(stopped)}; {hit} of them ended one of the table's "
                     f"top 3 configurations by final {metric}.")
    for other in ("mode_coverage", "kid"):
        if other in rows and metric != other:
            pair = rows[[metric, other]].dropna()
            if len(pair) >= 3:
                rho = spearmanr(pair[metric], pair[other]).statistic
                lines.append(f"{metric} against {other} over every recorded evaluation: rho {rho:+.2f} "
                             f"({len(pair)} evaluations; {'-1' if other == 'mode_coverage' else '+1'}: they "
                             "rank alike).")
    return lines


if __name__ == "__main__":
    sys.exit(main())
