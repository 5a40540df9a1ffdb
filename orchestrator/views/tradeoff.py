"""Quality against cost: each trial's best FID against the device-seconds it used, the Pareto front
(the trials no other trial beats on both), and the cheapest trial whose FID is within a margin of
the best. Pure functions of the report's table; the picture is drawn like ``plots.py``'s.

A failed trial is never on the front and never the pick, as it never wins the search: its FID
before it collapsed is no generator anyone would keep. Nor is a trial ASHA stopped early, though it
is drawn: it is cheap because it was cut, and its FID is where it was cut, not where it would have
ended, so beside trials that ran their whole budget it is not a choice anyone was offered (the
learning-curve replays of bench/RESULTS.md compare configurations at equal footing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.trial_report import FAILED, STOPPED
from orchestrator.views.plots import CUT, WIDE, save

NEAR = 0.10  # "within 10% of the best FID"


def comparable(outcomes: Iterable[str]) -> list[bool]:
    """The trials quality against cost compares: neither failed nor cut short by ASHA."""
    return [str(outcome) not in (FAILED, STOPPED) for outcome in outcomes]


def pareto_front(cost: Sequence[float], quality: Sequence[float], mode: str = "min",
                 eligible: Sequence[bool] | None = None) -> list[bool]:
    """True where no other eligible point is at least as cheap and at least as good, and strictly
    better on one of the two. Non-finite points are never on it; ties (equal cost and quality)
    are all on it."""
    sign = 1.0 if mode == "min" else -1.0
    c, q = np.asarray(cost, dtype=float), sign * np.asarray(quality, dtype=float)
    ok = np.isfinite(c) & np.isfinite(q)
    if eligible is not None:
        ok &= np.asarray(eligible, dtype=bool)
    front = []
    for i in range(len(c)):
        dominated = ok & (c <= c[i]) & (q <= q[i]) & ((c < c[i]) | (q < q[i]))
        front.append(bool(ok[i] and not dominated.any()))
    return front


def cheapest_near_best(table: pd.DataFrame, fid: str, cost: str, mode: str = "min",
                       margin: float = NEAR) -> tuple[int, int] | None:
    """Row positions of the best trial (failed ones left out) and of the cheapest one within
    ``margin`` of its FID (relative; for "max" metrics, at least (1 - margin) of it) among the best
    and the ``comparable`` trials; None when no trial has a finite FID."""
    values, costs = table[fid].to_numpy(dtype=float), table[cost].to_numpy(dtype=float)
    outcomes = table["outcome"].astype(str).to_numpy()
    ok = np.isfinite(values) & np.isfinite(costs) & (outcomes != FAILED)
    if not ok.any():
        return None
    sign = 1.0 if mode == "min" else -1.0
    best = int(np.flatnonzero(ok)[np.argmin(sign * values[ok])])
    limit = values[best] * (1 + margin) if mode == "min" else values[best] * (1 - margin)
    near = ok & np.asarray(comparable(outcomes)) & ((values <= limit) if mode == "min" else (values >= limit))
    near[best] = True
    candidates = np.flatnonzero(near)
    cheapest = int(candidates[np.lexsort((sign * values[candidates], costs[candidates]))[0]])
    return best, cheapest


def describe_pick(table: pd.DataFrame, fid: str, cost: str, unit: str, mode: str = "min") -> str | None:
    """One line for the summary: the best trial and the cheapest within 10% of it."""
    found = cheapest_near_best(table, fid, cost, mode)
    if found is None:
        return None
    best, cheap = (table.iloc[i] for i in found)
    name = fid.removeprefix("best_")
    if found[0] == found[1]:
        return f"cheapest within {NEAR:.0%} of the best {name}: the best itself ({_hours(best[cost], unit)})"
    share = best[cost] and cheap[cost] / best[cost]
    return (f"cheapest within {NEAR:.0%} of the best {name}: trial {cheap['trial']} {name} {cheap[fid]:.4g} "
            f"in {_hours(cheap[cost], unit)}, {share:.0%} of the best's {_hours(best[cost], unit)} "
            f"(trial {best['trial']}, {best[fid]:.4g})")


def _hours(seconds: float, unit: str) -> str:
    return f"{seconds / 3600:.3g} {unit}-hours"


def draw_quality_vs_cost(table: pd.DataFrame, fid: str, cost: str, unit: str, mode: str = "min") -> Figure:
    """Each trial's best FID against its device-seconds; the Pareto front joined, the best starred,
    the cheapest within 10% of it ringed; trials ASHA stopped hollow and off the front, failed ones
    red crosses."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    x, y = table[cost].to_numpy(dtype=float), table[fid].to_numpy(dtype=float)
    shown = np.isfinite(x) & np.isfinite(y)
    if not shown.any():
        ax.text(0.5, 0.5, f"no trial has a finite {fid}", ha="center", va="center", transform=ax.transAxes)
        return fig
    outcomes = table["outcome"].astype(str).to_numpy()
    front = np.asarray(table["pareto"], dtype=bool) if "pareto" in table else np.asarray(
        pareto_front(x, y, mode, comparable(outcomes)))
    failed, stopped = shown & (outcomes == FAILED), shown & (outcomes == STOPPED)
    rest = shown & ~failed & ~stopped
    ax.scatter(x[rest], y[rest], color="tab:blue", label="completed", zorder=3)
    ax.scatter(x[stopped], y[stopped], facecolors="none", edgecolors="tab:blue", zorder=3,
               label="stopped early by ASHA (cut short: not compared)")
    ax.scatter(x[failed], y[failed], color=CUT, marker="x", label="failed", zorder=3)
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color="black", linewidth=1.2,
            label="Pareto front", zorder=2, gid="front")
    for i in np.flatnonzero(shown):
        ax.annotate(str(table["trial"].iloc[i]), (x[i], y[i]), xytext=(4, 3), textcoords="offset points",
                    fontsize=7, color="0.3")
    picked = cheapest_near_best(table, fid, cost, mode)
    if picked is not None:
        best, cheap = picked
        ax.plot([x[best]], [y[best]], marker="*", markersize=16, color="gold", markeredgecolor="black",
                linestyle="none", label="best", zorder=5, gid="best")
        ax.plot([x[cheap]], [y[cheap]], marker="o", markersize=15, markerfacecolor="none",
                markeredgecolor="tab:green", markeredgewidth=2, linestyle="none", zorder=5, gid="cheapest",
                label=f"cheapest within {NEAR:.0%} of the best")
    finite = x[shown]
    if finite.min() > 0 and finite.max() / finite.min() > WIDE:
        ax.set_xscale("log")
    ax.set(xlabel=f"{unit}-seconds", ylabel=f"best {fid.removeprefix('best_')}",
           title=f"quality against cost: {int(shown.sum())} trials, {int(front.sum())} on the Pareto front "
                 "of those that ran their whole budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def quality_vs_cost(table: pd.DataFrame, fid: str, cost: str, unit: str, path: Path,
                    mode: str = "min") -> Path:
    return save(draw_quality_vs_cost(table, fid, cost, unit, mode), path)
