"""``python -m orchestrator.report EXPERIMENT``: a search's trials as one table, best FID first.

EXPERIMENT is a Tune experiment folder (``runs/NAME``: read from Tune's own experiment state, so a
search still running or interrupted reports too) or an MLflow experiment name or id (with
``--mlflow-uri``; the latest search logged there). Prints the table and writes it as CSV and HTML
(``--out PREFIX``; by default ``report.csv``/``report.html`` in the experiment folder, or
``report-NAME.*`` here for an MLflow experiment). Failed trials come last: they never win. The
HTML page holds its pictures (each trial's latest samples, quality against cost with its Pareto
front, the search's plots and last contact sheet) and opens as a file; ``views/report_page.py``
draws it.
"""

from __future__ import annotations

import orchestrator.startup  # noqa: F401  first: a signal while the imports load is one line

# isort: split
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.atomic import check_writable_folder
from orchestrator.cli import UsageParser, path_arg, run_main
from orchestrator.errors import ConfigError, first_line
from orchestrator.metrics.registry import Objective, objective_named
from orchestrator.tracking.store import read_pictures, read_search, tracking_uri
from orchestrator.views.report_page import (
    NUMBER,
    Trials,
    pick_figures,
    pick_line,
    pictures_beside,
    results_table,
    write_report,
)


def build_parser() -> UsageParser:
    p = UsageParser(prog="python -m orchestrator.report", description=__doc__.split("\n")[0])
    p.add_argument("experiment", metavar="EXPERIMENT",
                   help="a Tune experiment folder (runs/NAME), or an MLflow experiment name or id")
    p.add_argument("--mlflow-uri",
                   help="tracking URI for an MLflow experiment (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--out", type=path_arg, help="write PREFIX.csv and PREFIX.html (default: see above)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is not None:
        check_writable_folder(args.out.parent, f"--out {args.out}")
    folder = Path(args.experiment)
    if folder.is_dir():
        trials, prefix = from_tune(folder), folder / "report"
    elif "/" in args.experiment:
        raise ConfigError(f"{args.experiment}: no such folder")
    else:
        uri = tracking_uri(args.mlflow_uri, f"{args.experiment!r} is no folder; as an MLflow experiment it")
        trials = from_mlflow(args.experiment, uri)
        prefix = Path(f"report-{trials.name}")
    prefix = args.out or prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    report = write_report(trials, prefix)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(report.to_string(index=False, float_format=NUMBER))
    if pick := pick_line(trials):
        print(pick)
    print(f"{len(report)} trials of {trials.name}; written to {prefix}.csv and {prefix}.html "
          f"(with its pictures: open it in a browser)")
    return 0


def from_tune(folder: Path) -> Trials:
    """From Tune's experiment state, through the same ``results_table`` the search's summary uses."""
    if not any(folder.glob("experiment_state-*.json")):
        raise ConfigError(f"{folder}: not a Tune experiment folder (no experiment_state-*.json)")
    from ray.tune import ExperimentAnalysis, ResultGrid


    try:
        analysis = ExperimentAnalysis(str(folder.resolve()))  # pyarrow reads a relative path as a URI
    # a damaged state file makes Tune's reader raise whatever its parsing meets first
    except Exception as err:
        raise ConfigError(f"{folder}: Tune's experiment state cannot be read ({first_line(err)})") from None
    for trial in analysis.trials:
        _check_history(Path(trial.path or ""), trial.status.lower() in ("pending", "running", "paused"))
    goal = _objective([t.last_result or {} for t in analysis.trials], folder)
    max_evals = max(int(t.stopping_criterion.get("training_iteration", 0)) for t in analysis.trials)
    table = results_table(ResultGrid(analysis), goal, max_evals)
    # a search still running: its live trials are not "stopped early"
    status = {str(t.path): t.status.lower() for t in analysis.trials}
    live = table["path"].map(status).isin(["pending", "running", "paused"])
    table.loc[live, "outcome"] = table.loc[live, "path"].map(status)
    factory = analysis.trials[0].placement_group_factory
    resources: dict[str, float] = factory.required_resources if factory is not None else {}
    gpu = float(resources.get("GPU", 0.0))
    return Trials(table, goal, "GPU" if gpu else "CPU", gpu or float(resources.get("CPU", 1.0)), folder.name,
                  *pictures_beside(folder))


def from_mlflow(experiment: str, uri: str) -> Trials:
    """From the trial runs of the experiment's latest search run (``tracking.store.read_search``):
    the trial logger's outcome tags and metrics, the parent's settings."""
    search = read_search(experiment, uri)
    table = pd.DataFrame(search.rows)
    for column in [c for c in table.columns if c.startswith("config/")]:
        numbers = pd.to_numeric(table[column], errors="coerce")  # params come back as strings
        table[column] = numbers if numbers.notna().all() else table[column]
    gpu = float(search.params.get("gpus_per_trial", 0.0))
    share = gpu or float(search.params.get("cpus_per_trial", 1.0))
    goal = objective_named(search.key)
    if goal is None:
        raise ConfigError(f"{experiment}: the search ranked on {search.key!r}, no FID this version reports")
    thumbnails, figures = read_pictures(uri, search, pick_figures)
    return Trials(table, goal, "GPU" if gpu else "CPU", share, search.name, thumbnails, figures)


def _check_history(trial: Path, live: bool) -> None:
    """A finished trial's ``result.json`` parses line by line: one cut short (a full disk, a copy
    interrupted) would show as an infinite FID. A live trial may be writing its last line."""
    path = trial / "result.json"
    if not path.is_file():
        return  # a trial that never reported: its row says so
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError:
            if live and number == len(lines):
                return
            raise ConfigError(f"{path}: damaged at line {number} of {len(lines)} (not a complete result): "
                              "this trial's history is cut short") from None


def _objective(metrics: list[dict[str, Any]], folder: Path) -> Objective:
    """What the search ranked on: the objective whose key was reported beside its ``_best`` twin."""
    found = {goal for m in metrics for k in m if (goal := objective_named(k)) and goal.best_key in m}
    if len(found) != 1:
        raise ConfigError(f"{folder}: no trial has reported a FID yet")
    return found.pop()


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_main(main, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
