"""ASHA whose rungs survive ``--resume``.

``Tuner.restore`` rebuilds the scheduler as it was when the search began, its rungs empty
(ray-project/ray#30838): a resumed search compares its next trials against nothing, so it stops none
until new results refill the rungs. Tune re-adds every restored trial to the scheduler; this one
then replays the trial's recorded history (Tune's ``result.json``) into its bracket, exactly as the
results were recorded live, so early stopping after a resume decides as it would have without one.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler

from orchestrator.search.history import read_history


class ResumableASHA(ASHAScheduler):
    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for result in read_history(trial):
            if self._time_attr in result and self._metric in result:
                # a rung already holding this trial keeps its value: replaying is idempotent
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
