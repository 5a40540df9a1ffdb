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
    FOLDER/eval_0003.png (-p2, -p3, ...)   the sheet of the 3rd evaluation, PAGE trials a page, at
                                           most MAX_PAGES pages (the best trials at that evaluation)
    FOLDER/index.json                      every sheet's cells: trial, FID, outcome, label
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib import colors, font_manager
from PIL import Image, ImageDraw, ImageFont

from orchestrator.atomic import atomic_write
from orchestrator.trial_report import COMPLETED, FAILED, STOPPED
from orchestrator.views.plots import CUT

FRAMES, INDEX, CARD = "frames", "index.json", "card.json"
PAGE, COLUMNS = 16, 4  # cells a page: a sheet of 64 trials is four pages a person can still read
MAX_PAGES = 8  # pages an evaluation's sheet draws (its best 128 trials); the index lists every trial
PICTURE, PAD, LINE = 274, 8, 12  # a cell's grid at most (a 32 px grid's size), the space round it, a line
RUNNING = "running"
# zlib's fastest level: a 1,000-trial search's pages are 7 % larger than at Pillow's default, 6
# (223 MB against 208), and drawn in a fifth to a third less time (bench/sheets_speed.py); what
# encoding still costs is mostly Pillow choosing each row's PNG filter, which no option turns off
PAGE_COMPRESSION = 1
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

    def frame(self) -> str | None:
        """The colour of the frame round its grid: only at the evaluation the trial ended at."""
        return BORDER.get(self.outcome) if self.ended_at == self.evals else None

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
    every sheet; returns the files written (the caller logs them). A page whose title and cells
    (labels, outcomes, pictures) are those it was last drawn with is not drawn again: the index
    keeps each page's fingerprint."""
    by_eval = read_cells(folder)
    ended = {c.trial_id: c for cells in by_eval.values() for c in cells if c.ended_at == c.evals}
    before = _read_json(folder / INDEX).get("sheets", {}) if (folder / INDEX).is_file() else {}
    chosen = None if evals is None else set(evals)
    index, written = {}, []
    for k, cells in by_eval.items():
        ranked = rank(cells, mode)
        gone = sorted({t for t, c in ended.items() if c.ended_at < k})
        # a search of hundreds of trials draws its best MAX_PAGES pages of each evaluation: a redraw
        # stays seconds of the driver, and every trial's grid is in its own MLflow run
        pages = [ranked[i:i + PAGE] for i in range(0, len(ranked), PAGE)][:MAX_PAGES]
        files = [folder / (f"eval_{k:04d}.png" if p == 0 else f"eval_{k:04d}-p{p + 1}.png")
                 for p in range(len(pages))]
        shown = sum(map(len, pages))
        titles = [(f"{name + ': ' if name else ''}evaluation {k} (step {ranked[0].step}): "
                   f"{len(ranked)} trial{'s' if len(ranked) > 1 else ''}, best {fid_key} first"
                   + (f" (the best {shown} drawn)" if shown < len(ranked) else "")
                   + (f", page {p + 1} of {len(pages)}" if len(pages) > 1 else "")
                   + (f"; {len(gone)} ended before" if gone else "")) for p in range(len(pages))]
        prints = [_fingerprint(t, page, fid_key, rungs) for t, page in zip(titles, pages, strict=True)]
        index[str(k)] = {"step": ranked[0].step, "pages": [f.name for f in files], "ended_before": gone,
                         "drawn": prints,
                         "cells": [{"trial_id": c.trial_id, "fid": c.fid, "outcome": c.outcome,
                                    "described": c.describe(rungs), "label": c.label(fid_key, rungs),
                                    "page": i // PAGE + 1 if i < shown else None}
                                   for i, c in enumerate(ranked)]}
        if chosen is not None and k not in chosen:
            index[str(k)]["drawn"] = before.get(str(k), {}).get("drawn", [])  # what its files still show
            continue
        drawn = before.get(str(k), {}).get("drawn", [])
        for p, (page, path) in enumerate(zip(pages, files, strict=True)):
            if p < len(drawn) and drawn[p] == prints[p] and path.is_file():
                continue  # the page shows this already
            image = draw_sheet(page, titles[p], fid_key, rungs)
            written.append(atomic_write(path, functools.partial(image.save, format="PNG",
                                                                compress_level=PAGE_COMPRESSION)))
    written.append(_write_json(folder / INDEX, {"fid_key": fid_key, "rungs": list(rungs), "sheets": index}))
    return written


def rank(cells: Sequence[Cell], mode: str = "min") -> list[Cell]:
    """Best FID first; a non-finite FID (a diverged trial) last."""
    sign = 1.0 if mode == "min" else -1.0
    return sorted(cells, key=lambda c: (not math.isfinite(c.fid),
                                        sign * c.fid if math.isfinite(c.fid) else 0.0, c.trial_id))


def draw_sheet(cells: Sequence[Cell], title: str, fid_key: str, rungs: Sequence[int]) -> Image.Image:
    """The cells in rows of ``COLUMNS``, each grid under its label and framed in the colour of where
    its trial ended (green completed, orange stopped early, red failed, none while running).

    Drawn with Pillow, not matplotlib as the other pictures are: a page of 16 grids took 1.2 s of
    the driver in matplotlib (its layout engine), and a search of 1,000 trials has 200 pages."""
    labels = [cell.label(fid_key, rungs).splitlines() for cell in cells]
    text_h = LINE * max((len(lines) for lines in labels), default=1)
    cell_w, cell_h = PICTURE + 2 * PAD, text_h + PICTURE + 2 * PAD
    rows = max(1, math.ceil(len(cells) / COLUMNS))
    head = 2 * LINE + PAD
    page = Image.new("RGB", (COLUMNS * cell_w, head + rows * cell_h), "white")
    draw = ImageDraw.Draw(page)
    draw.text((PAD, PAD // 2), title, fill="black", font=_font(False, 13))
    for i, (cell, lines) in enumerate(zip(cells, labels, strict=True)):
        x, y = (i % COLUMNS) * cell_w + PAD, head + (i // COLUMNS) * cell_h
        draw.multiline_text((x, y), "\n".join(lines), fill="black", font=_font(True, 10), spacing=2)
        with Image.open(cell.png) as grid:
            picture = grid.convert("RGB")
        if max(picture.size) > PICTURE:  # a 64 px search's grid: shrunk to a 32 px one's size
            scale = PICTURE / max(picture.size)
            picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                     Image.Resampling.LANCZOS)
        top = y + text_h + PAD // 2
        page.paste(picture, (x, top))
        if (color := cell.frame()) is not None:
            rgb = tuple(round(255 * v) for v in colors.to_rgb(color))
            draw.rectangle((x - 3, top - 3, x + picture.width + 2, top + picture.height + 2), outline=rgb,
                           width=3)
    return page


@functools.cache
def _font(mono: bool, size: int) -> ImageFont.FreeTypeFont:
    """matplotlib's own DejaVu fonts (it ships them): the sheets read like the other pictures."""
    family = "monospace" if mono else "sans-serif"
    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family=[family])), size)


def _fingerprint(title: str, cells: Sequence[Cell], fid_key: str, rungs: Sequence[int]) -> str:
    """What a page shows: its title, and each cell's label, frame colour and picture file."""
    parts = [title]
    for cell in cells:
        stat = cell.png.stat() if cell.png.exists() else None
        parts += [cell.label(fid_key, rungs), str(cell.frame()), str(cell.png),
                  f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "missing"]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


_NAMES = {"mode_coverage": "classes", "decodable": "clean"}  # short: a cell is narrow


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write_json(path: Path, data: Any) -> Path:
    text = json.dumps(data, indent=1, default=str).encode()
    return atomic_write(path, lambda f: f.write(text))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(), parse_constant=lambda c: {"Infinity": math.inf,
                                                                  "-Infinity": -math.inf}.get(c, math.nan))
