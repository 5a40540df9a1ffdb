"""The search's own Tune wiring (OptunaSearch behind a ConcurrencyLimiter, ASHA) on Ray as installed:
does it keep ``--max-concurrent`` trials suggested and running? Searchers have been seen running
trials nearly one at a time (ray#46965) or capped at one pending trial (ray#63770)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.metrics.registry import objective
from orchestrator.search.cli import parse_args
from orchestrator.search.plan import make_plan

pytestmark = pytest.mark.integration  # starts Ray


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_the_search_wiring_runs_max_concurrent_trials_at_once(tmp_path: Path) -> None:
    import ray
    from ray import tune

    from orchestrator.search.runner import _tune_config

    plan = make_plan(parse_args(["shapes", "--num-samples", "8", "--max-concurrent", "4", "--max-evals", "2",
                                 "--grace-period", "2", "--gpus-per-trial", "0", "--storage", str(tmp_path)]))
    key = objective(plan.settings.fid_n).best_key  # what ASHA and the searcher rank on

    def trial(config: dict) -> None:
        started = time.time()
        for _ in range(plan.max_evals):
            time.sleep(1.5)
            tune.report({key: config["lr_g"], "started_at": started, "reported_at": time.time()})

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": 0.25}),  # room for 8: only the limiter may hold trials back
            tune_config=_tune_config(plan),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="conc", verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    runs = [(r.metrics["started_at"], r.metrics["reported_at"]) for r in results]
    assert len(runs) == 8 and not results.errors
    assert _most_at_once(runs) == 4  # never more than the limit, and the limit reached
    assert len({r.config["lr_g"] for r in results}) == 8  # eight different suggestions
