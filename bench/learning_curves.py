"""Learning curves: a seeded design of configurations trained exactly as a search's trials are, every
evaluation recorded (issues 23 and 27).

The plan is the one ``python -m orchestrator.search ARGS`` would make from the same arguments (space
file, resolution, evaluation interval, FID sample count, precision, device, trials at once, threads
per trial, evaluations per trial; on a machine without a GPU, the space's CPU budget), so a table
says what the search's own trials learn. The design: the space's start points, then ``--configs``
configurations drawn at random from the space (seeded); the first ``--seeded`` of them are also
trained with ``--seeds - 1`` further seeds, so the table holds the seed-to-seed noise. Each run goes
through ``orchestrator.trial.TrialRunner`` (the trainable's own loop) for at most the plan's
evaluations, stopped where a trial would be (a failure detector, a diverged loss), in
``max_concurrent`` worker processes of the plan's threads each.

One row per evaluation, appended to ``--table`` (CSV) as it finishes: the run, its configuration,
the evaluation, the step, the seconds spent training and evaluating in that interval (and in all),
and every metric the registry computed. Re-running the same command resumes: a finished run is
skipped, a run cut short continues from its last evaluation's checkpoint (kept under the cache
folder); the table only ever grows.

    python bench/learning_curves.py shapes --configs 4 --max-evals 12      # the CPU curves of issue 23
    python bench/learning_curves.py shapes --configs 24 --seeded 4 --seeds 4    # issue 27's design
    python bench/learning_curves.py --summary bench/curves/shapes-cpu.csv   # table, plot, RESULTS.md
    python bench/learning_curves.py shapes --smoke-test --configs 1 --table /tmp/t.csv    # a check

Any flag of ``python -m orchestrator.search`` is taken and means what it means there.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from asha_vs_fifo import sample_configs
from common import BENCH, add_common_args, report, table
from curve_table import COMPLETED

from orchestrator.search.cli import parse_args as search_args
from orchestrator.search.plan import Plan, make_plan

HORIZONS_MIN = (5, 10, 15, 20)  # the summary's columns: minutes of one trial's compute


@dataclass(frozen=True)
class Run:
    """One configuration trained with one seed: ``run`` names it in the table."""

    run: str
    config_id: int
    seed: int
    config: dict[str, Any]  # the sampled keys, as the search's trial would get them


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=True)
    p.add_argument("--configs", type=int, default=4, help="configurations drawn from the space, start "
                   "points included (default 4)")
    p.add_argument("--seeded", type=int, default=0, help="how many of them also run with more seeds")
    p.add_argument("--seeds", type=int, default=1, help="seeds of each of those (default 1: none more)")
    p.add_argument("--design-seed", type=int, default=0, help="seeds the random draws of the design")
    p.add_argument("--table", type=Path, help="the CSV to append to (default bench/curves/DATASET-DEVICE"
                   ".csv)")
    p.add_argument("--summary", type=Path, help="summarise this table (plot, RESULTS.md) and exit")
    add_common_args(p, device=False)
    return p.parse_known_args(argv)


def design(plan: Plan, args: argparse.Namespace) -> list[Run]:
    """Start points then random draws; every run's seed, the extra seeds after the first ones."""
    configs = sample_configs(plan.space, args.configs, args.design_seed)
    runs = [Run(f"c{i:02d}-s{plan.settings.seed}", i, plan.settings.seed, c) for i, c in enumerate(configs)]
    for i, config in enumerate(configs[: args.seeded]):
        for k in range(1, args.seeds):
            seed = plan.settings.seed + k
            runs.append(Run(f"c{i:02d}-s{seed}", i, seed, config))
    return runs


def recorded(path: Path) -> dict[str, tuple[int, bool]]:
    """Per run in the table: evaluations recorded, and whether it has ended."""
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    rows = pd.read_csv(path, usecols=["run", "eval", "ended"], keep_default_na=False)
    done = {}
    for run, group in rows.groupby("run"):
        done[str(run)] = (int(group["eval"].max()), bool((group["ended"].astype(str) != "").any()))
    return done


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One line, under a lock: workers append concurrently, the first writes the header."""
    with path.open("a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            header = f.readline().strip()
            columns = header.split(",") if header else list(row)
            if not header:
                pd.DataFrame(columns=columns).to_csv(f, index=False)
            pd.DataFrame([{c: row.get(c, "") for c in columns}]).to_csv(f, header=False, index=False)
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_run(plan: Plan, run: Run, done: int, table_path: str, work: str, threads: int) -> str:
    """A worker: train ``run`` from its checkpoint (or afresh), appending rows past ``done``."""
    import dataclasses

    import torch

    from orchestrator.data import dataset as datasets
    from orchestrator.errors import TrainingDiverged
    from orchestrator.metrics.inception import load_inception
    from orchestrator.metrics.reference import RealImages
    from orchestrator.trial import TrialRunner
    from orchestrator.trial_report import DIVERGED

    torch.set_num_threads(threads)
    parent = os.getppid()
    settings = dataclasses.replace(plan.settings, seed=run.seed)
    data = datasets.prepare_dataset(datasets.spec_for(settings), settings.cache_dir, progress=False)
    extractor = load_inception(plan.fid_weights, device=settings.device)
    real = RealImages(data.images, data.key, settings.fid_n, extractor, settings.cache_dir, progress=False)
    reference, real_ref = real.reference(device=extractor.device)
    config = plan.space.trial_config(run.config)
    runner = TrialRunner(config, settings, data, reference, extractor, extractor.device, real_ref)
    checkpoint = Path(work) / f"{run.run}.pt"
    if checkpoint.is_file():
        runner.restore(checkpoint)
        print(f"  {run.run}: resumed at evaluation {len(runner.history)}", flush=True)
    for k in range(done + 1, len(runner.history) + 1):  # a checkpoint ahead of the table
        append_row(Path(table_path), _row(run, runner.history[:k], ""))
    ended = ""
    while len(runner.history) < plan.max_evals and not ended:
        try:
            runner.train(settings.eval_every)
            runner.evaluate()
        except TrainingDiverged:
            runner.history.append({runner.objective.key: math.inf, "step": float(runner.step),
                                   "train_seconds": runner.meter.seconds, "eval_seconds": 0.0})
            ended = DIVERGED
        if runner.verdict is not None:
            ended = runner.verdict.mode
        if not ended and len(runner.history) == plan.max_evals:
            ended = COMPLETED
        if os.getppid() != parent:  # the recording was killed: a resumed one takes the run on
            return run.run
        runner.save(checkpoint)  # first: a crash between the two leaves the row to be re-derived
        if len(runner.history) > done:  # a run started afresh (its checkpoint lost) skips what is there
            append_row(Path(table_path), _row(run, runner.history, ended))
    return run.run


def _row(run: Run, history: list[dict[str, float]], ended: str) -> dict[str, Any]:
    last = history[-1]
    train = sum(r.get("train_seconds", 0.0) for r in history)
    evaluate = sum(r.get("eval_seconds", 0.0) for r in history)
    return {
        "run": run.run, "config_id": run.config_id, "seed": run.seed, "eval": len(history),
        "step": int(last.get("step", 0)), "train_seconds": last.get("train_seconds", 0.0),
        "eval_seconds": last.get("eval_seconds", 0.0), "seconds": train + evaluate, "ended": ended,
        "config": json.dumps(run.config, sort_keys=True),
        **{k: v for k, v in last.items() if k not in ("train_seconds", "eval_seconds", "step")},
    }


def record(plan: Plan, runs: list[Run], path: Path, work: Path) -> None:
    done = recorded(path)
    todo = [r for r in runs if not done.get(r.run, (0, False))[1]]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already recorded in {path}; {len(todo)} to train, "
          f"{plan.max_concurrent} at once, {plan.resources['cpu']:g} threads each", flush=True)
    if not todo:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    prepare(plan)
    threads = max(1, int(plan.resources["cpu"]))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(plan.max_concurrent, mp_context=spawn) as pool:
        futures = [pool.submit(train_run, plan, run, done.get(run.run, (0, False))[0], str(path), str(work),
                               threads) for run in todo]
        for future in as_completed(futures):
            print(f"  {future.result()}: done", flush=True)


def prepare(plan: Plan) -> None:
    """The decoded data and the reference statistics, once, here: the workers read them cached."""
    from orchestrator.data import dataset as datasets
    from orchestrator.metrics.inception import load_inception
    from orchestrator.metrics.reference import RealImages

    data = datasets.prepare_dataset(datasets.spec_for(plan.settings), plan.settings.cache_dir)
    extractor = load_inception(plan.fid_weights, device=plan.settings.device)
    RealImages(data.images, data.key, plan.settings.fid_n, extractor, plan.settings.cache_dir).reference(
        device=extractor.device)


def work_folder(plan: Plan, path: Path) -> Path:
    """Checkpoints of the runs of ``path``'s design, under the cache folder (never in the repo)."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return plan.settings.cache_dir / "curves" / f"{path.stem}-{key}"


# --- the summary --------------------------------------------------------------------------------


def at_minutes(curves: pd.DataFrame, key: str, minutes: float) -> pd.Series:
    """Per run, ``key`` at its last evaluation within ``minutes`` of its own compute (NaN: none)."""
    within = curves[curves["seconds"] <= minutes * 60]
    return within.groupby("run")[key].last()


def summarise(path: Path, args: argparse.Namespace) -> None:
    curves = pd.read_csv(path, keep_default_na=False, na_values=[""])
    fid_key = next(c for c in curves.columns if c.startswith("fid") and c[3:].rstrip("k").isdigit())
    keys = [k for k in (fid_key, "kid", "mode_coverage", "decodable") if k in curves]
    rows = []
    for run, group in curves.groupby("run", sort=True):
        config = json.loads(group["config"].iloc[0])
        total = group["seconds"].max()
        cells = [run, _short(config), f"{group['step'].max():,}", f"{total / 60:.1f}"]
        for minutes in HORIZONS_MIN:
            within = group[group["seconds"] <= minutes * 60]
            shown = len(within) and (minutes * 60 <= total or minutes == HORIZONS_MIN[0])
            cells.append(" / ".join(_fmt(within[k].iloc[-1], k) for k in keys) if shown else "")
        cells += [" / ".join(_fmt(group[k].iloc[-1], k) for k in keys), _ended(group["ended"].iloc[-1])]
        rows.append(cells)
    headers = ["run", "config", "steps", "minutes", *[f"at {m} min" for m in HORIZONS_MIN], "last", "ended"]
    plot = path.with_suffix(".png")
    _plot(curves, keys, plot)
    where = path.relative_to(BENCH.parent) if path.is_relative_to(BENCH.parent) else path
    lines = [f"Table `{where}`, plot `{plot.name}`. Cells: {' / '.join(keys)} at the last evaluation "
             "within that many minutes of the run's own compute (training and evaluating, one trial's "
             "share of the machine); empty past the run's end.", "", *table(headers, rows)]
    lines += ["", *agreement(curves, fid_key)]
    report("learning_curves", "cpu", lines, args)


def agreement(curves: pd.DataFrame, fid_key: str) -> list[str]:
    """What FID at this N tells apart, against the decoder's ground truth (shapes): Spearman's rho
    between FID and the decodable fraction over every evaluation, and between each run's FID at
    evaluation k and its last decodable fraction (what a rung at k would rank on)."""
    if "decodable" not in curves or curves["run"].nunique() < 3:
        return []
    from scipy.stats import spearmanr

    finite = curves[curves[fid_key].apply(math.isfinite)]
    overall = spearmanr(finite[fid_key], finite["decodable"]).statistic
    last = finite.groupby("run")["decodable"].last()
    cells = []
    for k, at_k in finite.groupby("eval"):
        runs = at_k.set_index("run")
        if len(runs) >= 3:
            rho = spearmanr(runs[fid_key], last[runs.index]).statistic
            cells.append(f"eval {k}: {rho:+.2f} ({len(runs)} runs)")
    return [f"FID against the decoder: Spearman's rho of {fid_key} and decodable over all "
            f"{len(finite)} evaluations {overall:+.2f} (-1: FID ranks as the decoder does); of each run's "
            f"{fid_key} at an evaluation and its last decodable fraction: {'; '.join(cells)}."]


def _ended(value: Any) -> str:
    return value if isinstance(value, str) and value else "cut short"  # (a run still going, or killed)


def _short(config: dict[str, Any]) -> str:
    keys = ("loss", "lr_g", "lr_d", "ngf", "d_norm", "optimizer", "beta1")
    return " ".join(f"{k} {_fmt(config[k], k)}" for k in keys if k in config)


def _fmt(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if key.startswith("lr") or key == "kid":
        return f"{value:.2g}"
    if key.startswith("fid"):
        return f"{value:.0f}" if math.isfinite(value) else "inf"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _plot(curves: pd.DataFrame, keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for run, group in curves.groupby("run", sort=True):
            ax.plot(group["seconds"] / 60, group[key], marker=".", label=run)
        ax.set_xlabel("minutes of one trial's compute")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args, rest = parse(argv)
    if args.summary:
        summarise(args.summary, args)
        return 0
    plan = make_plan(search_args(rest or ["shapes"]))
    path = args.table or BENCH / "curves" / f"{plan.settings.dataset}-{plan.settings.device}.csv"
    runs = design(plan, args)
    start = time.time()
    record(plan, runs, path, work_folder(plan, path))
    print(f"recorded in {time.time() - start:.0f} s: {path}")
    with contextlib.suppress(StopIteration):
        summarise(path, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
