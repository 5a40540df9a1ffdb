"""A trial's outcome is read from its last report in one way, by every reader (the MLflow logger,
the contact sheets, the results table)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from orchestrator.trial_report import COMPLETED, FAILED, STOPPED, Outcome, ended_as


@pytest.mark.parametrize("report, errored, expected", [
    ({"training_iteration": 4, "failure": "", "failure_mode": ""}, False, (COMPLETED, "")),
    ({"training_iteration": 2, "failure": "", "failure_mode": ""}, False, (STOPPED, "")),
    ({"training_iteration": 2, "failure": "mode_collapse on recall", "failure_mode": "mode_collapse"}, False,
     (FAILED, "mode_collapse")),
    # a report from before failure modes were named: a failure was a NaN
    ({"training_iteration": 1, "failure": "loss is nan"}, False, (FAILED, "diverged")),
    # the actor raised after this report: failed, whatever the report said
    ({"training_iteration": 4, "failure": ""}, True, (FAILED, "error")),
    ({}, True, (FAILED, "error")),
])
def test_a_trial_ends_as_its_last_report_says(report: dict, errored: bool, expected: tuple) -> None:
    assert ended_as(report, max_evals=4, errored=errored) == expected


def test_an_outcome_is_the_plain_word_wherever_it_is_written() -> None:
    assert str(FAILED) == f"{FAILED}" == "failed" and json.dumps([STOPPED]) == '["stopped_early"]'
    table = pd.DataFrame({"outcome": [FAILED, "completed", COMPLETED]})
    assert table["outcome"].value_counts().to_dict() == {"completed": 2, "failed": 1}
    assert Outcome("lost") is Outcome.LOST
