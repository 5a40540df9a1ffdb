"""Reference statistics: the real side of FID, computed once per dataset and cached on disk.

``reference_stats`` gives the moments of a seeded subset of ``n`` real images, ``reference_features``
also the raw features of up to ``MAX_KEEP`` of them (for ``metrics.diversity``), both from at most
one network pass. Files live under ``<cache_dir>/fid_stats/``, named by a hash of everything they
depend on (``cache_path``) and written atomically, so trials only ever read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.atomic import atomic_write
from orchestrator.errors import ConfigError, DataError
from orchestrator.metrics.frechet import (
    MAX_KEEP,
    SELECTION_SEED,
    FeatureStats,
    extract_features,
    extract_stats,
    select,
)
from orchestrator.metrics.inception import FEATURE_PRECISION, FeatureExtractor

log = logging.getLogger(__name__)

STATS_VERSION = 1  # part of every cache key: bump it when the way statistics are computed changes


def reference_stats(
    images: np.ndarray,
    data_key: str,
    n: int,
    extractor: FeatureExtractor,
    cache_dir: Path,
    batch_size: int = 100,
    progress: bool = True,
) -> FeatureStats:
    """Real-image statistics, computed once per (data, n, network) and cached under
    ``<cache_dir>/fid_stats/``. With fewer than ``n`` images all are used and ``stats.n`` says so."""
    index = _reference_index(images, n)
    if len(index) < n:
        log.warning(
            "only %d real images, fewer than n=%d: the reference statistics use all of "
            "them (FID at n=%d is biased differently from n=%d)",
            len(index),
            n,
            len(index),
            n,
        )
    path = stats_path(Path(cache_dir), data_key, len(index), extractor.name)
    if path.is_file():
        try:
            return FeatureStats.load(path)
        except DataError as err:
            log.warning("recomputing unreadable cached statistics: %s", err)
    log.info("computing FID reference statistics of %s on %d images -> %s", data_key, len(index), path)
    stats, _ = extract_stats(
        _uint8_batches(images, index, batch_size), extractor, total=len(index), progress=progress
    )
    stats.meta.update(data=data_key)
    stats.save(path)
    # the cached file, not the in-memory sums: the first run and every later one get the same numbers
    return FeatureStats.load(path)


def reference_features(
    images: np.ndarray,
    data_key: str,
    n: int,
    extractor: FeatureExtractor,
    cache_dir: Path,
    batch_size: int = 100,
    progress: bool = True,
    max_keep: int = MAX_KEEP,
) -> tuple[FeatureStats, torch.Tensor]:
    """``reference_stats`` and the features (float32, CPU) of a seeded subset of at most ``max_keep``
    of the same images, cached beside them. With nothing cached one network pass gives both; with
    the statistics cached already only the kept images go through the network."""
    index = _reference_index(images, n)
    keep = select(len(index), max_keep)
    path = features_path(Path(cache_dir), data_key, len(index), extractor.name, len(keep))
    kept = _load_features(path, (len(keep), extractor.dims))
    if kept is None:
        stats_file = stats_path(Path(cache_dir), data_key, len(index), extractor.name)
        subset = stats_file.is_file()
        chosen, keep_at = (index[keep], np.arange(len(keep))) if subset else (index, keep)
        log.info("computing reference features of %s (%d kept) -> %s", data_key, len(keep), path)
        batches = _uint8_batches(images, chosen, batch_size)
        stats, kept, _ = extract_features(batches, extractor, keep_at, total=len(chosen), progress=progress)
        if not subset:  # this pass saw all n images: the statistics come free
            stats.meta.update(data=data_key)
            stats.save(stats_file)
        rows = kept.cpu().numpy()
        atomic_write(path, lambda f: np.savez(f, features=rows))
        kept = torch.from_numpy(rows)
    stats = reference_stats(images, data_key, n, extractor, cache_dir, batch_size, progress)
    return stats, kept


def _reference_index(images: np.ndarray, n: int) -> np.ndarray:
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) < 2:
        raise DataError(f"expected at least 2 uint8 images [N, C, R, R], got {images.dtype} {images.shape}")
    if n < 2:
        raise ConfigError(f"FID needs at least 2 images, got n={n}")
    return select(len(images), n)


def _load_features(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached features, or None (after a warning when the file exists but is unusable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            rows = np.asarray(f["features"], np.float32)
    except (OSError, ValueError, KeyError, EOFError) as err:
        log.warning("recomputing unreadable cached features %s: %s", path, err)
        return None
    if rows.shape != shape:
        log.warning("recomputing cached features %s: shape %s, expected %s", path, rows.shape, shape)
        return None
    return torch.from_numpy(rows)


def stats_path(cache_dir: Path, data_key: str, n: int, extractor_name: str) -> Path:
    return cache_path(cache_dir, {"data": data_key, "n": n, "extractor": extractor_name})


def features_path(cache_dir: Path, data_key: str, n: int, extractor_name: str, kept: int) -> Path:
    record = {"data": data_key, "n": n, "extractor": extractor_name, "kept": kept}
    return cache_path(cache_dir, record, prefix="features-")


def cache_path(cache_dir: Path, record: dict[str, Any], prefix: str = "") -> Path:
    """``<cache_dir>/fid_stats/<prefix><hash>.npz``, the hash over ``record`` plus the selection seed,
    ``STATS_VERSION`` and the feature pass's precision: everything a cached file depends on. Not the
    device: fp32 features on a CPU and a GPU agree to about 1e-6 (tests/test_inception.py checks it on
    a GPU), so statistics computed on either serve both."""
    full = {**record, "seed": SELECTION_SEED, "version": STATS_VERSION, "features": FEATURE_PRECISION}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / "fid_stats" / f"{prefix}{digest}.npz"


def _uint8_batches(images: np.ndarray, index: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(index), batch_size):
        batch = np.ascontiguousarray(images[index[start : start + batch_size]])
        yield torch.from_numpy(batch).to(torch.float32).div_(127.5).sub_(1.0)
