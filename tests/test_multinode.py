"""A search on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head
that runs no trials and two worker nodes with one logical GPU each, storage in a folder every node
shares, MLflow on a real tracking server. Once a trial has finished and another is mid-run, the
node running the latter is killed; the tests read what the search left behind."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from servers import free_port, start_server, stop_server

from orchestrator.search.cli import main

pytestmark = pytest.mark.integration  # whole searches: deselected by a plain `pytest`

EVAL_EVERY, MAX_EVALS = 20, 5
STEPS = [EVAL_EVERY * (i + 1) for i in range(MAX_EVALS)]
SPACE = f"""\
resolution: 32
budget: {{eval_every: {EVAL_EVERY}, max_evals: {MAX_EVALS}, grace_period: {MAX_EVALS}, reduction_factor: 2,
         fid_n: 32}}
fixed: {{ngf: 32, ndf: 32, batch_size: 64, loss: bce, optimizer: adam, beta1: 0.5}}
params:
  lr_g: {{loguniform: [1.0e-4, 1.0e-3]}}
  lr_d: {{loguniform: [1.0e-4, 1.0e-3]}}
start:
  - {{lr_g: 2.0e-4, lr_d: 2.0e-4}}
  - {{lr_g: 3.0e-4, lr_d: 1.0e-4}}
  - {{lr_g: 1.0e-4, lr_d: 3.0e-4}}
"""


def _checkpoints(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """trial id -> the report.json of each checkpoint persisted so far (the newest last)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for report in sorted(experiment.glob("trial_*/checkpoint_*/report.json")):
        with contextlib.suppress(OSError, ValueError):  # being written or rotated out (num_to_keep)
            found.setdefault(report.parent.parent.name.removeprefix("trial_"), []).append(
                json.loads(report.read_text()))
    return found


def _kill_mid_trial(cluster: Any, workers: list[Any], experiment: Path, killed: dict[str, Any]) -> None:
    """Wait for one trial to finish its budget and another to be part-way, then kill the node that
    runs the latter, without letting it shut down cleanly (as a reclaimed spot instance dies)."""
    deadline = time.time() + 900
    while time.time() < deadline:
        reports = _checkpoints(experiment)
        done = [t for t, r in reports.items() if r[-1]["step"] == STEPS[-1]]
        running = [(t, r[-1]) for t, r in reports.items() if r[-1]["step"] <= STEPS[-3]]
        if done and running:
            trial, last = running[0]
            node = next(w for w in workers if w.node_id == last["node_id"])
            cluster.remove_node(node, allow_graceful=False)
            killed.update(trial=trial, node_id=node.node_id, step=last["step"], finished=done)
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("multinode")
    (tmp / "space.yaml").write_text(SPACE)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # trials stay off the head
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    port = free_port()
    server = start_server(tmp, port)
    uri, storage, killed = f"http://127.0.0.1:{port}", tmp / "shared-storage", {}
    killer = threading.Thread(target=_kill_mid_trial, args=(cluster, workers, storage / "multi", killed))
    killer.start()
    try:
        code = main(["shapes", "--space", str(tmp / "space.yaml"), "--address", cluster.address,
                     "--storage", str(storage), "--name", "multi", "--mlflow-uri", uri,
                     "--num-samples", "3", "--max-concurrent", "2", "--gpus-per-trial", "1",
                     "--cpus-per-trial", "1", "--device", "cpu", "--limit", "500"])
        killer.join(timeout=60)
        state = json.loads((storage / "multi" / "orchestrator.json").read_text())
        client = MlflowClient(uri)
        query = f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'"
        runs = {r.data.tags["trial_id"]: r for r in client.search_runs([state["experiment_id"]], query)}
        steps = {t: [m.step for m in client.get_metric_history(r.info.run_id, "fid32")]
                 for t, r in runs.items()}
        yield {"code": code, "killed": killed, "runs": runs, "steps": steps,
               "workers": [w.node_id for w in workers], "head": cluster.head_node.node_id,
               "table": pd.read_csv(storage / "multi" / "results.csv"),
               "history": _histories(storage / "multi")}
    finally:
        killer.join(timeout=60)
        ray.shutdown()
        cluster.shutdown()
        stop_server(server)


def _histories(experiment: Path) -> dict[str, pd.DataFrame]:
    """Tune's own record of every reported interval of every trial (result.json, restarts included)."""
    return {
        folder.name.removeprefix("trial_"): pd.read_json(folder / "result.json", lines=True)
        for folder in experiment.glob("trial_*") if (folder / "result.json").exists()
    }


def test_trials_spread_over_both_workers_never_the_head(search: dict[str, Any]) -> None:
    assert search["code"] == 0
    nodes = set(pd.concat(search["history"].values())["node_id"])
    assert nodes <= set(search["workers"]) and search["head"] not in nodes
    assert len(nodes) == 2, "two trials at once must run on two different workers"
    table = search["table"]
    assert len(table) == 3 and (table["outcome"] == "completed").all(), table
    for trial, run in search["runs"].items():  # each MLflow run names the node it finished on
        assert run.data.tags["node_id"] == search["history"][trial]["node_id"].iloc[-1]


def test_a_lost_node_costs_one_interval_of_one_trial(search: dict[str, Any]) -> None:
    killed = search["killed"]
    assert killed, "no trial was caught mid-run: the search finished before the node could be killed"
    history = search["history"][killed["trial"]]
    survivor = next(n for n in search["workers"] if n != killed["node_id"])
    moved = history.index[history["node_id"] == survivor]
    assert len(moved) and (history.loc[: moved[0] - 1, "node_id"] == killed["node_id"]).all(), history
    restart = history.loc[moved[0]]
    # resumed from its last checkpoint on the survivor, not from scratch
    assert restart["iterations_since_restore"] == 1
    assert restart["step"] == restart["training_iteration"] * EVAL_EVERY > killed["step"]
    assert list(history["step"].drop_duplicates()) == STEPS
    assert len(history) <= MAX_EVALS + 1  # at most the one interval reported but not checkpointed
    # its MLflow run has every evaluation exactly once
    assert search["steps"][killed["trial"]] == STEPS


def test_no_finished_trial_runs_again_and_mlflow_holds_every_step(search: dict[str, Any]) -> None:
    killed = search["killed"]
    assert killed["finished"]
    for trial in killed["finished"]:  # finished before the loss: one pass, one node, untouched after
        history = search["history"][trial]
        assert list(history["training_iteration"]) == list(range(1, MAX_EVALS + 1))
        assert history["node_id"].nunique() == 1
    assert set(search["steps"]) == set(search["history"]) and len(search["runs"]) == 3
    for trial, steps in search["steps"].items():
        assert steps == STEPS, (trial, steps)
        assert search["runs"][trial].data.tags["outcome"] == "completed"
