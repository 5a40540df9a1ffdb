"""``python -m orchestrator.search DATASET``: see ``orchestrator.search.cli``."""

import orchestrator.startup  # noqa: F401  first: a signal while the imports load is one line

# isort: split
import os
import sys

from orchestrator.cli import INTERRUPTED, TERMINATED
from orchestrator.search.cli import cli_main

status = cli_main()
if status in (INTERRUPTED, TERMINATED):
    # what is done is saved and the line printed; a Ray core worker cut short while it started can
    # crash in the interpreter's teardown (SIGSEGV), so the exit status is set here, not by it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
