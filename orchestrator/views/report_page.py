"""A search's report: the table people read (best FID first, the Pareto front of quality against
cost marked) as CSV, and as one HTML file that opens with no server: the summary, each trial's
latest sample grid beside its row, the quality-against-cost plot, the search's plots and the last
evaluation's contact sheets, every picture inside the file.

Both ends use it: the search writes ``report.*`` beside its results when it ends, and
``python -m orchestrator.report`` writes it for any search, from Tune's folder or from MLflow.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.atomic import atomic_write
from orchestrator.metrics.registry import GROUND_TRUTH, Objective
from orchestrator.trial_report import (
    COMPLETED,
    EVALS,
    FAILED,
    FAILURE,
    FAILURE_MODE,
    REPORTED_AT,
    STARTED_AT,
    STEP,
    STOPPED,
    ended_as,
)
from orchestrator.views import sheets, tradeoff

NUMBER = "{:.4g}".format
QUALITY_VS_COST = "quality_vs_cost.png"
SHEETS_FOLDER = "contact_sheets"  # beside a search's results.csv: views/sheets.py's frames and sheets
PLOTS_FOLDER = "plots"  # beside a search's results.csv: its plots, as logged on its parent run


@dataclass(frozen=True)
class Trials:
    """What every source gives: one row per trial (``trial_id``, ``outcome``, ``failure_mode``,
    ``best_<key>``, ``evals``, ``seconds``, ``config/<name>``...) and how to read it, with the
    pictures the source holds (PNG bytes): each trial's latest grid, and the search's figures by
    title (its plots and contact sheets)."""

    table: pd.DataFrame
    goal: Objective  # what the search ranked on: FID at its N
    unit: str  # "GPU" or "CPU": what a trial's seconds were spent on
    share: float  # of a GPU (or CPUs) per trial, to turn wall seconds into device seconds
    name: str
    thumbnails: Mapping[str, bytes] = field(default_factory=dict)
    figures: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def cost(self) -> str:
        return f"{self.unit.lower()}_seconds"


def present(trials: Trials) -> pd.DataFrame:
    """The table people read: trial, outcome (with its failure mode in brackets), FID (and where the
    dataset has them, the decoder's mode coverage and decodable fraction at that evaluation), the
    hyperparameters that differ between trials, device seconds, whether the trial is on the Pareto
    front; sorted by FID, failed trials last."""
    return _shown(_ranked(trials))


def _ranked(trials: Trials) -> pd.DataFrame:
    """``present``'s table with the outcome and the failure mode in columns of their own: what the
    plot, the pick and the counts read. They are written together only for people (``_shown``)."""
    table, fid = trials.table, f"best_{trials.goal.key}"
    config = [c for c in table.columns if c.startswith("config/")]
    varying = [c for c in config if table[c].astype(str).nunique() > 1] or config
    report = pd.DataFrame({
        "trial": table["trial_id"].astype(str),
        "outcome": table["outcome"],
        FAILURE_MODE: table[FAILURE_MODE].fillna("").astype(str),
        fid: table[fid].astype(float),
        # shapes: what the best evaluation's samples are, read by the exact decoder
        **{key: table[key].astype(float) for key in GROUND_TRUTH if key in table},
        "evals": table["evals"].astype(int),
        **{c.removeprefix("config/"): table[c] for c in varying},
        trials.cost: table["seconds"].astype(float) * trials.share,
        **({"run_id": table["run_id"]} if "run_id" in table else {}),
    })
    failed = table["outcome"] == FAILED
    report["pareto"] = tradeoff.pareto_front(report[trials.cost], report[fid], trials.goal.mode,
                                             tradeoff.comparable(table["outcome"]))
    order = pd.DataFrame({"failed": failed, "fid": report[fid]}).sort_values(
        ["failed", "fid"], ascending=[True, trials.goal.mode == "min"], kind="stable")
    return report.loc[order.index].reset_index(drop=True)


def _shown(ranked: pd.DataFrame) -> pd.DataFrame:
    modes = ranked[FAILURE_MODE]
    outcome = ranked["outcome"].where(modes == "", ranked["outcome"] + " (" + modes + ")")
    return ranked.assign(outcome=outcome).drop(columns=FAILURE_MODE)


def pick_line(trials: Trials, ranked: pd.DataFrame | None = None) -> str:
    """The trial quality against cost recommends, in a sentence (empty when there is no choice);
    ``ranked``: the trials as ``_ranked`` ordered them, when the caller has them already."""
    ranked = _ranked(trials) if ranked is None else ranked
    return tradeoff.describe_pick(ranked, f"best_{trials.goal.key}", trials.cost, trials.unit,
                                  trials.goal.mode) or ""


def write_report(trials: Trials, prefix: Path) -> pd.DataFrame:
    """``PREFIX.csv``, ``PREFIX.html`` and the quality-against-cost plot beside them; returns the table."""
    ranked = _ranked(trials)
    report = _shown(ranked)
    plot = tradeoff.quality_vs_cost(ranked, f"best_{trials.goal.key}", trials.cost, trials.unit,
                                    prefix.with_name(f"{prefix.name}-{QUALITY_VS_COST}"), trials.goal.mode)
    report.to_csv(prefix.with_name(prefix.name + ".csv"), index=False)
    pick = pick_line(trials, ranked)
    lines = [headline(trials, ranked), *([pick] if pick else [])]
    figures = {"quality against cost": plot.read_bytes(), **trials.figures}
    page = _page(trials, report, lines, figures)
    atomic_write(prefix.with_name(prefix.name + ".html"), lambda f: f.write(page.encode()))
    return report


def headline(trials: Trials, ranked: pd.DataFrame) -> str:
    counts = ranked["outcome"].value_counts().to_dict()
    hours = ranked[trials.cost].sum() / 3600
    return (f"search {trials.name}: {len(ranked)} trials: {counts.get(COMPLETED, 0)} completed, "
            f"{counts.get(STOPPED, 0)} stopped early, {counts.get(FAILED, 0)} failed; "
            f"{hours:.3g} {trials.unit}-hours; ranked on {trials.goal.best_key}")


def pictures_beside(results: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The thumbnails and figures a search left beside its results (``results``: the folder of
    its ``results.csv``)."""
    files = [f"{folder}/{p.name}" for folder in (PLOTS_FOLDER, SHEETS_FOLDER)
             for p in sorted((results / folder).glob("*.png"))]
    figures = {title: (results / path).read_bytes() for title, path in pick_figures(files).items()}
    return latest_frames(results / SHEETS_FOLDER), figures


def pick_figures(paths: Sequence[str]) -> dict[str, str]:
    """Of a search's picture files (``plots/NAME.png``, ``contact_sheets/eval_NNNN[-pK].png``, as
    beside its results and on its parent run), the ones its report shows, by title: its plots and
    the last evaluation's contact-sheet pages."""
    plots = [p for p in sorted(paths) if p.startswith(f"{PLOTS_FOLDER}/")
             and not Path(p).name.startswith("report-")]  # the report draws that one itself
    pages = sorted(p for p in paths if p.startswith(f"{SHEETS_FOLDER}/eval_"))
    last = Path(pages[-1]).stem.split("-")[0] if pages else ""
    return {**{f"search plot: {Path(p).stem}": p for p in plots},
            **{f"contact sheet, {Path(p).stem.replace('_', ' ').replace('-p', ', page ')}": p
               for p in pages if Path(p).stem.split("-")[0] == last}}


def latest_frames(folder: Path) -> dict[str, bytes]:
    """Each trial's latest recorded grid in ``folder`` (a search's ``contact_sheets``)."""
    found = {}
    for trial in sorted((folder / sheets.FRAMES).glob("*")):
        frames = sorted(trial.glob("eval_*.png"))
        if frames:
            found[trial.name] = frames[-1].read_bytes()
    return found


# ---- the HTML page -----------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}
td.text{text-align:left}tr.pareto td{background:#eef8ee}img.thumb{width:96px;image-rendering:pixelated}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}"""


def _page(trials: Trials, report: pd.DataFrame, lines: list[str], figures: Mapping[str, bytes]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["samples", *report.columns])
    rows = []
    for _, row in report.iterrows():
        thumb = trials.thumbnails.get(str(row["trial"]))
        cells = [f'<td>{_img(thumb, "thumb", str(row["trial"]))}</td>' if thumb else "<td></td>"]
        cells += [_cell(value) for value in row]
        rows.append(f'<tr class="{"pareto" if row["pareto"] else ""}">{"".join(cells)}</tr>')
    pictures = "".join(f"<figure><figcaption>{html.escape(title)}</figcaption>{_img(png, '', title)}</figure>"
                       for title, png in figures.items())
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(trials.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(trials.name)}</h1>{summary}"
            "<p>Green rows are on the Pareto front: no other trial that ran its whole budget is both cheaper "
            "and better (a trial ASHA stopped is cheap because it was cut, and is not compared).</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>{pictures}</body></html>")


def _img(png: bytes, css: str, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):  # the Pareto column: a mark, not a word
        return f"<td>{'yes' if value else ''}</td>"
    if isinstance(value, float):
        return f"<td>{NUMBER(value) if not math.isnan(value) else ''}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'


def results_table(results: Any, goal: Objective, max_evals: int) -> pd.DataFrame:
    """One row per trial: outcome, the best and last value of ``goal`` (FID at its N), evaluations,
    compute, hyperparameters; best first. ``max_evals`` tells a completed trial from one stopped
    early."""
    key = goal.key
    rows = []
    for result in results:
        history = result.metrics_dataframe
        fids = history[key] if history is not None and key in history else pd.Series(dtype=float)
        at_best = _at_best(history, fids, goal)
        last = result.metrics or {}
        ended, mode = ended_as(last, max_evals, errored=bool(result.error))
        rows.append({
            "trial_id": last.get("trial_id", ""), "outcome": ended.value, FAILURE_MODE: mode,
            f"best_{key}": goal.best(fids),
            f"last_{key}": float(fids.iloc[-1]) if len(fids) else goal.worst,
            **at_best,
            "evals": int(last.get(EVALS, 0)), "steps": int(last.get(STEP, 0)),
            "seconds": float(last.get("time_total_s", 0.0)),
            "started": float(last.get(STARTED_AT, math.nan)),
            "ended": float(last.get(REPORTED_AT, math.nan)),
            "failure": last.get(FAILURE, "") or (str(result.error).splitlines()[0] if result.error else ""),
            **{f"config/{k}": v for k, v in (result.config or {}).items()},
            "path": result.path,
        })
    table = pd.DataFrame(rows).sort_values(f"best_{key}", ascending=goal.mode == "min", kind="stable")
    return table.reset_index(drop=True)


def _at_best(history: pd.DataFrame | None, fids: pd.Series, goal: Objective) -> dict[str, float]:
    """The ground-truth metrics (``GROUND_TRUTH``) of the evaluation with the best FID: the
    checkpoint a trial hands over. Empty where the dataset reports none."""
    keys = [k for k in GROUND_TRUTH if history is not None and k in history]
    finite = fids[fids.apply(math.isfinite)]
    if history is None or not keys or finite.empty:
        return {}
    best = finite.idxmin() if goal.mode == "min" else finite.idxmax()
    return {k: float(history.loc[best, k]) for k in keys}
