"""The Tune callback that keeps the search's contact sheets (``views/sheets.py``) as it runs: a frame
per trial and evaluation from the grid its checkpoint already holds (no second pass over the GPUs),
the trial's outcome when it ends, and the sheets redrawn at most every ``refresh_s`` seconds and at
the end, written beside the results and logged on the search's parent run.

The redraws during the search run on a thread of their own, one at a time: at hundreds of trials a
redraw takes seconds, and Tune's loop (every trial's next step waits on it) must not wait for it.
Nor may the drawing take the driver's processor from it as the search grows: a redraw starts at
least ``1 / DRAW_SHARE`` times the last one's duration after that one started (or ``refresh_s``,
whichever is longer), so the drawing thread takes at most about a tenth of the driver's time. The
last one, at the end, is drawn before the search's summary, whatever it costs.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from ray import tune

from orchestrator.metrics.registry import GROUND_TRUTH
from orchestrator.tracking.store import unreachable_errors
from orchestrator.tracking.trial_files import read_checkpoint_file, read_checkpoint_json
from orchestrator.trial_report import EVALS, ended_as
from orchestrator.views import sheets

log = logging.getLogger(__name__)

ARTIFACT_FOLDER = "contact_sheets"  # on the parent run
DRAW_SHARE = 0.1  # of the wall time, at most, for the redraws during the search


class ContactSheetLogger(tune.Callback):
    """Picklable (Tune stores callbacks with the experiment state); the folder is the state, so a
    resumed search draws on what the first run recorded."""

    def __init__(self, folder: Path, fid_key: str, rungs: list[int], max_evals: int, params: list[str],
                 tracking_uri: str, parent_run_id: str, name: str, refresh_s: float = 60.0) -> None:
        self.folder, self.fid_key, self.rungs, self.max_evals = Path(folder), fid_key, rungs, max_evals
        self.params, self.name, self.refresh_s = params, name, refresh_s
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self._dirty: set[int] = set()
        self._unlogged: set[Path] = set()  # drawn, not in MLflow yet (a page unchanged is not drawn again)
        self._drawn_at = 0.0  # when the last redraw started
        self._took = 0.0  # the seconds it took
        self._drawing: Future | None = None  # the redraw running on the drawing thread
        self._thread: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_drawn_at": 0.0, "_took": 0.0, "_drawing": None, "_thread": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not (self.folder / sheets.FRAMES / trial.trial_id / sheets.CARD).exists():
            shown = {k: trial.config[k] for k in self.params if k in trial.config}
            sheets.record_card(self.folder, trial.trial_id, shown)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        from orchestrator.gan.checkpoints import GRID_FILE, REPORT_FILE

        from_trial = read_checkpoint_json(checkpoint, REPORT_FILE) or {}
        png = read_checkpoint_file(checkpoint, GRID_FILE)
        evals = int((trial.last_result or {}).get("training_iteration", 0))
        if png is None or self.fid_key not in from_trial or evals < 1:
            return
        truth = {k: float(from_trial[k]) for k in GROUND_TRUTH if k in from_trial}
        sheets.record_frame(self.folder, trial.trial_id, evals, int(from_trial.get("step", 0)),
                            float(from_trial[self.fid_key]), png, truth)
        self._dirty.add(evals)
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        self._end(trial, *ended_as(result, self.max_evals), int(result.get(EVALS, 0)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        self._end(trial, *ended_as(result, self.max_evals, errored=True), int(result.get(EVALS, 0)))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def flush(self) -> None:
        """Wait for the redraw in flight, then draw (and log) what changed since, here."""
        self._refresh(force=True)

    def _end(self, trial: Any, ended: str, mode: str, evals: int) -> None:
        shown = {k: trial.config[k] for k in self.params if k in trial.config}
        sheets.record_card(self.folder, trial.trial_id, shown, ended, mode, evals)
        self._dirty.update(range(1, evals + 1))  # its outcome shows on every sheet it is on
        self._refresh()

    def _refresh(self, force: bool = False) -> None:
        """Redraw the sheets that changed, one redraw at a time, on the drawing thread, at most every
        ``refresh_s`` or ``1 / DRAW_SHARE`` times the last redraw's seconds (``force``: wait for it,
        then draw here, now); what an unreachable tracking server did not take is logged at the next
        refresh."""
        if self._drawing is not None and not self._drawing.done():
            if not force:
                return  # what changed meanwhile waits for the next refresh
            self._drawing.result()
        waiting = bool(self._dirty or self._unlogged)
        period = max(self.refresh_s, self._took / DRAW_SHARE)
        if not waiting or (not force and time.monotonic() - self._drawn_at < period):
            return
        self._drawn_at = time.monotonic()
        dirty, self._dirty = self._dirty, set()
        if force:
            self._draw(dirty)
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contact-sheets")
        self._drawing = self._thread.submit(self._draw, dirty)

    def _draw(self, dirty: set[int]) -> None:
        started = time.monotonic()
        try:
            self._draw_and_log(dirty)
        finally:
            self._took = time.monotonic() - started

    def _draw_and_log(self, dirty: set[int]) -> None:
        try:
            written = sheets.write_sheets(self.folder, self.fid_key, self.rungs, evals=dirty, name=self.name)
        except Exception as err:  # a picture must never stop the search (nor vanish on the thread)
            expected = isinstance(err, OSError | ValueError)  # a file gone, a frame half written
            log.warning("contact sheets not drawn: %s", err, exc_info=not expected)
            self._dirty.update(dirty)
            return
        self._unlogged.update(written)
        client = MlflowClient(self.tracking_uri)
        for path in sorted(self._unlogged):
            try:
                client.log_artifact(self.parent_run_id, str(path), ARTIFACT_FOLDER)
            except unreachable_errors() as err:  # called only on an error
                log.warning("contact sheets not logged to MLflow yet: %s", str(err).splitlines()[0])
                return
            self._unlogged.discard(path)
