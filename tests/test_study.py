"""The search's Optuna study lives in a journal file beside its results (what optuna-dashboard reads),
holding what Tune told it: one complete trial per trial, valued at the trial's best FID."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest

from orchestrator.space.sampling import load_space, space_path
from orchestrator.space.study import open_study_storage

FID = "fid128"  # the smoke test's FID: 128 images


def test_the_smoke_search_keeps_its_study_beside_its_results(smoke_search: dict) -> None:
    folder = smoke_search["experiment_dir"]
    study = optuna.load_study(study_name="smoke", storage=open_study_storage(str(folder / "optuna.log")))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    table = pd.read_csv(folder / "results.csv")
    told = sorted(t.value for t in study.trials if math.isfinite(t.value))
    best = sorted(v for v in table[f"best_{FID}"] if math.isfinite(v))
    assert told == pytest.approx(best, rel=1e-6)
    start = load_space(space_path("shapes")).start[0]
    first = study.trials[0].params
    assert {k: first[k] for k in start} == pytest.approx(start)  # the space's start point came first
    assert study.user_attrs["value_name"] == f"{FID}_best"  # the plots' axis, set by the summary
