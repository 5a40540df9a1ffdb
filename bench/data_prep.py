"""Decoding Food-101 JPEGs into the 64-px uint8 cache: img/s and peak memory, on all cores.

Runs the product's own path, ``orchestrator.data.prepare_dataset`` (listing, the process pool of
``datacache.decode`` with its progress bar, the atomic cache write) into a fresh temporary cache,
on the Food-101 sample of ../shared/data (10 classes x 200 train images; see ../shared/ASSETS.md).
``--repeat R`` lists every image R times (symbolic links in a temporary Food-101 layout), so that
the run is long enough to time on 16 cores; repeated files come from the page cache, as the
sample's files do anyway once read. The registry's one-time import of
``torchvision.datasets`` (seconds) is timed apart, before the call.

Reports img/s (the median of ``--repeats`` runs, each into a fresh cache), the peak resident
memory of this process and of the largest pool worker (``resource.getrusage``, self and children),
a reload from the cache (a hit), and extrapolates to the full 101,000 images: time linearly; this
process's memory as its fixed growth plus the decoded array, which it holds once (a second copy
only when unreadable files are dropped). Target: >= 1.5k
img/s on 16 cores.

    PYTHONPATH=. python bench/data_prep.py [--data-root ../shared/data] [--repeat 8] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from pathlib import Path

from common import add_common_args, median, rate, report, shared_data, table

from orchestrator.data import cache as datacache
from orchestrator.data.dataset import DataSpec, prepare_dataset

FULL_FOOD101 = 101_000


def repeated_root(source: Path, repeat: int, scratch: Path, split: str) -> Path:
    """A Food-101 layout whose ``split`` lists every image ``repeat`` times (links to the originals)."""
    meta = scratch / "food-101" / "meta"
    meta.mkdir(parents=True)
    (meta / "classes.txt").write_text((source / "meta" / "classes.txt").read_text())
    listed = json.loads((source / "meta" / f"{split}.json").read_text())
    copies: dict[str, list[str]] = {}
    for name, ids in listed.items():
        copies[name] = []
        for image_id in ids:
            for k in range(repeat):
                link = scratch / "food-101" / "images" / f"{image_id}_r{k}.jpg"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source / "images" / f"{image_id}.jpg")
                copies[name].append(f"{image_id}_r{k}")
    (meta / f"{split}.json").write_text(json.dumps(copies))
    return scratch


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, device=False)
    p.add_argument("--data-root", type=Path, default=shared_data(), help="holds food-101/")
    p.add_argument("--split", default="train")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, help="list every image this many times")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, each into a fresh cache; the median")
    args = p.parse_args()
    if not (args.data_root / "food-101").is_dir():
        raise SystemExit(f"no food-101/ under {args.data_root} (see ../shared/ASSETS.md)")

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        folder = Path(tmp)
        root = args.data_root
        if args.repeat > 1:
            root = repeated_root(args.data_root / "food-101", args.repeat, folder / "data", args.split)
        spec = DataSpec("food101", split=args.split, resolution=args.resolution, root=root)
        start = time.perf_counter()
        import torchvision.datasets  # noqa: F401  (the registry's lazy import: once per process, seconds)

        imported = time.perf_counter() - start
        before = peak_rss_mb(resource.RUSAGE_SELF)
        times = []
        for k in range(args.repeats):  # each into a fresh cache: every one a miss
            start = time.perf_counter()
            data = prepare_dataset(spec, folder / f"cache-{k}", progress=True)
            times.append(time.perf_counter() - start)
        seconds = median(times)
        parent, worker = peak_rss_mb(resource.RUSAGE_SELF), peak_rss_mb(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        again = prepare_dataset(spec, folder / "cache-0", progress=False)
        hit = time.perf_counter() - start
        n, nbytes = len(data), data.images.nbytes
        if len(again) != n:
            raise SystemExit(f"the cache read back {len(again)} images, {n} were written")

    cores = os.cpu_count() or 1
    # the pool's size, as datacache sizes it: one task per chunk of files, no pool for a few files
    chunks = math.ceil(n / datacache.chunk_size(n, cores))
    workers = 0 if n < datacache._MIN_POOL_FILES else min(cores, chunks)
    speed = n / seconds
    # this process holds the decoded array once (no file failed); the rest of its growth is a fixed
    # cost (imports, the pool, the listing)
    fixed = max(parent - before - nbytes / 2**20, 0.0)
    full_mib = FULL_FOOD101 * nbytes / n / 2**20
    rows = [
        ["images decoded", f"{n:,} ({args.split} x{args.repeat}, {args.resolution} px, {nbytes >> 20} MiB)"],
        ["cores / pool workers", f"{cores} / {workers}"],
        ["seconds, prepare_dataset (miss)", f"{seconds:.2f}, median of {len(times)} ({min(times):.2f} to "
         f"{max(times):.2f}); + {imported:.1f} once, importing torchvision"],
        ["img/s", f"{rate(speed)} (target >= 1.5k on 16 cores)"],
        ["peak RSS, this process", f"{parent:,.0f} MiB ({before:,.0f} before the call)"],
        ["peak RSS, largest pool worker", f"{worker:,.0f} MiB"],
        ["reload from the cache (hit)", f"{hit * 1000:.0f} ms"],
        [f"extrapolated to {FULL_FOOD101:,} images", f"{(imported + FULL_FOOD101 / speed) / 60:.1f} min; "
         f"this process ~{before + fixed + full_mib:,.0f} MiB peak ({before:,.0f} before + "
         f"{fixed:,.0f} fixed + the {full_mib:,.0f} MiB array)"],
    ]
    report("data_prep", "cpu", table(["measure", "value"], rows), args)


if __name__ == "__main__":
    main()
