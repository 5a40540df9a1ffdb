"""The end of a search: its results table, its summary, its plots and its report, from what Tune
and the trial loggers recorded (no second pass over the trials)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.metrics.registry import objective
from orchestrator.search.plan import SMOKE_NOTE, Plan
from orchestrator.search.record import SearchRecord
from orchestrator.space.schema import walk_params
from orchestrator.space.study import open_study_storage
from orchestrator.tracking import store
from orchestrator.trial_report import COMPLETED, FAILED, FAILURE_MODE, STOPPED
from orchestrator.views.report_page import PLOTS_FOLDER, results_table


def beside_results(plan: Plan) -> Path:
    """Where the results table and the pictures go: the experiment folder, or here when the
    results are remote (s3://...)."""
    return Path(plan.experiment_dir) if "://" not in plan.storage else Path.cwd()



def summarise(plan: Plan, results: Any, client: Any, record: SearchRecord, wall: float) -> int:
    goal = objective(plan.settings.fid_n)
    key = goal.key
    table = results_table(results, goal, plan.max_evals)
    trial_ids = set(table["trial_id"].astype(str))
    store.mark_lost_runs(client, record.experiment_id, record.parent_run_id, trial_ids)
    csv = beside_results(plan) / "results.csv"
    table.to_csv(csv, index=False)
    parent = record.parent_run_id
    store.log_file(client, parent, csv)
    counts = table["outcome"].value_counts().to_dict()
    device_hours = table["seconds"].sum() / 3600 * (plan.resources["gpu"] or plan.resources["cpu"])
    unit = "GPU" if plan.resources["gpu"] else "CPU"
    print(f"\nsearch {plan.name}: {len(table)} trials: {counts.get(COMPLETED, 0)} completed, "
          f"{counts.get(STOPPED, 0)} stopped early, {counts.get(FAILED, 0)} failed; "
          f"{device_hours:.3f} {unit}-hours in {wall / 60:.1f} min")
    modes = table.loc[table[FAILURE_MODE] != "", FAILURE_MODE].value_counts().to_dict()
    if modes:
        print("  failures: " + ", ".join(f"{n} {mode}" for mode, n in modes.items()))
    # a failed trial never wins, even if its FID was good before it collapsed
    finite = table[table[f"best_{key}"].apply(math.isfinite) & (table["outcome"] != FAILED)]
    if finite.empty:
        print("no trial produced a finite FID")
        store.end_run(client, parent)
        return 1
    _log_search_plots(plan, results, table, client, parent)
    report = _write_report(plan, table, client, parent)
    best = finite.iloc[0]
    best_run = store.trial_run_id(client, record.experiment_id, str(best["trial_id"]))
    store.set_tags(client, parent, {"best_trial": str(best["trial_id"]), "best_run_id": best_run or "",
                                    f"best_{key}": f"{best[f'best_{key}']:.4f}"})
    from orchestrator.search.export import log_best_model

    log_best_model(results, str(best["trial_id"]), best_run, record, goal)
    config: dict[str, Any] = next(
        (r.config for r in results if (r.metrics or {}).get("trial_id") == best["trial_id"]), {}
    )
    print(f"best trial {best['trial_id']}: {key} {best[f'best_{key}']:.3f}{_ground_truth(best, plan)}")
    print(f"  config: {json.dumps(config, default=str)}")
    print(f"  checkpoints and sample grids: {best['path']}")
    print(f"  MLflow: parent run {parent}, trial run {best_run}")
    print(f"  results table: {csv}")
    print(f"  report with every trial's samples, quality against cost and the contact sheets: {report}")
    print(f"  view: {store.view_command(record.tracking_uri)}")
    if plan.smoke_test:
        print(SMOKE_NOTE)
    store.end_run(client, parent)
    return 0


def _ground_truth(best: pd.Series, plan: Plan) -> str:
    """What the best evaluation's samples are, read by the dataset's exact decoder (shapes)."""
    if "mode_coverage" not in best or not math.isfinite(best["mode_coverage"]):
        return ""
    from orchestrator.data.dataset import CLASS_READERS

    classes = CLASS_READERS[plan.settings.dataset].classes
    return (f"; its samples there draw {round(best['mode_coverage'] * classes)} of the {classes} classes "
            f"cleanly (mode coverage {best['mode_coverage']:.2f}), {best['decodable']:.0%} of them read as "
            f"clean shapes (decodable)")


def _study(plan: Plan, table: pd.DataFrame) -> Any:
    """The search's own Optuna study from its database; rebuilt from the results table only where it
    lived in memory (remote results without --study-storage)."""
    import optuna

    from orchestrator.views import plots

    goal = objective(plan.settings.fid_n)
    if plan.study_storage is None:
        distributions = {p.name: p.distribution for p, _ in walk_params(plan.space.params)}
        return plots.study_from_results(table, list(distributions), distributions, f"best_{goal.key}",
                                        goal.mode)
    study = optuna.load_study(study_name=plan.name, storage=open_study_storage(plan.study_storage))
    study.set_user_attr("value_name", goal.best_key)  # what Tune told it: each trial's best FID
    return study


def _log_search_plots(plan: Plan, results: Any, table: pd.DataFrame, client: Any, parent: str) -> None:
    """FID over time for every trial, Optuna's parameter importance and the best trials' parallel
    coordinates, on the parent run."""
    from orchestrator.views import plots

    key = objective(plan.settings.fid_n).key
    histories = {
        str((r.metrics or {}).get("trial_id", i)): r.metrics_dataframe
        for i, r in enumerate(results) if r.metrics_dataframe is not None
    }
    outcomes = dict(zip(table["trial_id"].astype(str), table["outcome"], strict=True))
    study = _study(plan, table)
    out = beside_results(plan) / PLOTS_FOLDER
    plots.fid_over_time(histories, key, outcomes, out / "fid_over_time.png")
    importance = plots.param_importance(study, out / "param_importance.png")
    plots.parallel_coordinates(study, out / "parallel_coordinates.png")
    store.log_folder(client, parent, out, PLOTS_FOLDER)
    if importance:
        ranked = sorted(importance.items(), key=lambda kv: -kv[1])[:5]
        print("  hyperparameter importance: " + ", ".join(f"{k} {v:.2f}" for k, v in ranked))


def _write_report(plan: Plan, table: pd.DataFrame, client: Any, parent: str) -> Path:
    """``report.html`` (and ``.csv``) beside the results, as ``python -m orchestrator.report`` writes
    it; the quality-against-cost plot on the parent run; the summary's line on the cheapest trial
    near the best."""
    from orchestrator.views import report_page

    goal, here = objective(plan.settings.fid_n), beside_results(plan)
    gpu = plan.resources["gpu"]
    trials = report_page.Trials(table, goal, "GPU" if gpu else "CPU", gpu or plan.resources["cpu"], plan.name,
                                *report_page.pictures_beside(here))
    prefix = here / "report"
    report_page.write_report(trials, prefix)
    store.log_file(client, parent, prefix.with_name(f"report-{report_page.QUALITY_VS_COST}"), PLOTS_FOLDER)
    store.log_file(client, parent, prefix.with_suffix(".html"))
    if pick := report_page.pick_line(trials):
        print(f"  {pick}")
    return prefix.with_suffix(".html")
