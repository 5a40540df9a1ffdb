"""``bench/scale.py`` and the synthetic curves it serves (issue 28): a search the size of a cluster,
simulated through the product's unchanged driver. The small search here runs in CI (integration,
not slow: a benchmark nobody runs rots, and this one takes a few minutes) and is read back from
what it left: the results table, the MLflow store, the contact sheets, the meter's events."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_the_waiting_phase_counts_busy_seconds_inside_it_the_first_waves_launch_and_cpu_by_quarter() -> None:
    """Two slots, five trials of 10-s iterations. Trial a starts at 0, b at 2 (the launch: 2 of the
    slots' seconds), c at 20, d at 22, e (the last start) at 40: the window is 40 s x 2 slots. d's
    iteration from 32 to 42 counts 8 s of it; the rest, a 2-s gap after a's and b's ends."""
    import scale

    rows = [("start", 0, 0.0, "a", 0), ("start", 2, 0.0, "b", 0),
            ("result", 10, 1.0, "a", 10), ("result", 12, 2.0, "b", 10),
            ("result", 20, 3.0, "a", 10), ("end", 20, 3.0, "a", 0), ("start", 20, 3.0, "c", 0),
            ("result", 22, 4.0, "b", 10), ("end", 22, 4.0, "b", 0), ("start", 22, 4.0, "d", 0),
            ("result", 30, 6.0, "c", 10), ("end", 30, 6.0, "c", 0),
            ("result", 32, 9.0, "d", 10), ("start", 40, 9.0, "e", 0),
            ("result", 42, 12.0, "d", 10), ("end", 42, 12.0, "d", 0),
            ("result", 50, 13.0, "e", 10), ("end", 50, 13.0, "e", 0)]
    seen = pd.DataFrame(rows, columns=["kind", "at", "cpu", "trial_id", "busy"])
    got = scale.waiting_phase(seen, at_once=2)
    busy = 10 + 10 + 10 + 10 + 10 + 10 + 8  # a, a, b, b, c, d, d's 8 s before 40; e's after
    assert got["overhead_waiting"] == pytest.approx(1 - busy / 80)
    assert got["launch"] == pytest.approx(2 / 80)
    # trials ended by 40: a, b, c. By quarter of them (0-0.75, 0.75-1.5, 1.5-2.25, 2.25-3 ended):
    # results at 10, 12, 20 (none ended yet): 1 s a result; 22, 30 (a ended): too few; 32: too few
    assert got["cpu_per_result_quarters_ms"][0] == pytest.approx(1000.0)
    assert math.isnan(scale.waiting_phase(seen, at_once=5)["overhead_waiting"])  # no trial ever waited


def test_the_cpu_trend_finds_a_cost_that_grows_with_the_trials_ended_and_none_where_it_is_flat() -> None:
    """Twenty minutes of ten results each, a trial ending every 6 s (ten a minute): a driver whose CPU
    per result is 100 ms + 0.5 ms per trial ended reads as +500 ms per 1,000 trials; a flat 100 ms
    with noise as about 0, within its interval."""
    import scale

    at = np.arange(200) * 6.0 + 3.0
    ended = np.arange(200)  # trials ended by each result
    rng = np.random.default_rng(0)
    for per_result, slope in ((0.1 + 0.0005 * ended, 500.0), (0.1 + rng.normal(0, 0.01, 200), 0.0)):
        seen = pd.DataFrame({"at": at, "cpu": np.cumsum(per_result)})
        got = scale.cpu_trend(seen, ended)
        assert got["slope_ms_per_1000"] == pytest.approx(slope, abs=max(got["slope_half_width"], 1.0))
        assert got["slope_half_width"] < 100
    assert got["minute_median_ms"] == pytest.approx(100, abs=5)
    assert abs(got["slope_ms_per_1000"]) <= got["slope_half_width"]


def test_the_server_runs_refuse_unknown_backends_and_keep_each_backends_searches_apart() -> None:
    """``bench/scale_servers.py`` (its runs start real servers: measured, not tested here)."""
    import scale_servers

    assert scale_servers.main(["--backends", "mongodb", "--", "shapes"]) == 2
    assert scale_servers.main(["--backends", "sqlite"]) == 2  # nothing for scale.py
    assert scale_servers.own_work(["shapes", "--work", "/w", "--fid-n", "64"], "sqlite") == \
        ["shapes", "--work", "/w/sqlite", "--fid-n", "64"]


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
    assert 0 <= row["launch"] <= row["overhead_waiting"] < 1 and 0 <= row["overhead"] < 1
    assert row["peak_rss_mib"] > 0 and row["report_s"] > 0
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
    # the resume's times, in order: Tune's loop turning, its first trial started, its first result
    resumed = re.search(r"loop turning (\d+) s after it was started, its first trial started at (\d+) s and "
                        r"its first result came at (\d+) s", done.stdout)
    assert resumed is not None, done.stdout[-3000:]
    loop, start, first = (int(x) for x in resumed.groups())
    assert 0 < loop <= start <= first
    assert re.search(r"first run: its loop turning at \d+ s, its first trial started at \d+ s", done.stdout)


def test_the_cost_plot_draws_every_recorded_build_and_size(tmp_path: Path) -> None:
    import scale_plot
    from PIL import Image

    rows = pd.read_csv(scale_plot.ROWS)
    assert {"before", "after"} <= {build.split(" ")[0] for build in rows["build"]}
    assert set(rows["trials"]) >= {256, 1000}
    assert scale_plot.main(["--out", str(tmp_path / "scale.png")]) == 0
    assert Image.open(tmp_path / "scale.png").size == (1170, 675)  # 13 x 7.5 inches at 90 dpi
    assert scale_plot.main(["--rows", str(tmp_path / "none.csv")]) == 2


@pytest.mark.integration
def test_trial_start_measures_each_worker_and_the_machine(tmp_path: Path) -> None:
    """``bench/trial_start.py`` (where a resume's wait goes): both ways of starting 4 workers at once,
    their start times in order, each worker's CPU by its start, and the machine's busy CPU counting
    at least what the workers spent."""
    command = [sys.executable, str(REPO / "bench" / "trial_start.py"), "--at-once", "4", "--no-record"]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in done.stdout.splitlines()]
    rows = [row for row in cells if len(row) == 7 and row[1] == "4"]
    assert [row[0] for row in rows] == ["Tune, a trainable that does nothing",
                                        "plain actors importing ray.tune"]
    for _, _, starts, worker_cpu, workers_cpu, busy, _ in rows:
        first, middle, last = (float(x) for x in starts.split(" / "))
        assert 0 < first <= middle <= last
        assert float(worker_cpu) > 0.3  # a Python worker that imported ray.tune
        assert float(busy) >= 0.8 * float(workers_cpu) > 0
