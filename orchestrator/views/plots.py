"""Pictures of GAN health: pure functions from histories and results to PNG files.

No MLflow and no Ray here: the caller logs the files. Each ``draw_*`` returns a matplotlib
``Figure`` (for notebooks and tests); the function of the same name without ``draw_`` writes it
atomically to a PNG. Figures are built with ``matplotlib.figure.Figure``, never pyplot: no global
figure registry to leak in a long-lived driver, no GUI backend, and no ``matplotlib.use()`` side
effect at import. Non-finite values (a diverged trial reports inf FID) are drawn as cuts, never
plotted as numbers.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from orchestrator.trial_report import FAILED, STOPPED

log = logging.getLogger(__name__)

EXTRA_METRICS = ("kid", "precision", "recall", "ndb_k", "mode_coverage", "diversity_ratio")
LABELLED = 3  # trials named in fid_over_time's legend: more is unreadable at 64 trials
WIDE = 10.0  # max/min ratio above which a positive axis goes log-scale
CUT = "tab:red"


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG via a temp file and ``os.replace``: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as out:
            fig.savefig(out, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- per trial ---------------------------------------------------------------------------------


def draw_loss_curves(history: pd.DataFrame) -> Figure:
    """Losses in one panel, D(x) and D(G(z)) in the other, against the generator step."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    losses, outputs = fig.subplots(1, 2, sharex=True)
    _panel(losses, history, {"d_loss": "D loss", "g_loss": "G loss"}, "loss")
    _panel(outputs, history, {"d_real": "D(x)", "d_fake": "D(G(z))"}, "mean D output")
    return fig


def loss_curves(history: pd.DataFrame, path: Path) -> Path:
    return save(draw_loss_curves(history), path)


def draw_metric_curves(history: pd.DataFrame, fid_key: str) -> Figure:
    """FID with its best point marked, then whichever other metrics were reported, one panel each."""
    keys = [fid_key] + [k for k in EXTRA_METRICS if k in history]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()  # not sharex: hidden spares would take its labels
    for ax, key in zip(axes, keys, strict=False):
        _panel(ax, history, {key: key}, key)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    _mark_best(axes[0], history, fid_key)
    return fig


def metric_curves(history: pd.DataFrame, fid_key: str, path: Path) -> Path:
    return save(draw_metric_curves(history, fid_key), path)


def _panel(ax: Axes, history: pd.DataFrame, columns: Mapping[str, str], ylabel: str) -> None:
    present = {c: label for c, label in columns.items() if c in history}
    if not present or "step" not in history or history.empty:
        _say(ax, f"no {', '.join(columns)} reported")
        return
    x = history["step"].to_numpy(dtype=float)
    for column, label in present.items():
        y = _finite(history[column])
        # markers: a single evaluation is a point, and a line of one point draws nothing
        line = ax.plot(x, y, marker=".", label=label)[0]
        _mark_cuts(ax, x, history[column], line.get_color())
    _scale(ax, np.concatenate([_finite(history[c]) for c in present]))
    ax.set(xlabel="generator step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(present) > 1:
        ax.legend(loc="best", fontsize="small")


def _mark_best(ax: Axes, history: pd.DataFrame, key: str) -> None:
    if key not in history or "step" not in history:
        return
    y = _finite(history[key])
    if not np.isfinite(y).any():
        return
    i = int(np.nanargmin(y))
    step = float(history["step"].iloc[i])
    ax.plot([step], [y[i]], marker="*", markersize=14, color="gold", markeredgecolor="black",
            linestyle="none", gid="best", zorder=5)
    ax.annotate(f"best {y[i]:.3g} @ {step:.0f}", (step, y[i]), textcoords="offset points",
                xytext=(6, 8), fontsize="small")


def _mark_cuts(ax: Axes, x: np.ndarray, values: pd.Series, color: Any) -> None:
    """An 'x' at the top edge where a value is inf, or NaN after the last finite one (a diverged
    trial); NaN between finite values is just a metric not computed that time, a gap."""
    raw = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    seen = np.flatnonzero(np.isfinite(raw))
    bad = np.isinf(raw) | (np.isnan(raw) & (np.arange(raw.size) > seen[-1] if seen.size else False))
    if not bad.any():
        return
    ax.plot(x[bad], np.full(bad.sum(), 0.96), transform=ax.get_xaxis_transform(), marker="x",
            markersize=9, markeredgewidth=2, color=color, linestyle="none", gid="cut", clip_on=False)
    first = int(np.argmax(bad))
    ax.annotate(f"{raw[first]} from step {x[first]:.0f}", (x[first], 0.96), ha="right", fontsize="small",
                xycoords=ax.get_xaxis_transform(), xytext=(-4, -14), textcoords="offset points", color=CUT)


# ---- per search --------------------------------------------------------------------------------


def draw_fid_over_time(
    histories: Mapping[str, pd.DataFrame], fid_key: str, outcomes: Mapping[str, str]
) -> Figure:
    """Every trial's FID on one axis: the best few labelled, stopped and failed trials cut."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    curves = {t: (h["step"].to_numpy(dtype=float), _finite(h[fid_key]))
              for t, h in histories.items() if "step" in h and fid_key in h}
    best = {t: float(np.nanmin(y)) for t, (_, y) in curves.items() if np.isfinite(y).any()}
    ranked = sorted(best, key=best.__getitem__)
    for trial in [t for t in curves if t not in best] + ranked[::-1]:  # the best drawn last, on top
        _trial_line(ax, trial, *curves[trial], outcomes.get(trial, ""), ranked, best)
    if ranked:
        _scale(ax, np.concatenate([y for _, y in curves.values()]))
    else:
        _say(ax, f"no trial reported a finite {fid_key}")
    dead = len(histories) - len(best)
    title = f"{fid_key} of {len(histories)} trials" + (f" ({dead} never finite)" if dead else "")
    ax.set(xlabel="generator step", ylabel=fid_key, title=title)
    ax.grid(alpha=0.3)
    ax.legend(handles=_legend(ax), loc="upper right", fontsize="small")
    return fig


def fid_over_time(
    histories: Mapping[str, pd.DataFrame], fid_key: str, outcomes: Mapping[str, str], path: Path
) -> Path:
    return save(draw_fid_over_time(histories, fid_key, outcomes), path)


def _trial_line(ax: Axes, trial: str, x: np.ndarray, y: np.ndarray, outcome: str,
                ranked: Sequence[str], best: Mapping[str, float]) -> None:
    ok = np.isfinite(y)
    if not ok.any():
        return
    rank = ranked.index(trial)
    top = rank < LABELLED
    color = "black" if rank == 0 else f"C{rank}" if top else "0.6"
    label = f"{trial}: {best[trial]:.3g}" + (" (best)" if rank == 0 else "") if top else None
    style = "--" if outcome == FAILED else "-"
    ax.plot(x, y, linestyle=style, color=color, label=label, linewidth=2.5 if rank == 0 else 1.2,
            alpha=1.0 if top else 0.6, zorder=4 if top else 2, marker="." if ok.sum() == 1 else None)
    if outcome in (STOPPED, FAILED):
        last = int(np.flatnonzero(ok)[-1])
        ax.plot([x[last]], [y[last]], marker="x", markersize=9, markeredgewidth=2, linestyle="none",
                color=CUT if outcome == FAILED else color, gid=f"cut:{trial}", zorder=5)


def _legend(ax: Axes) -> list[Any]:
    """The labelled trials, then one key per cut style (not one entry per trial)."""
    handles = [h for h in ax.get_lines() if not str(h.get_label()).startswith("_")][::-1]
    return [*handles,
            Line2D([], [], color="0.4", marker="x", linestyle="-", label="stopped early (ASHA)"),
            Line2D([], [], color="0.4", marker="x", markeredgecolor=CUT, linestyle="--", label="failed")]


# ---- the study: importance and parallel coordinates ------------------------------------------

Dist = optuna.distributions.BaseDistribution
Numeric = (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution)


def study_from_results(
    table: pd.DataFrame, params: Sequence[str], distributions: Mapping[str, Dist], value_column: str,
    mode: str = "min",
) -> optuna.Study:
    """An in-memory study with one complete trial per row of ``table`` whose value is finite; each
    trial gets only the ``config/<param>`` values it has (a conditional key is NaN where inactive).
    ``mode``: which way the value is better (the search's objective's)."""
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    study.set_user_attr("value_name", value_column)  # set_metric_names warns as experimental
    for index, row in table.iterrows():
        value = float(pd.to_numeric(row.get(value_column), errors="coerce"))
        if not math.isfinite(value):
            continue
        coerced = {p: _coerce(row.get(f"config/{p}"), distributions[p]) for p in params}
        values = {p: v for p, v in coerced.items() if v is not None}
        try:
            study.add_trial(optuna.trial.create_trial(
                value=value, params=values, distributions={p: distributions[p] for p in values},
                user_attrs={"trial_id": str(row.get("trial_id", index))}))
        except ValueError as err:  # e.g. a float off its distribution's step after a CSV round trip
            log.warning("trial %s left out of the study: %s", row.get("trial_id", index), err)
    return study


def _coerce(value: Any, dist: Dist) -> Any:
    """``value`` as ``dist`` holds it (a CSV turns 64 into 64.0, True into "True"), or None if the
    row lacks it or it lies outside ``dist``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next((c for c in dist.choices if c == value or str(c) == str(value)), None)
    number = float(pd.to_numeric(value, errors="coerce"))
    if isinstance(dist, optuna.distributions.IntDistribution):
        number = round(number) if math.isfinite(number) else number
    ok = isinstance(dist, Numeric) and dist.low <= number <= dist.high
    return number if ok else None


def draw_param_importance(study: optuna.Study) -> tuple[Figure, dict[str, float]]:
    importances, how = _importances(study)
    fig = Figure(figsize=(7, 1.2 + 0.4 * max(len(importances), 3)), layout="constrained")
    ax = fig.subplots()
    if not importances:
        _say(ax, f"no importances: {how}")
        return fig, {}
    names = list(importances)[::-1]  # barh draws bottom-up: most important on top
    bars = ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize="small")
    ax.set(xlabel="importance (sums to 1)", xlim=(0, 1.1), title=f"hyperparameter importance ({how})")
    return fig, importances


def param_importance(study: optuna.Study, path: Path) -> dict[str, float]:
    fig, importances = draw_param_importance(study)
    save(fig, path)
    return importances


def _importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """The importances and how they were found, or {} and why there are none. Optuna scores only
    the keys every trial has: a conditional key does not appear."""
    done = _complete(study)
    if len(done) < 2:
        return {}, f"{len(done)} complete trial(s) with a finite value, need 2"
    names = {p for t in done for p in t.params}
    if all(len({repr(t.params[p]) for t in done if p in t.params}) < 2 for p in names):
        return {}, "every hyperparameter has a single value"  # optuna would split 1 evenly
    evaluator = _evaluator()
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    method = type(evaluator).__name__.removesuffix("ImportanceEvaluator")
    how = f"{method}, {len(done)} trials" if found else "no hyperparameter is in every trial"
    return {k: float(v) for k, v in found.items()}, how


def _evaluator() -> optuna.importance.BaseImportanceEvaluator:
    # fANOVA (optuna's default) and mean-decrease-impurity fit a scikit-learn forest, which the
    # project does not declare; PED-ANOVA needs only optuna and scipy
    if importlib.util.find_spec("sklearn") is not None:
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.PedAnovaImportanceEvaluator()


def draw_parallel_coordinates(study: optuna.Study, top: int = 10) -> Figure:
    """The ``top`` best trials across the value and every hyperparameter, each axis spanning its
    distribution (log if the distribution is, categories evenly spaced). A conditional key that a
    trial lacks leaves a gap; optuna's own plot would drop the trial."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = sorted(_complete(study), key=lambda t: float(t.value or 0.0), reverse=maximize)[:top]
    dists: dict[str, Dist] = {}
    for t in trials:
        dists.update(t.distributions)
    fig = Figure(figsize=(max(7.0, 1.4 * (len(dists) + 1)), 5), layout="constrained")
    ax = fig.subplots()
    if not trials:
        _say(ax, "no complete trials with a finite value")
        return fig
    values = [float(t.value or 0.0) for t in trials]
    lo, hi = min(values), max(values)
    names = [str(study.user_attrs.get("value_name", "value")), *dists]
    ys = np.array([[_unit(v, lo, hi) for v in values]]
                  + [[_position(t.params.get(n), d) for t in trials] for n, d in dists.items()])
    for i in reversed(range(len(trials))):  # the best drawn last, on top
        best = i == 0
        ax.plot(range(len(names)), ys[:, i], marker="o", markersize=3, linewidth=2.5 if best else 1.2,
                color="black" if best else colormaps["viridis"](i / len(trials)), gid=f"trial:{i}")
    ticks = [[(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]] + [_ticks(d) for d in dists.values()]
    for x, axis_ticks in enumerate(ticks):
        ax.axvline(x, color="0.3", linewidth=0.8)
        for y, text in axis_ticks:
            ax.annotate(text, (x, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(yticks=[], ylim=(-0.05, 1.05), title=f"best {len(trials)} trials (black: best; darker: better)")
    return fig


def parallel_coordinates(study: optuna.Study, path: Path, top: int = 10) -> Path:
    return save(draw_parallel_coordinates(study, top), path)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if t.value is not None and math.isfinite(t.value)]


def _position(value: Any, dist: Dist) -> float:
    """Where ``value`` sits on its axis, 0..1; NaN (a gap in the line) where the trial lacks it."""
    if value is None:
        return math.nan
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return _unit(dist.choices.index(value), 0, len(dist.choices) - 1)
    if isinstance(dist, Numeric) and dist.log:
        return _unit(math.log(value), math.log(dist.low), math.log(dist.high))
    return _unit(value, dist.low, dist.high) if isinstance(dist, Numeric) else math.nan


def _ticks(dist: Dist) -> list[tuple[float, str]]:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return [(_position(c, dist), str(c)) for c in dist.choices]
    return [(0.0, f"{dist.low:.3g}"), (1.0, f"{dist.high:.3g}")] if isinstance(dist, Numeric) else []


# ---- small helpers -----------------------------------------------------------------------------


def _finite(values: pd.Series) -> np.ndarray:
    """Floats with NaN for anything not finite: matplotlib breaks a line at NaN, not at inf."""
    y = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return np.where(np.isfinite(y), y, np.nan)


def _scale(ax: Axes, values: np.ndarray) -> None:
    """Log y when positive values span more than ``WIDE``x: early FIDs of 300 hide the endgame."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > WIDE:
        ax.set_yscale("log")


def _unit(value: float, lo: float, hi: float) -> float:
    return (value - lo) / (hi - lo) if hi > lo else 0.5


def _say(ax: Axes, text: str) -> None:
    """A panel that explains why it is empty, so the PNG is never a silent blank."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set(xticks=[], yticks=[])
