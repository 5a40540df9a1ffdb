"""The end of a search: its results table, its summary, its plots and its report, from what Tune
and the trial loggers recorded (no second pass over the trials)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.metrics.health import FAILED, outcome
from orchestrator.metrics.registry import GROUND_TRUTH, Objective, objective
from orchestrator.search.plan import SMOKE_NOTE, Plan
from orchestrator.search.reporting import PLOTS_FOLDER
from orchestrator.search.schema import walk_params
from orchestrator.search.tracking import store


def beside_results(plan: Plan) -> Path:
    """Where the results table and the pictures go: the experiment folder, or here when the
    results are remote (s3://...)."""
    return Path(plan.experiment_dir) if "://" not in plan.storage else Path.cwd()



def results_table(results: Any, goal: Objective, max_evals: int) -> pd.DataFrame:
    """One row per trial: outcome, the best and last value of ``goal`` (FID at its N), evaluations,
    compute, hyperparameters; best first. ``max_evals`` tells a completed trial from one stopped
    early."""
    key = goal.key
    rows = []
    for result in results:
        history = result.metrics_dataframe
        fids = history[key] if history is not None and key in history else pd.Series(dtype=float)
        at_best = _at_best(history, fids, goal)
        last = result.metrics or {}
        evals = int(last.get("training_iteration", 0))
        mode = last.get("failure_mode") or ("error" if result.error else "")
        rows.append({
            "trial_id": last.get("trial_id", ""), "outcome": outcome(bool(mode), evals, max_evals),
            "failure_mode": mode,
            f"best_{key}": goal.best(fids),
            f"last_{key}": float(fids.iloc[-1]) if len(fids) else goal.worst,
            **at_best,
            "evals": evals, "steps": int(last.get("step", 0)),
            "seconds": float(last.get("time_total_s", 0.0)),
            "started": float(last.get("started_at", math.nan)),
            "ended": float(last.get("reported_at", math.nan)),
            "failure": last.get("failure", "") or (str(result.error).splitlines()[0] if result.error else ""),
            **{f"config/{k}": v for k, v in (result.config or {}).items()},
            "path": result.path,
        })
    table = pd.DataFrame(rows).sort_values(f"best_{key}", ascending=goal.mode == "min", kind="stable")
    return table.reset_index(drop=True)


def _at_best(history: pd.DataFrame | None, fids: pd.Series, goal: Objective) -> dict[str, float]:
    """The ground-truth metrics (``GROUND_TRUTH``) of the evaluation with the best FID: the
    checkpoint a trial hands over. Empty where the dataset reports none."""
    keys = [k for k in GROUND_TRUTH if history is not None and k in history]
    finite = fids[fids.apply(math.isfinite)]
    if history is None or not keys or finite.empty:
        return {}
    best = finite.idxmin() if goal.mode == "min" else finite.idxmax()
    return {k: float(history.loc[best, k]) for k in keys}


def summarise(plan: Plan, results: Any, client: Any, state: dict[str, Any], wall: float) -> int:
    goal = objective(plan.settings.fid_n)
    key = goal.key
    table = results_table(results, goal, plan.max_evals)
    trial_ids = set(table["trial_id"].astype(str))
    store.mark_lost_runs(client, state["experiment_id"], state["parent_run_id"], trial_ids)
    csv = beside_results(plan) / "results.csv"
    table.to_csv(csv, index=False)
    parent = state["parent_run_id"]
    store.log_file(client, parent, csv)
    counts = table["outcome"].value_counts().to_dict()
    device_hours = table["seconds"].sum() / 3600 * (plan.resources["gpu"] or plan.resources["cpu"])
    unit = "GPU" if plan.resources["gpu"] else "CPU"
    print(f"\nsearch {plan.name}: {len(table)} trials: {counts.get('completed', 0)} completed, "
          f"{counts.get('stopped_early', 0)} stopped early, {counts.get('failed', 0)} failed; "
          f"{device_hours:.3f} {unit}-hours in {wall / 60:.1f} min")
    modes = table.loc[table["failure_mode"] != "", "failure_mode"].value_counts().to_dict()
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
    best_run = store.trial_run_id(client, state["experiment_id"], str(best["trial_id"]))
    store.set_tags(client, parent, {"best_trial": str(best["trial_id"]), "best_run_id": best_run or "",
                                    f"best_{key}": f"{best[f'best_{key}']:.4f}"})
    from orchestrator.search.export import log_best_model

    log_best_model(results, str(best["trial_id"]), best_run, state, goal)
    config: dict[str, Any] = next(
        (r.config for r in results if (r.metrics or {}).get("trial_id") == best["trial_id"]), {}
    )
    print(f"best trial {best['trial_id']}: {key} {best[f'best_{key}']:.3f}{_ground_truth(best, plan)}")
    print(f"  config: {json.dumps(config, default=str)}")
    print(f"  checkpoints and sample grids: {best['path']}")
    print(f"  MLflow: parent run {parent}, trial run {best_run}")
    print(f"  results table: {csv}")
    print(f"  report with every trial's samples, quality against cost and the contact sheets: {report}")
    print(f"  view: {store.view_command(state['tracking_uri'])}")
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

    from orchestrator.search import plots

    goal = objective(plan.settings.fid_n)
    if plan.study_storage is None:
        distributions = {p.name: p.distribution for p, _ in walk_params(plan.space.params)}
        return plots.study_from_results(table, list(distributions), distributions, f"best_{goal.key}",
                                        goal.mode)
    study = optuna.load_study(study_name=plan.name, storage=plan.study_storage)
    study.set_user_attr("value_name", goal.best_key)  # what Tune told it: each trial's best FID
    return study


def _log_search_plots(plan: Plan, results: Any, table: pd.DataFrame, client: Any, parent: str) -> None:
    """FID over time for every trial, Optuna's parameter importance and the best trials' parallel
    coordinates, on the parent run."""
    from orchestrator.search import plots

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
    from orchestrator.search import reporting
    from orchestrator.search.tradeoff import describe_pick

    goal, here = objective(plan.settings.fid_n), beside_results(plan)
    gpu = plan.resources["gpu"]
    trials = reporting.Trials(table, goal, "GPU" if gpu else "CPU", gpu or plan.resources["cpu"], plan.name,
                              *reporting.pictures_beside(here))
    prefix = here / "report"
    shown = reporting.write_report(trials, prefix)
    store.log_file(client, parent, prefix.with_name(f"report-{reporting.QUALITY_VS_COST}"), PLOTS_FOLDER)
    store.log_file(client, parent, prefix.with_suffix(".html"))
    pick = describe_pick(shown.assign(outcome=shown["outcome"].str.split(" ").str[0]),
                         f"best_{goal.key}", trials.cost, trials.unit, goal.mode)
    if pick:
        print(f"  {pick}")
    return prefix.with_suffix(".html")
