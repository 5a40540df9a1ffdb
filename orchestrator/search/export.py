"""Using the winner: the best trial's best checkpoint, logged as an MLflow model on its run and
named on the search's parent run (``tracking.models`` does the logging), so
``python -m orchestrator.sample RUN_ID`` and ``mlflow.pytorch.load_model(uri)`` find it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from orchestrator.errors import first_line
from orchestrator.gan.checkpoints import load_generator
from orchestrator.metrics.registry import Objective
from orchestrator.search.record import SearchRecord
from orchestrator.tracking.models import log_model, tag_model
from orchestrator.tracking.store import unreachable_errors

log = logging.getLogger(__name__)


def log_best_model(results: Any, trial_id: str, run_id: str | None, record: SearchRecord,
                   goal: Objective) -> str | None:
    """Log the best checkpoint (by ``goal``) of trial ``trial_id`` as an MLflow model on its run
    ``run_id`` and tag the parent run with the model's URI, which is returned. An unreachable
    tracking server only warns: the search itself is done and its results table written, and the
    generator stays in the checkpoint for ``python -m orchestrator.sample``."""
    result = next((r for r in results if (r.metrics or {}).get("trial_id") == trial_id), None)
    checkpoint = result and (result.get_best_checkpoint(goal.key, goal.mode) or result.checkpoint)
    if run_id is None or checkpoint is None:
        log.warning("the best trial %s has no %s: no model logged", trial_id,
                    "MLflow run" if run_id is None else "checkpoint")
        return None
    with checkpoint.as_directory() as folder:
        model = load_generator(Path(folder))
    try:
        uri = log_model(model, record.tracking_uri, run_id)
        tag_model(record.tracking_uri, run_id, record.parent_run_id, uri)
    except unreachable_errors() as err:  # called only on an error
        log.warning("could not log the best generator as an MLflow model (%s); it is still in %s",
                    first_line(err), checkpoint.path)
        return None
    log.info("best generator logged as an MLflow model: %s", uri)
    return uri
