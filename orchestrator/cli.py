"""What every command-line entry point shares: one-line errors, exit status 2, logging set-up."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import MAX_COUNT, PRECISIONS, RunSettings, default_cache_dir
from orchestrator.errors import ConfigError, OrchestratorError, Terminated


class UsageParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_SAMPLES = 10_000  # images drawn at once: 10k at 64 px are 0.5 GB as floats


def _int(text: str, least: int, most: int = MAX_COUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not least <= value <= most:
        raise argparse.ArgumentTypeError(f"{value} must be in [{least}, {most:,}]")
    return value


def count(text: str) -> int:
    """A flag's type: a whole number of things, at least 1 (refuses 0, -7, 2.5, 1e9 as text)."""
    return _int(text, 1)


def retries(text: str) -> int:
    """A flag's type: a whole number, 0 allowed (e.g. retries)."""
    return _int(text, 0)


def seed_number(text: str) -> int:
    return _int(text, 0, MAX_SEED)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive(text: str) -> float:
    """A flag's type: a finite number above 0 (refuses nan, inf, 0, -1)."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def share(text: str) -> float:
    """A flag's type: a finite number, 0 or above (a GPU share)."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number, 0 or above")
    return value


MAX_EPOCHS = 1e6  # a million passes: far past any GAN's budget, and its steps still fit a count


def epochs_arg(text: str) -> float:
    """A flag's type: passes over the data, above 0 and at most ``MAX_EPOCHS``."""
    value = positive(text)
    if value > MAX_EPOCHS:
        raise argparse.ArgumentTypeError(f"{text} must be at most {MAX_EPOCHS:,.0f}")
    return value


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def device_arg(text: str) -> str:
    """A flag's type: ``auto`` or a device torch knows (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if text == "auto":
        return text
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: this program computes on cpu, cuda or mps")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this PyTorch has no mps device here; use cpu or cuda")
    return text


def path_arg(text: str) -> Path:
    """A flag's type: a path, never the empty string (which would mean the current folder)."""
    return Path(nonempty(text))


def sample_count(text: str) -> int:
    """A flag's type: how many images to draw into memory at once (``sample --n``)."""
    return _int(text, 1, MAX_SAMPLES)


def names(text: str) -> tuple[str, ...]:
    """A flag's type: a comma-separated list of names, none empty (``--classes pizza,sushi``)."""
    items = tuple(item.strip() for item in text.split(","))
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty name: give names separated by commas")
    return items


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags both training commands (search, train) take, with one meaning and one default: where
    a flag is left out, both take the dataset's search-space file's value, so ``train DATASET`` runs
    the trial a search of DATASET would."""
    p.add_argument("--data-root", type=path_arg, help="folder holding the dataset's files")
    p.add_argument("--download", action="store_true", help="let torchvision fetch a missing dataset")
    p.add_argument("--classes", type=names, help="comma-separated class subset, e.g. pizza,sushi")
    p.add_argument("--limit", type=count, help="use at most this many training images")
    p.add_argument("--seed", type=seed_number, default=0, help="seeds the weights and the data order (a "
                   "search's Optuna sampler too)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="what trials compute in (default "
                   "auto: bf16 on GPUs with native bf16, else fp16 with loss scaling; on the CPU bf16 where "
                   "it has bf16 instructions, else fp32)")
    p.add_argument("--space", type=path_arg, help="search-space YAML whose resolution and budget are the "
                   "defaults (default search_spaces/DATASET.yaml)")
    p.add_argument("--eval-every", type=count, help="generator steps between evaluations (space default)")
    p.add_argument("--fid-n", type=count, help="images per FID (space default)")
    p.add_argument("--fid-weights", type=path_arg, help="FID Inception weights (default: search)")
    p.add_argument("--cache-dir", type=path_arg, help="decoded data and FID statistics")


def run_settings(args: argparse.Namespace, **fields: Any) -> RunSettings:
    """``RunSettings`` from ``add_run_flags``'s flags; ``fields`` are what each command decides
    itself (resolution, budget, device), and override the flags' values (a smoke test's limit)."""
    flags = {
        "dataset": args.dataset,
        "data_root": args.data_root,
        "cache_dir": args.cache_dir or default_cache_dir(),
        "download": args.download,
        "classes": args.classes,
        "max_images": args.limit,
        "seed": args.seed,
        "precision": args.precision,
    }
    return RunSettings(**(flags | fields))


INTERRUPTED, TERMINATED = 130, 143  # the shell's statuses for a death by SIGINT and by SIGTERM
_on_interrupt = ["nothing was started"]  # what an interrupt keeps and how to go on: the command says


def on_interrupt(what: str) -> None:
    """Say what an interrupt from now on leaves behind and how to continue (one line's tail)."""
    _on_interrupt[0] = what


def catch_signals() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM ``Terminated`` (a KeyboardInterrupt) in the main
    thread, so every command ends the same way on either, at any moment. Installed again after
    ``ray.init``, whose own SIGTERM handler dumps a stack and aborts."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def interrupted_status(err: BaseException) -> int:
    return TERMINATED if isinstance(err, Terminated) else INTERRUPTED


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a user error becomes one line on stderr and exit status 2, never a traceback;
    Ctrl-C and SIGTERM one line saying what is kept and how to go on, status 130 or 143."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    on_interrupt("nothing was started")
    try:
        catch_signals()
        return main(argv)
    except OrchestratorError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        return report_interrupt(err)


def report_interrupt(err: BaseException) -> int:
    """The one line an interrupted command ends with; its exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this line short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
    print(f"{how}: {_on_interrupt[0]}", file=sys.stderr, flush=True)
    return interrupted_status(err)
