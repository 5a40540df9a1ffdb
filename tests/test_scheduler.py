"""ASHA after ``--resume``: a search interrupted after its first trial passed the rungs, then
resumed, stops the trials the uninterrupted search stops (Tune rebuilds the scheduler empty on
restore, ray-project/ray#30838, so plain ASHA stops none of them)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from ray.tune import Callback

pytestmark = pytest.mark.integration  # starts Ray and runs Tune

QUALITY = [1.0, 4.0, 3.0, 2.0]  # each trial's metric at every iteration; lower is better


class _InterruptOnce(Callback):
    """Interrupts the search the first time a trial completes, as Ctrl+C would (Tune saves its state
    and stops; SIGUSR1 is the signal Tune always catches). The flag file keeps the resumed search,
    which restores this callback too, from being interrupted again."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.flag.exists():
            self.flag.touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def _search(folder: Path, scheduler_class: type, interrupt: bool) -> dict[float, int]:
    """Run the four trials one after another; with ``interrupt`` stop after the first and resume.
    Returns each trial's iterations."""
    from ray import tune
    flag = folder / "interrupt"

    def trial(config: dict) -> None:  # a closure: Ray's workers cannot import this test module
        for _ in range(4):
            tune.report({"m": config["q"]})

    scheduler = scheduler_class(time_attr="training_iteration", metric="m", mode="min", max_t=4,
                                grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(
        trial,
        param_space={"q": tune.grid_search(QUALITY)},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(folder), name="s", verbose=0,
                                  callbacks=[_InterruptOnce(flag)] if interrupt else []),
    )
    results = tuner.fit()
    if interrupt:
        done = {r.config["q"]: r.metrics.get("training_iteration", 0) for r in results}
        assert done[QUALITY[0]] == 4 and len(done) < 4, done  # interrupted after the first trial
        results = tune.Tuner.restore(str(folder / "s"), trial, resume_unfinished=True).fit()
    return {r.config["q"]: int(r.metrics["training_iteration"]) for r in results}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_resumed_search_stops_what_the_uninterrupted_one_stops(ray_session: None, tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.search.scheduler import ResumableASHA

    whole = _search(tmp_path / "whole", ResumableASHA, interrupt=False)
    # 4 and 3 trail the first at rung 1 (iteration 1); 2 passes rung 1 (the median of 1, 4, 3) and
    # trails the first at rung 2
    assert whole == {1.0: 4, 4.0: 1, 3.0: 1, 2.0: 2}
    assert _search(tmp_path / "resumed", ResumableASHA, interrupt=True) == whole
    # what Ray's own scheduler does across the same resume: its rungs start empty
    forgetful = _search(tmp_path / "plain", ASHAScheduler, interrupt=True)
    assert forgetful != whole and forgetful[4.0] > 1
