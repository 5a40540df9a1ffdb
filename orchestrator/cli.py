"""What every command-line entry point shares: one-line errors, exit status 2, logging set-up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.errors import ConfigError, OrchestratorError

TRACKING_ENV = "MLFLOW_TRACKING_URI"


class UsageParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def tracking_uri(flag: str | None, needer: str) -> str:
    """``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``; ``needer`` says what needs it. A sqlite store
    must already exist: MLflow would quietly create an empty one for a mistyped path."""
    uri = flag or os.environ.get(TRACKING_ENV)
    if not uri:
        raise ConfigError(f"{needer} needs --mlflow-uri or ${TRACKING_ENV} (a search's own store is "
                          "sqlite:///STORAGE/NAME/mlflow.db)")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--mlflow-uri {uri}: no such database file")
    return uri


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a user error becomes one line on stderr and exit status 2, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return main(argv)
    except OrchestratorError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
