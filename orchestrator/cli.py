"""What every command-line entry point shares: one-line errors, exit status 2, logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from orchestrator.errors import OrchestratorError


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
