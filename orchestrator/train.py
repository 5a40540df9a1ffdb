"""``python -m orchestrator.train DATASET``: one trial, no Ray. The "start with MNIST" debugging path.

Prints a line per evaluation (losses, FID, img/s), writes a sample grid PNG from fixed noise per
evaluation and a checkpoint (``checkpoint.pt``, rewritten atomically at every evaluation).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.cli import run_main
from orchestrator.config import PRECISIONS, RunSettings, TrialConfig, default_cache_dir
from orchestrator.data import dataset as datasets
from orchestrator.data import sources
from orchestrator.errors import ConfigError, TrainingDiverged
from orchestrator.gan.placement import place, resolve_device
from orchestrator.gan.trial import TrialRunner, fid_key, format_report
from orchestrator.images import save_png
from orchestrator.metrics.diversity import real_reference
from orchestrator.metrics.inception import load_inception

log = logging.getLogger("orchestrator.train")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orchestrator.train", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help=f"one of {', '.join(sources.DATASETS)} or folder:PATH")
    p.add_argument("--config", type=Path, help="trial hyperparameters as YAML (TrialConfig keys)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="passes over the training images (default 5)")
    budget.add_argument("--steps", type=int, help="generator steps, instead of --epochs")
    p.add_argument("--eval-every", type=int, default=None, help="generator steps between evaluations")
    p.add_argument("--fid-n", type=int, default=2000, help="images per FID (default 2000)")
    p.add_argument("--resolution", type=int, default=64, help="32 or 64 (default 64)")
    p.add_argument("--out", type=Path, help="output folder (default runs/train-DATASET-TIME)")
    p.add_argument("--data-root", type=Path, help="folder holding the dataset's files")
    p.add_argument("--download", action="store_true", help="let torchvision fetch a missing dataset")
    p.add_argument("--classes", help="comma-separated class subset, e.g. pizza,sushi")
    p.add_argument("--limit", type=int, help="use at most this many training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="autocast dtype (default auto: "
                   "bf16 on GPUs with native bf16, else fp16 with loss scaling; fp32 on the CPU)")
    p.add_argument("--fid-weights", type=Path, help="FID Inception weights (default: search)")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded data and FID statistics")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> RunSettings:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    return RunSettings(
        dataset=args.dataset,
        resolution=args.resolution,
        data_root=args.data_root,
        cache_dir=args.cache_dir or default_cache_dir(),
        download=args.download,
        classes=tuple(args.classes.split(",")) if args.classes else None,
        max_images=args.limit,
        eval_every=args.eval_every or 500,
        fid_n=args.fid_n,
        eval_seed=args.eval_seed,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # everything a user can get wrong is checked before any work starts
    config = TrialConfig.from_yaml(args.config) if args.config else TrialConfig()
    settings = _settings(args)
    spec = datasets.spec_for(settings)
    datasets.validate(spec)
    if (args.steps is not None and args.steps < 1) or (args.epochs is not None and args.epochs <= 0):
        raise ConfigError("--steps/--epochs must be positive")
    if not spec.download:  # counting a dataset still to be fetched would fetch it
        datasets.check_fid_n(settings.fid_n, datasets.available(spec, settings.cache_dir), spec.name)
    device = resolve_device(settings.device)
    placement = place(device, settings.precision)  # bf16 asked of a GPU without it fails here
    extractor = load_inception(args.fid_weights, device=device)

    data = datasets.prepare_dataset(spec, settings.cache_dir)
    datasets.check_fid_n(settings.fid_n, len(data), spec.name)  # unreadable files skipped
    reference, real_ref = real_reference(
        data.images, data.key, settings.fid_n, extractor, settings.cache_dir, device=device
    )
    steps_per_epoch = max(1, len(data) // (config.batch_size * config.n_critic))
    total = args.steps or math.ceil((args.epochs or 5) * steps_per_epoch)
    eval_every = min(args.eval_every or steps_per_epoch, total)
    stem = settings.dataset.replace(":", "_").replace("/", "_")
    out = args.out or Path("runs") / f"train-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    log.info("training %s at %d px on %s: %d steps, evaluating every %d -> %s",
             settings.dataset, settings.resolution, placement.describe(), total, eval_every, out)

    runner = TrialRunner(config, settings, data, reference, extractor, placement, real_ref)
    try:
        while runner.step < total:
            runner.train(min(eval_every, total - runner.step))
            report = runner.evaluate()
            print(format_report(report, settings), flush=True)
            save_png(runner.grid(), out / f"samples_step{runner.step:07d}.png")
            runner.save(out / "checkpoint.pt")
            if runner.verdict is not None:
                print(f"stopped: {runner.verdict.describe()}; checkpoint and grids in {out}", flush=True)
                return 1
    except TrainingDiverged as err:
        print(f"diverged: {err}; the last good checkpoint is {out / 'checkpoint.pt'}", flush=True)
        return 1
    print(f"done: best {fid_key(settings)} {runner.best_fid:.3f}; grids and checkpoint in {out}")
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_main(main, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
