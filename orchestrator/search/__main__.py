"""``python -m orchestrator.search DATASET``: see ``orchestrator.search.cli``."""

import sys

from orchestrator.search.cli import cli_main

sys.exit(cli_main())
