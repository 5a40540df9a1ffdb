"""Where a CPU smoke search's wall clock goes (issue 15; target: at most 6 minutes on a quiet 2-core
machine).

Runs ``python -m orchestrator.search shapes --smoke-test`` in a child process, from an empty cache
(so the decode and the reference statistics are included) into a new folder, and splits its wall
clock three ways:

- the driver's phases, which the search writes to ``timings.json``: the Inception load, the decode,
  the reference statistics, Ray's start (with MLflow's parent run), the trials (Tune's loop) and the
  summary (results table, plots, the best generator logged to MLflow);
- the child process outside those phases: Python's start and imports before them, Ray's shutdown after;
- within the trials' phase, every trial's own seconds, summed from Tune's ``result.json``: its actor's
  set-up (the Inception load, the data placed on the device), training, the feature pass (the
  generator and the Inception network), the other metrics, checkpoints (state, generator, sample
  grid, curve plots). The rest of that phase is Tune's own: new actors (a Python process importing
  torch), scheduling, saving its state. MLflow's logging runs on a thread of the driver, beside it.

    PYTHONPATH=. python bench/smoke_breakdown.py [--no-record] [-- extra search flags]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import add_common_args, report, run_search, table

DRIVER = {"inception": "driver: Inception load", "data": "driver: decode shapes",
          "reference": "driver: reference statistics", "ray_start": "driver: Ray start, MLflow parent run",
          "summary": "driver: summary (table, plots, best model to MLflow)"}
TRIAL = {"setup_seconds": "trials: actor set-up (Inception load, data to device)",
         "train_seconds": "trials: training",
         "feature_seconds": "trials: feature pass (generator + Inception)",
         "metrics_seconds": "trials: the other metrics",
         "checkpoint_seconds": "trials: checkpoints"}


def trial_seconds(folder: Path) -> tuple[dict[str, float], int, int]:
    """Each TRIAL key summed over every result of every trial under ``folder``; trials; results."""
    sums = dict.fromkeys(TRIAL, 0.0)
    files = sorted(folder.glob("*/result.json"))
    results = 0
    for path in files:
        for line in path.read_text().splitlines():
            result = json.loads(line)
            results += 1
            for key in ("setup_seconds", "train_seconds", "feature_seconds", "checkpoint_seconds"):
                sums[key] += float(result.get(key) or 0.0)
            sums["metrics_seconds"] += float(result.get("eval_seconds") or 0.0) - float(
                result.get("feature_seconds") or 0.0)
    return sums, len(files), results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, device=False)
    p.add_argument("extra", nargs="*", help="flags for the search after '--', e.g. -- --max-concurrent 2")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="smoke-breakdown-") as tmp:
        root = Path(tmp)
        os.environ["ORCHESTRATOR_CACHE"] = str(root / "cache")  # empty: decode and reference included
        name = "smoke"
        argv = ["shapes", "--smoke-test", "--name", name, "--storage", str(root / "runs"), *args.extra]
        _, wall, code = run_search(argv, root / "search.log")
        if code != 0:
            raise SystemExit(f"the smoke search exited {code}")
        folder = root / "runs" / name
        driver = json.loads((folder / "timings.json").read_text())
        trials, n_trials, n_results = trial_seconds(folder)
        summary = [line for line in (root / "search.log").read_text().splitlines()
                   if line.startswith(("search ", "best trial ", "  time: "))]
    concurrency = 1 if "--max-concurrent" not in args.extra else int(
        args.extra[args.extra.index("--max-concurrent") + 1])
    rows = [(DRIVER[k], driver[k]) for k in ("inception", "data", "reference", "ray_start")]
    rows += [(TRIAL[k], v / concurrency) for k, v in trials.items()]
    rows.append(("trials: Tune's own (new actors, scheduling)",
                 driver["trials"] - sum(trials.values()) / concurrency))
    rows.append((DRIVER["summary"], driver["summary"]))
    rows.append(("process: Python start, imports, Ray shutdown", wall - sum(driver.values())))
    lines = table(["where", "seconds", "share of the wall clock"],
                  [[where, f"{s:.1f}", f"{s / wall:.0%}"] for where, s in rows])
    lines += ["", f"wall clock {wall:.0f} s ({wall / 60:.1f} min; target <= 6 min); {n_trials} trials, "
              f"{n_results} evaluations; trial rows are trial-seconds / {concurrency} at once.", *summary]
    report("smoke_breakdown", "cpu", lines, args)


if __name__ == "__main__":
    main()
