"""Imported first by the modules ``python -m`` runs (search, train, fid, sample, report): when one of
them is the program, a Ctrl-C or SIGTERM while the heavy imports load (torch, Ray, MLflow: seconds)
ends it at once with one line and status 130 or 143, instead of a traceback or a silent death. The
command's ``run_main`` then puts in the handlers that let it keep what it has done
(``orchestrator.cli.catch_signals``). Imported as a library (tests, notebooks), it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

ENTRY_POINTS = ("orchestrator.search.__main__", "orchestrator.train", "orchestrator.fid",
                "orchestrator.sample", "orchestrator.report")


def _exit_now(signum: int, frame: Any) -> None:
    how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    os.write(2, f"{how}: nothing was started\n".encode())
    os._exit(143 if signum == signal.SIGTERM else 130)  # nothing to keep yet: no cleanup to run


_main = getattr(sys.modules.get("__main__"), "__spec__", None)
if _main is not None and _main.name in ENTRY_POINTS:
    signal.signal(signal.SIGINT, _exit_now)
    signal.signal(signal.SIGTERM, _exit_now)
