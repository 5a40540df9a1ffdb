"""``python -m orchestrator.search DATASET``: see ``orchestrator.search.cli``."""

import orchestrator.startup  # noqa: F401  first: a signal while the imports load is one line

# isort: split
import sys

from orchestrator.search.cli import cli_main

sys.exit(cli_main())
