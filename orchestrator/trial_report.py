"""What a trial reports to Tune after each evaluation besides its metrics, and the outcome a search
gives it: the keys and the values in one place, for the trainable that writes them and for the
MLflow logger, the contact sheets and the results table that read them back."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

STEP = "step"  # generator steps so far
STARTED_AT, REPORTED_AT = "started_at", "reported_at"  # wall clock: when the trial started, this report
# where the trial computed this interval: MLflow tags of its run
NODE_ID, NODE_IP, DEVICE = "node_id", "node_ip", "device"
COMPUTE_PRECISION = "compute_precision"  # not "precision": the k-NN precision metric of the same report
PLACEMENT = (NODE_IP, NODE_ID, DEVICE, COMPUTE_PRECISION)
# a failure detector's verdict ("" and {} while healthy); DIVERGED_FLAG is 1 when a loss went NaN
FAILURE, FAILURE_MODE, EVIDENCE, DIVERGED_FLAG = "failure", "failure_mode", "evidence", "diverged"
# the actor's set-up (once) and the checkpoints saved since the last report (bench/smoke_breakdown.py)
SETUP_SECONDS, CHECKPOINT_SECONDS = "setup_seconds", "checkpoint_seconds"
NOT_METRICS = frozenset({STARTED_AT, REPORTED_AT, DIVERGED_FLAG})  # numbers, but not curves to log
EVALS = "training_iteration"  # Tune's count of reports: evaluations, ASHA's unit of time
# the failure modes a detector names in FAILURE_MODE (orchestrator.metrics.health says what each means)
DIVERGED, DISCRIMINATOR_WINS = "diverged", "discriminator_wins"
VANISHING_LOSSES, MODE_COLLAPSE = "vanishing_losses", "mode_collapse"
FAILURE_MODES = (DIVERGED, DISCRIMINATOR_WINS, VANISHING_LOSSES, MODE_COLLAPSE)


class Outcome(str, enum.Enum):
    """How a trial ended in a search: its MLflow tag, the results table's column, the plots' legend."""

    COMPLETED = "completed"  # the whole budget
    STOPPED = "stopped_early"  # by ASHA
    FAILED = "failed"  # a failure detector, or an error
    LOST = "lost"  # its run has no result Tune kept (the driver died before it was recorded)
    INTERRUPTED = "interrupted"  # running when the search was stopped (Ctrl-C, SIGTERM): --resume goes on

    def __str__(self) -> str:  # the tag and the table hold the plain word
        return self.value


COMPLETED, STOPPED, FAILED = Outcome.COMPLETED, Outcome.STOPPED, Outcome.FAILED
LOST, INTERRUPTED = Outcome.LOST, Outcome.INTERRUPTED


def outcome(failed: bool, evals: int, max_evals: int) -> Outcome:
    """Failed (a detector or an error), completed (the whole budget), else stopped early (ASHA)."""
    return FAILED if failed else COMPLETED if evals >= max_evals else STOPPED


def failure_mode(report: Mapping[str, Any]) -> str:
    """The failure a report names ("" while healthy); a failure without a mode is a NaN loss, as
    reports said before the other detectors existed."""
    return str(report.get(FAILURE_MODE) or (DIVERGED if report.get(FAILURE) else ""))


def ended_as(report: Mapping[str, Any], max_evals: int, errored: bool = False) -> tuple[Outcome, str]:
    """A trial's outcome and failure mode from its last report (``errored``: its actor raised, and
    the report is the last before that)."""
    mode = failure_mode(report) or ("error" if errored else "")
    return outcome(bool(mode), int(report.get(EVALS, 0)), max_evals), mode
