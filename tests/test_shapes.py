"""The built-in ``shapes`` dataset: deterministic, every class present, and each class looks like its name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.data import shapes
from orchestrator.data.dataset import DataSpec, available, prepare_dataset
from orchestrator.data.shapes import SHAPE_CLASSES, class_parts, draw_shapes


@pytest.fixture(scope="module")
def train64() -> tuple[np.ndarray, np.ndarray]:
    return draw_shapes("train", 64, 2048)


def foreground(image: np.ndarray) -> np.ndarray:
    """Pixels clearly brighter than the dark background (which stays below 40)."""
    return image.max(axis=0) > 90


def test_classes_are_the_full_product() -> None:
    assert len(SHAPE_CLASSES) == len(set(SHAPE_CLASSES)) == 32
    assert SHAPE_CLASSES[0] == "red small circle"
    for label, name in enumerate(SHAPE_CLASSES):
        shape, colour, size = class_parts(label)
        assert name == f"{colour} {size} {shape}"


def test_deterministic_and_split_dependent(tmp_path: Path) -> None:
    first = prepare_dataset(DataSpec("shapes", resolution=32), tmp_path / "a", progress=False)
    second = prepare_dataset(DataSpec("shapes", resolution=32), tmp_path / "b", progress=False)
    assert first.images.tobytes() == second.images.tobytes() and np.array_equal(first.labels, second.labels)
    assert first.images.shape == (10_000, 3, 32, 32) and first.class_names == SHAPE_CLASSES
    test = prepare_dataset(DataSpec("shapes", split="test", resolution=32), tmp_path / "a", progress=False)
    assert len(test) == 2_000 and test.key != first.key
    assert not np.array_equal(test.images[:100], draw_shapes("train", 32, 100)[0])


def test_every_class_present_and_balanced() -> None:
    images, labels = draw_shapes("train", 32, shapes.DEFAULT_COUNTS["train"])
    counts = np.bincount(labels, minlength=32)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert counts.min() >= 300 and counts.max() <= 320  # every block of 1024 holds each class 32 times


def test_shorter_build_is_a_prefix() -> None:
    images, labels = draw_shapes("test", 32, 1500)
    head, head_labels = draw_shapes("test", 32, 100)
    assert np.array_equal(images[:100], head) and np.array_equal(labels[:100], head_labels)


def test_class_subset_through_prepare(tmp_path: Path) -> None:
    spec = DataSpec("shapes", resolution=32, classes=("blue large cross", "red small circle"), limit=50)
    dataset = prepare_dataset(spec, tmp_path, progress=False)
    assert dataset.class_names == ("red small circle", "blue large cross") and len(dataset) == 50
    assert set(dataset.labels.tolist()) == {0, 1}


@pytest.mark.parametrize("colour", shapes.COLOURS)
def test_colours_are_right(train64: tuple[np.ndarray, np.ndarray], colour: str) -> None:
    images, labels = train64
    rows = [i for i, label in enumerate(labels) if class_parts(label)[1] == colour]
    r, g, b = np.stack([images[i][:, foreground(images[i])].mean(axis=1) for i in rows]).mean(axis=0)
    dominant = {"red": r > 2 * max(g, b), "green": g > 2 * max(r, b), "blue": b > 2 * max(r, g)}
    assert dominant.get(colour, min(r, g) > 3 * b)  # yellow: red and green, little blue


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_sizes_and_outlines_are_right(train64: tuple[np.ndarray, np.ndarray], shape: str) -> None:
    images, labels = train64
    area = {}
    for size in shapes.SIZES:
        masks = [
            foreground(images[i])
            for i, label in enumerate(labels)
            if class_parts(label)[::2] == (shape, size)
        ]
        area[size] = np.mean([m.sum() for m in masks])
        fill = np.mean([m.sum() / _bbox(m).size for m in masks])
        expected = {
            "circle": (0.7, 0.86),
            "square": (0.9, 1.01),
            "triangle": (0.4, 0.6),
            "cross": (0.45, 0.65),
        }
        assert expected[shape][0] < fill < expected[shape][1], (size, fill)
    assert area["large"] > 2.5 * area["small"]


def test_triangles_point_up_and_crosses_have_empty_corners(train64: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = train64
    for i, label in enumerate(labels[:200]):
        shape, _, size = class_parts(label)
        box = _bbox(foreground(images[i]))
        if shape == "triangle":
            assert box[: len(box) // 3].sum() < box[-(len(box) // 3) :].sum()
        if shape == "cross" and size == "large":
            assert not box[0, 0] and not box[-1, -1] and box[len(box) // 2].all()


def test_both_resolutions_show_the_same_scene() -> None:
    small, _ = draw_shapes("train", 32, 64)
    large, _ = draw_shapes("train", 64, 64)
    pooled = large.reshape(64, 3, 32, 2, 32, 2).astype(float).mean(axis=(3, 5))
    assert np.abs(pooled - small).mean() < 4


def _bbox(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@pytest.mark.parametrize("spec", [
    DataSpec("shapes", resolution=32, limit=300),
    DataSpec("shapes", split="test", resolution=32, classes=("red small circle",)),
])
def test_available_counts_without_drawing_what_prepare_gives(tmp_path: Path, spec: DataSpec) -> None:
    """The count --dry-run checks --fid-n against: from the labels alone before the cache exists."""
    before = available(spec, tmp_path)
    assert not (tmp_path / "data").exists()  # nothing drawn, nothing cached
    assert before == len(prepare_dataset(spec, tmp_path, progress=False)) == available(spec, tmp_path)
