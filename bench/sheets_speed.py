"""How long the contact sheets take as a search grows (issue 28, part 3), without Ray: a folder of
recorded frames as a search of TRIALS trials leaves it (ASHA's attrition: half the trials at each
rung go on), then the redraws the search's driver makes:

- ``full``: every sheet drawn from nothing (the end of a search, a report of a folder never drawn);
- ``refresh``: what one refresh of the driver's callback draws after a minute of a search that runs
  ``--at-once`` trials (each of them one more evaluation recorded, a quarter of them ended).

The frames' grids are PNGs of the size a 32 px search's grid has (smooth random pictures, which
compress about as real samples do); the cards name four hyperparameters, as the shapes space's do.
``--baseline DIR``: the same measurements with the package of another checkout (``git worktree add
DIR REV``), side by side in the same run, each size in a process of its own.

    python bench/sheets_speed.py --trials 64,256,1000 --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_common_args, report, table
from PIL import Image

from orchestrator.views import sheets

GRID_PX = 274  # an 8 x 8 grid of 32 px samples with 2 px padding, as trial.GRID_SIZE draws it
RUNGS, MAX_EVALS = [2, 6], 12  # the shapes space's GPU budget: grace 2, reduction 3, 12 evaluations


def grid_png(rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    coarse = Image.fromarray(rng.integers(0, 255, (GRID_PX // 4, GRID_PX // 4, 3), dtype=np.uint8))
    coarse.resize((GRID_PX, GRID_PX), Image.Resampling.BILINEAR).save(out, format="PNG")
    return out.getvalue()


def record_search(folder: Path, trials: int, running: int, rng: np.random.Generator) -> dict[str, int]:
    """Every trial's frames and card as ASHA leaves them: each trial reaches a rung, and half of those
    at a rung go on to the next, and the last ``running`` trials have not ended yet; returns how many
    evaluations each trial recorded."""
    pngs = [grid_png(rng) for _ in range(8)]  # distinct pictures, reused: the writing is what counts
    reached = {}
    for i in range(trials):
        trial, floor = f"t{i:05d}", float(rng.uniform(40, 300))
        evals = RUNGS[0]
        for rung in (*RUNGS[1:], MAX_EVALS):
            if rng.random() < 0.5:
                evals = rung
            else:
                break
        params = {"lr_g": float(10 ** rng.uniform(-4, -3)), "lr_d": float(10 ** rng.uniform(-4, -3)),
                  "loss": str(rng.choice(["bce", "hinge", "lsgan"])), "ngf": int(rng.choice([32, 64]))}
        sheets.record_card(folder, trial, params)
        for k in range(1, evals + 1):
            fid = floor * (1 + 2 / k)
            sheets.record_frame(folder, trial, k, 200 * k, fid, pngs[(i + k) % len(pngs)])
        if i < trials - running:
            ended = "completed" if evals == MAX_EVALS else "stopped_early"
            sheets.record_card(folder, trial, params, ended, "", evals)
        reached[trial] = evals
    return reached


def measure(trials: int, at_once: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        reached = record_search(folder, trials, at_once, rng)
        recorded = time.perf_counter() - started
        started = time.perf_counter()
        written = sheets.write_sheets(folder, "fid2k", RUNGS)
        full = time.perf_counter() - started
        # a minute of a search running at_once trials: each of them one evaluation further, a quarter
        # of them ended; the driver's callback (sheet_logger) redraws the evaluations that changed
        dirty: set[int] = set()
        running = list(reached)[-at_once:]
        for trial in running:
            k = reached[trial] + 1 if reached[trial] < MAX_EVALS else reached[trial]
            sheets.record_frame(folder, trial, k, 200 * k, float(rng.uniform(40, 300)), grid_png(rng))
            dirty.add(k)
        for trial in running[: at_once // 4]:
            card = sheets._read_json(folder / sheets.FRAMES / trial / sheets.CARD)
            sheets.record_card(folder, trial, card["params"], "stopped_early", "", reached[trial])
            dirty.update(range(1, reached[trial] + 1))
        started = time.perf_counter()
        redrawn = sheets.write_sheets(folder, "fid2k", RUNGS, evals=dirty)
        refresh = time.perf_counter() - started
    return {"trials": trials, "frames": sum(reached.values()), "record_s": recorded, "full_s": full,
            "full_files": len(written), "refresh_s": refresh, "refresh_files": len(redrawn)}


def in_process(code: Path, trials: int, at_once: int, seed: int) -> dict[str, float]:
    """``measure`` in a fresh process importing the package from ``code``."""
    here = Path(__file__).resolve().parent
    command = [sys.executable, __file__, "--one", str(trials), "--at-once", str(at_once), "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{here}"})
    if done.returncode != 0:
        raise RuntimeError(f"{code}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", default="64,256,1000", help="search sizes, comma-separated")
    p.add_argument("--at-once", type=int, default=64, help="trials running at once (the refresh's changes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", type=Path, help="a checkout whose package is measured beside this one")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, as JSON
    add_common_args(p, device=False)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, min(args.at_once, args.one), args.seed)))
        return 0
    sizes = [int(s) for s in args.trials.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.at_once < 1:
        print("sheets_speed: --trials and --at-once must be positive", file=sys.stderr)
        return 2
    if args.baseline and not (args.baseline / "orchestrator" / "views" / "sheets.py").is_file():
        print(f"sheets_speed: --baseline {args.baseline} holds no orchestrator package", file=sys.stderr)
        return 2
    codes = {"this checkout": Path(__file__).resolve().parent.parent}
    if args.baseline:
        codes = {f"baseline ({args.baseline})": args.baseline.resolve(), **codes}
    rows = []
    for n in sizes:
        for label, code in codes.items():
            row = {"code": label, **in_process(code, n, min(args.at_once, n), args.seed)}
            rows.append(row)
            print(f"{n} trials, {label}: {row}", flush=True)
    lines = [f"Frames as ASHA leaves them (rungs {RUNGS}, at most {MAX_EVALS} evaluations, half go on at "
             f"each rung); a refresh after a minute of {args.at_once} trials at once (each one evaluation "
             "further, a quarter of them ended). Seconds of one process, one core; each size and code in "
             "a fresh process.", "",
             *table(["code", "trials", "frames", "all sheets drawn (s)", "files", "one refresh (s)",
                     "files redrawn"],
                    [[r["code"], r["trials"], r["frames"], f"{r['full_s']:.1f}", r["full_files"],
                      f"{r['refresh_s']:.1f}", r["refresh_files"]] for r in rows])]
    report("sheets_speed", "cpu", lines, args)
    return 0 if all(math.isfinite(r["full_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
