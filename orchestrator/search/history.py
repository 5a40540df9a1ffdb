"""Keeps Tune's per-trial history (``result.json``, ``progress.csv``) whole when a trial restarts,
and reads it back (``read_history``: the rungs of a resumed search are rebuilt from it).

Tune's loggers write each result into the trial's folder on the driver and copy that folder to the
search's storage every few seconds. When a trial restarts from a checkpoint (its node was lost),
Ray's JSON and CSV loggers first copy the trial's files back *from storage* over the driver's own:
any interval reported since the last copy vanishes from the history, and with it from the results
table, whose best FID is read from that history. Pushing the driver's files to storage as the
trial is recovered, before its restart, makes that copy-back a no-op.
"""

from __future__ import annotations

import json
import logging
import math
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


def read_history(trial: Any) -> list[dict[str, Any]]:
    """Every result ``trial`` reported, in order, from its ``result.json``: the driver's copy, or
    the one in storage when that holds more (a resumed search on another machine). A trial that
    has reported nothing has no folder yet, and no history."""
    if not (trial.last_result or {}).get("training_iteration"):
        return []
    local = Path(trial.local_path, EXPR_RESULT_FILE)
    copies = [local.read_bytes() if local.is_file() else b"", _stored(trial)]
    text = max(copies, key=lambda data: data.count(b"\n")).decode(errors="replace")
    results = []
    for line in text.splitlines():
        try:
            results.append(json.loads(line, parse_constant=_constant))
        except ValueError:  # a line cut short by a crash mid-write ends the history
            break
    return results


def _stored(trial: Any) -> bytes:
    storage = trial.storage
    try:
        with storage.storage_filesystem.open_input_stream(
                Path(storage.trial_fs_path, EXPR_RESULT_FILE).as_posix()) as stream:
            return bytes(stream.read())
    except (FileNotFoundError, OSError):
        return b""


def _constant(name: str) -> float:
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[name]
