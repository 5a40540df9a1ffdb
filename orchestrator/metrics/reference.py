"""The real side of every metric, computed once per dataset and cached on disk: ``RealImages``.

Its ``stats`` are the moments of a seeded subset of ``n`` real images (FID's reference), its
``features`` also the raw features of up to ``MAX_KEEP`` of them, its ``reference`` the
``RealReference`` the diversity metrics compare against; each from at most one network pass. Files
live under ``<cache_dir>/fid_stats/``, named by a hash of everything they depend on (``cache_path``)
and written atomically, so trials only ever read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.atomic import atomic_write
from orchestrator.errors import ConfigError, DataError
from orchestrator.metrics.diversity import NDB_BINS, NEAREST_K, RealReference, fit_reference, ndb_bins
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


@dataclass(frozen=True)
class RealImages:
    """The real side of every metric for one dataset: its decoded images, the ``n`` of them a FID
    uses (a seeded subset), the network, and where what is computed from them is cached. Each
    method makes at most one network pass and caches what it computed."""

    images: np.ndarray  # [N, C, R, R] uint8
    data_key: str  # names the images in every cache key
    n: int
    extractor: FeatureExtractor
    cache_dir: Path
    batch_size: int = 100
    progress: bool = True

    def stats(self) -> FeatureStats:
        """Statistics of the ``n`` images (all, with fewer, and ``stats.n`` says so), cached under
        ``<cache_dir>/fid_stats/``."""
        index = self._index()
        if len(index) < self.n:
            have, want = len(index), self.n
            log.warning("only %d real images, fewer than n=%d: the reference statistics use all of them "
                        "(FID at n=%d is biased differently from n=%d)", have, want, have, want)
        path = self._stats_path(len(index))
        if path.is_file():
            try:
                return FeatureStats.load(path)
            except DataError as err:
                log.warning("recomputing unreadable cached statistics: %s", err)
        log.info("computing FID reference statistics of %s on %d images -> %s", self.data_key, len(index),
                 path)
        stats, _ = extract_stats(self._batches(index), self.extractor, total=len(index),
                                 progress=self.progress)
        return self._save(stats, path)

    def features(self, max_keep: int = MAX_KEEP) -> tuple[FeatureStats, torch.Tensor]:
        """``stats()`` and the features (float32, CPU) of a seeded subset of at most ``max_keep`` of
        the same images, cached beside them. With nothing cached one network pass gives both; with
        the statistics cached already only the kept images go through the network."""
        index = self._index()
        keep = select(len(index), max_keep)
        path = features_path(Path(self.cache_dir), self.data_key, len(index), self.extractor.name, len(keep))
        kept = _load_features(path, (len(keep), self.extractor.dims))
        if kept is not None:
            return self.stats(), kept
        stats_file = self._stats_path(len(index))
        if stats_file.is_file():  # only the kept images go through the network
            stats = self.stats()
            chosen, keep_at = index[keep], np.arange(len(keep))
        else:  # this pass sees all n images: the statistics come free
            stats, chosen, keep_at = None, index, keep
        log.info("computing reference features of %s (%d kept) -> %s", self.data_key, len(keep), path)
        seen, kept, _ = extract_features(self._batches(chosen), self.extractor, keep_at, total=len(chosen),
                                         progress=self.progress)
        rows = kept.cpu().numpy()
        atomic_write(path, lambda f: np.savez(f, features=rows))
        return stats or self._save(seen, stats_file), torch.from_numpy(rows)

    def reference(self, bins: int = NDB_BINS, seed: int = 0, max_keep: int = MAX_KEEP,
                  device: str | torch.device = "cpu") -> tuple[FeatureStats, RealReference]:
        """The FID statistics and the ``RealReference`` of the same images; its radii and k-means fit
        (on ``device``) are cached beside the statistics, keyed by everything they depend on."""
        stats, features = self.features(max_keep)
        k = ndb_bins(len(features), bins)
        record = {"data": self.data_key, "n": stats.n, "extractor": self.extractor.name,
                  "kept": len(features), "bins": k, "kmeans_seed": seed, "nearest_k": NEAREST_K}
        path = cache_path(Path(self.cache_dir), record, prefix="diversity-")
        cached = _load_reference(path, features, k, seed)
        if cached is not None:
            return stats, cached
        log.info("fitting %d NDB bins on %d real features of %s -> %s", k, len(features), self.data_key, path)
        fitted = fit_reference(features.to(device), k, seed)
        arrays = {key: getattr(fitted, key).numpy() for key in ("radii", "centroids", "proportions")}
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return stats, fitted

    def _index(self) -> np.ndarray:
        images, n = self.images, self.n
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) < 2:
            raise DataError(f"expected at least 2 uint8 images [N, C, R, R], got {images.dtype} "
                            f"{images.shape}")
        if n < 2:
            raise ConfigError(f"FID needs at least 2 images, got n={n}")
        return select(len(images), n)

    def _stats_path(self, n: int) -> Path:
        return stats_path(Path(self.cache_dir), self.data_key, n, self.extractor.name)

    def _save(self, stats: FeatureStats, path: Path) -> FeatureStats:
        """Cache ``stats`` and return them as every later run will read them: the moments, frozen
        (the running sums of a small sample would take another, if equal, route to a FID)."""
        stats.meta.update(data=self.data_key)
        stats.save(path)
        return stats.frozen()

    def _batches(self, index: np.ndarray) -> Iterator[torch.Tensor]:
        for start in range(0, len(index), self.batch_size):
            batch = np.ascontiguousarray(self.images[index[start : start + self.batch_size]])
            yield torch.from_numpy(batch).to(torch.float32).div_(127.5).sub_(1.0)


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


def _load_reference(path: Path, features: torch.Tensor, bins: int, seed: int) -> RealReference | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            radii, centroids, props = (torch.from_numpy(f[k]) for k in ("radii", "centroids", "proportions"))
    except (OSError, ValueError, KeyError, EOFError) as err:
        log.warning("refitting unreadable cached NDB bins %s: %s", path, err)
        return None
    shapes = (radii.shape, centroids.shape, props.shape)
    if shapes != ((len(features),), (bins, features.shape[1]), (bins,)):
        log.warning("refitting cached NDB bins %s: shapes do not match the features", path)
        return None
    return RealReference(features, radii, centroids, props, seed)
