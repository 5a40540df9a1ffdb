"""``python -m orchestrator.sample (RUN_ID | CHECKPOINT)``: new samples from a trial's generator.

The generator comes from a Tune checkpoint (a ``checkpoint_NNNNNN`` folder or a ``.pt`` file) or an
MLflow run: the model logged on the best trial's run, else the run's ``checkpoint/generator.pt``.
``--out`` ending in ``.png`` gets one grid; any other path is a folder of one PNG per sample (for
FID elsewhere). The latents come from ``--seed`` alone, so a seed always gives the same images, and
``--n 5`` gives the first five of ``--n 64``; ``--seed 12345`` (the evaluation seed) reproduces a
checkpoint's ``grid.png``. Sampling runs on the CPU.
"""

from __future__ import annotations

import orchestrator.startup  # noqa: F401  first: a signal while the imports load is one line

# isort: split
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from orchestrator.atomic import check_writable_folder
from orchestrator.cli import MAX_SAMPLES, UsageParser, path_arg, run_main, sample_count, seed_number
from orchestrator.errors import ConfigError
from orchestrator.gan.checkpoints import load_generator
from orchestrator.images import grid_image, save_png, to_image
from orchestrator.tracking.models import load_logged_generator
from orchestrator.tracking.store import tracking_uri

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{32}")
BATCH = 256


@dataclass(frozen=True)
class Sampler:
    """A generator as sampling needs it: (N, nz) latents -> (N, C, H, W) images in [0, 1]."""

    model: Callable[[torch.Tensor], torch.Tensor]
    nz: int
    source: str  # what it was loaded from, for the summary line


def build_parser() -> UsageParser:
    p = UsageParser(prog="python -m orchestrator.sample", description=__doc__.split("\n")[0])
    p.add_argument("source", metavar="RUN_ID | CHECKPOINT",
                   help="an MLflow run id, a Tune checkpoint folder or a .pt checkpoint file")
    p.add_argument("--n", type=sample_count, default=64,
                   help=f"samples to draw (default 64, at most {MAX_SAMPLES:,})")
    p.add_argument("--seed", type=seed_number, default=0, help="seeds the latents (default 0)")
    p.add_argument("--out", type=path_arg, default=Path("grid.png"),
                   help="a .png file for one grid (default grid.png), else a folder of PNGs")
    p.add_argument("--mlflow-uri", help="tracking URI for a run id (default $MLFLOW_TRACKING_URI)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_grid = args.out.suffix.lower() == ".png" and not _is_dir(args.out)
    # tried first: a name the file system refuses (too long, under /proc) is one line, not a traceback
    check_writable_folder(args.out.parent if as_grid else args.out, f"--out {args.out}")
    if not as_grid and any(args.out.glob("*.png")):
        raise ConfigError(f"--out {args.out} already holds PNG files: choose an empty folder")
    sampler = load_sampler(args.source, args.mlflow_uri)
    if as_grid:
        save_png(grid_image(torch.cat(list(sample(sampler, args.n, args.seed))) * 2 - 1), args.out)
    else:
        write_pngs(sample(sampler, args.n, args.seed), args.out)
    what = "a grid of" if as_grid else "PNGs of"
    print(f"{what} {args.n} samples (seed {args.seed}) from {sampler.source} -> {args.out}")
    return 0


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long: not a folder (check_writable_folder says why)
        return False


def load_sampler(source: str, mlflow_uri: str | None) -> Sampler:
    path = Path(source)
    if path.exists():
        model = load_generator(path)
        return Sampler(model, model.generator.nz, str(path))
    if not RUN_ID.fullmatch(source):
        raise ConfigError(f"{source}: no such file or folder, nor an MLflow run id (32 hex digits)")
    return load_run(source, tracking_uri(mlflow_uri, f"the run id {source}"))


def load_run(run_id: str, uri: str) -> Sampler:
    """The run's logged model when it has one (the best trial's best checkpoint), else the last
    generator its trial saved."""
    model, nz, what = load_logged_generator(run_id, uri)
    return Sampler(model, nz, f"run {run_id} ({what})")


def sample(sampler: Sampler, n: int, seed: int) -> Iterator[torch.Tensor]:
    """``n`` images in [0, 1] from the latents of ``seed``, a batch at a time. The latents are drawn a
    whole batch at a time too, because torch's CPU ``randn`` draws the last values of a tensor whose
    size is not a multiple of 16 differently; and the generator runs on the whole batch, because a
    convolution's last bits depend on the batch size (oneDNN picks its algorithm by shape). So the
    first k images are the same for any ``n`` >= k, and seed 12345 (the evaluation seed) gives a
    trial's own sample grid."""
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, n, BATCH):
        z = torch.randn(BATCH, sampler.nz, generator=rng)
        with torch.no_grad():
            yield sampler.model(z).float()[: n - start]


def write_pngs(batches: Iterable[torch.Tensor], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    for images in batches:
        for image in images:
            # plain writes, not atomic ones: tens of thousands of files, none read while written
            to_image(image * 2 - 1).save(folder / f"{i:06d}.png")
            i += 1


def cli_main(argv: Sequence[str] | None = None) -> int:
    return run_main(main, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
