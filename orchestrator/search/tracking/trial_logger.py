"""The Tune callback that logs every trial into MLflow: a nested child run per trial under the
search's parent run, metrics with steps, a sample grid at every evaluation, the curves, the final
generator, outcome tags.

All logging happens on the driver, in this callback: one writer for the (default sqlite) store,
trials never need to reach the tracking server, and a trial that Tune restarts from a checkpoint
keeps its one MLflow run (found again by its trial id) without logging any step twice. Where the
store is and what the tags mean is ``store.py``'s.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from PIL import Image
from ray import tune

from orchestrator.config import TrialConfig
from orchestrator.metrics.health import FAILED, outcome
from orchestrator.search.tracking.store import (
    CHECKPOINT_FOLDER,
    IMAGE_KEY,
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    unreachable_errors,
)

log = logging.getLogger(__name__)

FINAL_RETRIES, RETRY_SECONDS = 12, 5.0  # at the end, wait up to a minute for MLflow to come back


class MlflowTrialLogger(tune.Callback):
    """Logs each trial into a child run of ``parent_run_id``. Picklable: Tune stores callbacks with
    the experiment state, so the client is made lazily."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_evals: int,
                 name_keys: Sequence[str] = ()) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_evals = max_evals
        self.name_keys = tuple(name_keys)  # the hyperparameters a trial's run is named by
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, int] = {}  # trial id -> last step whose metrics are logged
        self._imaged: dict[str, int] = {}  # trial id -> last step whose sample grid is logged
        self._started: dict[str, float] = {}  # trial id -> when its trial started (wall clock)
        self._pending: list[Callable[[], object]] = []  # logging postponed while MLflow is unreachable
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        # operations still pending are closures: they stay with the live driver (which retries them
        # until the experiment ends), not with the pickled experiment state
        return {**self.__dict__, "_client": None, "_pending": [], "_warned": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a search saved before _started or name_keys existed
        self.__dict__.update({"_started": {}, "name_keys": (), **state})

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial: Any) -> str:
        """The trial's one child run: created once, found again after any restart."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        query = f"tags.{TRIAL_TAG} = '{trial.trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query)
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "step")
            last = max((int(m.value) for m in history), default=-1)
        else:
            run_id, last = self._create_run(trial), -1
        self._logged[trial.trial_id] = self._imaged[trial.trial_id] = last
        self._runs[trial.trial_id] = run_id
        return run_id

    def _create_run(self, trial: Any) -> str:
        tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, ROLE_TAG: "trial"}
        # created at the first result, but dated from the trial's start: the UI's duration is honest
        started = self._started.get(trial.trial_id)
        run = self.client.create_run(self.experiment_id, run_name=run_name(trial, self.name_keys), tags=tags,
                                     start_time=int(started * 1000) if started else None)
        # every hyperparameter, the defaults a search did not vary included
        params = TrialConfig.from_dict(trial.config).to_dict()
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        step, now = int(result.get("step", 0)), int(time.time() * 1000)
        if result.get("started_at"):  # Tune calls back before trial.last_result holds this result
            self._started.setdefault(trial.trial_id, float(result["started_at"]))
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and _is_metric(key)
        ]
        tags = {key: str(result[key]) for key in PLACEMENT_TAGS if result.get(key)}
        if result.get("failure"):
            tags |= {"outcome": FAILED, "failure_reason": str(result["failure"]),
                    "failure_mode": str(result.get("failure_mode") or "diverged")}
            evidence = result.get("evidence") or {}
            tags.update({f"evidence.{k}": f"{v:.6g}" for k, v in evidence.items()})

        def log() -> None:
            run_id = self.run_id(trial)
            if step <= self._logged[trial.trial_id]:
                return  # already logged before a restart: the resumed trial recomputes the same numbers
            self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
            self._logged[trial.trial_id] = step

        self._submit(log)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        from orchestrator.gan.checkpoints import CURVE_FILES, GRID_FILE, REPORT_FILE

        # read now: a checkpoint may be deleted (num_to_keep) before a postponed log runs
        curves = {name: read_checkpoint_file(checkpoint, name) for name in CURVE_FILES}
        report = read_checkpoint_json(checkpoint, REPORT_FILE)
        png = read_checkpoint_file(checkpoint, GRID_FILE)
        step = int(report.get("step", -1)) if report else -1

        def log() -> None:
            run_id = self.run_id(trial)
            with tempfile.TemporaryDirectory() as folder:
                for name, data in curves.items():  # the same artifact paths, overwritten
                    if data is not None:
                        (Path(folder) / name).write_bytes(data)
                        self.client.log_artifact(run_id, str(Path(folder) / name), "curves")
            if png is not None and step > self._imaged[trial.trial_id]:
                self.client.log_image(run_id, Image.open(io.BytesIO(png)), key=IMAGE_KEY, step=step)
                self._imaged[trial.trial_id] = step

        self._submit(log)

    def _submit(self, operation: Callable[[], object]) -> None:
        """Run ``operation`` after everything still waiting; while the tracking server is unreachable
        keep it, in order, for the next call: trials keep training and nothing is dropped."""
        self._pending.append(operation)
        while self._pending:
            try:
                self._pending[0]()
            except unreachable_errors() as err:  # called only on an error
                if not self._warned:
                    log.warning("MLflow unreachable (%s); buffering, will retry", str(err).splitlines()[0])
                    self._warned = True
                return
            self._pending.pop(0)
        if self._warned:
            log.warning("MLflow reachable again; buffered logs written")
            self._warned = False

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for _ in range(FINAL_RETRIES):
            self._submit(lambda: None)
            if not self._pending:
                return
            time.sleep(RETRY_SECONDS)
        log.error("MLflow still unreachable: %d logging operations were not written", len(self._pending))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        ended = outcome(bool(result.get("failure")), result.get("training_iteration", 0), self.max_evals)
        self._tag(trial, {"outcome": ended})
        self._submit(lambda: self._log_generator(trial))
        self._end(trial, "FAILED" if ended == FAILED else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = (getattr(trial, "error_message", None) or "error").strip().splitlines()
        self._tag(trial, {"outcome": FAILED, "failure_reason": reason[-1][:5000] if reason else "error"})
        self._end(trial, "FAILED")

    def _end(self, trial: Any, status: str) -> None:
        """The run's status in the MLflow UI: a trial's run ends with its trial. A restarted or
        resumed trial logs into it again all the same (MLflow allows it on an ended run)."""
        self._submit(lambda: self.client.set_terminated(self.run_id(trial), status))

    def _tag(self, trial: Any, tags: Mapping[str, str]) -> None:
        self._submit(lambda: self.client.log_batch(self.run_id(trial),
                                                   tags=[RunTag(k, v) for k, v in tags.items()]))

    def _log_generator(self, trial: Any) -> None:
        from orchestrator.gan.checkpoints import GENERATOR_FILE

        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            path = Path(folder) / GENERATOR_FILE
            if path.exists():
                self.client.log_artifact(self.run_id(trial), str(path), artifact_path=CHECKPOINT_FOLDER)


# where the trial last ran, and in which number format (the trainable reports them)
PLACEMENT_TAGS = ("node_ip", "node_id", "device", "compute_precision")


def run_name(trial: Any, keys: Sequence[str]) -> str:
    """What the MLflow UI lists a trial's run as: its id and the hyperparameters that tell it from
    the others (``ed22e021 bce lr_g 2e-04 lr_d 2e-04 ngf 64``), not Tune's ``GanTrainable_ed22e021``."""
    shown = [f"{key} {_short(trial.config[key])}" for key in keys if key in trial.config]
    return " ".join([trial.trial_id, *shown])


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0e}" if 0 < abs(value) < 1e-2 else f"{value:.3g}"
    return str(value)


def _is_metric(key: str) -> bool:
    skip = {"done", "training_iteration", "timesteps_total", "episodes_total", "pid", "timestamp",
            "time_since_restore", "iterations_since_restore", "timesteps_since_restore", "diverged",
            "started_at", "reported_at"}
    return key not in skip and not key.startswith("config")


def read_checkpoint_file(checkpoint: Any, name: str) -> bytes | None:
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as stream:
            return stream.read()
    except (FileNotFoundError, OSError):
        return None


def read_checkpoint_json(checkpoint: Any, name: str) -> dict[str, Any] | None:
    import json

    raw = read_checkpoint_file(checkpoint, name)
    if raw is None:
        return None
    return json.loads(raw, parse_constant=lambda c: {"Infinity": math.inf, "-Infinity": -math.inf}.get(c))
