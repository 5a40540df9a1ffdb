"""TPE over a bounded history, so that a suggestion costs the same at 1,000 trials as at 300 (issue 28).

Optuna's TPE reads every finished trial at every suggestion, several times over: the grouped search
space's decomposition, then for each group the split into good and bad trials and both Parzen
estimators. At 1,000 trials with 64 running that was 77 ms a suggestion against 18 at 100, on one
core, growing without bound (``bench/tpe_window.py``; Optuna offers no bound, its issue 6777). Here
TPE reads a view of the study that holds only:

- the ``best`` complete trials, however old: TPE's good side is the best tenth of the trials, at most
  25 (Optuna's ``default_gamma``), so with ``best`` = 25 it is the same trials as over the whole study
  once 250 have finished;
- the ``recent`` finished trials of the highest numbers: TPE's bad side, where Optuna's default
  weights already count the oldest trials least (from 1/n, rising to 1 for the newest 25);
- the running trials (the constant liar counts them as bad).

The view is kept up to date one trial at a time (the new trials and the ones not finished when last
seen, each read once), so nothing in a suggestion walks the whole study after the first. Up to
``best + recent`` finished trials the view is the study, and the suggestions are Optuna's TPE's
draw for draw (tested). What the bound costs in search quality: ``bench/tpe_window.py``, over many
seeds, in bench/RESULTS.md.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Container
from typing import Any, cast

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

BEST = 25  # TPE's good side at most (optuna's default_gamma caps it at 25)
RECENT = 300  # the newest finished trials TPE's bad side is drawn from
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what TPE models; failed trials it never reads


class _Window:
    """The trials TPE reads, for one study: the ``best`` complete, the ``recent`` finished of the
    highest numbers, the running; ``sync`` brings it up to date for the trial being suggested."""

    def __init__(self, best: int, recent: int) -> None:
        self.best_n, self.recent_n = best, recent
        # the study read: its storage itself (an id() of a storage since collected can be the next
        # storage's: CI saw a second study taken for the first) and its id in that storage
        self.read_from: tuple[object, int] | None = None
        self.next_number = 0  # the first trial number not read yet
        self.pending: dict[int, int] = {}  # number -> storage id: not finished when last read
        self.kept: dict[int, FrozenTrial] = {}  # number -> finished trial in the window
        self.best: list[tuple[float, int]] = []  # heap: (-score, number), its worst on top
        self.recent: list[int] = []  # heap of numbers, the oldest on top
        self.synced_for = -1  # the trial number the window was last brought up to date for
        self.trials: list[FrozenTrial] = []  # kept and running, by number: what TPE reads

    def sync(self, study: Study, trial: FrozenTrial) -> None:
        if trial.number == self.synced_for:
            return
        storage, study_id = study._storage, study._study_id
        self.read_from = (storage, study_id)
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        if self.next_number == 0:  # a new sampler, or one restored from a saved search: read it all once
            seen = storage.get_all_trials(study_id, deepcopy=False)
            self.next_number = len(seen)
        else:
            seen = [storage.get_trial(tid) for tid in self.pending.values()] + self._new_trials(study)
        running = []
        for t in seen:
            self.pending.pop(t.number, None)
            if t.state in _FINISHED:
                self._keep(t, sign)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                self.pending[t.number] = t._trial_id
                running += [t] if t.state == TrialState.RUNNING else []
        self.trials = sorted([*self.kept.values(), *running], key=lambda t: t.number)
        self.synced_for = trial.number

    def _new_trials(self, study: Study) -> list[FrozenTrial]:
        """Trials created since the last read, one lookup each (a storage answers a number it
        does not hold with KeyError)."""
        new: list[FrozenTrial] = []
        storage = study._storage
        while True:
            try:
                tid = storage.get_trial_id_from_study_id_trial_number(study._study_id, self.next_number)
            except KeyError:
                return new
            new.append(storage.get_trial(tid))
            self.next_number += 1

    def _keep(self, t: FrozenTrial, sign: float) -> None:
        dropped = []
        if t.state == TrialState.COMPLETE:
            heapq.heappush(self.best, (-sign * cast(float, t.value), t.number))
            if len(self.best) > self.best_n:
                dropped.append(heapq.heappop(self.best)[1])
        heapq.heappush(self.recent, t.number)
        if len(self.recent) > self.recent_n:
            dropped.append(heapq.heappop(self.recent))
        self.kept[t.number] = t
        if dropped:  # a trial leaves when neither list holds it any more (both at most a few hundred)
            held = {n for _, n in self.best} | set(self.recent)
            for n in dropped:
                if n not in held:
                    self.kept.pop(n, None)


class _StudyView:
    """The study as TPE sees it through a window: its trials are the window's, everything else
    (directions, storage, ids) the study's own."""

    def __init__(self, study: Study, trials: list[FrozenTrial]) -> None:
        self._study, self._trials = study, trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


class BoundedTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPESampler (every argument its own) reading at most ``best + recent`` finished
    trials; a study of several objectives is read whole (the best trials are not one list there)."""

    def __init__(self, *args: Any, best: int = BEST, recent: int = RECENT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._window = _Window(best, recent)

    def __getstate__(self) -> dict[str, Any]:
        # a search's saved state holds the sampler: the window is read again from the study on restore
        state = self.__dict__.copy()
        state["_window"] = _Window(self._window.best_n, self._window.recent_n)
        return state

    def _view(self, study: Study, trial: FrozenTrial) -> Study:
        if study._is_multi_objective():
            return study
        read_from = self._window.read_from
        if read_from is not None and (read_from[0] is not study._storage or read_from[1] != study._study_id):
            self._window = _Window(self._window.best_n, self._window.recent_n)  # another study
        self._window.sync(study, trial)
        return cast(Study, _StudyView(study, self._window.trials))

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return super().infer_relative_search_space(self._view(study, trial), trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return super().sample_relative(self._view(study, trial), trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return super().sample_independent(self._view(study, trial), trial, param_name, param_distribution)
