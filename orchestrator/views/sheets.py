"""Contact sheets: every trial's sample grid from the same fixed latents, side by side, one sheet per
evaluation, so a person can watch the whole population learn and see what ASHA cut.

The search records a *frame* per trial and evaluation as it runs (the grid PNG its checkpoint
already holds, with that evaluation's FID) and a *card* per trial (its key hyperparameters and,
once it ends, its outcome) into one folder; the sheets are drawn from that folder alone, so a
resumed search, a redraw and the report all see the same thing. No MLflow and no Ray here: the
caller logs the files (``tracking/sheet_logger.py`` during a search).

    FOLDER/frames/TRIAL/card.json          {"params": {...}, "outcome": ..., "failure_mode": ..., "evals": n}
    FOLDER/frames/TRIAL/eval_0003.png      the trial's grid at its 3rd evaluation
    FOLDER/frames/TRIAL/eval_0003.json     {"step": ..., "fid": ...}
    FOLDER/eval_0003.png (-p2, -p3, ...)   the sheet of the 3rd evaluation, PAGE trials a page
    FOLDER/index.json                      every sheet's cells: trial, FID, outcome, label
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from orchestrator.atomic import atomic_write
from orchestrator.trial_report import COMPLETED, FAILED, STOPPED
from orchestrator.views.plots import CUT, save

FRAMES, INDEX, CARD = "frames", "index.json", "card.json"
PAGE, COLUMNS = 16, 4  # cells a page: a sheet of 64 trials is four pages a person can still read
RUNNING = "running"
BORDER: dict[str, str] = {COMPLETED: "tab:green", STOPPED: "tab:orange", FAILED: CUT}  # where a trial ended


@dataclass(frozen=True)
class Cell:
    """One trial at one evaluation: what its label says and the picture under it."""

    trial_id: str
    evals: int
    step: int
    fid: float
    outcome: str  # completed, stopped_early, failed or running: how the trial ended (or not yet)
    failure_mode: str
    ended_at: int  # the evaluation it ended at; 0 while running
    params: Mapping[str, Any]
    png: Path
    truth: Mapping[str, float] = field(default_factory=dict)  # shapes: mode coverage, decodable

    def describe(self, rungs: Sequence[int]) -> str:
        """The outcome in words: 'completed', 'stopped early at rung 1 (eval 1)', 'failed: nan'."""
        if self.outcome == STOPPED:
            rung = f"rung {rungs.index(self.ended_at) + 1} " if self.ended_at in rungs else ""
            return f"stopped early at {rung}(eval {self.ended_at})"
        if self.outcome == FAILED:
            return f"failed: {self.failure_mode or 'error'} (eval {self.ended_at})"
        return self.outcome

    def label(self, fid_key: str, rungs: Sequence[int]) -> str:
        fid = f"{self.fid:.4g}" if math.isfinite(self.fid) else str(self.fid)
        shown = [f"{k} {_short(v)}" for k, v in self.params.items()]
        params = ["  ".join(shown[i:i + 2]) for i in range(0, len(shown), 2)]  # two a line: a cell is narrow
        truth = "  ".join(f"{_NAMES.get(k, k)} {v:.2f}" for k, v in self.truth.items())
        lines = [f"{self.trial_id}  {fid_key} {fid}", truth, self.describe(rungs), *params]
        return "\n".join(line for line in lines if line)


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The evaluations at which ASHA compares trials (its rungs), lowest first, as Ray's ASHA
    builds them: grace_period * reduction_factor**k below max_t."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted(int(grace_period * reduction_factor**k) for k in range(count))


# ---- recording (the search's driver, as results arrive) --------------------------------------


def record_card(folder: Path, trial_id: str, params: Mapping[str, Any], outcome: str = RUNNING,
                failure_mode: str = "", evals: int = 0) -> None:
    _write_json(folder / FRAMES / trial_id / CARD, {"params": dict(params), "outcome": outcome,
                                                    "failure_mode": failure_mode, "evals": evals})


def record_frame(folder: Path, trial_id: str, evals: int, step: int, fid: float, png: bytes,
                 truth: Mapping[str, float] | None = None) -> None:
    """``truth``: what the dataset's decoder read in the same evaluation's samples (shapes)."""
    base = folder / FRAMES / trial_id / f"eval_{evals:04d}"
    atomic_write(base.with_suffix(".png"), lambda f: f.write(png))
    _write_json(base.with_suffix(".json"), {"step": step, "fid": fid, "truth": dict(truth or {})})


def read_cells(folder: Path) -> dict[int, list[Cell]]:
    """Every recorded frame with its trial's card, by evaluation."""
    cells: dict[int, list[Cell]] = {}
    for card_path in sorted((folder / FRAMES).glob(f"*/{CARD}")):
        card = _read_json(card_path)
        for frame in sorted(card_path.parent.glob("eval_*.json")):
            data, evals = _read_json(frame), int(frame.stem.removeprefix("eval_"))
            done = card["outcome"] != RUNNING
            cells.setdefault(evals, []).append(Cell(
                trial_id=card_path.parent.name, evals=evals, step=int(data["step"]), fid=float(data["fid"]),
                outcome=card["outcome"], failure_mode=card["failure_mode"],
                ended_at=int(card["evals"]) if done else 0, params=card["params"],
                png=frame.with_suffix(".png"), truth=data.get("truth", {})))
    return dict(sorted(cells.items()))


# ---- drawing -----------------------------------------------------------------------------------


def write_sheets(folder: Path, fid_key: str, rungs: Sequence[int], mode: str = "min",
                 evals: Iterable[int] | None = None, name: str = "") -> list[Path]:
    """Draw the sheets of ``evals`` (all by default) from the recorded frames, and the index of
    every sheet; returns the files written (the caller logs them)."""
    by_eval = read_cells(folder)
    ended = {c.trial_id: c for cells in by_eval.values() for c in cells if c.ended_at == c.evals}
    index, written = {}, []
    for k, cells in by_eval.items():
        ranked = rank(cells, mode)
        gone = sorted({t for t, c in ended.items() if c.ended_at < k})
        pages = [ranked[i:i + PAGE] for i in range(0, len(ranked), PAGE)]
        files = [folder / (f"eval_{k:04d}.png" if p == 0 else f"eval_{k:04d}-p{p + 1}.png")
                 for p in range(len(pages))]
        index[str(k)] = {"step": ranked[0].step, "pages": [f.name for f in files], "ended_before": gone,
                         "cells": [{"trial_id": c.trial_id, "fid": c.fid, "outcome": c.outcome,
                                    "described": c.describe(rungs), "label": c.label(fid_key, rungs),
                                    "page": i // PAGE + 1} for i, c in enumerate(ranked)]}
        if evals is not None and k not in set(evals):
            continue
        for p, (page, path) in enumerate(zip(pages, files, strict=True)):
            title = (f"{name + ': ' if name else ''}evaluation {k} (step {ranked[0].step}): "
                     f"{len(ranked)} trial{'s' if len(ranked) > 1 else ''}, best {fid_key} first"
                     + (f", page {p + 1} of {len(pages)}" if len(pages) > 1 else "")
                     + (f"; {len(gone)} ended before" if gone else ""))
            written.append(save(draw_sheet(page, title, fid_key, rungs), path))
    written.append(_write_json(folder / INDEX, {"fid_key": fid_key, "rungs": list(rungs), "sheets": index}))
    return written


def rank(cells: Sequence[Cell], mode: str = "min") -> list[Cell]:
    """Best FID first; a non-finite FID (a diverged trial) last."""
    sign = 1.0 if mode == "min" else -1.0
    return sorted(cells, key=lambda c: (not math.isfinite(c.fid),
                                        sign * c.fid if math.isfinite(c.fid) else 0.0, c.trial_id))


def draw_sheet(cells: Sequence[Cell], title: str, fid_key: str, rungs: Sequence[int]) -> Figure:
    """The cells in rows of ``COLUMNS``, each grid framed in the colour of where its trial ended
    (green completed, orange stopped early, red failed, none while running)."""
    rows = max(1, math.ceil(len(cells) / COLUMNS))
    fig = Figure(figsize=(2.7 * COLUMNS, 3.5 * rows + 0.4), layout="constrained")
    fig.suptitle(title, fontsize="medium")
    axes = fig.subplots(rows, COLUMNS, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, cell in zip(axes, cells, strict=False):
        with Image.open(cell.png) as image:
            ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
        ax.set_title(cell.label(fid_key, rungs), fontsize=7, loc="left", family="monospace")
        color = BORDER.get(cell.outcome) if cell.ended_at == cell.evals else None
        if color is not None:  # the evaluation the trial ended at: a frame round its grid
            ax.set_axis_on()
            ax.set(xticks=[], yticks=[])
            for spine in ax.spines.values():
                spine.set(color=color, linewidth=3)
    return fig


_NAMES = {"mode_coverage": "classes", "decodable": "clean"}  # short: a cell is narrow


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write_json(path: Path, data: Any) -> Path:
    text = json.dumps(data, indent=1, default=str).encode()
    return atomic_write(path, lambda f: f.write(text))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(), parse_constant=lambda c: {"Infinity": math.inf,
                                                                  "-Infinity": -math.inf}.get(c, math.nan))
