"""The metric registry, in the spirit of stylegan2-ada's ``metric_main``: every number an evaluation
reports is registered here with the direction that is better and how it is computed from one
evaluation's gathered inputs. The trial's evaluation loops over the registered metrics; Tune's
``metric``/``mode``, the checkpoint score, the export and the report all read ``objective``, so they
can never disagree about which FID is meant or which way is better.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from orchestrator.metrics.diversity import RealReference, diversity_metrics
from orchestrator.metrics.frechet import FeatureStats, fid, metric_name
from orchestrator.metrics.inception_score import inception_score
from orchestrator.metrics.modes import mode_metrics

Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Evaluation:
    """What one pass over a trial's generated images gathered. ``features``, ``logits`` and ``labels``
    are None when not gathered (no real reference kept, no classifier head, a dataset whose classes
    cannot be read off the pixels); a metric that needs them then reports nothing."""

    n: int  # images scored
    reference: FeatureStats
    fake: FeatureStats
    features: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    real_ref: RealReference | None = None
    labels: np.ndarray | None = None  # the class read off each generated image, -1 for unreadable
    classes: int = 0  # how many classes the labels can take


@dataclass(frozen=True)
class Metric:
    """A registered metric: the keys it reports with the direction that is better (the keys may name
    the sample count, so they are a function of it; a spread or a ratio best near 1 has no entry)
    and how it is computed."""

    name: str
    directions: Callable[[int], Mapping[str, Direction]]
    compute: Callable[[Evaluation], dict[str, float]]


@dataclass(frozen=True)
class Objective:
    """The one number a search optimises: the best FID so far on ``n`` images. ``key`` is the FID of
    each evaluation (``fid5k``), ``best_key`` the best of them, which Tune and ASHA compare."""

    n: int
    mode: Direction = "min"

    @property
    def key(self) -> str:
        return metric_name(self.n)

    @property
    def best_key(self) -> str:
        return f"{self.key}_best"

    @property
    def worst(self) -> float:
        """What a diverged trial reports: inf, not NaN, or ASHA's cutoff would ignore it."""
        return math.inf if self.mode == "min" else -math.inf

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` beats ``b``; a non-finite value never beats anything."""
        return math.isfinite(a) and (not math.isfinite(b) or (a < b if self.mode == "min" else a > b))

    def best(self, values: Iterable[float]) -> float:
        best = self.worst
        for value in values:
            best = value if self.better(value, best) else best
        return best


REGISTRY: dict[str, Metric] = {}


def register(name: str, directions: Callable[[int], Mapping[str, Direction]]) -> Callable:
    def add(compute: Callable[[Evaluation], dict[str, float]]) -> Callable[[Evaluation], dict[str, float]]:
        REGISTRY[name] = Metric(name, directions, compute)
        return compute

    return add


def objective(n: int) -> Objective:
    return Objective(n, REGISTRY["fid"].directions(n)[metric_name(n)])


def objective_named(key: str) -> Objective | None:
    """The objective reported as ``key`` (``fid2k``: FID on 2000 images), None for any other key:
    how a finished search's results, which hold only the names, say what they were ranked on."""
    found = re.fullmatch(r"fid([1-9]\d*)(k?)", key)
    if found is None:
        return None
    goal = objective(int(found[1]) * (1000 if found[2] else 1))
    return goal if goal.key == key else None  # fid2000 is written fid2k: not a name we report


def evaluate(evaluation: Evaluation) -> dict[str, float]:
    """Every registered metric that the evaluation has the inputs for."""
    return {key: value for metric in REGISTRY.values() for key, value in metric.compute(evaluation).items()}


def direction(key: str, n: int) -> Direction | None:
    """Which way ``key`` is better, None for a key no metric reports (losses, speeds, steps)."""
    found = (metric.directions(n).get(key) for metric in REGISTRY.values())
    return next((d for d in found if d is not None), None)


# --- the metrics


@register("fid", lambda n: {metric_name(n): "min"})
def _fid(e: Evaluation) -> dict[str, float]:
    return {metric_name(e.n): fid(e.reference, e.fake)}


@register("inception_score", lambda n: {"inception_score": "max"})
def _inception_score(e: Evaluation) -> dict[str, float]:
    if e.logits is None:
        return {}
    mean, std = inception_score(e.logits)
    return {"inception_score": mean, "inception_score_std": std}


# spreads (kid_std) and the diversity ratio (best near 1) have no better direction: no entry
_DIVERSITY: dict[str, Direction] = {"kid": "min", "ndb_k": "min", "precision": "max", "recall": "max",
                                    "density": "max", "coverage": "max"}


@register("diversity", lambda n: _DIVERSITY)
def _diversity(e: Evaluation) -> dict[str, float]:
    if e.real_ref is None or e.features is None:
        return {}
    return diversity_metrics(e.real_ref, e.features)


# what a summary shows beside a trial's best FID, from that same evaluation, where the dataset's
# classes can be read off the pixels (shapes): a count a person can check against the samples
GROUND_TRUTH = ("mode_coverage", "decodable")


@register("modes", lambda n: {"mode_coverage": "max", "mode_entropy": "max", "decodable": "max"})
def _modes(e: Evaluation) -> dict[str, float]:
    return {} if e.labels is None else mode_metrics(e.labels, e.classes)
