"""The Tune callback that logs every trial into MLflow: a nested child run per trial under the
search's parent run, metrics with steps, a sample grid at every evaluation, the curves, the final
generator, outcome tags.

All logging happens on the driver, in this callback: one writer for the (default sqlite) store,
trials never need to reach the tracking server, and a trial that Tune restarts from a checkpoint
keeps its one MLflow run (found again by its trial id) without logging any step twice. Where the
store is and what the tags mean is ``store.py``'s.

Tune's callbacks only append to the journal (on disk, in order) and return; one writer thread
applies it to MLflow. Every trial's next step waits on Tune's loop, and at hundreds of trials the
loop spent 39 % of its time in MLflow calls (1,000 trials, 64 at once: bench/RESULTS.md); now it
waits on MLflow twice: on the first turn (what a resume finds missing is journaled before any new
entry) and at the end (everything written, or kept for ``--resume``).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray import tune

from orchestrator.config import TrialConfig
from orchestrator.tracking.journal import Entry, Journal, Writer
from orchestrator.tracking.store import (
    CHECKPOINT_FOLDER,
    IMAGE_KEY,
    IMAGES_FOLDER,
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    log_png,
    unreachable_errors,
)
from orchestrator.tracking.trial_files import (
    kept_grids,
    read_checkpoint_file,
    read_checkpoint_json,
    recorded_results,
    snapshot,
)
from orchestrator.trial_report import (
    EVALS,
    EVIDENCE,
    FAILED,
    FAILURE,
    FAILURE_MODE,
    INTERRUPTED,
    NOT_METRICS,
    PLACEMENT,
    STARTED_AT,
    STEP,
    ended_as,
    failure_mode,
)

log = logging.getLogger(__name__)

FINAL_RETRIES, FINAL_WAIT_SECONDS = 12, 5.0  # at the end, wait up to a minute for MLflow to come back
RETRY_SECONDS = 2.0  # while it is down: what waits is retried this often


class MlflowTrialLogger(tune.Callback):
    """Logs each trial into a child run of ``parent_run_id``, through a journal on disk (``journal``:
    ``None`` keeps it in memory) that a writer thread applies. Picklable: Tune stores callbacks with
    the experiment state, so the client, the thread and what the runs hold are made again after a
    restore."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_evals: int,
                 name_keys: Sequence[str] = (), journal: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_evals = max_evals
        self.name_keys = tuple(name_keys)  # the hyperparameters a trial's run is named by
        self.journal_folder = journal
        self._started: dict[str, float] = {}  # trial id -> when its trial started (wall clock)
        self._reset()

    def _reset(self) -> None:
        """What the live driver caches; rebuilt from MLflow itself after a restore."""
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, int] = {}  # trial id -> last step whose metrics the run holds
        self._imaged: dict[str, int] = {}  # trial id -> last step whose sample grid the run holds
        self.journal = Journal(self.journal_folder)
        self._warned, self._tried, self._reconciled = False, 0.0, False
        self._interrupted = False  # the driver was asked to stop (Ctrl-C, SIGTERM)
        self._ended: set[str] = set()  # trials this driver saw end
        self._writer = Writer(self._drain)  # one thread: entries are written in order
        self._owed = False  # the writer's last drain stopped short (MLflow unreachable, an error)
        self._failed = ""  # the writer's last error (not MLflow's being down), logged once
        self._stop = threading.Event()  # the driver stops at once: the writer too

    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "experiment_id", "parent_run_id", "max_evals", "name_keys", "journal_folder",
                "_started")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a search saved before _started, name_keys or the journal existed
        self.__dict__.update({"_started": {}, "name_keys": (), "journal_folder": None, **state})
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # --- what Tune reports becomes journal entries

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(STARTED_AT):  # Tune calls back before trial.last_result holds this result
            self._started.setdefault(trial.trial_id, float(result[STARTED_AT]))
        self._submit(self._entry(trial, "result", result_data(result, self._started.get(trial.trial_id))))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        from orchestrator.gan.checkpoints import CURVE_FILES, GRID_FILE, REPORT_FILE

        # read now: a checkpoint may be deleted (num_to_keep) before the entry is written
        curves = {name: read_checkpoint_file(checkpoint, name) for name in CURVE_FILES}
        report = read_checkpoint_json(checkpoint, REPORT_FILE)
        png = read_checkpoint_file(checkpoint, GRID_FILE)
        blobs = {f"curve{i}": data for i, data in enumerate(curves.values()) if data is not None}
        if png is not None:
            blobs["grid"] = png
        data = {"step": int(report.get("step", -1)) if report else -1, "curves": list(curves)}
        self._submit(self._entry(trial, "image", data, blobs))

    def mark_interrupted(self) -> None:
        """The search is being stopped by a signal: Tune will end its running trials as if they had
        finished (TERMINATED), and ``on_experiment_end`` must say they were interrupted."""
        self._interrupted = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        ended, _ = ended_as(trial.last_result or {}, self.max_evals)
        self._submit(self._entry(trial, "tags", {"tags": {"outcome": ended.value}}))
        if trial.checkpoint is not None:
            self._submit(self._entry(trial, "model", {"checkpoint": trial.checkpoint.path}))
        self._submit(self._entry(trial, "end", {"status": "FAILED" if ended == FAILED else "FINISHED"}))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        reason = (getattr(trial, "error_message", None) or "error").strip().splitlines()
        tags = {"outcome": FAILED.value, "failure_reason": reason[-1][:5000] if reason else "error"}
        self._submit(self._entry(trial, "tags", {"tags": tags}))
        self._submit(self._entry(trial, "end", {"status": "FAILED"}))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._reconciled:  # the first turn of Tune's loop, fresh or resumed
            self._reconciled = True
            # waited for: what it journals must come before the trials' new entries
            self._writer.run(self._reconcile, [snapshot(trial) for trial in trials]).result()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # what waits for a server that is down is retried every few seconds, not only at the next result
        if self._owed and time.monotonic() - self._tried >= RETRY_SECONDS:
            self._writer.nudge()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._writer.run(self._finish, [snapshot(trial) for trial in trials])
        try:
            self._writer.close()
        except BaseException:  # a second Ctrl-C while it waits: stop now, the journal keeps the rest
            self._stop.set()
            raise

    def wait(self) -> None:
        """Return once the writer has written what it can of everything submitted so far."""
        self._writer.wait()

    # --- writing the journal to MLflow, on the writer thread

    def _submit(self, entry: Entry) -> None:
        """Append ``entry`` to the journal and have the writer write it, in order, while MLflow
        answers: trials keep training while it does not, and nothing is dropped."""
        self.journal.append(entry)
        self._writer.nudge()

    def _finish(self, trials: list) -> None:
        """The end of the search, on the writer: everything written, or kept for ``--resume``."""
        self._drain()
        # a search stopped by Ctrl-C or SIGTERM: the trials it cut short (Tune marks them TERMINATED
        # as it stops them) were interrupted, not stopped by ASHA; their runs say so until --resume
        # continues them
        for trial in trials:
            if self._interrupted and trial.trial_id in self._runs and not self._ended_before(trial):
                self.journal.append(self._entry(trial, "tags", {"tags": {"outcome": INTERRUPTED.value}}))
                self.journal.append(self._entry(trial, "end", {"status": "KILLED"}))
        for _ in range(FINAL_RETRIES):
            self._drain()
            if not len(self.journal):
                return
            if self._stop.wait(FINAL_WAIT_SECONDS):
                break
        where = f"kept in {self.journal_folder}, written by --resume" if self.journal_folder else "lost"
        log.error("%d logging operations not written to MLflow (%s)", len(self.journal), where)

    def _entry(self, trial: Any, kind: str, data: Mapping[str, Any], blobs: Mapping[str, bytes] | None = None
               ) -> Entry:
        return Entry(kind, trial.trial_id, dict(trial.config), data, blobs or {})

    def _drain(self) -> None:
        self._tried, self._owed = time.monotonic(), True
        for entry in self.journal.pending():
            if self._stop.is_set():
                return
            try:
                self._apply(entry)
            except Exception as err:
                self._stopped_by(err, entry)
                return
            self.journal.done(entry)
        self._owed = False
        if self._warned:
            log.warning("MLflow reachable again; buffered logs written")
            self._warned = False

    def _stopped_by(self, err: Exception, entry: Entry) -> None:
        """Said once: the entry waits (first in line) and is tried again every few seconds."""
        if isinstance(err, unreachable_errors()):  # called only on an error
            if not self._warned:
                log.warning("MLflow unreachable (%s); buffering, will retry", str(err).splitlines()[0])
                self._warned = True
        elif repr(err) != self._failed:
            log.error("writing trial %s's %s entry to MLflow failed; it stays in the journal, retried",
                      entry.trial_id, entry.kind, exc_info=err)
            self._failed = repr(err)

    def _apply(self, entry: Entry) -> None:
        """Write one entry; what the run already holds is not written again (a replay after a crash)."""
        run_id, data = self._run_for(entry), entry.data
        if entry.kind == "result" and data["step"] > self._logged[entry.trial_id]:
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in data["metrics"]]
            tags = [RunTag(k, v) for k, v in data["tags"].items()]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self._logged[entry.trial_id] = data["step"]
        elif entry.kind == "image":
            self._log_pictures(run_id, entry)
        elif entry.kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in data["tags"].items()])
        elif entry.kind == "model":
            self._log_generator(run_id, data["checkpoint"])
        elif entry.kind == "end":
            self.client.set_terminated(run_id, data["status"])

    def _log_pictures(self, run_id: str, entry: Entry) -> None:
        with tempfile.TemporaryDirectory() as folder:
            for i, name in enumerate(entry.data["curves"]):  # the same artifact paths, overwritten
                if f"curve{i}" in entry.blobs:
                    (Path(folder) / name).write_bytes(entry.blobs[f"curve{i}"])
                    self.client.log_artifact(run_id, str(Path(folder) / name), "curves")
        step = entry.data["step"]
        if "grid" in entry.blobs and step > self._imaged[entry.trial_id]:
            log_png(self.client, run_id, entry.blobs["grid"], IMAGE_KEY, step)
            self._imaged[entry.trial_id] = step

    def _run_for(self, entry: Entry) -> str:
        """The trial's one child run: created once, found again after any restart, with what it holds."""
        trial_id = entry.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        query = f"tags.{TRIAL_TAG} = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query)
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "step")
            self._logged[trial_id] = max((int(m.value) for m in history), default=-1)
            self._imaged[trial_id] = max(image_steps(self.client, run_id), default=-1)
        else:
            run_id = self._create_run(entry)
            self._logged[trial_id] = self._imaged[trial_id] = -1
        self._runs[trial_id] = run_id
        return run_id

    def _create_run(self, entry: Entry) -> str:
        tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: entry.trial_id, ROLE_TAG: "trial"}
        # created at the first result, but dated from the trial's start: the UI's duration is honest
        started = entry.data.get("started") or self._started.get(entry.trial_id)
        run = self.client.create_run(self.experiment_id, run_name=run_name(entry.trial_id, entry.config,
                                                                           self.name_keys),
                                     tags=tags, start_time=int(started * 1000) if started else None)
        # every hyperparameter, the defaults a search did not vary included
        params = TrialConfig.from_dict(entry.config).to_dict()
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def _log_generator(self, run_id: str, checkpoint: str) -> None:
        from orchestrator.gan.checkpoints import GENERATOR_FILE

        path = Path(checkpoint) / GENERATOR_FILE
        if path.exists():  # a local checkpoint (remote ones: the export logs the best model)
            self.client.log_artifact(run_id, str(path), artifact_path=CHECKPOINT_FOLDER)

    def _reconcile(self, trials: list) -> None:
        """What Tune recorded and MLflow lacks (a driver that died with a journal it could not keep,
        a head node lost): each trial's evaluations from its result.json, the sample grids of the
        checkpoints it kept, and for a finished trial its outcome and end. Runs only what is missing;
        the journal's own entries come first. ``trials``: snapshots (``trial_files.snapshot``). A trial whose
        run has ended with its outcome is whole (its end is written after everything else of it),
        and is not looked at one by one: a resume of 1,000 trials waited on four MLflow calls each."""
        self._drain()
        try:
            whole = self._ended_runs()
        except unreachable_errors():
            return  # the journal and the next results will catch up
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR") and trial.trial_id in whole:
                continue
            rows = recorded_results(trial)
            if not rows:
                continue
            try:
                entry = self._entry(trial, "result", result_data(rows[0], None))
                self._run_for(entry)
            except unreachable_errors():
                return  # the journal and the next results will catch up
            for row in rows:
                if int(row.get("step", 0)) > self._logged[trial.trial_id]:
                    self.journal.append(self._entry(trial, "result", result_data(row, None)))
            for step, grid in kept_grids(trial):
                if step > self._imaged[trial.trial_id]:
                    image = {"step": step, "curves": []}
                    self.journal.append(self._entry(trial, "image", image, {"grid": grid}))
            if trial.status in ("TERMINATED", "ERROR") and not self._has_outcome(trial.trial_id):
                ended, _ = ended_as(rows[-1], self.max_evals, errored=trial.status == "ERROR")
                self.journal.append(self._entry(trial, "tags", {"tags": {"outcome": ended.value}}))
                status = "FAILED" if ended == FAILED else "FINISHED"
                self.journal.append(self._entry(trial, "end", {"status": status}))
        self._drain()

    def _ended_runs(self) -> set[str]:
        """The trial ids of this search's runs that have ended with an outcome, in one query a page."""
        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        ended: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, page_token=token)
            ended.update(r.data.tags[TRIAL_TAG] for r in page if TRIAL_TAG in r.data.tags
                         and r.info.status in ("FINISHED", "FAILED") and "outcome" in r.data.tags)
            token = page.token
            if not token:
                return ended

    def _ended_before(self, trial: Any) -> bool:
        """Whether the trial ended on its own, in this driver or an earlier one (its run, or what
        the journal still owes it, holds its end)."""
        if trial.trial_id in self._ended or trial.status == "ERROR":
            return True
        if any(e.trial_id == trial.trial_id and e.kind == "end" for e in self.journal.pending()):
            return True
        try:
            tags = self.client.get_run(self._runs[trial.trial_id]).data.tags
        except unreachable_errors():
            return False
        return tags.get("outcome", INTERRUPTED) != INTERRUPTED  # (interrupted before, resumed, cut again)

    def _has_outcome(self, trial_id: str) -> bool:
        return "outcome" in self.client.get_run(self._runs[trial_id]).data.tags


def run_name(trial_id: str, config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """What the MLflow UI lists a trial's run as: its id and the hyperparameters that tell it from
    the others (``ed22e021 bce lr_g 2e-04 lr_d 2e-04 ngf 64``), not Tune's ``GanTrainable_ed22e021``."""
    shown = [f"{key} {_short(config[key])}" for key in keys if key in config]
    return " ".join([trial_id, *shown])


def result_data(result: Mapping[str, Any], started: float | None) -> dict[str, Any]:
    """A result as a journal entry's data: its metrics at its step, and its tags."""
    step, now = int(result.get(STEP, 0)), int(time.time() * 1000)
    metrics = [[key, float(value), now, step] for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and _is_metric(key)]
    tags = {key: str(result[key]) for key in PLACEMENT if result.get(key)}  # where it last ran, in what
    if result.get(FAILURE):
        tags |= {"outcome": FAILED.value, "failure_reason": str(result[FAILURE]),
                 FAILURE_MODE: failure_mode(result)}
        evidence = result.get(EVIDENCE) or {}
        tags.update({f"evidence.{k}": f"{v:.6g}" for k, v in evidence.items()})
    return {"step": step, "metrics": metrics, "tags": tags, "started": started}


def image_steps(client: MlflowClient, run_id: str) -> list[int]:
    """The steps of the sample grids a run holds."""
    from orchestrator.tracking.store import image_step

    return [image_step(a.path) for a in client.list_artifacts(run_id, IMAGES_FOLDER)]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0e}" if 0 < abs(value) < 1e-2 else f"{value:.3g}"
    return str(value)


def _is_metric(key: str) -> bool:
    tune = {"done", EVALS, "timesteps_total", "episodes_total", "pid", "timestamp", "time_since_restore",
            "iterations_since_restore", "timesteps_since_restore"}
    return key not in tune and key not in NOT_METRICS and not key.startswith("config")
