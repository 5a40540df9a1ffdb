"""How one suggestion of the search's sampler grows with the finished trials (issue 28), without Ray:
the product's TPE (``make_sampler``: multivariate, grouped, constant liar) over the shapes space, in a
sqlite study as a search keeps it, asked and told ``--trials`` times; with and without the
intermediate values Ray's OptunaSearch reports for every result (``--intermediates`` a trial).
Reported: the median of the suggestions around each size.

    python bench/suggest_speed.py --trials 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import optuna
from common import add_common_args, report, table

from orchestrator.space.sampling import load_space, make_sampler, space_path
from orchestrator.space.study import open_study_storage

SIZES = (16, 64, 256, 512, 1000, 2000)
WINDOW = 12  # suggestions a size's median is taken over (the ones just before it)


def measure(trials: int, intermediates: int, seed: int) -> dict[int, float]:
    """Median milliseconds of one suggestion at each of ``SIZES`` up to ``trials``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, rng = load_space(space_path("shapes")), np.random.default_rng(seed)
    seconds, medians = [], {}
    with tempfile.TemporaryDirectory() as folder:
        study = optuna.create_study(storage=open_study_storage(f"sqlite:///{folder}/study.db"),
                                    sampler=make_sampler(space, seed, trials), direction="minimize")
        for n in range(1, trials + 1):
            started = time.perf_counter()
            trial = study.ask()
            space.define_by_run(trial)
            seconds.append(time.perf_counter() - started)
            for step in range(1, intermediates + 1):
                trial.report(float(rng.uniform(50, 300)), step)
            study.tell(trial, float(rng.uniform(50, 300)))
            if n in SIZES:
                medians[n] = 1000 * float(np.median(seconds[-WINDOW:]))
                print(f"{intermediates} intermediates, {n} trials: {medians[n]:.0f} ms", flush=True)
    return medians


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--intermediates", type=int, default=5, help="values reported a trial (the results)")
    p.add_argument("--seed", type=int, default=0)
    add_common_args(p, device=False)
    args = p.parse_args(argv)
    if args.trials < SIZES[0] or args.intermediates < 0:
        print(f"suggest_speed: --trials must be at least {SIZES[0]}, --intermediates at least 0",
              file=sys.stderr)
        return 2
    runs = {k: measure(args.trials, k, args.seed) for k in (args.intermediates, 0)}
    sizes = [n for n in SIZES if n <= args.trials]
    lines = [f"One suggestion of the product's TPE over the shapes space in a sqlite study, median of the "
             f"{WINDOW} before each size (ms); one process, one core.", "",
             *table(["intermediate values a trial", *(f"{n} trials" for n in sizes)],
                    [[k, *(f"{runs[k][n]:.0f}" for n in sizes)] for k in runs])]
    report("suggest_speed", "cpu", lines, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
