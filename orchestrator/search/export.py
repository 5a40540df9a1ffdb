"""Using the winner: the best trial's generator (``gan.checkpoints.ImageModel``, latents to images in
[0, 1]) logged as an MLflow model. ``mlflow.pytorch.load_model(uri)`` gives it back. MLflow 3 saves
it as a ``torch.export`` graph by default: it loads with torch alone, without this package and
without unpickling code.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from orchestrator.errors import first_line
from orchestrator.gan.checkpoints import ImageModel, load_generator
from orchestrator.gan.step import fixed_latents

log = logging.getLogger(__name__)

MODEL_PATH = "model"  # the logged model's artifact path on the best trial's run
MODEL_TAG = "best_model_uri"  # on the parent run: where the best generator is
RUN_MODEL_TAG = "model_uri"  # the same, on the best trial's run
CHECKPOINT_ARTIFACT = "checkpoint/generator.pt"  # every trial's last generator, logged by tracking.py


def log_best_model(results: Any, trial_id: str, run_id: str | None, state: dict[str, Any],
                   metric: str) -> str | None:
    """Log the best checkpoint (lowest ``metric``) of trial ``trial_id`` as an MLflow model on its run
    ``run_id`` and tag the parent run with the model's URI, which is returned. An unreachable
    tracking server only warns: the search itself is done and its results table written, and the
    generator stays in the checkpoint for ``python -m orchestrator.sample``."""
    import requests
    from mlflow.exceptions import MlflowException

    result = next((r for r in results if (r.metrics or {}).get("trial_id") == trial_id), None)
    checkpoint = result and (result.get_best_checkpoint(metric, "min") or result.checkpoint)
    if run_id is None or checkpoint is None:
        log.warning("the best trial %s has no %s: no model logged", trial_id,
                    "MLflow run" if run_id is None else "checkpoint")
        return None
    with checkpoint.as_directory() as folder:
        model = load_generator(Path(folder))
    try:
        uri = log_model(model, state["tracking_uri"], run_id)
        from mlflow import MlflowClient

        client = MlflowClient(state["tracking_uri"])
        client.set_tag(run_id, RUN_MODEL_TAG, uri)
        client.set_tag(state["parent_run_id"], MODEL_TAG, uri)
    except (MlflowException, OSError, requests.exceptions.RequestException) as err:
        log.warning("could not log the best generator as an MLflow model (%s); it is still in %s",
                    first_line(err), checkpoint.path)
        return None
    log.info("best generator logged as an MLflow model: %s", uri)
    return uri


def log_model(model: ImageModel, tracking_uri: str, run_id: str) -> str:
    """Log ``model`` (mlflow.pytorch flavour, with a signature and an input example) under
    ``MODEL_PATH`` on the existing run ``run_id``; return the model's URI."""
    import mlflow
    from mlflow.models import infer_signature

    example = fixed_latents(model.generator.nz, 2, seed=0)  # two rows: the batch size stays free
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    requirement = f"torch=={torch.__version__.split('+')[0]}"  # torch alone loads the exported graph
    # MLflow 3 calls the model's path `name`; 2.x (pyproject's floor) `artifact_path`
    path = "name" if "name" in inspect.signature(mlflow.pytorch.log_model).parameters else "artifact_path"
    with tracking_uri_set(tracking_uri), _resumed(mlflow, run_id):
        info = mlflow.pytorch.log_model(model, signature=signature, input_example=example.numpy(),
                                        pip_requirements=[requirement], **{path: MODEL_PATH})
    return str(info.model_uri)


@contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """The fluent API's tracking URI, for one block: the driver's global one is left as it was."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: back to unset


@contextmanager
def _resumed(mlflow: Any, run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active run without changing its status: trial runs are left as the
    tracking callback set them."""
    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status=status)

