"""Mode coverage from classes read off generated images: how many of a dataset's classes a generator
draws, and how evenly. The reading itself is the dataset's (``orchestrator.data.dataset.CLASS_READERS``:
on ``shapes``, an exact decoder); here is only the arithmetic on its labels, -1 meaning unreadable."""

from __future__ import annotations

import math

import numpy as np


def mode_coverage(labels: np.ndarray, classes: int, min_count: int = 1) -> float:
    """Fraction of the ``classes`` read at least ``min_count`` times."""
    return float((_class_counts(labels, classes) >= min_count).mean())


def mode_entropy(labels: np.ndarray, classes: int) -> float:
    """Entropy of the class histogram over log(classes): 1 when uniform, 0 for one class or none."""
    counts = _class_counts(labels, classes)
    if counts.sum() == 0:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log(p)).sum() / math.log(classes)))


def mode_metrics(labels: np.ndarray, classes: int) -> dict[str, float]:
    """``mode_coverage``, ``decodable`` (the fraction of readable images) and ``mode_entropy``."""
    labels = np.asarray(labels, np.int64)
    return {
        "mode_coverage": mode_coverage(labels, classes),
        "decodable": float((labels >= 0).mean()) if len(labels) else 0.0,
        "mode_entropy": mode_entropy(labels, classes),
    }


def _class_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    return np.bincount(labels[labels >= 0], minlength=classes)
