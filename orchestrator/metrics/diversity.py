"""GAN health beyond FID, from the features of the same Inception pass: KID, precision and recall,
density and coverage, NDB/K and a mode-collapse ratio.

Every metric is pure math on feature tensors ``[N, dims]``, computed on the device of the generated
features. The real side is a ``RealReference``: a seeded subset of real features with what depends
on them alone (k-NN radii, the NDB bins), built once per dataset on the driver and cached beside the
FID statistics (``metrics.reference.RealImages``). ``diversity_metrics`` is the one call an
evaluation makes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from orchestrator.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NEAREST_K = 3  # Kynkäänniemi et al.'s k for the k-NN manifolds (also used for density and coverage)
KID_SUBSETS = 100  # torch-fidelity's and the KID paper's subsets and subset size
KID_SUBSET_SIZE = 1000
KID_BATCH_ELEMENTS = 1 << 24  # kernel (and input) values per batched matmul: 128 MB of float64
NDB_BINS = 50
Z_CRITICAL = 1.959963984540054  # two-sided test at alpha = 0.05: the normal's 97.5% quantile
KMEANS_ITERATIONS = 40  # Lloyd iterations at most; they usually stop early, when no label changes
CHUNK = 1024  # rows per distance block: a block against 5000 points is 20 MB of float32
DIVERSITY_KEYS = ("kid", "kid_std", "precision", "recall", "density", "coverage", "ndb_k", "diversity_ratio")
# what a generator whose features are not finite (NaN images) scores: the worst of every metric
WORST = {
    **dict.fromkeys(DIVERSITY_KEYS, 0.0),
    "kid": math.inf,
    "ndb_k": 1.0,
}


# --- KID (Binkowski et al. 2018)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(x.y / dims + 1)^3``, the KID kernel, for every pair of rows (of every leading batch index)."""
    kernel = x @ y.transpose(-2, -1)
    return kernel.div_(x.shape[-1]).add_(1).pow_(3)  # in place: several times faster on the CPU


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between the rows of ``x`` ``[..., n, dims]`` and ``y``
    ``[..., m, dims]`` (can be negative): self-pairs are left out of both within-set means."""
    x, y = x.double(), y.double()  # the estimate is a small difference of large sums
    return _within(x) + _within(y) - 2 * polynomial_kernel(x, y).mean((-2, -1))


def _within(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-2]
    kernel = polynomial_kernel(x, x)
    return (kernel.sum((-2, -1)) - kernel.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, population std) of ``mmd2_unbiased`` over ``subsets`` seeded draws without replacement
    of ``min(subset_size, len(real), len(fake))`` rows from each side, as torch-fidelity does."""
    m = min(subset_size, len(real), len(fake))
    if m < 2 or subsets < 1:
        raise DataError(f"KID needs at least 2 features per side and 1 subset, got {m} and {subsets}")
    generator = torch.Generator().manual_seed(seed)
    draws = [(_rows(len(real), m, generator), _rows(len(fake), m, generator)) for _ in range(subsets)]
    # several subsets per batched matmul, far fewer (GPU) launches; bounded by kernel and input sizes
    group = max(1, KID_BATCH_ELEMENTS // (m * max(m, real.shape[1])))
    values = []
    for start in range(0, subsets, group):
        chosen = draws[start : start + group]
        at_real = torch.stack([r for r, _ in chosen]).to(real.device)
        at_fake = torch.stack([f for _, f in chosen]).to(fake.device)
        values.append(mmd2_unbiased(real[at_real], fake[at_fake]))
    stacked = torch.cat(values)
    return float(stacked.mean()), float(stacked.std(correction=0))


def _rows(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[:m]


def _draw(x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    return x[_rows(len(x), m, generator).to(x.device)]


# --- precision, recall (Kynkäänniemi et al. 2019), density, coverage (Naeem et al. 2020)


def knn_radii(x: torch.Tensor, k: int = NEAREST_K) -> torch.Tensor:
    """Each row's distance to its k-th nearest other row: the radius of its ball in the manifold."""
    if len(x) <= k:
        raise DataError(f"k-NN radii with k={k} need more than {k} features, got {len(x)}")
    # the (k+1)-th smallest distance skips the row itself (or one zero-distance duplicate of it)
    blocks = [torch.cdist(block, x).topk(k + 1, largest=False).values[:, k] for block in x.split(CHUNK)]
    return torch.cat(blocks)


def manifold_scores(
    real: torch.Tensor, fake: torch.Tensor, real_radii: torch.Tensor | None = None, k: int = NEAREST_K
) -> dict[str, float]:
    """precision: fake rows inside some real ball; recall: real rows inside some fake ball;
    density: fake-in-real-ball memberships / (k * fakes); coverage: real balls holding a fake row."""
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    fake_radii = knn_radii(fake, k)
    in_real = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    memberships = torch.zeros(len(fake), dtype=torch.int64, device=fake.device)
    recalled, covered = [], []
    for block, radii in zip(real.split(CHUNK), real_radii.split(CHUNK), strict=True):
        distances = torch.cdist(block, fake)  # [block, fakes]
        inside = distances <= radii[:, None]  # fake j in real i's ball
        in_real |= inside.any(0)
        memberships += inside.sum(0)
        covered.append(inside.any(1))
        recalled.append((distances <= fake_radii[None, :]).any(1))
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(torch.cat(recalled).double().mean()),
        "density": float(memberships.sum()) / (k * len(fake)),
        "coverage": float(torch.cat(covered).double().mean()),
    }


# --- mode collapse


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance over the ``n (n - 1)`` ordered pairs of distinct rows."""
    if len(x) < 2:
        raise DataError(f"a mean pairwise distance needs 2 features, got {len(x)}")
    total = 0.0
    for start in range(0, len(x), CHUNK):
        distances = torch.cdist(x[start : start + CHUNK], x)
        distances.diagonal(offset=start).zero_()  # a row's distance to itself, not exactly 0 in mm mode
        total += float(distances.double().sum())
    return total / (len(x) * (len(x) - 1))


def diversity_ratio(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> float:
    """Mean pairwise distance of the fakes over that of the reals, on seeded equal-size subsets:
    about 1 for a healthy generator, far below 1 for a collapsed one."""
    m = min(len(real), len(fake))
    generator = torch.Generator().manual_seed(seed)
    spread = mean_pairwise_distance(_draw(real, m, generator))
    if spread == 0:
        raise DataError("the real features are all identical: no spread to compare with")
    return mean_pairwise_distance(_draw(fake, m, generator)) / spread


# --- NDB/K (Richardson & Weiss 2018)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Centroids ``[k, dims]`` by k-means++ seeding (local generator) and Lloyd iterations; an
    empty cluster keeps its centroid. Deterministic for a seed on a given device."""
    if not 1 <= k <= len(x):
        raise ConfigError(f"k-means needs 1 <= k <= {len(x)} (the number of points), got k={k}")
    x = x.float()
    centroids = _kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    labels = None
    for _ in range(iterations):
        new_labels = assign_bins(x, centroids)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        centroids = _cluster_means(x, labels, centroids)
    return centroids


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    chosen = [int(torch.randint(len(x), (1,), generator=generator))]
    nearest = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        weights = nearest.double().cpu()  # the draw happens on the CPU generator, on any device
        if weights.sum() > 0:
            chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        else:  # fewer distinct points than k: any point will do
            chosen.append(int(torch.randint(len(x), (1,), generator=generator)))
        nearest = torch.minimum(nearest, ((x - x[chosen[-1]]) ** 2).sum(1))
    return x[chosen].clone()


def _cluster_means(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    # a one-hot matmul rather than index_add_, whose float atomics make CUDA results run-dependent
    onehot = torch.nn.functional.one_hot(labels, len(centroids)).double()
    counts = onehot.sum(0)[:, None]
    means = (onehot.T @ x.double()) / counts.clamp(min=1)
    return torch.where(counts > 0, means, centroids.double()).float()


def assign_bins(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest centroid."""
    return torch.cat([torch.cdist(block, centroids).argmin(1) for block in x.split(CHUNK)])


def bin_proportions(labels: torch.Tensor, bins: int) -> torch.Tensor:
    return torch.bincount(labels.cpu(), minlength=bins).double() / len(labels)


def proportion_z(p1: torch.Tensor, n1: int, p2: torch.Tensor, n2: int) -> torch.Tensor:
    """Two-proportion z statistic per bin, with the pooled proportion; 0 where both are 0 or 1."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = torch.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return torch.where(se > 0, (p1 - p2) / se.clamp(min=1e-300), torch.zeros_like(se))


def ndb_k(real_props: torch.Tensor, n_real: int, fake_props: torch.Tensor, n_fake: int) -> float:
    """Fraction of bins whose proportions differ significantly (|z| > ``Z_CRITICAL``)."""
    z = proportion_z(real_props.double().cpu(), n_real, fake_props.double().cpu(), n_fake)
    return float((z.abs() > Z_CRITICAL).double().mean())


def ndb_bins(n: int, bins: int = NDB_BINS) -> int:
    """``bins`` clipped so that each bin expects at least 10 real points (but at least 2 bins)."""
    return max(2, min(bins, n // 10))


# --- the real side, once per dataset


@dataclass(frozen=True)
class RealReference:
    """What the real side of ``diversity_metrics`` needs, as CPU tensors (it pickles to about
    ``4 n dims`` bytes, 40 MB at 5000 x 2048, for Ray's object store): real features, their k-NN
    radii, the NDB centroids and the real proportion in each bin; ``seed`` fixes the subset draws."""

    features: torch.Tensor  # [n, dims] float32
    radii: torch.Tensor  # [n]
    centroids: torch.Tensor  # [bins, dims]
    proportions: torch.Tensor  # [bins] float64, summing to 1
    seed: int = 0


def fit_reference(features: torch.Tensor, bins: int = NDB_BINS, seed: int = 0) -> RealReference:
    """Radii and NDB bins of ``features`` (on their device; ``bins`` clipped by ``ndb_bins``)."""
    features = features.float()
    if len(features) <= NEAREST_K:
        raise DataError(
            f"the diversity metrics need more than {NEAREST_K} real features, got {len(features)}"
        )
    k = ndb_bins(len(features), bins)
    centroids = kmeans(features, k, seed)
    proportions = bin_proportions(assign_bins(features, centroids), k)
    return RealReference(features.cpu(), knn_radii(features).cpu(), centroids.cpu(), proportions, seed)


# --- the one call an evaluation makes


def diversity_metrics(real: RealReference, fake_features: torch.Tensor) -> dict[str, float]:
    """Every metric of ``DIVERSITY_KEYS`` between the reference and generated features (on the
    device of ``fake_features``); non-finite features score ``WORST``."""
    fake = fake_features.detach().float()
    if fake.ndim != 2 or fake.shape[1] != real.features.shape[1] or len(fake) <= NEAREST_K:
        raise DataError(
            f"expected more than {NEAREST_K} generated features [N, {real.features.shape[1]}], "
            f"got {tuple(fake.shape)}"
        )
    if not bool(fake.isfinite().all()):
        return dict(WORST)
    features = real.features.to(fake.device)
    kid_mean, kid_std = kid(features, fake, seed=real.seed)
    bins = bin_proportions(assign_bins(fake, real.centroids.to(fake.device)), len(real.centroids))
    report = {
        "kid": kid_mean,
        "kid_std": kid_std,
        **manifold_scores(features, fake, real.radii.to(fake.device)),
        "ndb_k": ndb_k(real.proportions, len(features), bins, len(fake)),
        "diversity_ratio": diversity_ratio(features, fake, real.seed),
    }
    return {key: report[key] for key in DIVERSITY_KEYS}
