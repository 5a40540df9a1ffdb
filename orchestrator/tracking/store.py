"""The MLflow store, Ray-free: where it is, the search's experiment and parent run, the tags that tie
each trial's run to it, and a search read back from it for the report.

MLflow is imported inside the functions that use it: the commands that import this module answer
``--help`` and bad input without loading it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from orchestrator.atomic import check_writable_folder
from orchestrator.errors import ConfigError, first_line
from orchestrator.trial_report import FAILED, FAILURE_MODE, LOST

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRACKING_ENV = "MLFLOW_TRACKING_URI"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "trial_id"
ROLE_TAG = "role"  # "search" on a parent run, "trial" on a trial's
METRIC_TAG = "metric"  # on the parent run: the key the search optimised, e.g. fid2k_best
IMAGE_KEY = "samples"  # flat: keys with "/" have produced unreadable image artifacts in MLflow
IMAGES_FOLDER = "images"  # where MLflow keeps the images logged with a key and a step
CHECKPOINT_FOLDER = "checkpoint"  # on a trial's run: the last generator its trial saved
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


# MLflow's HTTP client retries a down server for minutes by default: every command bounds it
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# a command that reads a store prints one line of its own, not MLflow's download bars
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# what MLflow can track to (a "+driver" suffix allowed: postgresql+psycopg2://...)
# (not file://: MLflow 3's file store refuses new work, it is in "maintenance mode")
STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
SQLITE_HEADER = b"SQLite format 3\x00"
STORE_FILE, ARTIFACTS_FOLDER = "mlflow.db", "mlartifacts"  # a local search's store, beside its results


def tracking_uri(flag: str | None, needer: str) -> str:
    """``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, for reading a store: ``needer`` says what
    needs it. The store must exist (MLflow would quietly create an empty one for a mistyped path,
    or turn an empty file into a database) and a server must answer."""
    uri = flag or os.environ.get(TRACKING_ENV)
    if not uri:
        raise ConfigError(f"{needer} needs --mlflow-uri or ${TRACKING_ENV} (a search's own store is "
                          "sqlite:///STORAGE/NAME/mlflow.db)")
    check_store(uri, reading=True)
    check_tracking_server(uri)
    for key, value in {**BOUNDED_HTTP, **QUIET}.items():  # before MLflow's client reads them
        os.environ.setdefault(key, value)
    return uri


def check_store(uri: str, reading: bool) -> None:
    """What can be known of a tracking URI without contacting anything: a scheme MLflow knows, and
    for sqlite a file that is a SQLite database (when ``reading``: one that exists; else one that
    can be created). One ``ConfigError`` line otherwise."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in STORE_SCHEMES:
        raise ConfigError(f"--mlflow-uri {uri}: not a tracking URI (use sqlite:///FILE, http://HOST:PORT or "
                          "postgresql://USER@HOST/DB)")
    if scheme != "sqlite":
        return
    if not uri.startswith("sqlite:///") or uri == "sqlite:///":
        raise ConfigError(f"--mlflow-uri {uri}: a sqlite store is sqlite:///FILE (four slashes for an "
                          "absolute path)")
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() and not path.is_file():  # a folder, or a pipe that would never answer
        raise ConfigError(f"--mlflow-uri {uri}: {path} is {'a folder' if path.is_dir() else 'not a file'}, "
                          "not a database file")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as err:
            raise ConfigError(f"--mlflow-uri {uri}: cannot read {path} ({err.strerror})") from None
        if head != SQLITE_HEADER:
            kind = "an empty file" if not head else "not a SQLite database"
            raise ConfigError(f"--mlflow-uri {uri}: {path} is {kind}, not an MLflow store")
        tables = _sqlite_tables(path)
        # MLflow would add its tables to any database: another program's (an Optuna study), or an
        # empty one a command that only reads was pointed at
        if "experiments" not in tables and (tables or reading):
            held = "no tables" if not tables else "its tables: " + ", ".join(sorted(tables)[:5])
            raise ConfigError(f"--mlflow-uri {uri}: {path} is a SQLite database but not an MLflow store "
                              f"({held})")
    elif reading:
        raise ConfigError(f"--mlflow-uri {uri}: no such database file")
    else:
        check_writable_folder(path.parent, f"--mlflow-uri {uri}")


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of the SQLite database at ``path``, opened read-only (never changed)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"--mlflow-uri sqlite:///{path}: cannot read the database ({err})") from None


def is_server(uri: str) -> bool:
    """An MLflow tracking server (which keeps the artifacts itself), not a database."""
    return uri.startswith(("http://", "https://", "databricks"))


def check_database(uri: str | None, flag: str = "--mlflow-uri") -> None:
    """A database URL (PostgreSQL, MySQL) answers within 10 s, with its driver installed: one line
    otherwise, before any work. sqlite and servers are checked elsewhere."""
    if not uri or uri.split("://", 1)[0].split("+", 1)[0] not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10})
        with engine.connect():
            pass
    except ModuleNotFoundError as err:
        raise ConfigError(f"{flag} {uri}: the database driver {err.name!r} is missing: pip install -e "
                          "'.[postgres]'") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise ConfigError(f"{flag} {uri}: the database does not answer ({reason})") from None


def check_tracking_server(uri: str | None) -> None:
    """A tracking server or database that does not answer is bad input: one line now, not a
    traceback after the data and the reference statistics are done."""
    check_database(uri)
    if uri and uri.startswith("databricks"):
        _check_databricks(uri)
    if not uri or not uri.startswith(("http://", "https://")):
        return
    import http.client
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=15)
    except (ValueError, http.client.InvalidURL) as err:  # http://[::1, http://host:abc
        raise ConfigError(f"--mlflow-uri {uri}: not a valid URL ({first_line(err)})") from None
    except urllib.error.HTTPError:
        return  # something answered: MLflow's own errors, if any, come with their own message
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"--mlflow-uri {uri}: no MLflow server answers ({reason}); start it, or leave "
                          "out --mlflow-uri for the embedded store") from None


def _check_databricks(uri: str) -> None:
    """Databricks credentials for ``uri`` are configured: MLflow would warn, then fail on the
    first call with a message about the experiment."""
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.utils.databricks_utils import get_databricks_host_creds

    chatty = logging.getLogger("mlflow.utils.databricks_utils")
    level, chatty.level = chatty.level, logging.ERROR  # its warning says what the line below says
    try:
        get_databricks_host_creds(uri)
    except MlflowException:
        raise ConfigError(f"--mlflow-uri {uri}: no Databricks credentials for it (run `databricks auth "
                          "login`, or set DATABRICKS_HOST and DATABRICKS_TOKEN)") from None
    finally:
        chatty.setLevel(level)


def default_tracking_uri(experiment_dir: Path) -> str:
    """The embedded store: a sqlite file beside the Tune results."""
    return f"sqlite:///{(experiment_dir / STORE_FILE).resolve()}"


def unreachable_errors() -> tuple[type[Exception], ...]:
    """What a store that cannot be reached raises: MLflow's own errors and the network's."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError, requests.exceptions.RequestException)


def connect(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None,
                      metric: str | None = None) -> str:
    """The experiment ``name``, created where missing, tagged as model training whose runs are
    looked at sorted on ``metric`` (lowest first; ``ui_app`` reads it)."""
    from orchestrator.tracking.ui_app import ORDER_TAG, order_tag

    # MLflow versions that read the kind choose the runs layout, not the GenAI trace overview
    tags = {EXPERIMENT_KIND_TAG: "custom_model_development",
            **({ORDER_TAG: order_tag(metric, ascending=True)} if metric else {})}
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    for key, value in tags.items():
        client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def view_command(uri: str) -> str:
    """How to look at the store: MLflow's UI through ``ui_app``; a server is already one."""
    if is_server(uri):
        return f"open {uri}"
    return f"mlflow ui --app-name orchestrator --backend-store-uri {uri}"


def start_parent_run(
    client: MlflowClient, experiment_id: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=name, tags={ROLE_TAG: "search", **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def log_file(client: MlflowClient, run_id: str, path: Path, folder: str | None = None) -> None:
    client.log_artifact(run_id, str(path), artifact_path=folder)


def log_folder(client: MlflowClient, run_id: str, path: Path, folder: str) -> None:
    client.log_artifacts(run_id, str(path), artifact_path=folder)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status)


def trial_run_id(client: MlflowClient, experiment_id: str, trial_id: str) -> str | None:
    """The run the trial logger made for trial ``trial_id``, if any."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'")
    return runs[0].info.run_id if runs else None


def mark_lost_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_ids: set[str]) -> int:
    """Tag child runs of trials that Tune no longer knows (a driver killed before it saved them;
    resumed searches sample afresh) as lost, so no run is left without an outcome. Never deletes."""
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    lost = [r for r in client.search_runs([experiment_id], filter_string=query)
            if r.data.tags.get(TRIAL_TAG) not in trial_ids and "outcome" not in r.data.tags]
    for run in lost:
        client.set_tag(run.info.run_id, "outcome", LOST.value)
        client.set_tag(run.info.run_id, "failure_reason", "the driver stopped before Tune saved this trial")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(lost)


@dataclass(frozen=True)
class LoggedSearch:
    """A search as its store holds it: the experiment's name, the FID's name (``fid2k``), the parent
    run's params and one row per trial run (``trial_id``, ``outcome``, ``failure_mode``,
    ``best_<key>``, ``evals``, ``seconds``, ``run_id``, ``config/<name>`` as strings)."""

    name: str
    key: str
    params: Mapping[str, str]
    rows: list[dict[str, Any]]
    parent_run_id: str = ""


def read_search(experiment: str, uri: str) -> LoggedSearch:
    """The latest search run of ``experiment`` (a name or an id) and its trial runs: the trial
    logger's outcome tags and metrics, the parent's settings."""
    from mlflow.exceptions import MlflowException

    client = connect(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None and experiment.isdigit():
            found = client.get_experiment(experiment)
    except MlflowException:
        found = None
    if found is None:
        raise ConfigError(f"no MLflow experiment named {experiment!r} in {uri}")
    parents = client.search_runs([found.experiment_id], filter_string=f"tags.{ROLE_TAG} = 'search'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ConfigError(f"MLflow experiment {found.name!r} holds no search run")
    parent = parents[0]
    if METRIC_TAG not in parent.data.tags:
        raise ConfigError(f"the search run {parent.info.run_id} of {found.name!r} has no {METRIC_TAG!r} tag: "
                          "not a search this program logged")
    key = parent.data.tags[METRIC_TAG].removesuffix("_best")
    children = client.search_runs([found.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    if not children:
        raise ConfigError(f"the search run {parent.info.run_id} of {found.name!r} has no trial runs yet")
    return LoggedSearch(found.name, key, parent.data.params, [_row(client, run, key) for run in children],
                        parent.info.run_id)


def read_pictures(uri: str, search: LoggedSearch,
                  pick: Callable[[list[str]], dict[str, str]]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What the search logged to look at: each trial's latest sample grid (by trial id), and the
    parent run's pictures that ``pick`` chooses from their artifact paths (by its titles)."""
    import tempfile

    client = connect(uri)
    thumbnails, figures = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        def fetch(run_id: str, path: str) -> bytes:
            return Path(client.download_artifacts(run_id, path, folder)).read_bytes()

        def pngs(run_id: str, where: str) -> list[str]:
            return sorted(a.path for a in client.list_artifacts(run_id, where) if a.path.endswith(".png"))

        for row in search.rows:
            if grids := pngs(row["run_id"], IMAGES_FOLDER):
                thumbnails[str(row["trial_id"])] = fetch(row["run_id"], max(grids, key=image_step))
        logged = pngs(search.parent_run_id, "plots") + pngs(search.parent_run_id, "contact_sheets")
        for title, path in pick(logged).items():
            figures[title] = fetch(search.parent_run_id, path)
    return thumbnails, figures


def log_png(client: MlflowClient, run_id: str, png: bytes, key: str, step: int) -> None:
    """``png`` logged as ``client.log_image(image, key=key, step=step)`` logs an image (MLflow 3's
    ``images/KEY+step+S+timestamp+T+UUID.png`` and a ``...+compressed.webp`` thumbnail of at most 256
    px, the run's images tag): the UI and ``image_step`` read it alike. Its own bytes are kept, not
    decoded and encoded again (17 ms for a 530 px grid); only the thumbnail needs a decode (4 ms),
    MLflow's own resize (5 ms) and WebP encoding (12 ms)."""
    import io
    import tempfile
    import time
    import uuid

    from mlflow.tracking.multimedia import compress_image_size
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
    from PIL import Image

    name = f"{key.replace('/', '~')}+step+{step}+timestamp+{int(time.time() * 1000)}+{uuid.uuid4()}"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{name}.png").write_bytes(png)
        with Image.open(io.BytesIO(png)) as image:
            compress_image_size(image).save(Path(folder) / f"{name}+compressed.webp")
        # the tag first (log_image's last): a replay skips an image already there, never its tag
        client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, "True")
        client.log_artifacts(run_id, folder, IMAGES_FOLDER)


def image_step(path: str) -> int:
    """The step in the name MLflow gives an image logged with ``log_image(key=..., step=...)``."""
    found = re.search(r"step\W(\d+)\W", unquote(path))
    return int(found.group(1)) if found else -1


def _row(client: MlflowClient, run: Any, key: str) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    best = metrics.get(f"{key}_best", math.inf)
    fids = client.get_metric_history(run.info.run_id, key)
    return {
        "trial_id": tags.get(TRIAL_TAG, ""),
        "outcome": tags.get("outcome", "running"),
        FAILURE_MODE: tags.get(FAILURE_MODE, "") if tags.get("outcome") == FAILED else "",
        f"best_{key}": best if best < 1e300 else math.inf,  # stores keep inf as the largest double
        **_at_best(client, run, fids),
        "evals": len(fids),
        "seconds": metrics.get("time_total_s", 0.0),
        "run_id": run.info.run_id,
        **{f"config/{k}": v for k, v in sorted(run.data.params.items())},
    }


def _at_best(client: MlflowClient, run: Any, fids: list[Any]) -> dict[str, float]:
    """The ground-truth metrics (shapes: mode coverage, decodable) at the step of the best FID,
    as ``views.report_page.results_table`` takes them from Tune's history."""
    from orchestrator.metrics.registry import GROUND_TRUTH

    keys = [k for k in GROUND_TRUTH if k in run.data.metrics]
    finite = [m for m in fids if m.value < 1e300]
    if not keys or not finite:
        return {}
    step = min(finite, key=lambda m: m.value).step  # FID: lower is better
    out = {}
    for k in keys:
        at = [m.value for m in client.get_metric_history(run.info.run_id, k) if m.step == step]
        out[k] = at[-1] if at else math.nan
    return out
