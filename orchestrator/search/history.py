"""Keeps Tune's per-trial history (``result.json``, ``progress.csv``) whole when a trial restarts.

Tune's loggers write each result into the trial's folder on the driver and copy that folder to the
search's storage every few seconds. When a trial restarts from a checkpoint (its node was lost),
Ray's JSON and CSV loggers first copy the trial's files back *from storage* over the driver's own:
any interval reported since the last copy vanishes from the history, and with it from the results
table, whose best FID is read from that history. Pushing the driver's files to storage as the
trial is recovered, before its restart, makes that copy-back a no-op.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.air.constants import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE

log = logging.getLogger(__name__)

HISTORY_FILES = (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE)


class KeepTrialHistory(tune.Callback):
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        push_history(trial)


def push_history(trial: Any) -> None:
    """Copy the driver's history files of ``trial`` over their copies in storage."""
    import pyarrow.fs

    storage = trial.storage
    for name in HISTORY_FILES:
        local = Path(trial.local_path, name)
        if not local.is_file():
            continue
        try:
            pyarrow.fs.copy_files(local.as_posix(), Path(storage.trial_fs_path, name).as_posix(),
                                  destination_filesystem=storage.storage_filesystem)
        except OSError as err:  # Tune's periodic copy still runs; warn, never fail the search
            log.warning("could not save %s of trial %s to storage: %s", name, trial.trial_id, err)
