"""The driver's cost against the number of trials (issue 28), before and after the fixes: a plot
of the figures ``bench/scale.py`` recorded (``bench/curves/scale-rows.csv``, one row per search:
which build of the driver, its size and its figures, each from a table in ``bench/RESULTS.md``).

    python bench/scale_plot.py  # -> bench/scale.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

BENCH = Path(__file__).resolve().parent
ROWS, PLOT = BENCH / "curves" / "scale-rows.csv", BENCH / "scale.png"
# a panel: its column(s) in the rows, its title, and the target where it names one
COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple")  # one a build, in the rows' order
PANELS = [
    (("cpu_early_ms", "cpu_late_ms"),
     "driver CPU per result (ms):\nfirst quarter of trials ended (o), last (x)", None),
    (("overhead_waiting_old",),
     "overhead while trials waited (%)\n(busy = whole iterations before the last start)", 5),
    (("suggest_median_ms", "suggest_last_ms"),
     "sampler's suggestion (ms):\nmedian (o), last tenth of the search (x)", None),
    (("state_share",), "Tune's state saves, share of the wall clock (%)", None),
    (("sheets_max_s",), "contact sheets' longest redraw (s)", 30),
    (("peak_mib",), "driver's peak memory (MiB)", 2048),
]


def draw(rows: pd.DataFrame, out: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (columns, title, target) in zip(axes.flat, PANELS, strict=True):
        builds = rows.groupby("build", sort=False)
        for i, (build, part) in enumerate(builds):
            colour = COLOURS[i % len(COLOURS)]
            part = part.sort_values("trials")
            for column, marker in zip(columns, ("o", "x"), strict=False):
                scale = 100 if column in ("overhead_waiting_old", "state_share") else 1
                ax.plot(part["trials"], part[column] * scale, marker=marker, color=colour,
                        label=build if column == columns[0] else None)
        if target is not None:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="issue 28's target")
        ax.set_xscale("log")
        ax.set_xticks([64, 256, 1000], ["64", "256", "1000"])
        ax.set_xlabel("trials in the search (64 at once)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
    handles, labels = axes.flat[4].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("bench/scale.py: the driver's cost against the number of trials, 2-core CPU, 15-s "
                 "evaluations (60 s simulated)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=Path, default=ROWS)
    p.add_argument("--out", type=Path, default=PLOT)
    args = p.parse_args(argv)
    if not args.rows.is_file():
        print(f"scale_plot: no rows at {args.rows}", file=sys.stderr)
        return 2
    draw(pd.read_csv(args.rows), args.out)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
