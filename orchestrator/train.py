"""``python -m orchestrator.train DATASET``: one trial, no Ray. The "start with MNIST" debugging path.

Prints a line per evaluation (losses, FID, img/s), writes a sample grid PNG from fixed noise per
evaluation and a checkpoint (``checkpoint.pt``, rewritten atomically at every evaluation).
"""

from __future__ import annotations

import orchestrator.startup  # noqa: F401  first: a signal while the imports load is one line

# isort: split
import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.atomic import check_writable_folder
from orchestrator.cli import (
    UsageParser,
    add_run_flags,
    count,
    device_arg,
    epochs_arg,
    on_interrupt,
    path_arg,
    run_main,
    run_settings,
    seed_number,
)
from orchestrator.config import RunSettings, TrialConfig
from orchestrator.data import dataset as datasets
from orchestrator.data import sources
from orchestrator.errors import ConfigError, TrainingDiverged
from orchestrator.gan.checkpoints import GENERATOR_FILE, GRID_FILE, STATE_FILE, TRIAL_FILE
from orchestrator.gan.placement import place, resolve_device
from orchestrator.images import save_png
from orchestrator.metrics.inception import load_inception
from orchestrator.metrics.reference import RealImages
from orchestrator.space.sampling import for_this_machine, load_space, space_path
from orchestrator.trial import TrialRunner, format_report

log = logging.getLogger("orchestrator.train")

# what a run of this program or a trial leaves in its folder: --out never goes where one is
RUN_FILES = (TRIAL_FILE, STATE_FILE, GENERATOR_FILE, GRID_FILE)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = UsageParser(prog="python -m orchestrator.train", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help=f"one of {', '.join(sources.DATASETS)} or folder:PATH")
    p.add_argument("--config", type=path_arg, help="trial hyperparameters as YAML (TrialConfig keys)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=epochs_arg, help="passes over the training images (default 5)")
    budget.add_argument("--steps", type=count, help="generator steps, instead of --epochs")
    p.add_argument("--resolution", type=count, help="32 or 64 (default: the search space's)")
    p.add_argument("--out", type=path_arg, help="output folder (default runs/train-DATASET-TIME)")
    p.add_argument("--eval-seed", type=seed_number, default=12345)
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N")
    add_run_flags(p)
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> RunSettings:
    """As a search of the dataset would run its trials: resolution, evaluation interval and FID
    sample count from its search-space file (on a CPU, its cpu: section or the CPU budget), unless a flag says
    otherwise. A folder dataset without --space has no file and takes ``RunSettings``' own defaults."""
    fields = {"resolution": args.resolution, "eval_every": args.eval_every, "fid_n": args.fid_n}
    if args.space is not None or not args.dataset.startswith(sources.FOLDER_PREFIX):
        on_cpu = args.space is None and resolve_device(args.device).type == "cpu"  # as a search here would
        space = for_this_machine(load_space(space_path(args.dataset, args.space)), on_cpu)
        budget = {"resolution": space.resolution, "eval_every": space.budget.eval_every,
                  "fid_n": space.budget.fid_n}
        fields = {key: value if value is not None else budget[key] for key, value in fields.items()}
    given = {key: value for key, value in fields.items() if value is not None}
    return run_settings(args, eval_seed=args.eval_seed, device=args.device, **given)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # everything a user can get wrong is checked before any work starts
    config = TrialConfig.from_yaml(args.config) if args.config else TrialConfig()
    settings = _settings(args)
    if args.out is not None:
        check_writable_folder(args.out, f"--out {args.out}")
        if any((args.out / name).exists() for name in RUN_FILES) or any(args.out.glob("samples_step*.png")):
            raise ConfigError(f"--out {args.out} holds another run's checkpoint and grids: give a new "
                              "folder (nothing there is overwritten)")
    check_writable_folder(settings.cache_dir, f"cache folder {settings.cache_dir}")
    spec = datasets.spec_for(settings)
    datasets.validate(spec)
    if not spec.download:  # counting a dataset still to be fetched would fetch it
        datasets.check_fid_n(settings.fid_n, datasets.available(spec, settings.cache_dir), spec.name)
    device = resolve_device(settings.device)
    placement = place(device, settings.precision)  # bf16 asked of a GPU without it fails here
    extractor = load_inception(args.fid_weights, device=device)

    data = datasets.prepare_dataset(spec, settings.cache_dir)
    datasets.check_fid_n(settings.fid_n, len(data), spec.name)  # unreadable files skipped
    real = RealImages(data.images, data.key, settings.fid_n, extractor, settings.cache_dir)
    reference, real_ref = real.reference(device=device)
    steps_per_epoch = max(1, len(data) // (config.batch_size * config.n_critic))
    total = args.steps or math.ceil((args.epochs or 5) * steps_per_epoch)
    eval_every = min(settings.eval_every, total)
    stem = settings.dataset.replace(":", "_").replace("/", "_")
    out = args.out or Path("runs") / f"train-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    log.info("training %s at %d px on %s: %d steps, evaluating every %d -> %s",
             settings.dataset, settings.resolution, placement.describe(), total, eval_every, out)

    runner = TrialRunner(config, settings, data, reference, extractor, placement, real_ref)
    on_interrupt(f"the grids and the checkpoint of the last evaluation printed are in {out}")
    try:
        while runner.step < total:
            runner.train(min(eval_every, total - runner.step))
            report = runner.evaluate()
            # written before the line that describes them: an interrupt after it loses nothing
            save_png(runner.grid(), out / f"samples_step{runner.step:07d}.png")
            runner.save(out / TRIAL_FILE)
            print(format_report(report, settings), flush=True)
            if runner.verdict is not None:
                print(f"stopped: {runner.verdict.describe()}; checkpoint and grids in {out}", flush=True)
                return 1
    except TrainingDiverged as err:
        print(f"diverged: {err}; the last good checkpoint is {out / TRIAL_FILE}", flush=True)
        return 1
    print(f"done: best {runner.objective.key} {runner.best_fid:.3f}; grids and checkpoint in {out}")
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_main(main, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
