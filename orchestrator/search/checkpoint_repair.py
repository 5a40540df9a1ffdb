"""A resumed trial restores from a checkpoint that is on storage, even where Tune's saved state
names one that is gone.

Tune keeps a trial's best two checkpoints by FID and its latest (``num_to_keep``), deleting the
others as each new one is registered, and saves its experiment state (which names each trial's
latest checkpoint) at most once a second (``pace_state_saves``), at the end of a turn of its loop,
copied to storage after that. A driver killed in between leaves a state naming a checkpoint that was
deleted: on ``--resume`` the trial's restore failed at every retry and the trial was lost (measured
at 1,000 trials, where a turn of the loop takes seconds). The checkpoint registered instead is on
storage (a trial writes it there before reporting it), with the Tune result it was saved at
(``write_tune_result``), so ``RepairNamedCheckpoints`` points such a trial at its newest checkpoint
on storage before Tune starts it again.

A save writes every trial's state (about 20 KB each: 5 MB at 256 trials, 36 ms), so at a fixed
period its cost grows with the trials; ``pace_state_saves`` holds it to a share of the wall clock.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ray import tune

log = logging.getLogger(__name__)

# Tune's experiment state is saved apart by at least a save's own seconds over this share, and the
# configured period (runner.DRIVER_ENVIRONMENT: 1 s) at least; at 1,000 trials, every few seconds.
# What the state misses in between, a resume redoes (a trial's evaluation at most) or repairs (a
# checkpoint deleted since)
STATE_SAVE_SHARE = 0.02
TUNE_RESULT_FILE = "tune_result.json"  # in every checkpoint: the Tune result it was saved at
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def write_tune_result(trainable: tune.Trainable, folder: Path) -> None:
    """Into a checkpoint ``folder``: the result ``trainable`` last reported, with Tune's counters
    (what Tune registers as the checkpoint's metrics). Ray keeps it as ``_last_result``; a Ray
    upgrade that renames it fails tests/test_checkpoint_repair.py."""
    (folder / TUNE_RESULT_FILE).write_text(json.dumps(trainable._last_result, default=str))


def pace_state_saves() -> None:
    """Tune's saves of its experiment state, paced in this process: each waits at least the
    configured period (``TUNE_GLOBAL_CHECKPOINT_S``) and the last save's seconds over
    ``STATE_SAVE_SHARE``. Tune's own pacing ("auto") does the same at 5 % with a floor of 10 s; this
    keeps ours. Replaces a private method of Tune's (a Ray upgrade that renames it fails
    tests/test_checkpoint_repair.py); a save Tune forces is not held back."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    def paced(self: Any, time_taken: float) -> None:
        floor = self.__dict__.setdefault("_configured_period_s", self._checkpoint_period)
        self._checkpoint_period = max(floor, time_taken / STATE_SAVE_SHARE)

    _ExperimentCheckpointManager._update_auto_checkpoint_time = paced  # type: ignore[method-assign]


class RepairNamedCheckpoints(tune.Callback):
    """On the first turn of Tune's loop, before any trial starts, every unfinished trial's list of
    checkpoints loses those gone from storage, and a trial whose latest one is gone is pointed at
    its newest one there."""

    def __init__(self) -> None:
        self.done = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.done:
            return
        self.done = True
        for trial in trials:
            if trial.status != "TERMINATED":  # a finished trial is not restored
                repair(trial)


def repair(trial: Any) -> bool:
    """Drop from ``trial``'s checkpoints those that are gone from storage (Tune deleted them after
    the state was saved: it would fail deleting them again, and not register the trial's next
    checkpoint, measured at 256 trials), and point the trial at its newest checkpoint on storage when
    the latest one the state names is among them; True when anything was repaired. Uses Tune's
    checkpoint manager's private list: a Ray upgrade that changes it fails the tests."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    manager = trial.run_metadata.checkpoint_manager
    kept = [r for r in manager._checkpoint_results if _exists(r.checkpoint)]
    dropped = len(kept) < len(manager._checkpoint_results)
    manager._checkpoint_results = kept
    latest = manager.latest_checkpoint_result
    if latest is None or _exists(latest.checkpoint):
        if dropped:
            trial.invalidate_json_state()
            trial.run_metadata.invalidate_cache()
        return dropped
    storage = trial.storage
    fs = storage.storage_filesystem
    newest = _newest_checkpoint(fs, storage.trial_fs_path)
    if newest is None:
        log.error("trial %s: its checkpoint %s is gone and no other is on storage; it cannot resume",
                  trial.trial_id, latest.checkpoint.path)
        return False
    index, path, metrics = newest
    log.warning("trial %s: its checkpoint %s was deleted after the search's state was last saved; "
                "it resumes from %s, its newest on storage", trial.trial_id,
                Path(latest.checkpoint.path).name, Path(path).name)
    manager.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(path, filesystem=fs), metrics=metrics))
    storage.current_checkpoint_index = index  # the trial's next checkpoint gets the next number
    trial.invalidate_json_state()
    trial.run_metadata.invalidate_cache()
    return True


def _exists(checkpoint: Any) -> bool:
    import pyarrow.fs

    return bool(checkpoint.filesystem.get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound)


def _newest_checkpoint(fs: Any, trial_path: str) -> tuple[int, str, dict[str, Any]] | None:
    """(index, path, Tune result) of the newest checkpoint in the trial's folder on storage that
    holds its Tune result; None when there is none."""
    import pyarrow.fs

    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(trial_path))
    except (FileNotFoundError, OSError):
        return None
    found = sorted(((int(m.group(1)), e.path) for e in entries
                    if e.type == pyarrow.fs.FileType.Directory and (m := _CHECKPOINT_DIR.search(e.path))),
                   reverse=True)
    for index, path in found:
        try:
            with fs.open_input_stream(f"{path}/{TUNE_RESULT_FILE}") as stream:
                return index, path, json.loads(stream.read())
        except (FileNotFoundError, OSError, ValueError):  # not a whole checkpoint of ours
            continue
    return None
