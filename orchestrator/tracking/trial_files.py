"""What a Tune trial left on the driver, read by the callbacks that log it (``trial_logger.py``) and
draw it (``search/sheet_logger.py``): a snapshot of the trial, the results Tune recorded, its
checkpoints' files and the sample grids they hold.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def snapshot(trial: Any) -> SimpleNamespace:
    """What the writer reads of a Tune trial, taken on Tune's loop (which goes on changing it)."""
    return SimpleNamespace(trial_id=trial.trial_id, config=dict(trial.config),
                           status=getattr(trial, "status", ""), local_path=getattr(trial, "local_path", ""),
                           path=getattr(trial, "path", ""))


def recorded_results(trial: Any) -> list[dict[str, Any]]:
    """The trial's results as Tune recorded them on the driver (its result.json), in order."""
    path = Path(getattr(trial, "local_path", "") or "") / "result.json"
    rows = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return sorted(rows, key=lambda r: int(r.get("training_iteration", 0)))


def kept_grids(trial: Any) -> list[tuple[int, bytes]]:
    """(step, PNG) of the sample grids in the trial's checkpoints still on this machine, by step."""
    from orchestrator.gan.checkpoints import GRID_FILE, REPORT_FILE

    folder = str(getattr(trial, "path", "") or "")
    if not folder or "://" in folder:
        return []  # remote checkpoints: their grids were logged as they came, or are the export's
    grids = []
    for checkpoint in sorted(Path(folder).glob("checkpoint_*")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            step = int(json.loads((checkpoint / REPORT_FILE).read_text())["step"])
            grids.append((step, (checkpoint / GRID_FILE).read_bytes()))
    return sorted(grids, key=lambda g: g[0])


def read_checkpoint_file(checkpoint: Any, name: str) -> bytes | None:
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as stream:
            return stream.read()
    except (FileNotFoundError, OSError):
        return None


def read_checkpoint_json(checkpoint: Any, name: str) -> dict[str, Any] | None:
    raw = read_checkpoint_file(checkpoint, name)
    if raw is None:
        return None
    return json.loads(raw, parse_constant=lambda c: {"Infinity": math.inf, "-Infinity": -math.inf}.get(c))
