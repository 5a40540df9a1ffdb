"""Quality against cost: the Pareto front and the cheapest trial near the best, on constructed tables
whose answers are worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from orchestrator.views import tradeoff

FID, COST = "best_fid128", "cpu_seconds"


def _table(rows: list[tuple[str, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["trial", FID, COST, "outcome"])


# trial, FID, seconds, outcome. By hand, among the trials that ran their whole budget: h (cheapest)
# and d (best) are on the front; c is beaten by h on both; e ties d's FID at a higher cost; a and b
# were cut short by ASHA (cheap because cut: drawn, never on the front); f failed with the best FID
# of all (never on the front, never the pick); g diverged (inf)
TABLE = _table([
    ("a", 300.0, 10.0, "stopped_early"),
    ("b", 200.0, 20.0, "stopped_early"),
    ("c", 250.0, 30.0, "completed"),
    ("d", 100.0, 80.0, "completed"),
    ("e", 100.0, 90.0, "completed"),
    ("f", 50.0, 5.0, "failed"),
    ("g", math.inf, 1.0, "failed"),
    ("h", 200.0, 20.0, "completed"),
])


def test_pareto_front_of_a_constructed_table() -> None:
    front = tradeoff.pareto_front(TABLE[COST], TABLE[FID], "min", tradeoff.comparable(TABLE["outcome"]))
    assert dict(zip(TABLE["trial"], front, strict=True)) == {
        "a": False, "b": False, "c": False, "d": True, "e": False, "f": False, "g": False, "h": True}
    # with the trials ASHA cut counted (as before): a and b (and h, b's tie) would be on it, cheap by
    # construction
    counted = tradeoff.pareto_front(TABLE[COST], TABLE[FID], "min", TABLE["outcome"] != "failed")
    assert [t for t, f in zip(TABLE["trial"], counted, strict=True) if f] == ["a", "b", "d", "h"]


def test_pareto_front_for_a_metric_to_maximise() -> None:
    # higher is better: (10, 0.5) and (20, 0.9) are on it, (30, 0.8) is not
    assert tradeoff.pareto_front([10, 20, 30], [0.5, 0.9, 0.8], "max") == [True, True, False]


def test_cheapest_within_ten_percent_of_the_best() -> None:
    table = _table([
        ("best", 100.0, 100.0, "completed"),
        ("near", 109.0, 40.0, "completed"),  # within 10 %: the pick
        ("nearer_dearer", 101.0, 60.0, "completed"),
        ("far", 111.0, 10.0, "completed"),  # 11 % worse: out
        ("cut", 105.0, 5.0, "stopped_early"),  # within 10 % and cheapest, but cut short by ASHA
        ("dead", 90.0, 1.0, "failed"),  # better and cheaper, but failed
    ])
    best, cheap = tradeoff.cheapest_near_best(table, FID, COST)
    assert (table["trial"][best], table["trial"][cheap]) == ("best", "near")
    line = tradeoff.describe_pick(table, FID, COST, "CPU")
    assert line is not None and "trial near" in line and "40%" in line and "trial best" in line


def test_the_best_is_its_own_pick_when_nothing_near_is_cheaper() -> None:
    table = _table([("only", 100.0, 5.0, "completed"), ("worse", 200.0, 1.0, "completed")])
    assert tradeoff.cheapest_near_best(table, FID, COST) == (0, 0)
    assert "the best itself" in (tradeoff.describe_pick(table, FID, COST, "GPU") or "")


def test_no_pick_without_a_finite_fid() -> None:
    table = _table([("x", math.inf, 5.0, "failed"), ("y", math.nan, 1.0, "completed")])
    assert tradeoff.cheapest_near_best(table, FID, COST) is None


def test_the_plot_joins_the_front_and_marks_the_picks() -> None:
    fig = tradeoff.draw_quality_vs_cost(TABLE, FID, COST, "CPU")
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}
    front = lines["front"].get_xydata()
    # the step line passes through the front's points, cheapest first: h, d; not the cut a and b
    assert [tuple(p) for p in front] == [(20.0, 200.0), (80.0, 100.0)]
    assert tuple(lines["best"].get_xydata()[0]) == (80.0, 100.0)  # d: e ties it dearer, f failed
    assert tuple(lines["cheapest"].get_xydata()[0]) == (80.0, 100.0)
    title = fig.axes[0].get_title()  # g's inf FID is not drawn
    assert title.endswith("7 trials, 2 on the Pareto front of those that ran their whole budget")


# wider margins reach h (200 @ 20 s), never the cheaper a and b that ASHA cut
@pytest.mark.parametrize("margin, expected", [(0.0, "d"), (1.0, "h"), (2.0, "h")])
def test_the_margin_moves_the_pick(margin: float, expected: str) -> None:
    _, cheap = tradeoff.cheapest_near_best(TABLE, FID, COST, margin=margin) or (0, 0)
    assert TABLE["trial"][cheap] == expected
