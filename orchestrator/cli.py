"""What every command-line entry point shares: one-line errors, exit status 2, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import PRECISIONS, RunSettings, default_cache_dir
from orchestrator.errors import ConfigError, OrchestratorError


class UsageParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags both training commands (search, train) take, with one meaning and one default: where
    a flag is left out, both take the dataset's search-space file's value, so ``train DATASET`` runs
    the trial a search of DATASET would."""
    p.add_argument("--data-root", type=Path, help="folder holding the dataset's files")
    p.add_argument("--download", action="store_true", help="let torchvision fetch a missing dataset")
    p.add_argument("--classes", help="comma-separated class subset, e.g. pizza,sushi")
    p.add_argument("--limit", type=int, help="use at most this many training images")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the data order (a search's "
                   "Optuna sampler too)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="what trials compute in (default "
                   "auto: bf16 on GPUs with native bf16, else fp16 with loss scaling; fp32 on the CPU)")
    p.add_argument("--space", type=Path, help="search-space YAML whose resolution and budget are the "
                   "defaults (default search_spaces/DATASET.yaml)")
    p.add_argument("--eval-every", type=int, help="generator steps between evaluations (space default)")
    p.add_argument("--fid-n", type=int, help="images per FID (space default)")
    p.add_argument("--fid-weights", type=Path, help="FID Inception weights (default: search)")
    p.add_argument("--cache-dir", type=Path, help="decoded data and FID statistics")


def run_settings(args: argparse.Namespace, **fields: Any) -> RunSettings:
    """``RunSettings`` from ``add_run_flags``'s flags; ``fields`` are what each command decides
    itself (resolution, budget, device), and override the flags' values (a smoke test's limit)."""
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    flags = {
        "dataset": args.dataset,
        "data_root": args.data_root,
        "cache_dir": args.cache_dir or default_cache_dir(),
        "download": args.download,
        "classes": tuple(args.classes.split(",")) if args.classes else None,
        "max_images": args.limit,
        "seed": args.seed,
        "precision": args.precision,
    }
    return RunSettings(**(flags | fields))


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a user error becomes one line on stderr and exit status 2, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return main(argv)
    except OrchestratorError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
