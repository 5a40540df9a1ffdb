"""Ray's OptunaSearch, with a saved state that does not grow with the study.

Tune saves its searcher with the experiment state, once a second during a search. OptunaSearch
pickles itself whole: the Optuna study with its storage's cache of every trial, and an Optuna
trial object for every trial it ever suggested. At 1,000 trials that was 2 MB and about 100 ms a
save, half of Tune's state save (bench/RESULTS.md, issue 28). Where the study lives in a storage
(a search's always does: ``space/study.py``), the study is that storage's; the saved state names
it and the running trials' Optuna numbers, and a restore opens the study again. A finished trial's
Optuna trial object is dropped once told: Tune never asks about it again.
"""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

_RUNNING = "_running_trial_ids"  # in a saved state: Tune trial id -> the Optuna trial's storage id


class StudySearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        self._ot_trials.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        state = self.__dict__.copy()
        if self._storage is not None:  # the study is the storage's: name it, not its cache
            state["_ot_study"] = None
            state[_RUNNING] = {tid: trial._trial_id for tid, trial in self._ot_trials.items()}
            state["_ot_trials"] = {}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state: dict[str, Any] = pickle.load(f)
        running = state.pop(_RUNNING, None)
        self.__dict__.update(state)
        if running is None or self._storage is None:  # OptunaSearch's own state (saved before this class)
            return
        study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler,
                                  pruner=optuna.pruners.NopPruner())
        self._ot_study = study  # type: ignore[assignment]  # Ray's annotation: None until set up
        self._ot_trials = {tid: optuna.Trial(study, number) for tid, number in running.items()}
