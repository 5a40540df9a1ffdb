"""KID, precision/recall, density/coverage, NDB/K and the diversity ratio, on synthetic features:
analytic cases, constructed mode collapse, and the cached real reference through a tiny fake network."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch

from orchestrator.metrics import diversity
from orchestrator.metrics import reference as reference_module
from orchestrator.metrics.diversity import (
    DIVERSITY_KEYS,
    RealReference,
    diversity_metrics,
    fit_reference,
    kid,
    kmeans,
    mmd2_unbiased,
    ndb_bins,
    ndb_k,
    proportion_z,
)
from orchestrator.metrics.reference import RealImages


def gaussian(n: int, dims: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dims, generator=generator) + shift


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return gaussian(500, 8, seed=0)


@pytest.fixture(scope="module")
def reference(real: torch.Tensor) -> RealReference:
    return fit_reference(real, bins=50, seed=0)


# --- analytic cases


def test_identical_sets(real: torch.Tensor, reference: RealReference) -> None:
    scores = diversity_metrics(reference, real.clone())
    assert list(scores) == list(DIVERSITY_KEYS)
    assert all(type(value) is float for value in scores.values())
    # each point lies in its own ball, on either side: exactly 1, not approximately
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["ndb_k"] == 0.0  # the same points fall into the same bins
    assert scores["diversity_ratio"] == pytest.approx(1.0, rel=1e-6)
    # not exactly 0: the unbiased estimate of identical sets (all the rows, every subset) is
    # 2 (S - n D) / (n^2 (n - 1)), S the sum of all kernel values, D that of the diagonal
    n, k = len(real), diversity.polynomial_kernel(real.double(), real.double())
    expected = 2 * float(k.sum() - n * k.trace()) / (n**2 * (n - 1))
    assert scores["kid"] == pytest.approx(expected, rel=1e-9) and abs(scores["kid"]) < 0.05


def test_disjoint_sets(real: torch.Tensor, reference: RealReference) -> None:
    scores = diversity_metrics(reference, gaussian(500, 8, seed=1, shift=20.0))
    assert scores["precision"] == scores["recall"] == scores["coverage"] == scores["density"] == 0.0
    assert scores["kid"] > 100
    assert scores["ndb_k"] > 0.7  # the bins with a handful of real points cannot reach significance


# --- mode collapse


def test_healthy_generator(reference: RealReference) -> None:
    scores = diversity_metrics(reference, gaussian(500, 8, seed=2))  # a resample of the real law
    assert scores["recall"] > 0.8 and scores["precision"] > 0.8
    assert scores["ndb_k"] < 0.2
    assert scores["diversity_ratio"] == pytest.approx(1.0, abs=0.05)
    assert abs(scores["kid"]) < 0.05


def test_collapse_to_one_point(real: torch.Tensor, reference: RealReference) -> None:
    fake = real[:1] + 1e-3 * gaussian(500, 8, seed=3)
    scores = diversity_metrics(reference, fake)
    assert scores["recall"] < 0.1 and scores["coverage"] < 0.1
    assert scores["ndb_k"] > 0.5
    assert scores["diversity_ratio"] < 0.2
    assert scores["precision"] > 0.9  # collapsed, yet realistic: why precision alone is not enough


def test_collapse_to_three_modes(real: torch.Tensor, reference: RealReference) -> None:
    fake = real[torch.arange(500) % 3] + 1e-3 * gaussian(500, 8, seed=4)
    scores = diversity_metrics(reference, fake)
    assert scores["recall"] < 0.1
    assert scores["ndb_k"] > 0.5
    # three far-apart modes still spread about 2/3 as much as the data: NDB and recall catch them
    assert scores["diversity_ratio"] < 0.9


def test_non_finite_features_score_worst(reference: RealReference) -> None:
    fake = gaussian(50, 8, seed=5)
    fake[3, 2] = math.nan
    assert diversity_metrics(reference, fake) == diversity.WORST


# --- KID


def test_mmd2_matches_direct_definition() -> None:
    x, y = gaussian(7, 5, seed=6).double(), gaussian(9, 5, seed=7, shift=0.5).double()

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b / 5 + 1) ** 3)

    def within(z: torch.Tensor) -> float:
        pairs = [(i, j) for i, j in itertools.product(range(len(z)), repeat=2) if i != j]
        return sum(k(z[i], z[j]) for i, j in pairs) / len(pairs)

    between = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    expected = within(x) + within(y) - 2 * between
    assert float(mmd2_unbiased(x, y)) == pytest.approx(expected, rel=1e-12)
    # subsets as large as the sets are permutations of them: the whole-set estimate, std 0
    mean, std = kid(x[:7], y[:7], subsets=5)
    assert mean == pytest.approx(float(mmd2_unbiased(x[:7], y[:7])), rel=1e-12) and std < 1e-12


def test_kid_is_unbiased_for_the_same_law() -> None:
    mean, std = kid(gaussian(600, 16, seed=8), gaussian(600, 16, seed=9), subset_size=100)
    assert abs(mean) < 3 * std / math.sqrt(10)  # within 3 standard errors of 0 (subsets overlap)


def test_kid_grows_with_mean_shift() -> None:
    x = gaussian(300, 16, seed=10)
    values = [kid(x, gaussian(300, 16, seed=11, shift=s), subset_size=100)[0] for s in (0, 0.2, 0.5, 1, 2)]
    assert values == sorted(values) and values[-1] > 10 * abs(values[0])


# --- k-means and NDB


def test_kmeans_is_seeded_and_finds_separated_clusters() -> None:
    centres = 10 * torch.eye(4, 6)
    points = centres.repeat_interleave(50, 0) + 0.1 * gaussian(200, 6, seed=12)
    first, again = kmeans(points, 4, seed=3), kmeans(points, 4, seed=3)
    assert torch.equal(first, again)
    distance = torch.cdist(centres, first)
    assert distance.min(1).values.max() < 0.1  # every centre has a centroid on it
    assert sorted(distance.argmin(1).tolist()) == [0, 1, 2, 3]  # and each its own


def test_proportion_z_by_hand() -> None:
    real, n_real = torch.tensor([0.5, 0.5]), 100
    far, near = torch.tensor([0.7, 0.3]), torch.tensor([0.55, 0.45])
    # pooled 0.6: se = sqrt(0.6 * 0.4 * (1/100 + 1/100)) = 0.0692820; z = -0.2 / se = -2.88675
    assert proportion_z(real, n_real, far, 100).tolist() == pytest.approx([-2.886751, 2.886751], rel=1e-6)
    # pooled 0.525: se = sqrt(0.525 * 0.475 * 0.02) = 0.0706222; z = -0.05 / se = -0.707992
    assert proportion_z(real, n_real, near, 100).tolist() == pytest.approx([-0.707992, 0.707992], rel=1e-6)
    assert ndb_k(real, n_real, far, 100) == 1.0 and ndb_k(real, n_real, near, 100) == 0.0
    empty = torch.tensor([0.0, 1.0])  # both sides empty in a bin: no evidence, not a difference
    assert proportion_z(empty, 10, empty, 20).tolist() == [0.0, 0.0]


def test_ndb_bins_are_clipped_for_small_sets() -> None:
    assert [ndb_bins(n) for n in (5, 25, 200, 5000)] == [2, 2, 20, 50]


def test_reference_pickles_small(reference: RealReference) -> None:
    blob = pickle.dumps(reference)
    assert len(blob) < 1.2 * reference.features.numel() * 4 + 10_000
    again = pickle.loads(blob)
    fake = gaussian(200, 8, seed=13)
    assert diversity_metrics(again, fake) == diversity_metrics(reference, fake)


# --- the cached real side, through a tiny fake network


class PixelExtractor:
    """A fake network: the first 8 pixel values as features; counts the images it sees."""

    name = "fake-pixels"
    dims = 8
    has_classifier = False

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.seen += len(images)
        return images.flatten(1)[:, : self.dims].float(), None


def test_real_reference_is_cached_and_keyed(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(0).integers(0, 256, (300, 1, 4, 4), dtype=np.uint8)
    fits: list[int] = []

    def counted(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
        fits.append(k)
        return kmeans(x, k, seed)

    monkeypatch.setattr(diversity, "kmeans", counted)
    net = PixelExtractor()
    stats, ref = RealImages(images, "toy", 250, net, tmp_path, progress=False).reference(max_keep=200)
    assert (stats.n, net.seen, fits, ref.features.shape) == (250, 250, [20], (200, 8))  # one pass, one fit
    stats, again = RealImages(images, "toy", 250, net, tmp_path, progress=False).reference(max_keep=200)
    assert (net.seen, fits) == (250, [20])  # all from the cache
    for key in ("features", "radii", "centroids", "proportions"):
        assert torch.equal(getattr(ref, key), getattr(again, key))
    RealImages(images, "toy", 250, net, tmp_path, progress=False).reference(bins=5, max_keep=200)
    RealImages(images, "toy", 100, net, tmp_path, progress=False).reference(max_keep=200)
    assert fits == [20, 5, 10]  # another K, another n: another entry
    assert len(list((tmp_path / "fid_stats").glob("diversity-*.npz"))) == 3


def test_real_reference_writes_atomically(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(1).integers(0, 256, (100, 1, 4, 4), dtype=np.uint8)
    net = PixelExtractor()
    RealImages(images, "toy", 100, net, tmp_path, progress=False).reference(bins=4)
    before = {p.name: p.read_bytes() for p in (tmp_path / "fid_stats").iterdir()}

    def broken(file, **arrays) -> None:
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(reference_module.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        RealImages(images, "toy", 100, net, tmp_path, progress=False).reference(bins=3)
    after = {p.name: p.read_bytes() for p in (tmp_path / "fid_stats").iterdir()}
    assert after == before  # old files untouched, no partial file and no temporary left behind
