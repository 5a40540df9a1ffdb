"""A small typed hierarchy of the errors a user can cause and fix.

Every ``OrchestratorError`` is a problem with the user's input or environment: the command-line
entry points print its message as one line and exit with status 2, before any work starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OrchestratorError(Exception):
    """Base class: a problem the user can fix; printed as one line, exit status 2."""

    exit_code = 2


class ConfigError(OrchestratorError):
    """A trial config or a run setting is unknown or out of range."""


class DataError(OrchestratorError):
    """A dataset is unknown, missing, or unreadable."""


class SearchSpaceError(OrchestratorError):
    """A search-space file is malformed."""


class WeightsError(OrchestratorError):
    """Model weights (the FID Inception network) cannot be found or loaded."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, systemd, Kubernetes, ``ray job stop``): every command ends on it as on
    Ctrl-C, what is done kept, with exit status 143 instead of 130 (``orchestrator.cli``)."""


class TrainingDiverged(Exception):
    """A loss turned NaN or inf; the trial is dead, not the user's input."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"{what} is not finite at step {step}")
        self.what = what
        self.step = step


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close. Not only strings:
    a YAML key may be a number (``1: x``)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
