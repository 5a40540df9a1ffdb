"""The metric registry: names with their sample count, directions, and what an evaluation reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orchestrator.data.shapes import SHAPE_CLASSES
from orchestrator.metrics.frechet import FeatureStats, fid
from orchestrator.metrics.registry import (
    REGISTRY,
    Evaluation,
    direction,
    evaluate,
    objective,
    objective_named,
)


def _stats(shift: float, n: int = 200, dims: int = 4, seed: int = 0) -> FeatureStats:
    stats = FeatureStats(dims)
    draw = torch.randn(n, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    stats.update(draw + shift)
    return stats


def test_the_objective_is_fid_at_its_sample_count_lower_is_better() -> None:
    goal = objective(5000)
    assert (goal.key, goal.best_key, goal.mode) == ("fid5k", "fid5k_best", "min")
    assert objective(128).key == "fid128" and goal.worst == math.inf
    assert goal.better(1.0, 2.0) and not goal.better(2.0, 1.0)
    assert goal.better(3.0, math.inf) and not goal.better(math.nan, 2.0)
    assert not goal.better(math.inf, math.nan)
    assert goal.best([3.0, math.nan, 1.5, math.inf, 2.0]) == 1.5
    assert goal.best([math.nan]) == math.inf


@pytest.mark.parametrize("n", [2, 128, 1000, 2000, 2048, 50000])
def test_a_reported_name_gives_back_its_objective(n: int) -> None:
    assert objective_named(objective(n).key) == objective(n)
    assert objective_named(objective(n).best_key) is None


@pytest.mark.parametrize("key", ["fid", "fid0", "fid2000", "fid2kk", "kid", "fid02k"])
def test_other_names_are_no_objective(key: str) -> None:
    assert objective_named(key) is None


def test_directions_come_from_the_registered_metrics() -> None:
    assert direction("fid2k", 2000) == "min" and direction("fid2k", 5000) is None  # other N, other metric
    assert direction("kid", 2000) == "min" and direction("ndb_k", 2000) == "min"
    assert direction("precision", 2000) == "max" and direction("mode_coverage", 2000) == "max"
    assert direction("inception_score", 2000) == "max"
    # spreads, ratios best near 1, losses and speeds have no better direction
    assert {direction(k, 2000) for k in ("kid_std", "diversity_ratio", "d_loss", "img_per_s")} == {None}
    assert set(REGISTRY) == {"fid", "inception_score", "diversity", "modes"}


def test_an_evaluation_reports_each_metric_it_has_the_inputs_for() -> None:
    real, fake = _stats(0.0), _stats(0.5, seed=1)
    only_features = evaluate(Evaluation(200, real, fake))
    assert set(only_features) == {"fid200"}
    assert only_features["fid200"] == pytest.approx(fid(real, fake), rel=1e-12)
    assert only_features["fid200"] > 0.5  # means 0.5 apart in each of 4 dims: about 1 plus noise

    labels = np.array([0, 1, 1, -1] * 8)  # 2 of the classes, 3 in 4 images readable
    with_classes = evaluate(Evaluation(200, real, fake, labels=labels, classes=len(SHAPE_CLASSES)))
    assert set(with_classes) == {"fid200", "mode_coverage", "mode_entropy", "decodable"}
    assert with_classes["decodable"] == 0.75
    assert with_classes["mode_coverage"] == pytest.approx(2 / len(SHAPE_CLASSES))

    logits = torch.randn(64, 1008, generator=torch.Generator().manual_seed(2))
    with_logits = evaluate(Evaluation(200, real, fake, logits=logits))
    assert {"inception_score", "inception_score_std"} <= set(with_logits)
    assert 1.0 <= with_logits["inception_score"] < 1008
