"""A search's plan: the command line's arguments and the space file resolved into everything the
search will do (``Plan``), checked without Ray, and the plan as printed for people. The record a
search keeps beside Tune's state, and the checks a resume makes, are in ``record``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.atomic import check_writable_folder
from orchestrator.cli import run_settings
from orchestrator.config import MAX_COUNT, RunSettings
from orchestrator.errors import ConfigError, first_line
from orchestrator.gan.placement import place
from orchestrator.space.sampling import (
    SearchSpace,
    describe,
    for_this_machine,
    load_space,
    space_path,
    startup_trials,
)
from orchestrator.space.schema import Budget
from orchestrator.space.study import check_study_storage, local_study
from orchestrator.tracking.store import check_store

log = logging.getLogger("orchestrator.search")

REMOTE_STORAGE = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # pyarrow's file systems, as Tune reads them
# an experiment name is one folder under --storage and one MLflow experiment
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# one trial at a time, so the weak second start point meets the first at the first rung
SMOKE = {"num_samples": 4, "max_evals": 3, "grace_period": 1, "reduction_factor": 2, "eval_every": 40,
         "fid_n": 128, "limit": 2000, "max_concurrent": 1}
SMOKE_NOTE = ("smoke test: checks the machinery (data, trials, ASHA, MLflow, the pictures) in minutes, not "
              "quality: a few hundred steps teach a GAN nothing; without --smoke-test a search trains one")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the search will do, resolved from the arguments and the space file."""

    space: SearchSpace
    settings: RunSettings  # what every trial gets: its eval_every and fid_n are the budget's
    num_samples: int
    max_concurrent: int
    max_failures: int
    resources: dict[str, float]
    storage: str
    name: str
    tracking_uri: str | None
    study_storage: str | None  # the Optuna study's database; None: in memory (remote results)
    # how to run it: the runner takes a Plan and nothing else
    fid_weights: str | None = None
    address: str | None = None  # an existing Ray cluster, else a local one
    resume: bool = False
    argv: tuple[str, ...] = ()  # as typed, for the parent run's params
    smoke_test: bool = False  # --smoke-test: a check of the machinery, not of quality (said in the plan)
    smoke_weak_start: bool = False  # --smoke-test added a start point that barely learns (said in the plan)
    cpu_budget: bool = False  # no GPU: the space's cpu: section (or CPU_BUDGET) stood in (said in the plan)

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    # ASHA's numbers have one home, the run's budget (``space.budget``, flags and the CPU budget applied)
    @property
    def max_evals(self) -> int:
        return self.space.budget.max_evals

    @property
    def grace_period(self) -> int:
        return self.space.budget.grace_period

    @property
    def reduction_factor(self) -> float:
        return self.space.budget.reduction_factor


def make_plan(args: argparse.Namespace) -> Plan:
    space = load_space(space_path(args.dataset, args.space))
    if args.smoke_test:
        space = _with_weak_start(space)
    if args.reduction_factor is not None and not args.reduction_factor >= 2:
        raise ConfigError(f"--reduction-factor {args.reduction_factor:g} must be at least 2")
    gpus, device = _gpus_and_device(args)
    # what overrides the space file's budget, value by value (a flag overrides both)
    cpu_budget = device == "cpu" and not args.address and not args.smoke_test and args.space is None
    space = for_this_machine(space, cpu_budget)  # on a CPU: the file's cpu: section or CPU_BUDGET
    overlay = SMOKE if args.smoke_test else {}
    budget = _run_budget(args, overlay, space.budget)
    # the trials' eval_every and fid_n are the budget's: one value, resolved once
    settings = run_settings(args, resolution=space.resolution, max_images=args.limit or overlay.get("limit"),
                            eval_every=budget.eval_every, fid_n=budget.fid_n, device=device,
                            health=space.health)
    max_concurrent = args.max_concurrent or overlay.get("max_concurrent") or budget.max_concurrent or 4
    cpus = _cpus_per_trial(args, gpus, max_concurrent)
    storage = _storage(args)
    name = _experiment_name(args, storage)
    return Plan(
        space=dataclasses.replace(space, budget=budget),
        settings=settings,
        num_samples=args.num_samples or overlay.get("num_samples") or budget.num_samples or 16,
        max_concurrent=max_concurrent,
        max_failures=args.max_failures,
        resources={"cpu": cpus, "gpu": gpus},
        storage=storage,
        name=name,
        tracking_uri=args.mlflow_uri,
        study_storage=args.study_storage or local_study(storage, name),
        fid_weights=str(args.fid_weights) if args.fid_weights else None,
        address=args.address,
        resume=args.resume,
        argv=tuple(args.argv),
        smoke_test=args.smoke_test,
        smoke_weak_start=args.smoke_test and bool(space.start),
        cpu_budget=cpu_budget,
    )


def _with_weak_start(space: SearchSpace) -> SearchSpace:
    """The smoke test must show ASHA stopping a trial: after the first start point, run one that
    barely learns (both learning rates at the space's floor), so it trails at the first rung."""
    if not space.start:
        return space
    floors = {p.name: p.distribution.low for p in space.params if p.name in ("lr_g", "lr_d")}  # type: ignore[attr-defined]
    return dataclasses.replace(space, start=(space.start[0], {**space.start[0], **floors}))


def _run_budget(args: argparse.Namespace, overlay: Mapping[str, Any], budget: Budget) -> Budget:
    """The budget the search will really run: a flag, then --smoke-test's value, then the space's
    budget (on a CPU already the machine's), so the printed plan and the parent run's params say what
    happened."""
    eval_every = args.eval_every or overlay.get("eval_every") or budget.eval_every
    max_evals = args.max_evals or overlay.get("max_evals") or budget.max_evals
    if max_evals * eval_every > MAX_COUNT:  # a trial's steps are counted in 32 bits downstream
        raise ConfigError(f"--max-evals {max_evals} x {eval_every} steps an evaluation is "
                          f"{max_evals * eval_every:,} steps, more than any trial can run ({MAX_COUNT:,})")
    grace_period = args.grace_period or overlay.get("grace_period") or budget.grace_period
    if args.grace_period and grace_period > max_evals:
        raise ConfigError(f"--grace-period {grace_period} exceeds max_evals {max_evals}")
    return dataclasses.replace(
        budget, eval_every=eval_every, fid_n=args.fid_n or overlay.get("fid_n") or budget.fid_n,
        max_evals=max_evals,
        grace_period=min(grace_period, max_evals),
        reduction_factor=args.reduction_factor or overlay.get("reduction_factor") or budget.reduction_factor,
    )


def _gpus_and_device(args: argparse.Namespace) -> tuple[float, str]:
    """A trial's GPU share and the device it computes on, checked against this machine."""
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else _default_gpu_share(args.address)
    if not 0 <= gpus <= 8:
        raise ConfigError(f"--gpus-per-trial {gpus} must be in [0, 8]")
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda needs --gpus-per-trial > 0 (Ray hides GPUs from trials without one)")
    if device == "cuda" and not args.address and not _cuda_visible():
        raise ConfigError(f"--gpus-per-trial {gpus:g} but torch sees no GPU on this machine; leave it out to "
                          "run on the CPU, or pass --address of a cluster with GPU nodes")
    if device == "cuda" and not args.address:
        place("cuda", args.precision)  # e.g. bf16 on a GPU without it: one line now, not in every trial
    return gpus, device


def _cpus_per_trial(args: argparse.Namespace, gpus: float, max_concurrent: int) -> float:
    """A trial's CPUs (by default this machine's shared among the trials at once), and a refusal of
    any share no node here could give: Tune would wait for it forever."""
    cpus = args.cpus_per_trial or (1.0 if gpus else float(max(1, (os.cpu_count() or 1) // max_concurrent)))
    if not args.address and cpus > (os.cpu_count() or 1):
        raise ConfigError(f"--cpus-per-trial {cpus:g}: this machine has {os.cpu_count()} CPUs, so no trial "
                          "could start; lower it, or pass --address of a cluster with larger nodes")
    if not args.address and gpus > 1 and gpus > gpu_count():
        raise ConfigError(f"--gpus-per-trial {gpus:g}: this machine has {gpu_count()} GPUs, so no trial "
                          "could start")
    return cpus


def _storage(args: argparse.Namespace) -> str:
    """Where Tune writes: an absolute folder, or a remote file system with an MLflow server beside."""
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    if "://" in storage and storage.split("://", 1)[0] not in REMOTE_STORAGE:
        raise ConfigError(f"--storage {storage}: results go to a folder or to {', '.join(REMOTE_STORAGE)}:// "
                          "(the file systems Tune writes to)")
    if "://" in storage and not args.mlflow_uri:
        raise ConfigError("remote --storage needs --mlflow-uri (a sqlite store cannot live there)")
    return storage


def _default_gpu_share(address: str | None) -> float:
    # 4 trials per GPU: small GANs leave a GPU mostly idle (see bench/RESULTS.md)
    return 0.25 if address or _cuda_visible() else 0.0


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _experiment_name(args: argparse.Namespace, storage: str) -> str:
    if args.name is not None:
        if not NAME.fullmatch(args.name):
            raise ConfigError(f"--name {args.name!r}: a search's name is one folder name (letters, digits, "
                              "'.', '_' and '-', starting with a letter or a digit)")
        return args.name
    if args.resume and "://" not in storage:
        stem = args.dataset.replace(":", "_").replace("/", "_")
        found = sorted(Path(storage).glob(f"{stem}-*"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"--resume: no search of {args.dataset!r} under {storage}; pass --name")
        return found[-1].name
    if args.resume:
        raise ConfigError("--resume with remote --storage needs --name")
    return f"{args.dataset.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def print_plan(plan: Plan) -> None:
    from orchestrator.metrics.registry import objective

    goal = objective(plan.settings.fid_n)
    print(describe(plan.space))
    print(f"metric: {goal.best_key} ({goal.mode}), FID on {plan.settings.fid_n} images, eval seed "
          f"{plan.settings.eval_seed}")
    print(f"sampler: multivariate TPE (seed {plan.settings.seed}), after "
          f"{startup_trials(plan.num_samples)} random trials; study "
          + (f"{plan.name!r} in {plan.study_storage} (optuna-dashboard {plan.study_storage})"
             if plan.study_storage else "in memory (remote results: pass --study-storage URL to keep it)"))
    if plan.cpu_budget:
        which = "the space's cpu: section" if plan.space.variant == "cpu" else "CPU budget"
        print(f"no GPU: {which} ({plan.num_samples} trials, {plan.max_concurrent} at once, at most "
              f"{plan.max_evals} evaluations of {plan.settings.eval_every} steps, FID on "
              f"{plan.settings.fid_n} images) instead of the space file's, sized for GPUs; flags change "
              "any of it, --space FILE runs the file's")
    if plan.smoke_test:
        print(SMOKE_NOTE)
    if plan.smoke_weak_start:
        print("smoke test: start point 2 is start point 1 at the lowest learning rates, so the first rung "
              "has a trial to stop")
    print(f"scheduler: ASHA time_attr=training_iteration (1 = {plan.settings.eval_every} generator steps) "
          f"max_t={plan.max_evals} grace_period={plan.grace_period} "
          f"reduction_factor={plan.reduction_factor}")
    print(f"trials: {plan.num_samples}, at most {plan.max_concurrent} at once, each "
          f"{plan.resources['cpu']:g} CPU + {plan.resources['gpu']:g} GPU, on {plan.settings.device} in "
          f"{describe_precision(plan.settings)}")
    print(f"results: {plan.experiment_dir}")


def describe_precision(settings: RunSettings) -> str:
    """The precision as the trials will resolve it (a cluster's GPUs are unknown until they run)."""
    if settings.precision != "auto":
        return settings.precision
    if settings.device == "cpu":  # this machine's CPU: where the trials of a local search run
        return place("cpu").precision + " (auto)"
    return "bf16 (auto; fp16 with loss scaling on GPUs without native bf16)"


def check_outputs(plan: Plan) -> None:
    """Everything the search will write can be written: its folder, the data cache, the MLflow
    store and the Optuna study (what needs a server is contacted later, past the dry run)."""
    if "://" not in plan.storage:
        check_writable_folder(Path(plan.experiment_dir), f"--storage {plan.storage}")
    check_writable_folder(plan.settings.cache_dir, f"cache folder {plan.settings.cache_dir}")
    if plan.tracking_uri:
        check_store(plan.tracking_uri, reading=False)
    if plan.study_storage:
        check_study_storage(plan.study_storage)


def check_ray_address(address: str | None, timeout: float = 10.0) -> None:
    """A cluster named by ``--address`` answers: Ray would retry a wrong one for minutes, after the
    data and the reference statistics. ``auto`` is Ray's to find (a `ray job submit` driver)."""
    if not address or address == "auto":
        return
    import socket

    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host:  # no port: Ray's own (the client server's, or the head's GCS)
        host, port = rest, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({reason}); start it "
                          "(ray start --head), or leave out --address to run here") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
