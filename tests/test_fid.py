"""FID math, feature statistics, cached reference statistics and the Inception Score, with fakes."""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import numpy as np
import pytest
import torch
from fakes import MomentFeatures
from pytorch_fid.fid_score import calculate_frechet_distance

from orchestrator.errors import ConfigError, DataError
from orchestrator.metrics import frechet as fidlib
from orchestrator.metrics import reference
from orchestrator.metrics.frechet import (
    FeatureStats,
    as_8bit,
    extract_features,
    fid,
    frechet_distance,
    generated_features,
    generated_stats,
    metric_name,
)
from orchestrator.metrics.inception_score import inception_score
from orchestrator.metrics.reference import RealImages, features_path, stats_path


def features(n: int, dims: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Correlated, non-negative, skewed features, like pool3 activations of real images."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dims, dims)) / math.sqrt(dims)
    return scale * np.maximum(rng.standard_normal((n, dims)) @ mixing + 0.3, 0.0)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


class CountingExtractor:
    """A fake network: per-channel means and stds as 6 features; counts the images it sees."""

    name = "fake-moments"
    dims = 6

    def __init__(self, classes: int = 0) -> None:
        self.seen = 0
        self.has_classifier = classes > 0
        self.classes = classes

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.seen += len(images)
        x = images.float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        feats = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        logits = feats[:, :1].repeat(1, self.classes) if self.has_classifier else None
        return feats, logits


# --- the Fréchet distance


def test_equal_covariances_give_squared_mean_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 8))
    sigma = np.cov(a, rowvar=False)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_identical_sets_give_zero() -> None:
    mu, sigma = moments(features(300, 64, 1))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_diagonal_case_matches_closed_form() -> None:
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])  # one zero variance: singular
    expected = float(np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2)))
    assert frechet_distance(np.zeros(3), np.diag(v1), np.zeros(3), np.diag(v2)) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "dims"), [(1200, 256), (100, 256), (30, 512)])
def test_matches_pytorch_fid(n: int, dims: int) -> None:
    """Full-rank and singular (n < dims) covariances: the case pytorch-fid retries with an offset."""
    mu1, s1 = moments(features(n, dims, 2))
    mu2, s2 = moments(features(n, dims, 3, scale=1.2))
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("n", [3000, 100])
def test_matches_pytorch_fid_at_2048_dims(n: int) -> None:
    """Inception's size; slow only because of pytorch-fid's sqrtm (tens of seconds on 2 cores)."""
    test_matches_pytorch_fid(n, 2048)


def test_torch_inputs_and_mismatched_shapes() -> None:
    mu1, s1 = moments(features(200, 32, 4))
    mu2, s2 = moments(features(200, 32, 5))
    expected = frechet_distance(mu1, s1, mu2, s2)
    as_torch = [torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*as_torch) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DataError, match="do not match"):
        frechet_distance(mu1, s1, mu2[:16], s2[:16, :16])


def test_non_finite_statistics_give_inf() -> None:
    mu, sigma = moments(features(50, 8, 6))
    assert frechet_distance(mu, sigma, mu * np.nan, sigma) == math.inf


# --- streaming statistics


def test_stats_in_batches_equal_numpy_of_all_features() -> None:
    x = features(257, 48, 7)
    stats = FeatureStats(48)
    for start in range(0, len(x), 50):
        stats.update(torch.from_numpy(x[start : start + 50]).float())
    mu, sigma = moments(x.astype(np.float32).astype(np.float64))
    got_mu, got_sigma = stats.mean_cov()
    assert stats.n == 257
    np.testing.assert_allclose(got_mu, mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_sigma, sigma, rtol=1e-9, atol=1e-12)


def test_stats_reject_bad_input() -> None:
    stats = FeatureStats(4)
    with pytest.raises(DataError, match=r"\[N, 4\]"):
        stats.update(np.zeros((3, 5)))
    stats.update(np.zeros((1, 4)))
    with pytest.raises(DataError, match="at least 2"):
        stats.moments()


def test_save_load_round_trip(tmp_path) -> None:
    stats = FeatureStats(16, {"extractor": "fake"})
    stats.update(features(40, 16, 8))
    path = stats.save(tmp_path / "sub" / "stats.npz")
    loaded = FeatureStats.load(path)
    assert (loaded.n, loaded.dims, loaded.meta) == (40, 16, {"extractor": "fake"})
    for a, b in zip(stats.mean_cov(), loaded.mean_cov(), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.update(features(10, 16, 9))  # a loaded file can keep accumulating
    stats.update(features(10, 16, 9))
    np.testing.assert_allclose(loaded.mean_cov()[1], stats.mean_cov()[1], rtol=1e-9, atol=1e-12)
    again = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_array_equal(again.mean_cov()[0], loaded.mean_cov()[0])


def test_loads_pytorch_fid_npz(tmp_path) -> None:
    mu, sigma = moments(features(30, 8, 10))
    np.savez_compressed(tmp_path / "pfid.npz", mu=mu, sigma=sigma)
    stats = FeatureStats.load(tmp_path / "pfid.npz")
    assert stats.n == 0  # pytorch-fid does not record the count
    np.testing.assert_array_equal(stats.mean_cov()[1], sigma)
    with pytest.raises(DataError, match="unknown"):
        stats.update(np.zeros((2, 8)))


def test_load_rejects_statistics_that_are_not_finite(tmp_path) -> None:
    """Such a file gave FID inf and exit status 0."""
    mu, sigma = moments(features(30, 8, 10))
    sigma[2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", mu=mu, sigma=sigma)
    with pytest.raises(DataError, match="NaN or infinity"):
        FeatureStats.load(tmp_path / "nan.npz")


def test_load_rejects_other_files(tmp_path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    for name in ("junk.npz", "other.npz", "missing.npz"):
        with pytest.raises(DataError, match="mu"):
            FeatureStats.load(tmp_path / name)


def test_save_is_atomic(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = FeatureStats(4)
    stats.update(features(10, 4, 11))
    path = stats.save(tmp_path / "s.npz")
    before = path.read_bytes()

    def broken(file, **arrays) -> None:
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(fidlib.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        stats.save(path)
    assert path.read_bytes() == before  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # and no temporary left behind


# --- names, reference and generated statistics


@pytest.mark.parametrize(
    ("n", "name"), [(5000, "fid5k"), (10000, "fid10k"), (50000, "fid50k"), (500, "fid500"), (2048, "fid2048")]
)
def test_metric_name(n: int, name: str) -> None:
    assert metric_name(n) == name


def test_reference_stats_cached_per_n_and_extractor(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    net = CountingExtractor()
    first = RealImages(images, "toy", 20, net, tmp_path, batch_size=7, progress=False).stats()
    assert (first.n, net.seen) == (20, 20)
    again = RealImages(images, "toy", 20, net, tmp_path, batch_size=7, progress=False).stats()
    assert net.seen == 20  # from the cache: the network did not run
    np.testing.assert_array_equal(first.mean_cov()[1], again.mean_cov()[1])
    RealImages(images, "toy", 10, net, tmp_path, progress=False).stats()
    assert net.seen == 30  # another n is another entry
    other = CountingExtractor()
    other.name = "fake-other"
    RealImages(images, "toy", 20, other, tmp_path, progress=False).stats()
    assert other.seen == 20  # and so is another network
    assert len(list((tmp_path / "fid_stats").glob("*.npz"))) == 3


def test_reference_stats_subset_and_shortfall(tmp_path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (12, 1, 4, 4), dtype=np.uint8)
    net = CountingExtractor()
    stats = RealImages(images, "small", 100, net, tmp_path, progress=False).stats()
    assert stats.n == 12  # all images, and the count says so
    expected = FeatureStats(6)
    expected.update(net(torch.from_numpy(images).float() / 127.5 - 1)[0])
    np.testing.assert_allclose(stats.mean_cov()[1], expected.mean_cov()[1], atol=1e-10)
    assert np.array_equal(fidlib.select(12, 5), fidlib.select(12, 5))  # seeded: the same subset
    assert len(set(fidlib.select(1000, 100))) == 100


def test_generated_stats_batches_and_logits() -> None:
    asked: list[int] = []

    def sample(b: int) -> torch.Tensor:
        asked.append(b)
        return torch.rand(b, 3, 8, 8) * 2 - 1

    stats, logits = generated_stats(sample, 25, CountingExtractor(classes=4), batch_size=10)
    assert asked == [10, 10, 5] and stats.n == 25
    assert logits is not None and logits.shape == (25, 4)
    stats, logits = generated_stats(sample, 5, CountingExtractor(), batch_size=10)
    assert logits is None
    with pytest.raises(DataError, match="returned"):
        generated_stats(lambda b: torch.zeros(1, 3, 8, 8), 5, CountingExtractor())


def test_small_samples_use_their_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """With n <= dims the features factor the covariance: an n x n problem, pytorch-fid's value."""
    small, large = FeatureStats(512), FeatureStats(512)
    small.update(features(30, 512, 14))
    large.update(features(600, 512, 15)[:300])
    large.update(features(600, 512, 15)[300:])
    assert small.factor() is not None and large.factor() is None  # 600 > 512: features dropped
    factor = small.factor()
    np.testing.assert_allclose((factor @ factor.T).numpy(), small.mean_cov()[1], atol=1e-10)
    expected = calculate_frechet_distance(*large.mean_cov(), *small.mean_cov())
    monkeypatch.setattr(torch.linalg, "eigh", None)  # the thin factor needs no eigenvectors
    assert fid(large, small) == pytest.approx(expected, rel=1e-6)
    assert fid(small, large) == pytest.approx(expected, rel=1e-6)
    again = pickle.loads(pickle.dumps(small))
    assert again.factor() is not None and torch.equal(again.factor(), factor)


def test_fid_of_stats_matches_frechet_distance() -> None:
    real, fake = FeatureStats(16), FeatureStats(16)
    real.update(features(50, 16, 12))
    fake.update(features(50, 16, 13))
    assert fid(real, fake) == pytest.approx(frechet_distance(*real.mean_cov(), *fake.mean_cov()))
    with pytest.raises(ConfigError):
        metric_name(0)


# --- raw features from the same pass


def test_extract_features_keeps_positions_across_batches() -> None:
    x = torch.from_numpy(features(23, 6, 16)).float()
    net = CountingExtractor()
    images = [x[i : i + 5, :, None, None].reshape(-1, 3, 2, 1) for i in range(0, 23, 5)]  # 5,5,5,5,3
    want = np.array([0, 4, 5, 11, 22])
    stats, kept, logits = extract_features(images, net, want)
    everything = torch.cat([net(batch)[0] for batch in images])
    assert torch.equal(kept, everything[want]) and logits is None and stats.n == 23
    np.testing.assert_allclose(stats.mean_cov()[1], extract_stats_of(everything).mean_cov()[1], atol=1e-12)
    assert extract_features(images, net, np.zeros(0, np.int64))[1].shape == (0, 6)


def extract_stats_of(x: torch.Tensor) -> FeatureStats:
    stats = FeatureStats(x.shape[1])
    stats.update(x)
    return stats


def test_generated_features_keep_the_first_images() -> None:
    torch.manual_seed(0)
    pool = torch.rand(30, 3, 4, 4) * 2 - 1
    offset = 0

    def sample(b: int) -> torch.Tensor:
        nonlocal offset
        offset += b
        return pool[offset - b : offset]

    stats, kept, logits = generated_features(
        sample, 30, CountingExtractor(classes=3), batch_size=8, max_keep=12
    )
    assert kept.shape == (12, 6) and torch.equal(kept, CountingExtractor()(as_8bit(pool[:12]))[0])
    assert stats.n == 30 and logits is not None and logits.shape == (30, 3)
    offset = 0
    plain, _ = generated_stats(sample, 30, CountingExtractor(), batch_size=8)
    np.testing.assert_array_equal(plain.mean_cov()[1], stats.mean_cov()[1])


def test_generated_images_are_scored_as_the_pngs_they_would_be_saved_as(tmp_path) -> None:
    """pytorch-fid, like published FIDs, scores 8-bit image files: a generator's float output is
    scored after the same rounding, so the features equal those of its PNGs read back."""
    from PIL import Image

    from orchestrator.images import save_png, to_image

    pool = torch.rand(16, 3, 8, 8) * 2 - 1
    _, kept, _ = generated_features(lambda b: pool[:b], 16, CountingExtractor(), batch_size=16, max_keep=16)
    for i, image in enumerate(pool):
        save_png(to_image(image), tmp_path / f"{i:02d}.png")
    read = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / f"{i:02d}.png"))).permute(2, 0, 1)
                        for i in range(16)]).float() / 127.5 - 1
    assert torch.equal(kept, CountingExtractor()(read)[0])
    assert not torch.equal(kept, CountingExtractor()(pool)[0])  # the rounding is not a no-op


def test_reference_features_one_pass_then_cached(tmp_path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)
    net = CountingExtractor()
    real = RealImages(images, "toy", 30, net, tmp_path, batch_size=7, progress=False)
    stats, kept = real.features(max_keep=10)
    assert (stats.n, net.seen, kept.shape, kept.dtype) == (30, 30, (10, 6), torch.float32)  # one pass
    index = fidlib.select(40, 30)[fidlib.select(30, 10)]  # a seeded subset of the reference images
    expected = net(torch.from_numpy(images[index]).float() / 127.5 - 1)[0]
    torch.testing.assert_close(kept, expected)
    net.seen = 0
    again_stats, again = RealImages(images, "toy", 30, net, tmp_path, progress=False).features(max_keep=10)
    assert net.seen == 0 and torch.equal(again, kept)  # both from the cache
    np.testing.assert_array_equal(again_stats.mean_cov()[1], stats.mean_cov()[1])
    RealImages(images, "toy", 30, net, tmp_path, progress=False).features(max_keep=5)
    assert net.seen == 5  # statistics cached: only the kept images go through the network
    assert RealImages(images, "toy", 30, net, tmp_path, progress=False).stats().n == 30 and net.seen == 5


def test_stats_cache_key_holds_what_the_statistics_depend_on(tmp_path, monkeypatch) -> None:
    """The key is the record plus the selection seed, the version and the feature pass's precision
    (IEEE fp32): statistics a GPU computed in TF32 before the pass was made fp32 everywhere are not
    served as fp32 ones."""
    record = {"data": "toy", "n": 30, "extractor": "net", "seed": fidlib.SELECTION_SEED, "version": 1,
              "features": "fp32"}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]
    assert stats_path(tmp_path, "toy", 30, "net") == tmp_path / "fid_stats" / f"{digest}.npz"
    assert features_path(tmp_path, "toy", 30, "net", 10).name.startswith("features-")
    monkeypatch.setattr(reference, "FEATURE_PRECISION", "tf32")
    assert stats_path(tmp_path, "toy", 30, "net") != tmp_path / "fid_stats" / f"{digest}.npz"


# --- Inception Score


def test_inception_score_of_confident_uniform_predictions_is_k() -> None:
    k = 7
    logits = torch.full((700, k), -30.0)
    logits[torch.arange(700), torch.arange(700) % k] = 30.0  # each class equally often, one-hot
    mean, std = inception_score(logits)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6


def test_inception_score_of_identical_predictions_is_one() -> None:
    logits = torch.randn(1, 1008).repeat(200, 1)
    mean, std = inception_score(logits)
    assert mean == pytest.approx(1.0, abs=1e-9) and std < 1e-9


def test_inception_score_needs_enough_images() -> None:
    with pytest.raises(ConfigError, match="10 splits"):
        inception_score(torch.zeros(5, 1008))


def test_driver_reads_a_cached_real_side_without_the_network(tmp_path, monkeypatch) -> None:
    """Every search after the first on a dataset (and every --resume) reads the real side from the
    caches with the network known by name only; what it reads equals what the network's pass wrote,
    and with anything missing it says so before writing any statistics."""
    from orchestrator.config import RunSettings
    from orchestrator.metrics.inception import NameOnly
    from orchestrator.search import real_side

    class OnCpu(MomentFeatures):
        device = torch.device("cpu")

    settings = RunSettings(dataset="shapes", fid_n=40, cache_dir=tmp_path)
    by_name = NameOnly(MomentFeatures.name, MomentFeatures.dims)
    assert real_side.cached_real_side(settings, by_name, real_side.Clock()) is None
    assert not (tmp_path / "fid_stats").exists() or not any((tmp_path / "fid_stats").iterdir())

    monkeypatch.setattr(real_side, "load_inception", lambda weights, device: OnCpu())
    data, name, stats, real_ref, _ = real_side.prepare_real_side(settings, None)
    clock = real_side.Clock()
    cached = real_side.cached_real_side(settings, by_name, clock)
    assert cached is not None
    data2, name2, stats2, real_ref2 = cached
    assert (data2.key, name2) == (data.key, name) == (data.key, "moments")
    assert np.array_equal(data2.images, data.images)
    assert stats2.n == stats.n == 40
    for a, b in zip(stats2.mean_cov(), stats.mean_cov(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for key in ("features", "radii", "centroids", "proportions"):
        assert torch.equal(getattr(real_ref2, key), getattr(real_ref, key)), key
    assert clock.seconds["inception"] == 0.0 and set(clock.seconds) == {"inception", "data", "reference"}
    with pytest.raises(LookupError):  # the name alone never computes a feature
        by_name(torch.zeros(1, 3, 32, 32))
