"""A trial restarted from its checkpoint keeps every interval in Tune's history files: Ray's own
JSON and CSV loggers, given a copy in storage that is older than the driver's (as after a lost
node, between two of Tune's periodic copies)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture
def ray_session() -> Iterator[None]:
    import ray

    # Tune's driver folders live in the session; "local": never a cluster `ray start` left registered
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_recovered_trial_keeps_intervals_storage_had_not_seen(ray_session: None, tmp_path: Path) -> None:
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from orchestrator.search.history import KeepTrialHistory

    trial = Trial("GanTrainable", config={}, trial_id="t1", stub=True,
                  storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="search"))
    trial.storage.trial_dir_name = "trial_t1"
    trial.init_local_path()
    loggers = [JsonLoggerCallback(), CSVLoggerCallback()]
    results = [{"step": 20 * i, "training_iteration": i, "fid": 300.0 - i} for i in (1, 2, 3)]
    for result in results:
        for logger in loggers:
            logger.log_trial_result(result["training_iteration"], trial, result)
    # storage last saw the trial after its first interval; it then checkpointed at the second
    remote = Path(trial.path)
    remote.mkdir(parents=True)
    (remote / "result.json").write_text(json.dumps(results[0]) + "\n")
    pd.DataFrame(results[:1]).to_csv(remote / "progress.csv", index=False)
    checkpoint = remote / "checkpoint_000001"
    checkpoint.mkdir()
    trial.run_metadata.checkpoint_manager.register_checkpoint(
        _TrainingResult(checkpoint=Checkpoint(str(checkpoint)), metrics=results[1]))

    KeepTrialHistory().on_trial_recover(iteration=3, trials=[trial], trial=trial)
    for logger in loggers:  # what Tune does as the restarted trial starts
        logger.log_trial_start(trial)

    local = Path(trial.local_path)
    lines = (local / "result.json").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [20, 40, 60]
    assert list(pd.read_csv(local / "progress.csv")["step"]) == [20, 40, 60]
