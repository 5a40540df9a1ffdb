"""``orchestrator.tracking`` on its own: what one result makes the trial logger write to a real sqlite
MLflow store, and that importing the store loads neither Ray nor MLflow."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from orchestrator.tracking.store import default_tracking_uri, ensure_experiment, start_parent_run
from orchestrator.tracking.trial_logger import MlflowTrialLogger

REPO = Path(__file__).resolve().parents[1]


class FakeTrial:
    """What the logger reads of a Tune trial. Tune calls back before last_result holds the result."""

    def __init__(self, trial_id: str) -> None:
        self.config = {"lr_g": 1e-4, "lr_d": 0.000312, "ngf": 32}
        self.trial_id, self.last_result = trial_id, None

    def __str__(self) -> str:
        return f"GanTrainable_{self.trial_id}"


def test_first_result_creates_the_run_dated_from_the_trial_start(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "t", (tmp_path / "artifacts").as_uri())
    parent = start_parent_run(client, experiment, "search", {}, {})
    keys = ("loss", "lr_g", "lr_d", "ngf")
    logger = MlflowTrialLogger(uri, experiment, parent, max_evals=3, name_keys=keys)
    logger = pickle.loads(pickle.dumps(logger))
    started = time.time() - 60
    trial = FakeTrial("abc")
    result = {"step": 40, "fid32": 12.5, "started_at": started, "node_ip": "10.0.0.7", "node_id": "n1"}
    logger.on_trial_result(1, [], trial, result)
    logger.wait()  # written by the logger's own thread
    (run,) = client.search_runs([experiment], "tags.trial_id = 'abc'")
    assert run.info.start_time == int(started * 1000)
    # named so a person tells the trials apart in the UI, not GanTrainable_abc
    assert run.info.run_name == "abc lr_g 1e-04 lr_d 3e-04 ngf 32"
    assert run.data.tags["node_ip"] == "10.0.0.7" and run.data.tags["mlflow.parentRunId"] == parent
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "fid32")] == [(40, 12.5)]
    assert "started_at" not in run.data.metrics and float(run.data.params["lr_g"]) == 1e-4


def test_store_and_the_commands_that_read_it_load_neither_ray_nor_mlflow() -> None:
    """``report`` and ``sample`` answer ``--help`` and bad input without loading MLflow: the store
    imports it where it is used, and Ray never."""
    probe = ("import sys, orchestrator.tracking.store, orchestrator.tracking.models, "
             "orchestrator.report, orchestrator.sample; print(sorted({'ray', 'mlflow'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
