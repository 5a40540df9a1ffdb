"""Exact mode coverage on ``shapes``: the decoder reads drawn classes back and refuses anything else."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.data import shapes_decoder as coverage
from orchestrator.data.shapes import COLOURS, SHAPE_CLASSES, SHAPES, SIZES, draw_shapes
from orchestrator.data.shapes_decoder import decode_shapes
from orchestrator.metrics.modes import mode_coverage, mode_entropy, mode_metrics

COUNTS = {"train": 2048, "test": 1024}  # whole blocks of 1024: every class present 32 times a block
DRAWN = [(split, resolution) for split in COUNTS for resolution in (32, 64)]
# drawn images are shared read-only, as a memory-mapped cache would be: torch must not warn about it
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def coverage_report(images: np.ndarray) -> dict[str, float]:
    """What an evaluation on shapes reports: the decoder's labels, through the mode metrics."""
    return mode_metrics(decode_shapes(images), len(SHAPE_CLASSES))


@functools.cache
def drawn(split: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = draw_shapes(split, resolution, COUNTS[split])
    images.flags.writeable = False  # shared between tests
    return images, labels


def decodable(images: np.ndarray | torch.Tensor) -> float:
    return float((decode_shapes(images) >= 0).mean())


def test_label_arithmetic_matches_the_class_list() -> None:
    for shape, colour, size in itertools.product(SHAPES, COLOURS, SIZES):
        label = (SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)) * len(SIZES) + SIZES.index(size)
        assert SHAPE_CLASSES[label] == f"{colour} {size} {shape}"


@pytest.mark.parametrize(
    ("prototypes", "tolerance"),
    [
        (coverage._SHAPE_PROTOTYPES, coverage._SHAPE_TOLERANCE),
        (coverage._COLOUR_PROTOTYPES, coverage._COLOUR_TOLERANCE),
    ],
)
def test_tolerance_boxes_are_disjoint(prototypes: torch.Tensor, tolerance: torch.Tensor) -> None:
    # "inside exactly one box" is the decoder's confidence test: no feature vector may fit two
    for a, b in itertools.combinations(prototypes, 2):
        assert ((a - b).abs() > 2 * tolerance).any(), (a, b)
    small, large = coverage._RADIUS**2
    assert math.log(large / small) > 2 * coverage._AREA_TOLERANCE


@pytest.mark.parametrize(("split", "resolution"), DRAWN)
def test_reads_drawn_classes_back(split: str, resolution: int) -> None:
    images, labels = drawn(split, resolution)
    decoded = decode_shapes(images)
    assert decoded.dtype == np.int64 and decoded.shape == labels.shape
    assert (decoded == labels).mean() >= 0.99
    assert ((decoded >= 0) & (decoded != labels)).sum() == 0  # refusing is fine, misreading is not
    assert (decoded >= 0).mean() >= 0.99
    assert mode_coverage(decoded, 32) == 1.0 and mode_entropy(decoded, 32) > 0.999


@pytest.mark.parametrize(("split", "resolution"), DRAWN[1:3])
def test_float_input_reads_like_uint8(split: str, resolution: int) -> None:
    images, _ = drawn(split, resolution)
    scaled = torch.from_numpy(images[:512].copy()).float() / 127.5 - 1
    expected = decode_shapes(images[:512])
    assert np.array_equal(decode_shapes(scaled), expected)
    assert np.array_equal(decode_shapes(scaled.double().numpy()), expected)


def test_mild_pixel_noise_still_reads() -> None:
    # a generator never reproduces a clean background; a few levels of noise must not matter
    images, labels = drawn("test", 64)
    noise = np.random.default_rng(0).normal(0, 4, images.shape)
    noisy = np.clip(images + noise, 0, 255).astype(np.uint8)
    assert (decode_shapes(noisy) == labels).mean() >= 0.98


def test_full_report_on_real_images() -> None:
    images, _ = drawn("test", 32)
    assert coverage_report(images) == {
        "mode_coverage": 1.0,
        "decodable": 1.0,
        "mode_entropy": pytest.approx(1.0),
    }


def test_collapse_to_one_class() -> None:
    images, labels = drawn("test", 32)
    report = coverage_report(images[labels == 5])
    assert report == {"mode_coverage": 1 / 32, "decodable": 1.0, "mode_entropy": 0.0}


def test_collapse_to_a_few_classes() -> None:
    images, labels = drawn("train", 32)
    keep = np.concatenate([np.nonzero(labels == c)[0][:20] for c in (0, 7, 13, 31)])
    report = coverage_report(images[keep])
    assert report["mode_coverage"] == 4 / 32
    assert report["mode_entropy"] == pytest.approx(math.log(4) / math.log(32))


def test_coverage_and_entropy_from_labels() -> None:
    labels = np.array([0, 0, 1, -1, -1])
    assert mode_coverage(labels, 32) == 2 / 32 and mode_coverage(labels, 32, min_count=2) == 1 / 32
    assert mode_entropy(labels, 32) == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(32)
    )
    assert mode_entropy(np.arange(32), 32) == pytest.approx(1.0)
    assert mode_coverage(np.full(4, -1), 32) == 0.0 and mode_entropy(np.full(4, -1), 32) == 0.0
    empty = coverage_report(np.zeros((0, 3, 32, 32), np.uint8))
    assert empty == {"mode_coverage": 0.0, "decodable": 0.0, "mode_entropy": 0.0}


@pytest.mark.parametrize("resolution", [32, 64])
def test_flat_and_noise_images_are_refused(resolution: int) -> None:
    rng = np.random.default_rng(resolution)
    shape = (64, 3, resolution, resolution)
    for images in (
        np.zeros(shape, np.uint8),
        np.full(shape, 128, np.uint8),
        rng.integers(0, 256, shape).astype(np.uint8),
        rng.uniform(-1, 1, shape).astype(np.float32),
    ):
        assert (decode_shapes(images) == -1).all()


@pytest.mark.parametrize("resolution", [32, 64])
def test_blurred_shapes_are_refused(resolution: int) -> None:
    images, _ = drawn("test", resolution)
    k = resolution // 8 + 1  # a heavy box blur, 5 px at 32 and 9 px at 64
    blurred = F.avg_pool2d(
        torch.from_numpy(images[:512].copy()).float(), k, 1, k // 2, count_include_pad=False
    )
    assert decodable(blurred.round().to(torch.uint8)) < 0.05


@pytest.mark.parametrize("resolution", [32, 64])
def test_blends_of_two_classes_are_refused(resolution: int) -> None:
    images, labels = drawn("test", resolution)
    pixels = torch.from_numpy(images.copy()).float()
    other = np.roll(np.arange(len(labels)), 1)
    differ = labels != labels[other]
    blend = ((pixels + pixels[other]) / 2)[differ]
    assert decodable(blend.round().to(torch.uint8)) < 0.05


def test_grey_shapes_and_soft_blobs_are_refused() -> None:
    images, _ = drawn("test", 64)
    grey = images[:256].mean(axis=1, keepdims=True).repeat(3, axis=1).astype(np.uint8)
    assert decodable(grey) == 0.0
    rng = np.random.default_rng(0)
    grid = np.arange(64) + 0.5
    centre, sigma = rng.uniform(20, 44, (2, 128)), rng.uniform(3, 10, 128)
    blob = np.exp(
        -(
            (grid[None, None, :] - centre[0][:, None, None]) ** 2
            + (grid[None, :, None] - centre[1][:, None, None]) ** 2
        )
        / (2 * sigma[:, None, None] ** 2)
    )
    colour = coverage._RGB[rng.integers(0, 4, 128)].numpy()
    blobs = 15 + blob[:, None] * (colour[:, :, None, None] - 15)
    assert decodable(blobs.astype(np.uint8)) == 0.0


def test_rejects_wrong_layouts() -> None:
    for bad in (
        np.zeros((2, 32, 32, 3), np.uint8),
        np.zeros((2, 3, 32, 16), np.uint8),
        np.zeros((3, 32, 32)),
    ):
        with pytest.raises(ValueError, match="expected images"):
            decode_shapes(bad)
    with pytest.raises(ValueError, match="uint8 or floating"):
        decode_shapes(np.zeros((2, 3, 32, 32), np.int32))
