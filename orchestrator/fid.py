"""``python -m orchestrator.fid A [B]``: the FID between two image sources, with the search's code.

A source is a folder of images (read at their native size, batched by size), an ``.npz`` of saved
statistics (ours, or pytorch-fid's ``mu``/``sigma``), or a registered dataset name, whose real
statistics come from the same cache the search uses. ``--save-stats OUT.npz`` saves A's statistics;
with A alone it only saves. Prints one line, e.g. ``fid5k: 12.3456 (n=5000, weights=...)``.
"""

from __future__ import annotations

import orchestrator.startup  # noqa: F401  first: a signal while the imports load is one line

# isort: split
import argparse
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from orchestrator.atomic import check_writable_folder
from orchestrator.cli import UsageParser, count, device_arg, nonempty, path_arg, run_main
from orchestrator.config import IMAGE_SUFFIXES, RunSettings, default_cache_dir
from orchestrator.errors import ConfigError, DataError, did_you_mean, first_line
from orchestrator.gan.placement import resolve_device
from orchestrator.metrics.frechet import FeatureStats, extract_stats, fid, metric_name
from orchestrator.metrics.frechet import select as select_images
from orchestrator.metrics.inception import DIMS, FeatureExtractor, load_inception
from orchestrator.metrics.reference import RealImages
from orchestrator.space.sampling import for_this_machine, load_space, space_path

if TYPE_CHECKING:
    from orchestrator.data.dataset import DataSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# pytorch-fid's list, so a folder means the same images to both tools


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="python -m orchestrator.fid",
        description="The FID between two image sources, computed with the search's own code and caches.",
    )
    p.add_argument("a", metavar="A", type=nonempty, help="folder of images, .npz statistics or dataset name")
    p.add_argument("b", metavar="B", type=nonempty, nargs="?",
                   help="the second source (omit with --save-stats)")
    # the search's and train's flag names and defaults (--n and --weights are this command's old names)
    p.add_argument(
        "--fid-n",
        "--n",
        dest="n",
        type=count,
        help="images per source (default: a folder's all, a dataset's as a search of it on this machine "
        "scores: its space file's, on a CPU its cpu: section's); larger sets use a fixed seeded subset",
    )
    p.add_argument("--resolution", type=count,
                   help="dataset resolution (default: its space file's, as the search uses)")
    p.add_argument("--batch-size", type=count, default=50, help="Inception batch size (default 50)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--fid-weights", "--weights", dest="weights", type=path_arg,
                   help="FID Inception weights file (default: search)")
    p.add_argument("--cache-dir", type=path_arg,
                   help="where datasets and reference statistics are cached (default: the search's)")
    p.add_argument("--save-stats", type=path_arg, metavar="OUT.npz", help="save A's statistics here")
    p.add_argument("--data-root", type=path_arg, help="where datasets' raw files are")
    p.add_argument(
        "--download", action="store_true", help="allow downloading a dataset or the Inception weights"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    # every source is checked before the first one is computed, which can take minutes
    sources = [(source, source_kind(source, args)) for source in (args.a, args.b) if source]
    _check_sources(sources, args)
    network = _LazyExtractor(args)
    stats = [source_stats(source, kind, args, network) for source, kind in sources]
    if args.save_stats is not None:
        stats[0].meta.setdefault("source", args.a)
        stats[0].save(args.save_stats)
        log.info("saved the statistics of %s (n=%d) to %s", args.a, stats[0].n, args.save_stats)
    if len(stats) == 2:
        a, b = stats
        print(f"{_name(a, b)}: {fid(a, b):.4f} (n={_counts(a, b)}, weights={_weights(a, b, network)})")
    return 0


def source_kind(source: str, args: argparse.Namespace) -> str:
    """The source's kind ("folder", "npz" or "dataset"); a DataError naming it if none fits."""
    from orchestrator.data import dataset as data  # lazily: folders and .npz files need no dataset code
    from orchestrator.data.sources import DATASETS, FOLDER_PREFIX

    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix == ".npz" and path.is_file():
        return "npz"
    if source in DATASETS or source.startswith(FOLDER_PREFIX):
        data.validate(_spec(source, args))
        return "dataset"
    what = "is not a folder of images or an .npz file" if path.exists() else "does not exist"
    raise DataError(
        f"{source!r} {what}, nor a dataset ({', '.join(DATASETS)}){did_you_mean(source, DATASETS)}"
    )


def source_stats(
    source: str,
    kind: str,
    args: argparse.Namespace,
    network: _LazyExtractor,
) -> FeatureStats:
    if kind == "folder":
        return folder_stats(Path(source), network(), args.n, args.batch_size)
    if kind == "npz":
        return _loaded(Path(source), network)
    return dataset_stats(source, args, network())


def folder_stats(
    folder: Path,
    extractor: FeatureExtractor,
    n: int | None,
    batch_size: int,
) -> FeatureStats:
    """A folder's images (not its sub-folders'), as pytorch-fid reads them, ``n`` at most."""
    files = _folder_images(folder)
    if n is not None:
        if n > len(files):
            log.warning("%s has %d images, fewer than --n %d: using all", folder, len(files), n)
        files = [files[i] for i in select_images(len(files), n)]
    stats, _ = extract_stats(_folder_batches(files, batch_size), extractor, total=len(files), progress=True)
    return stats


def dataset_stats(name: str, args: argparse.Namespace, extractor: FeatureExtractor) -> FeatureStats:
    """The search's own cached reference statistics of a dataset (computed on a cache miss)."""
    from orchestrator.data.dataset import prepare_dataset

    cache = args.cache_dir or default_cache_dir()
    dataset = prepare_dataset(_spec(name, args), cache, progress=True)
    n = _as_searched(name, args)[1]
    return RealImages(dataset.images, dataset.key, n, extractor, cache, batch_size=args.batch_size).stats()


def _as_searched(name: str, args: argparse.Namespace) -> tuple[int, int]:
    """(resolution, images) of a dataset as a search of it on this machine uses them, unless a flag
    says otherwise: so ``fid shapes`` scores against the very statistics a ``shapes`` search caches."""
    from orchestrator.data.sources import FOLDER_PREFIX

    resolution, n = args.resolution, args.n
    if not name.startswith(FOLDER_PREFIX):  # a folder dataset has no space file: the defaults
        searched = _space_defaults(name, resolve_device(args.device).type == "cpu")
        resolution, n = resolution or searched[0], n or searched[1]
    return resolution or RunSettings().resolution, n or RunSettings().fid_n


@functools.cache  # asked for the spec, the check and the statistics: the space file is read once
def _space_defaults(name: str, on_cpu: bool) -> tuple[int, int]:
    space = for_this_machine(load_space(space_path(name)), on_cpu)
    return space.resolution, space.budget.fid_n


def _spec(name: str, args: argparse.Namespace) -> DataSpec:
    from orchestrator.data.dataset import DataSpec

    resolution = _as_searched(name, args)[0]
    return DataSpec(name, resolution=resolution, root=args.data_root, download=args.download)


class _LazyExtractor:
    """Loads the network on first use: comparing two .npz files needs none."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.extractor: FeatureExtractor | None = None

    def __call__(self) -> FeatureExtractor:
        if self.extractor is None:
            device = self.args.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.extractor = load_inception(self.args.weights, device, self.args.download)
        return self.extractor


def _folder_images(folder: Path) -> list[Path]:
    try:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    except OSError as err:
        raise DataError(f"{folder}: cannot list its images ({err.strerror})") from None
    if len(files) < 2:
        raise DataError(f"{folder}: FID needs at least 2 images, found {len(files)}")
    return files


def _check_sources(sources: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """What can be known before the network loads and the first image is read: a folder holds at
    least two images that open, statistics fit the network they will meet, and --save-stats is not
    a source, nor any file that exists."""
    needs_network = any(kind != "npz" for _, kind in sources)
    for source, kind in sources:
        if kind == "folder":
            for file in _folder_images(Path(source)):
                try:
                    Image.open(file).close()  # the header only: fast for thousands
                except (OSError, ValueError) as err:
                    raise DataError(f"{file}: not a readable image ({first_line(err)})") from None
        elif kind == "npz" and needs_network and (stats := FeatureStats.load(source)).dims != DIMS:
            raise DataError(f"{source}: statistics of {stats.dims} features; the FID network gives {DIMS}")
    out = args.save_stats
    if out is not None and any(Path(s).resolve() == out.resolve() for s, _ in sources):
        raise ConfigError(f"--save-stats {args.save_stats}: that is a source of this command; save elsewhere")
    if out is not None and out.exists():  # statistics computed before are never written over
        raise ConfigError(f"--save-stats {args.save_stats} already exists: save to a new file, or remove "
                          "that one first")


def _validate(args: argparse.Namespace) -> None:
    if args.b is None and args.save_stats is None:
        raise ConfigError("give two sources, or one with --save-stats OUT.npz")
    if args.n is not None and args.n < 2:
        raise ConfigError(f"--n {args.n}: FID needs at least 2 images")
    if args.save_stats is not None and args.save_stats.suffix != ".npz":
        raise ConfigError(f"--save-stats {str(args.save_stats)!r} must end in .npz")
    if args.save_stats is not None:
        check_writable_folder(args.save_stats.parent, f"--save-stats {args.save_stats}")
        try:
            args.save_stats.exists()
        except OSError as err:  # e.g. a file name longer than the file system allows
            raise ConfigError(f"--save-stats {args.save_stats}: {err.strerror or err}") from None


def _loaded(path: Path, network: _LazyExtractor) -> FeatureStats:
    stats = FeatureStats.load(path)
    if network.extractor is not None and stats.meta.get("extractor") not in (None, network.extractor.name):
        log.warning("%s was computed with %s, not %s", path, stats.meta["extractor"], network.extractor.name)
    return stats


def _folder_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of images of one size each, in [-1, 1]; RGB as pytorch-fid reads them."""
    by_size: dict[tuple[int, int], list[Path]] = {}
    for f in files:
        by_size.setdefault(_read(f, lambda image: image.size), []).append(f)
    if len(by_size) > 1:
        log.info("%d image sizes: batching each size separately", len(by_size))
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            pixels = np.stack([_read(f, _rgb) for f in group[start : start + batch_size]])
            yield torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))  # grayscale and palette images too, as pytorch-fid


def _read(path: Path, use: Callable[[Image.Image], T]) -> T:
    try:
        with Image.open(path) as image:
            return use(image)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from err


def _name(a: FeatureStats, b: FeatureStats) -> str:
    counts = [s.n for s in (a, b) if s.n > 0]  # 0: a pytorch-fid file that did not record it
    if counts and a.n != b.n and a.n > 0 and b.n > 0:
        log.warning(
            "the sources have different sample counts (%d and %d): FID is biased by N, "
            "compare only at one N (--n)",
            a.n,
            b.n,
        )
    return metric_name(min(counts)) if counts else "fid"


def _counts(a: FeatureStats, b: FeatureStats) -> str:
    shown = [str(s.n) if s.n > 0 else "?" for s in (a, b)]
    return shown[0] if shown[0] == shown[1] else "/".join(shown)


def _weights(a: FeatureStats, b: FeatureStats, network: _LazyExtractor) -> str:
    if network.extractor is not None:
        return network.extractor.name
    return a.meta.get("extractor") or b.meta.get("extractor") or "unknown"


def cli_main() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli_main())
