"""``python -m orchestrator.search DATASET``: sample GAN hyperparameters with Optuna (TPE), stop poor
trials with ASHA on FID, track everything in MLflow.

Flow: parse -> plan and validate (space, data, weights; exit 2 on bad input) -> prepare the data cache
and the real-image FID statistics once -> Tuner -> summary. ``--resume`` continues an interrupted search.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from orchestrator.cli import (
    UsageParser,
    add_run_flags,
    count,
    nonempty,
    on_interrupt,
    positive,
    retries,
    run_main,
    share,
)
from orchestrator.data import dataset as datasets
from orchestrator.data import sources
from orchestrator.search.lock import driver_lock
from orchestrator.search.plan import (
    Plan,
    check_outputs,
    check_ray_address,
    make_plan,
    print_plan,
)
from orchestrator.search.record import SEARCH_RECORD_FILE, check_new, check_resumable
from orchestrator.tracking.store import check_database, check_tracking_server


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    args.address = args.address or os.environ.get("RAY_ADDRESS")  # set for a `ray job submit` driver
    return args


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m orchestrator.search", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help=f"one of {', '.join(sources.DATASETS)} or folder:PATH")
    p.add_argument("--num-samples", type=count, help="trials to sample (default 16)")
    p.add_argument("--max-evals", type=count,
                   help="evaluations per trial at most (ASHA max_t; space default)")
    p.add_argument("--grace-period", type=count, help="evaluations before ASHA may stop a trial (space "
                   "default; equal to --max-evals: no early stopping)")
    p.add_argument("--reduction-factor", type=positive, help="ASHA keeps 1 in this many at each rung (space "
                   "default, >= 2)")
    p.add_argument("--gpus-per-trial", type=share, help="GPU share per trial, e.g. 0.25 (default: 0.25 "
                   "when a GPU is visible, else 0)")
    p.add_argument("--cpus-per-trial", type=positive, help="CPU share per trial (default 1 with a GPU, "
                   "else the cores divided among the concurrent trials)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), help="what trials compute on (default: "
                   "cuda with a GPU share, else cpu; cpu with a GPU share schedules by logical GPUs)")
    p.add_argument("--max-concurrent", type=count, help="trials running at once (default 4)")
    p.add_argument("--max-failures", type=retries, default=3,
                   help="restarts of a crashed trial from its last checkpoint (default 3)")
    p.add_argument("--storage", type=nonempty, default="runs", help="Tune storage: a folder or a URI such as s3://bucket/x")
    p.add_argument("--mlflow-uri", help="tracking server, e.g. http://127.0.0.1:5000 (default: a sqlite file "
                   "beside the results)")
    p.add_argument("--study-storage", help="database URL for the Optuna study, e.g. postgresql://... "
                   "(default: sqlite beside the results; in memory with remote --storage)")
    p.add_argument("--name", help="experiment name (default DATASET-TIME; with --resume: the latest)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of that name")
    p.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, as in a `ray job "
                   "submit`, else start a local one)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved search and exit")
    p.add_argument("--smoke-test", action="store_true", help="tiny: 4 trials, few steps, small FID")
    add_run_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    check_outputs(plan)
    if args.dry_run:  # writes nothing, so takes no lock
        return _checked(args, plan)
    # before the checks that read the search's folder: two drivers starting together must not both
    # find it free
    command = "python -m orchestrator.search " + shlex.join(plan.argv)
    lock = driver_lock(plan.experiment_dir, command, SEARCH_RECORD_FILE)
    lock.acquire()
    try:
        return _checked(args, plan)
    finally:
        lock.release()


def _checked(args: argparse.Namespace, plan: Plan) -> int:
    if args.resume:  # first: a resume of another search is refused whatever its data
        check_resumable(plan)
    else:
        check_new(plan)
    spec = datasets.spec_for(plan.settings)
    datasets.validate(spec)
    if not spec.download:  # counting a dataset still to be fetched would fetch it
        available = datasets.available(spec, plan.settings.cache_dir)
        datasets.check_fid_n(plan.settings.fid_n, available, spec.name)
    if args.dry_run:  # contacts nothing: the cluster's job is checked on a laptop with this
        print_plan(plan)
        return 0
    check_tracking_server(plan.tracking_uri)
    check_database(plan.study_storage, "--study-storage")
    check_ray_address(plan.address)
    from orchestrator.search.runner import run_search  # heavy imports (ray, mlflow) only past validation

    on_interrupt("the search had not started (nothing of it is kept): run the same command again"
                 if not plan.resume else "nothing changed: run the same command again")

    return run_search(plan)


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_main(main, argv)

