"""Fréchet Inception Distance (Heusel et al. 2017): pure math, streaming statistics, generated side.

The network is passed in (any ``FeatureExtractor``), so everything here is tested with tiny fakes.
FID depends on the sample count (it is biased upwards for small N), so the metric's name carries it
(``fid5k``) and statistics record the count they were computed on. The same pass can also keep raw
features of up to ``MAX_KEEP`` images (``generated_features``) for the metrics that need more than
moments (``metrics.diversity``). The real side, cached per dataset, is ``metrics.reference``.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from orchestrator.atomic import atomic_write
from orchestrator.errors import ConfigError, DataError, first_line
from orchestrator.metrics.inception import FeatureExtractor

SELECTION_SEED = 0  # which n images of a larger set are used; fixed so every run picks the same
MAX_KEEP = 5000  # raw features kept per side: 40 MB of float32 at 2048 dims, cheap to ship to trials
Array = np.ndarray | torch.Tensor


def frechet_distance(
    mu1: Array, sigma1: Array, mu2: Array, sigma2: Array, factor1: Array | None = None
) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)`` in float64.

    numpy arrays are computed on the CPU, torch tensors on their device (so on the GPU there).
    tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of ``F^T S2 F`` for any
    ``S1 = F F^T`` (similar to S1 S2, but symmetric positive semi-definite): no 2048x2048 sqrtm,
    which is several times slower and which pytorch-fid needs to retry when S1 S2 is singular.
    ``factor1`` is such an F when known, e.g. centred features / sqrt(n - 1) of n < dims images:
    the eigenproblem is then n x n (``FeatureStats.factor``).

    Non-finite statistics (a diverged generator's NaN images) give ``inf``: the worst score, which
    lets an early-stopping scheduler stop the trial, where NaN would be ignored.
    """
    device = next((a.device for a in (sigma1, sigma2) if isinstance(a, torch.Tensor)), None)
    m1, s1, m2, s2 = (_f64(a, device) for a in (mu1, sigma1, mu2, sigma2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise DataError(
            f"statistics do not match: means {tuple(m1.shape)} and {tuple(m2.shape)}, "
            f"covariances {tuple(s1.shape)} and {tuple(s2.shape)}"
        )
    if not all(bool(t.isfinite().all()) for t in (m1, s1, m2, s2)):
        return math.inf
    diff = m1 - m2
    f1 = None if factor1 is None else _f64(factor1, device)
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * _trace_sqrt_product(s1, s2, f1))


def _trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor, f1: torch.Tensor | None) -> torch.Tensor:
    if f1 is None:
        f1, info = torch.linalg.cholesky_ex(s1)
        if int(info) != 0:  # singular S1 (fewer samples than dims): factor it by its eigenvectors
            w, v = torch.linalg.eigh(s1)
            f1 = v * w.clamp(min=0).sqrt()
    m = f1.T @ s2 @ f1
    eigenvalues = torch.linalg.eigvalsh((m + m.T) / 2)  # rounding leaves m a hair asymmetric
    # and leaves tiny negative eigenvalues where the product is singular
    return eigenvalues.clamp(min=0).sqrt().sum()


def _f64(a: Array, device: torch.device | None) -> torch.Tensor:
    return torch.as_tensor(a).detach().to(device=device, dtype=torch.float64)


class FeatureStats:
    """Running count, float64 sum and float64 sum of outer products of features: the mean and the
    covariance (ddof=1, as pytorch-fid's ``np.cov``) of any number of images in O(dims^2) memory.

    Accumulates on the device of the features it is given; pickles to the CPU. While there are no
    more images than dims it also keeps their features (no more memory than the outer products),
    which makes the FID of a small sample an n x n eigenproblem (``factor``).
    ``meta`` records provenance (extractor, data) in saved files. ``n == 0`` after ``load`` means the
    file did not record the count (pytorch-fid's own ``.npz`` files have only ``mu`` and ``sigma``).
    """

    def __init__(self, dims: int, meta: dict[str, str] | None = None) -> None:
        self.dims = dims
        self.n = 0
        self.meta = dict(meta or {})
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._loaded: tuple[torch.Tensor, torch.Tensor] | None = None  # exact moments from a file
        self._rows: list[torch.Tensor] | None = []  # the features themselves, while n <= dims

    def update(self, features: Array) -> None:
        x = torch.as_tensor(features).detach().to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dims:
            raise DataError(f"expected features [N, {self.dims}], got {tuple(x.shape)}")
        if self._loaded is not None:
            self._unfreeze()
        if self._sum is None or self._outer is None:
            self._sum = torch.zeros(self.dims, dtype=torch.float64, device=x.device)
            self._outer = torch.zeros(self.dims, self.dims, dtype=torch.float64, device=x.device)
        x = x.to(self._sum.device)
        self._sum += x.sum(0)
        self._outer += x.T @ x
        if self._rows is not None and self.n + len(x) <= self.dims:
            self._rows.append(x)
        else:
            self._rows = None
        self.n += x.shape[0]

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) as float64 tensors on this object's device."""
        if self._loaded is not None:
            return self._loaded
        if self.n < 2 or self._sum is None or self._outer is None:
            raise DataError(f"FID statistics need at least 2 images, got {self.n}")
        mu = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, sigma

    def factor(self) -> torch.Tensor | None:
        """``F`` ``[dims, n]`` with ``F F^T`` = the covariance, while the features are at hand."""
        if not self._rows or self.n < 2:
            return None
        x = torch.cat(self._rows)
        return (x - x.mean(0)).T / math.sqrt(self.n - 1)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mu, sigma = self.moments()
        return mu.cpu().numpy(), sigma.cpu().numpy()

    def save(self, path: str | Path) -> Path:
        """Write ``mu``, ``sigma`` (pytorch-fid's keys), ``n`` and ``meta``, atomically."""
        mu, sigma = self.mean_cov()
        meta = json.dumps(self.meta, sort_keys=True)
        return atomic_write(Path(path), lambda f: np.savez(f, mu=mu, sigma=sigma, n=self.n, meta=meta))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Statistics saved by ``save``, or pytorch-fid's ``.npz`` (``mu``/``sigma`` only)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                if any(np.iscomplexobj(f[key]) for key in ("mu", "sigma")):  # a cast would drop a part
                    raise ValueError("mu or sigma is complex")
                mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
                n = int(f["n"]) if "n" in f.files else 0
                meta = dict(json.loads(str(f["meta"]))) if "meta" in f.files else {}
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: not a statistics file with 'mu' and 'sigma' ({first_line(err)})") \
                from None
        d = mu.shape[0] if mu.ndim == 1 else -1
        if d < 1 or sigma.shape != (d, d):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise DataError(f"{path}: mu or sigma holds NaN or infinity: no FID can be computed from it")
        return cls._of_moments(torch.from_numpy(mu), torch.from_numpy(sigma), n, meta)

    def frozen(self) -> FeatureStats:
        """These statistics as ``load`` reads them back from ``save``: float64 moments on the CPU,
        without the running sums or the small-sample features."""
        mu, sigma = self.moments()
        return FeatureStats._of_moments(mu.cpu(), sigma.cpu(), self.n, self.meta)

    @classmethod
    def _of_moments(cls, mu: torch.Tensor, sigma: torch.Tensor, n: int, meta: dict[str, str]) -> FeatureStats:
        stats = cls(mu.shape[0], meta)
        stats.n, stats._rows, stats._loaded = n, None, (mu, sigma)
        return stats

    def _unfreeze(self) -> None:
        """Loaded moments back to running sums, so more features can be added."""
        if self.n < 2 or self._loaded is None:
            raise DataError("cannot add features to statistics whose image count is unknown")
        mu, sigma = self._loaded
        self._sum = mu * self.n
        self._outer = sigma * (self.n - 1) + self.n * torch.outer(mu, mu)
        self._loaded = None

    def __getstate__(self) -> dict[str, Any]:
        # statistics travel to other processes (Ray's object store): never as CUDA tensors
        state = dict(vars(self))
        for key in ("_sum", "_outer"):
            state[key] = None if state[key] is None else state[key].cpu()
        if self._loaded is not None:
            state["_loaded"] = (self._loaded[0].cpu(), self._loaded[1].cpu())
        if self._rows is not None:
            state["_rows"] = [rows.cpu() for rows in self._rows]
        return state


def metric_name(n: int) -> str:
    """``fid5k`` for 5000 images, ``fid10k``, ``fid500``, ``fid2048``: the count is in the name."""
    if n < 1:
        raise ConfigError(f"a FID sample count must be positive, got {n}")
    return f"fid{n // 1000}k" if n % 1000 == 0 else f"fid{n}"


def fid(real: FeatureStats, fake: FeatureStats) -> float:
    """FID between two sets of statistics, on the device where ``fake`` was accumulated."""
    device = fake.moments()[1].device
    # the distance is symmetric: put a side whose features are at hand (few images) first
    first, second = (fake, real) if fake.factor() is not None else (real, fake)
    (mu1, sigma1), (mu2, sigma2) = first.moments(), second.moments()
    return frechet_distance(mu1, sigma1.to(device), mu2, sigma2.to(device), first.factor())


def select(total: int, n: int) -> np.ndarray:
    """Indices of the ``n`` images used from ``total``: all when n >= total, else the first n of a
    fixed seeded permutation (sorted, for memory locality; the statistics do not depend on order)."""
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(SELECTION_SEED).permutation(total)[:n])


def extract_stats(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    total: int | None = None,
    progress: bool = False,
    keep_logits: bool = False,
) -> tuple[FeatureStats, torch.Tensor | None]:
    """Statistics of the features of every batch, and their logits (on the CPU) if asked."""
    none = np.zeros(0, np.int64)
    stats, _, logits = extract_features(batches, extractor, none, total, progress, keep_logits)
    return stats, logits


def extract_features(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    keep: np.ndarray,
    total: int | None = None,
    progress: bool = False,
    keep_logits: bool = False,
) -> tuple[FeatureStats, torch.Tensor, torch.Tensor | None]:
    """``extract_stats`` plus the features (float32, on the extractor's device) of the images at the
    sorted positions ``keep`` of the stream: raw features from the same network pass."""
    stats = FeatureStats(extractor.dims, {"extractor": extractor.name})
    rows: list[torch.Tensor] = []
    kept_logits: list[torch.Tensor] = []
    seen = 0
    with tqdm(total=total, disable=not progress, file=sys.stderr, unit="img", desc="inception") as bar:
        for batch in batches:
            features, logits = extractor(batch)
            stats.update(features)
            lo, hi = np.searchsorted(keep, [seen, seen + len(features)])
            if hi > lo:
                at = torch.from_numpy(keep[lo:hi] - seen).to(features.device)
                rows.append(features.detach().float()[at])
            if keep_logits and logits is not None:
                kept_logits.append(logits.float().cpu())
            seen += len(features)
            bar.update(len(batch))
    kept = torch.cat(rows) if rows else torch.zeros(0, extractor.dims)
    return stats, kept, torch.cat(kept_logits) if kept_logits else None


def generated_stats(
    sample: Callable[[int], torch.Tensor], n: int, extractor: FeatureExtractor, batch_size: int = 100
) -> tuple[FeatureStats, torch.Tensor | None]:
    """Statistics of ``n`` images drawn as ``sample(b)`` (float in [-1, 1]) in batches of at most
    ``batch_size``; the logits too (for the Inception Score) when the extractor has the head."""
    stats, _, logits = generated_features(sample, n, extractor, batch_size, max_keep=0)
    return stats, logits


def generated_features(
    sample: Callable[[int], torch.Tensor],
    n: int,
    extractor: FeatureExtractor,
    batch_size: int = 100,
    max_keep: int = MAX_KEEP,
) -> tuple[FeatureStats, torch.Tensor, torch.Tensor | None]:
    """``generated_stats`` plus the features of the first ``min(n, max_keep)`` images, on the
    extractor's device: the latents are i.i.d., so the first images are a random sample."""
    if n < 2:
        raise ConfigError(f"FID needs at least 2 images, got n={n}")
    keep = np.arange(min(n, max(max_keep, 0)))
    batches = _sampled(sample, n, batch_size)
    return extract_features(batches, extractor, keep, keep_logits=extractor.has_classifier)


def _sampled(sample: Callable[[int], torch.Tensor], n: int, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, n, batch_size):
        want = min(batch_size, n - start)
        with torch.no_grad():
            images = sample(want)
        if images.shape[0] != want:
            raise DataError(f"the sampler returned {images.shape[0]} images, {want} were asked for")
        yield as_8bit(images)


def as_8bit(images: torch.Tensor) -> torch.Tensor:
    """Generated images scored as they would be saved: rounded to 8 bits, as the real images are
    and as pytorch-fid (which reads PNGs) scores them, so the FID compares with published ones."""
    return images.float().clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1)
