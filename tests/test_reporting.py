"""The report's table and page on a constructed search: the Pareto column, the page's pictures
inside it, and which of a search's picture files the page shows. The real search's report is
checked in ``test_report.py``."""

from __future__ import annotations

import io
import math
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
from PIL import Image

from orchestrator.metrics.registry import objective
from orchestrator.views.report_page import Trials, pick_figures, write_report


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def _trials() -> Trials:
    table = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"],
        "outcome": ["completed", "stopped_early", "failed", "completed"],
        "failure_mode": ["", "", "mode_collapse", ""],
        "best_fid128": [100.0, 150.0, 20.0, 120.0],
        "evals": [3, 1, 2, 3],
        "seconds": [400.0, 100.0, 10.0, 500.0],
        "config/lr_g": [1e-4, 2e-4, 3e-4, 4e-4],
    })
    return Trials(table, objective(128), "GPU", 0.25, "demo", {"a": _png(), "b": _png()},
                  {"search plot: fid_over_time": _png()})


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def test_the_report_marks_the_front_and_holds_its_pictures(tmp_path: Path) -> None:
    report = write_report(_trials(), tmp_path / "r")
    # a quarter GPU a trial: device seconds are a quarter of the wall clock
    assert report["gpu_seconds"].tolist() == [100.0, 125.0, 25.0, 2.5]
    # a (100 @ 100 s) is on the front; d is beaten by a; b (150 @ 25 s) was cut short by ASHA and is
    # not compared; c failed
    assert dict(zip(report["trial"], report["pareto"], strict=True)) == {"a": True, "d": False, "b": False,
                                                                       "c": False}
    assert report["outcome"].tolist()[-1] == "failed (mode_collapse)"
    assert pd.read_csv(tmp_path / "r.csv")["pareto"].tolist() == report["pareto"].tolist()
    page = (tmp_path / "r.html").read_text()
    images = _Images()
    images.feed(page)
    assert len(images.sources) == 2 + 2  # two thumbnails, the quality-against-cost plot, fid_over_time
    assert all(src.startswith("data:image/png;base64,") for src in images.sources)
    assert "cheapest within 10% of the best fid128: trial b fid128 150 in" not in page  # 50 % worse
    assert "the best itself" in page and "1 failed" in page
    assert (tmp_path / "r-quality_vs_cost.png").stat().st_size > 10_000
    assert not math.isnan(report["best_fid128"].iloc[0])


def test_the_page_shows_the_plots_and_the_last_evaluations_sheets() -> None:
    files = ["plots/fid_over_time.png", "plots/report-quality_vs_cost.png", "plots/param_importance.png",
             *(f"contact_sheets/{name}.png" for name in ("eval_0001", "eval_0002", "eval_0002-p2"))]
    assert pick_figures(files) == {
        "search plot: fid_over_time": "plots/fid_over_time.png",
        "search plot: param_importance": "plots/param_importance.png",
        "contact sheet, eval 0002": "contact_sheets/eval_0002.png",
        "contact sheet, eval 0002, page 2": "contact_sheets/eval_0002-p2.png",
    }
    assert pick_figures([]) == {}
