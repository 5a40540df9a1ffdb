"""Logged models, Ray-free: the best trial's generator (``gan.checkpoints.ImageModel``, latents to
images in [0, 1]) logged as an MLflow model on its run, and a run's generator read back: that model,
else the last generator its trial logged. ``mlflow.pytorch.load_model(uri)`` gives the model back;
MLflow 3 saves it as a ``torch.export`` graph by default, which loads with torch alone, without this
package and without unpickling code.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from orchestrator.errors import ConfigError, first_line
from orchestrator.gan.checkpoints import GENERATOR_FILE, ImageModel, load_generator
from orchestrator.gan.step import fixed_latents
from orchestrator.tracking.store import CHECKPOINT_FOLDER, connect

MODEL_PATH = "model"  # the logged model's artifact path on the best trial's run
MODEL_TAG = "best_model_uri"  # on the parent run: where the best generator is
RUN_MODEL_TAG = "model_uri"  # the same, on the best trial's run
CHECKPOINT_ARTIFACT = f"{CHECKPOINT_FOLDER}/{GENERATOR_FILE}"  # every trial's last generator


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


def tag_model(tracking_uri: str, run_id: str, parent_run_id: str, model_uri: str) -> None:
    """Point the best trial's run and the search's parent run at the logged model."""
    client = connect(tracking_uri)
    client.set_tag(run_id, RUN_MODEL_TAG, model_uri)
    client.set_tag(parent_run_id, MODEL_TAG, model_uri)


def load_logged_generator(run_id: str, uri: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, str]:
    """The generator of run ``run_id``, its latent size and what it was read from: the run's logged
    model when it has one (the best trial's best checkpoint), else the last generator its trial saved."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = connect(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError(f"run {run_id} not found in {uri}") from None
        raise ConfigError(f"cannot read run {run_id} from {uri}: {first_line(err)}") from None
    model_uri = run.data.tags.get(RUN_MODEL_TAG)
    if model_uri:
        try:
            with tracking_uri_set(uri):
                info = mlflow.models.get_model_info(model_uri)
                model = mlflow.pytorch.load_model(model_uri)
            nz = int(info.signature.inputs.inputs[0].shape[-1])
        # a tag edited by hand, a model deleted from the store
        except (MlflowException, OSError, ValueError, AttributeError, IndexError) as err:
            raise ConfigError(f"run {run_id}: its model {model_uri} cannot be loaded "
                              f"({first_line(err)})") from None
        return model, nz, model_uri
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, folder)
        except (MlflowException, OSError):
            raise ConfigError(f"run {run_id} has no logged model and no {CHECKPOINT_ARTIFACT}") from None
        loaded = load_generator(Path(local))
    return loaded, loaded.generator.nz, CHECKPOINT_ARTIFACT


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
    trial logger set them."""
    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status=status)
