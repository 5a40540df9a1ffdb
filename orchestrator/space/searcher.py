"""Ray's OptunaSearch, with a saved state that does not grow with the study.

Tune saves its searcher with the experiment state, every second or few during a search. OptunaSearch
pickles itself whole: the Optuna study with its storage's cache of every trial, and an Optuna
trial object for every trial it ever suggested. At 1,000 trials that was 2 MB and about 100 ms a
save, half of Tune's state save (bench/RESULTS.md, issue 28). Where the study lives in a storage
(a search's always does: ``space/study.py``), the study is that storage's; the saved state names
it (the storage's address, the study's name) and the running trials' ids, and a restore opens it
again. A finished trial's Optuna trial object is dropped once told: Tune never asks about it again.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

_RUNNING = "_running_trial_ids"  # in a saved state: Tune trial id -> the Optuna trial's storage id


class StudySearch(OptunaSearch):
    """``storage_url``: where ``storage`` was opened from (``space/study.py``), what a saved state
    keeps instead of the storage (a journal's holds an offset per entry of its file)."""

    def __init__(self, *args: Any, storage_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storage_url = storage_url
        self.ended_in_study: set[str] = set()  # running in the restored state, finished in the study
        self.reported_before: dict[str, int] = {}  # a restored running trial: its last step in the study

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # a trial resumed from a checkpoint older than its last report repeats steps the study holds
        # (Optuna keeps the first value, and warns in the resume's log for each): not told again
        repeated = result.get(TRAINING_ITERATION, 0) <= self.reported_before.get(trial_id, -1)
        if trial_id not in self.ended_in_study and not repeated:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.ended_in_study:
            super().on_trial_complete(trial_id, result, error)
        self._ot_trials.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        state = self.__dict__.copy()
        if self.storage_url is not None:  # the study is the storage's: name it, not its cache
            state.update({"_ot_study": None, "_storage": None, "_ot_trials": {},
                          _RUNNING: {tid: trial._trial_id for tid, trial in self._ot_trials.items()}})
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        from orchestrator.space.study import open_study_storage

        with open(checkpoint_path, "rb") as f:
            state: dict[str, Any] = pickle.load(f)
        running = state.pop(_RUNNING, None)
        self.__dict__.update(state)
        if running is None or self.storage_url is None:  # OptunaSearch's own state (saved before this class)
            return
        self._storage = open_study_storage(self.storage_url)
        study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler,
                                  pruner=optuna.pruners.NopPruner())
        self._ot_study = study  # type: ignore[assignment]  # Ray's annotation: None until set up
        self._ot_trials = {tid: optuna.Trial(study, number) for tid, number in running.items()}
        # a trial that ended after the state was saved (the study holds its end, Tune runs it on
        # from its checkpoint): what it reports now is not told (Optuna refuses a finished trial)
        for tid, number in running.items():
            trial = self._storage.get_trial(number)
            if trial.intermediate_values:
                self.reported_before[tid] = max(trial.intermediate_values)
            if trial.state.is_finished():
                log.warning("trial %s ended after the search's state was last saved: the study keeps its "
                            "end; it runs on until Tune stops it", tid)
                self.ended_in_study.add(tid)
                del self._ot_trials[tid]
