"""``bench/scale.py`` and the synthetic curves it serves (issue 28): a search the size of a cluster,
simulated through the product's unchanged driver. The small search here runs in CI (integration,
not slow: a benchmark nobody runs rots, and this one takes a few minutes) and is read back from
what it left: the results table, the MLflow store, the contact sheets, the meter's events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from replay_trial import Curves, Scale  # noqa: E402  (bench/ is not a package)

SCALES = {"lr_g": Scale("log", 1e-5, 1e-3), "loss": Scale("category"), "gp_weight": Scale("log", 1.0, 20.0)}


def configs(n: int) -> list[dict]:
    losses = ["bce", "hinge", "wgan-gp"]
    return [{"lr_g": 1e-5 * 100 ** (i / (n - 1)), "loss": losses[i % 3],
             **({"gp_weight": 10.0} if losses[i % 3] == "wgan-gp" else {})} for i in range(n)]


def test_synthetic_curves_are_seeded_fall_to_a_floor_set_by_the_configuration_and_sometimes_fail() -> None:
    made = Curves.synthetic(configs(60), "fid256", SCALES, evals=6, seconds=60.0, seed=3, fail=0.2)
    again = Curves.synthetic(configs(60), "fid256", SCALES, evals=6, seconds=60.0, seed=3, fail=0.2)
    pd.testing.assert_frame_equal(made.rows, again.rows)
    other = Curves.synthetic(configs(60), "fid256", SCALES, evals=6, seconds=60.0, seed=4, fail=0.2)
    assert not made.rows["fid256"].equals(other.rows["fid256"])
    runs = made.rows.groupby("run")
    ended = runs["ended"].last()
    assert set(ended) == {"completed", "mode_collapse"}
    failed = (ended == "mode_collapse").mean()
    assert 0.05 < failed < 0.4  # 0.2 asked, 60 runs
    assert (runs["eval"].max()[ended == "completed"] == 6).all()
    assert (made.rows["train_seconds"] + made.rows["eval_seconds"] == 60.0).all()
    complete = made.rows[made.rows["run"].isin(ended[ended == "completed"].index)]
    falls = complete.groupby("run")["fid256"].agg(lambda f: f.iloc[-1] < f.iloc[0])
    assert falls.mean() > 0.9  # every curve falls from about 300 towards its floor (5 % noise)
    finals = complete.sort_values("eval").groupby("config_id")["fid256"].last()
    assert finals.max() - finals.min() > 20  # configurations differ: a sampler has something to learn
    assert made.nearest(configs(60)[7]) == (7, 0.0)  # each configuration is served as recorded


@pytest.mark.integration
def test_a_small_simulated_search_runs_through_the_real_driver_and_resumes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    command = [sys.executable, str(REPO / "bench" / "scale.py"), "shapes", "--sizes", "8x4", "--max-evals",
               "3", "--time-scale", "0.02", "--fid-n", "64", "--resume", "8x4", "--work", str(work),
               "--no-record"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = pd.read_csv(work / "scale.csv").iloc[0]
    search = work / "8x4" / "runs" / "scale-8x4"
    results = pd.read_csv(search / "results.csv", dtype={"trial_id": str})
    assert len(results) == row["trials"] == 8
    assert row["results"] == results["evals"].sum()  # the meter saw every result the search kept
    assert 0 <= row["overhead"] < 1 and row["peak_rss_mib"] > 0 and row["report_s"] > 0
    assert row["suggest_median_ms"] > 0 and row["mlflow_calls_per_s"] > 0 and row["store_mib"] > 1
    assert row["state_saves"] > 0 and row["state_last_ms"] > 0 and row["searcher_state_last_ms"] > 0
    # the trials' workers never imported torch, and the search ranked what they served
    progress = pd.concat(pd.read_csv(p) for p in search.glob("trial_*/progress.csv"))
    assert (progress["torch_imported"] == 0).all() and progress["device_seconds"].eq(60.0).all()
    assert set(results["outcome"]) <= {"completed", "stopped_early", "failed"}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{search / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scale-8x4")
    runs = client.search_runs([experiment.experiment_id], "tags.mlflow.parentRunId != ''")
    assert len(runs) == 8  # a child run per trial, each with its curve and its sample grids
    evals = results.set_index("trial_id")["evals"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "fid64")
        assert len(history) == evals[run.data.tags["trial_id"]]
    assert len(list((search / "contact_sheets").glob("eval_*.png"))) == results["evals"].max()
    assert (work / "8x4" / "report.html").is_file()
    assert "`--resume` reported its first result" in done.stdout
