"""``python -m orchestrator.report``: the smoke search's trials (the shared ``smoke_search`` fixture),
read from Tune's experiment folder and from MLflow, agree with each other and with the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from orchestrator.cli import run_main
from orchestrator.report import main

REPO = Path(__file__).resolve().parents[1]
FID = "best_fid128"  # the smoke test's FID: 128 images
TRIALS = 4


@pytest.fixture(scope="module")
def parent(smoke_search: dict):
    return MlflowClient(smoke_search["tracking_uri"]).get_run(smoke_search["parent_run_id"])


def report(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[pd.DataFrame, str]:
    code = run_main(main, argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    prefix = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    return (pd.read_csv(f"{prefix}.csv", dtype={"trial": str}) if prefix else pd.DataFrame()), out


def check_table(table: pd.DataFrame, parent, html: Path) -> None:
    assert len(table) == TRIALS
    failed = table["outcome"].str.startswith("failed")
    assert table.loc[~failed, FID].is_monotonic_increasing and not failed[: (~failed).sum()].any()
    best = table.iloc[0]
    assert best["trial"] == parent.data.tags["best_trial"]
    assert best[FID] == pytest.approx(float(parent.data.tags[FID]), abs=1e-3)
    assert table.iloc[0]["outcome"] == "completed"  # ASHA let the best trial run to the end
    assert (table["cpu_seconds"] > 0).all()  # a CPU-only search: CPU-seconds
    # the searched hyperparameters that differ between trials, not the fixed ones
    assert {"lr_g", "lr_d"} <= set(table.columns) and not {"nz", "batch_size"} & set(table.columns)
    # the Pareto front of quality against cost, worked out again from the table's own columns, among
    # the trials that ran their whole budget (failed ones and those ASHA cut are not compared)
    whole = table["outcome"] == "completed"
    front = [not any(o_cost <= cost and o_fid <= fid and (o_cost < cost or o_fid < fid)
                     for o_cost, o_fid, o_whole in zip(table["cpu_seconds"], table[FID], whole, strict=True)
                     if o_whole)
             for cost, fid in zip(table["cpu_seconds"], table[FID], strict=True)]
    assert table["pareto"].tolist() == [f and w for f, w in zip(front, whole, strict=True)]
    assert table.iloc[0]["pareto"]  # nothing beats the best FID on FID
    text = html.read_text()
    assert text.count("<tr") == TRIALS + 1 and all(t in text for t in table["trial"])
    # a page with its pictures inside: a thumbnail per trial, the plots, the last contact sheet
    assert text.count('class="thumb"') == TRIALS and "http" not in text.split("<body>")[1]
    for title in ("quality against cost", "contact sheet, eval 0003", "search plot: fid_over_time"):
        assert f"<figcaption>{title}" in text, title


def test_report_from_tune_folder(smoke_search: dict, parent, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    table, out = report([str(smoke_search["experiment_dir"]), "--out", str(tmp_path / "r")], capsys)
    check_table(table, parent, tmp_path / "r.html")
    assert out.splitlines()[0].split()[:3] == ["trial", "outcome", FID]
    assert f"{TRIALS} trials of smoke" in out


def test_report_from_mlflow_matches_tune(smoke_search: dict, parent, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    uri = smoke_search["tracking_uri"]
    tune, _ = report([str(smoke_search["experiment_dir"]), "--out", str(tmp_path / "t")], capsys)
    by_name, _ = report(["smoke", "--mlflow-uri", uri, "--out", str(tmp_path / "m")], capsys)
    check_table(by_name, parent, tmp_path / "m.html")
    assert by_name.iloc[0]["run_id"] == parent.data.tags["best_run_id"]
    pd.testing.assert_series_equal(by_name["trial"], tune["trial"])
    pd.testing.assert_series_equal(by_name[FID], tune[FID])
    pd.testing.assert_series_equal(by_name["cpu_seconds"], tune["cpu_seconds"])
    # device seconds are a trial's wall seconds times its CPU share
    best = MlflowClient(uri).get_run(parent.data.tags["best_run_id"])
    share = float(parent.data.params["cpus_per_trial"])
    assert by_name.iloc[0]["cpu_seconds"] == pytest.approx(best.data.metrics["time_total_s"] * share)
    by_id, _ = report([smoke_search["experiment_id"], "--mlflow-uri", uri, "--out", str(tmp_path / "i")],
                      capsys)
    pd.testing.assert_frame_equal(by_id, by_name)


def test_default_outputs_beside_the_experiment(smoke_search: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_search["tracking_uri"])
    report(["smoke"], capsys)
    assert len(pd.read_csv(tmp_path / "report-smoke.csv")) == TRIALS
    assert (tmp_path / "report-smoke.html").is_file()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bad-report") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # an empty store
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/runs/smoke"], "/nonexistent/runs/smoke: no such folder"),
        (["EMPTY"], "not a Tune experiment folder (no experiment_state-*.json)"),
        (["smoke"], "'smoke' is no folder; as an MLflow experiment it needs --mlflow-uri"),
        (["smoke", "--mlflow-uri", "STORE"], "no MLflow experiment named 'smoke' in sqlite:///"),
        (["smoke", "--mlflow-uri", "sqlite:////nonexistent/mlflow.db"], "no such database file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, store: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    argv = [{"STORE": store, "EMPTY": str(tmp_path)}.get(a, a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "orchestrator.report", *argv, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "r.csv").exists()
