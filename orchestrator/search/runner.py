"""Builds and runs the Tuner for a validated ``Plan``, then summarises (``summary.py``): the half of
the search that imports Ray and (through ``orchestrator.tracking``) MLflow, kept apart so
``--dry-run`` and bad input answer at once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli import catch_signals, on_interrupt
from orchestrator.errors import ConfigError, Terminated
from orchestrator.metrics.registry import objective
from orchestrator.search.plan import (
    Plan,
    git_commit,
    gpu_count,
)
from orchestrator.search.real_side import Clock, real_side
from orchestrator.search.record import SearchIdentity, SearchRecord, read_record, write_record
from orchestrator.search.summary import beside_results, summarise
from orchestrator.tracking import store

if TYPE_CHECKING:  # what the driver's helpers hand over, without importing Ray's callbacks at load
    from orchestrator.data.dataset import CachedDataset
    from orchestrator.metrics.diversity import RealReference
    from orchestrator.metrics.frechet import FeatureStats
    from orchestrator.search.sheet_logger import ContactSheetLogger
    from orchestrator.tracking.trial_logger import MlflowTrialLogger
from orchestrator.views.report_page import SHEETS_FOLDER
from orchestrator.views.sheets import milestones

log = logging.getLogger("orchestrator.search")
TIMINGS_FILE = "timings.json"  # the driver's phases, seconds each

# set by run_search, before Ray and MLflow read them (never at import: report imports this module)
DRIVER_ENVIRONMENT = {
    # the legacy reporter prints Tune's table with the columns we choose (the FID first)
    "RAY_AIR_NEW_OUTPUT": "0",
    # a down tracking server must cost the driver's loop seconds, not minutes of retries: the trial
    # logger buffers what fails and retries it on the next result
    **store.BOUNDED_HTTP,
    # with a server, MLflow prints two link lines at every run's end, after reading the run back:
    # 2,000 lines and 1,000 requests in a 1,000-trial search; the summary gives the way in once
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Tune saves its experiment state at most every 10 s by default, while a trial may checkpoint
    # twice in that time and num_to_keep deletes the older: a resume would redo that work. Once a
    # second at least, paced to 2 % of the wall clock (checkpoint_repair.pace_state_saves); a
    # checkpoint deleted after a save is repaired on resume (checkpoint_repair.py).
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    # Ctrl-C and SIGTERM are this driver's (``StopRequest``): the first asks Tune to stop as its
    # SIGUSR1 does (the experiment state saved), a second stops at once
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


def _tune_stop_advice(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return "Tuner.restore" not in message and "Stop signal received" not in message


class StopRequest:
    """The driver's SIGINT and SIGTERM while Tune runs: the first stops Tune's loop gracefully (its
    own SIGUSR1 handler: trials paused, the experiment state saved), a second raises at once."""

    def __init__(self, on_stop: Callable[[], None] = lambda: None) -> None:
        self.signum: int | None = None
        self.on_stop = on_stop  # told before Tune stops (the trial logger: what ends now is interrupted)

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune installs it when its loop starts
        if self.signum is not None or not callable(tune_stop):
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.signum = signum
        print("stopping: the trials are paused and the search's state saved; again to stop at once",
              file=sys.stderr, flush=True)
        # Tune's own words for this stop ("Stop signal received", "Resume experiment with:
        # Tuner.restore(...)") would contradict the line this search ends with (its --resume)
        logging.getLogger("ray.tune.tune").addFilter(_tune_stop_advice)
        self.on_stop()
        tune_stop(signal.SIGUSR1, frame)

    def exception(self) -> KeyboardInterrupt | None:
        """What the driver ends with after Tune stopped on a request; None when none came."""
        if self.signum is None:
            return None
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


def run_search(plan: Plan, trial: Any = None, callbacks: Sequence[Any] = ()) -> int:
    """Prepare the data and the reference statistics once, start (or join) Ray, run the Tuner, sum
    up. Every check a user can fail was made while ``plan`` was built. For measuring the driver
    itself (``bench/scale.py``): ``trial``, a Tune trainable to run instead of the GAN's, given the
    plan's resources (``bench/replay_trial.py`` serves a learning curve), and ``callbacks``, Tune
    callbacks beside the search's own."""
    for key, value in DRIVER_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    import ray

    from orchestrator.search.checkpoint_repair import pace_state_saves

    pace_state_saves()
    clock = Clock()
    data, fid_network, reference, real_ref = real_side(plan, clock)
    _start_ray(plan)
    _wait_for_a_node(plan)
    tracking_uri = plan.tracking_uri or _local_tracking_uri(plan)
    client = store.connect(tracking_uri)
    # what the data and the FID's real side turned out to be: tagged on the parent run
    measured = {"data_key": data.key, "fid_network": fid_network, "fid_reference_n": str(reference.n)}
    record = _parent_run(plan, client, tracking_uri, measured)
    on_interrupt(f"the search is kept in {plan.experiment_dir}; continue it: {resume_command(plan)}")
    logger, sheet_logger = _loggers(plan, tracking_uri, record)

    trainable = _trainable(plan, data, reference, real_ref) if trial is None else _with_resources(plan, trial)
    clock.lap("ray_start")
    started = time.time()
    stop = StopRequest(logger.mark_interrupted)
    try:
        tuner = _tuner(plan, trainable, [logger, sheet_logger, *callbacks])
        stop.install()
        results = tuner.fit()
        catch_signals()
        clock.lap("trials")
        if (interrupted := stop.exception()) is not None:
            raise interrupted
        code = summarise(plan, results, client, record, time.time() - started)
        clock.lap("summary")
        _report_time(plan, clock.seconds)
        return code
    except BaseException as err:
        # never left RUNNING by a search that died: KILLED on Ctrl-C, FAILED otherwise (--resume
        # goes on logging to it, and ends it FINISHED)
        with contextlib.suppress(Exception):
            store.end_run(client, record.parent_run_id, "KILLED" if isinstance(err, KeyboardInterrupt)
                          else "FAILED")
        raise
    finally:
        if not plan.address:
            ray.shutdown()  # the local cluster this search started


def _tuner(plan: Plan, trainable: Any, callbacks: list[Any]) -> Any:
    """A new search's Tuner, or for --resume the one Tune saved in the search's folder."""
    from ray import tune

    if plan.resume:
        return tune.Tuner.restore(plan.experiment_dir, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(trainable, tune_config=_tune_config(plan), run_config=_run_config(plan, callbacks))


def _trainable(plan: Plan, data: CachedDataset, reference: FeatureStats, real_ref: RealReference) -> Any:
    """The Tune trainable with what every trial shares put in Ray's object store once (the data, the
    real side of the metrics, the run settings), and each trial's CPU and GPU share."""
    from ray import tune

    from orchestrator.search.trainable import GanTrainable

    return _with_resources(plan, tune.with_parameters(
        GanTrainable, settings=plan.settings, data=data, reference=reference, real_ref=real_ref,
        fid_weights=plan.fid_weights))


def _with_resources(plan: Plan, trainable: Any) -> Any:
    from ray import tune

    return tune.with_resources(trainable, {"cpu": plan.resources["cpu"], "gpu": plan.resources["gpu"]})


def _loggers(
    plan: Plan, tracking_uri: str, record: SearchRecord
) -> tuple[MlflowTrialLogger, ContactSheetLogger]:
    """The Tune callbacks: every trial's MLflow run, and the contact sheets kept as the search runs."""
    from orchestrator.search.sheet_logger import ContactSheetLogger
    from orchestrator.tracking.trial_logger import MlflowTrialLogger

    logger = MlflowTrialLogger(tracking_uri, record.experiment_id, record.parent_run_id, plan.max_evals,
                               _leading_params(plan)[:5], journal_folder(plan))
    sheet_logger = ContactSheetLogger(
        beside_results(plan) / SHEETS_FOLDER, objective(plan.settings.fid_n).key,
        milestones(plan.grace_period, plan.reduction_factor, plan.max_evals), plan.max_evals,
        _leading_params(plan)[:4], tracking_uri, record.parent_run_id, plan.name)
    return logger, sheet_logger


def _start_ray(plan: Plan) -> None:
    """Join ``--address``; otherwise start a Ray of this search's own, even where ``ray start`` has
    registered a cluster on this machine (Ray would join that one, and refuse the CPU count; when it
    was killed without ``ray stop``, every search would fail on its leftover address file)."""
    import ray

    if plan.address:
        ray.init(address=plan.address, include_dashboard=False)
    else:
        if running := _local_ray_cluster():
            print(f"ray: a Ray cluster started by `ray start` is running here ({running}); this search "
                  "starts its own. To run on that cluster instead: --address auto")
        # the GPUs torch sees, said rather than left to Ray's own detection (NVML, which a VM or a
        # container may not expose although CUDA works)
        ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), num_gpus=gpu_count())
    catch_signals()  # ray.init's own SIGTERM handler dumps a stack and aborts


PLACEMENT_WAIT_S = 600  # on a cluster, how long a search waits for a node a trial fits on


def _wait_for_a_node(plan: Plan, wait_s: float = PLACEMENT_WAIT_S) -> None:
    """A trial fits on some node of the cluster, or the search stops with one line: Tune would
    leave every trial PENDING forever. An autoscaling cluster may start such a node: on one joined
    with ``--address`` the search says so and waits up to ``wait_s``; its own local Ray is final."""
    import ray

    need = {"CPU": plan.resources["cpu"], "GPU": plan.resources["gpu"]}
    deadline = time.time() + (wait_s if plan.address else 0)
    said = False
    while True:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if any(all(resources.get(k, 0) >= v for k, v in need.items() if v) for resources in nodes):
            return
        if time.time() >= deadline:
            have = "; ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes) or "none"
            raise ConfigError(f"no node of the Ray cluster has {need['CPU']:g} CPU + {need['GPU']:g} GPU for "
                              f"a trial (its nodes: {have}); lower --cpus-per-trial / --gpus-per-trial")
        if not said:
            print(f"ray: no node has {need['CPU']:g} CPU + {need['GPU']:g} GPU for a trial yet; waiting up "
                  f"to {wait_s:.0f} s for the cluster to start one")
            said = True
        time.sleep(5)


def _local_ray_cluster() -> str | None:
    """The address ``ray start`` registered on this machine, when something answers there."""
    try:
        from ray._private.utils import read_ray_address  # Ray's own reader of its address file

        address = read_ray_address()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1):
            return address
    except Exception:  # no file, an unreadable one, a private API that moved, or nothing listening
        return None


def _report_time(plan: Plan, seconds: dict[str, float]) -> None:
    """Where the driver's wall clock went: a line of the summary, and ``timings.json`` beside
    ``results.csv`` (read by ``bench/smoke_breakdown.py``)."""
    def shown(phase: str, value: float) -> str:
        name = phase.replace("_", " ").replace("ray", "Ray")
        return f"{name} {value / 60:.1f} min" if value >= 120 else f"{name} {value:.0f} s"

    print("  time: " + ", ".join(shown(phase, value) for phase, value in seconds.items()))
    if "://" not in plan.storage:
        (Path(plan.experiment_dir) / TIMINGS_FILE).write_text(json.dumps(seconds, indent=1))


JOURNAL_FOLDER = "mlflow_pending"  # what the driver still owes MLflow (tracking/journal.py)


def journal_folder(plan: Plan) -> Path:
    """Beside the results where they are local; with remote results, in the folder the driver runs
    in (a head that is lost takes it along: the resume rebuilds what it can from the trials' records)."""
    if "://" not in plan.storage:
        return Path(plan.experiment_dir) / JOURNAL_FOLDER
    return Path.cwd() / f"{plan.name}-{JOURNAL_FOLDER}"


def resume_command(plan: Plan) -> str:
    """The command that continues this search: the one it was started with, plus --resume."""
    argv = [*plan.argv] if "--resume" in plan.argv else [*plan.argv, "--resume"]
    if "--name" not in argv and not any(a.startswith("--name=") for a in argv):
        argv += ["--name", plan.name]  # a default name is the latest search's: say which
    return "python -m orchestrator.search " + shlex.join(argv)


def _local_tracking_uri(plan: Plan) -> str:
    Path(plan.experiment_dir).mkdir(parents=True, exist_ok=True)  # local: the plan refused remote storage
    return store.default_tracking_uri(Path(plan.experiment_dir))


PRIVATE = ("mlflow_uri", "study_storage")  # in the search's own record, never in a run's params


def _parent_run(plan: Plan, client: Any, uri: str, measured: dict[str, str]) -> SearchRecord:
    if plan.resume:
        return read_record(plan)
    # a server keeps the artifacts itself; with a database (or the sqlite file) they go beside the
    # results, where Tune's storage is (a folder here, or s3://... on a cluster)
    artifacts = f"{plan.experiment_dir}/{store.ARTIFACTS_FOLDER}"
    location = None if store.is_server(uri) else (
        artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri())
    goal = objective(plan.settings.fid_n)
    experiment_id = store.ensure_experiment(client, plan.name, location, goal.best_key)
    identity = SearchIdentity.of(plan)
    # the parent run's params: what defines the search, as the record holds it (MLflow keeps strings),
    # less the database URLs, which may carry a password
    params = {**{k: v for k, v in identity.as_json().items() if v is not None and k not in PRIVATE},
              "argv": " ".join(plan.argv), **measured}
    tags = {"git_commit": git_commit(), "space_file": str(plan.space.path),
            store.METRIC_TAG: goal.best_key, **measured}
    run_id = store.start_parent_run(client, experiment_id, plan.name, params, tags)
    try:
        store.log_file(client, run_id, plan.space.path, "search")
        record = SearchRecord(experiment_id=experiment_id, parent_run_id=run_id, tracking_uri=uri,
                              identity=identity.as_json(),
                              command="python -m orchestrator.search " + shlex.join(plan.argv))
        write_record(plan, record)
    except BaseException:  # the artifact store refused the space file: never a run left RUNNING
        with contextlib.suppress(Exception):
            store.end_run(client, run_id, "FAILED")
        raise
    return record


def _tune_config(plan: Plan) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from orchestrator.search.scheduler import ResumableASHA
    from orchestrator.space.sampling import make_searcher

    # ASHA ranks a trial on its best FID so far: GAN FID is not monotone, and the checkpoint kept for
    # a trial is its best, so that is the generator the trial would hand over if stopped now
    goal = objective(plan.settings.fid_n)
    metric, mode = goal.best_key, goal.mode
    searcher = make_searcher(plan.space, metric=metric, mode=mode, seed=plan.settings.seed,
                             storage=plan.study_storage, study_name=plan.name, num_samples=plan.num_samples)
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent),
        scheduler=ResumableASHA(time_attr="training_iteration", metric=metric, mode=mode,
                                max_t=plan.max_evals, grace_period=plan.grace_period,
                                reduction_factor=plan.reduction_factor),
        num_samples=plan.num_samples,
        reuse_actors=True,
        trial_dirname_creator=_trial_dirname,
    )


def _run_config(plan: Plan, loggers: list[Any]) -> Any:
    from ray import tune

    from orchestrator.search.checkpoint_repair import RepairNamedCheckpoints
    from orchestrator.search.history import KeepTrialHistory

    goal = objective(plan.settings.fid_n)
    return tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        stop={"training_iteration": plan.max_evals},
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=goal.key, checkpoint_score_order=goal.mode,
            checkpoint_frequency=1,
        ),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=[*loggers, KeepTrialHistory(), RepairNamedCheckpoints()],
        progress_reporter=tune.CLIReporter(
            metric_columns=[goal.key, goal.best_key, "d_loss", "g_loss", "img_per_s",
                            "training_iteration"],
            parameter_columns=_leading_params(plan),
            max_report_frequency=30,
        ),
        verbose=1,
    )


def _leading_params(plan: Plan) -> list[str]:
    """Tune's table has room for a few hyperparameters: the ones people look at first."""
    first = ["lr_g", "lr_d", "loss", "optimizer", "beta1", "ngf", "ndf", "d_norm"]
    sampled = plan.space.sampled_keys()
    return ([k for k in first if k in sampled] + [k for k in sampled if k not in first])[:6]


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # short: Tune's default spells out every hyperparameter
