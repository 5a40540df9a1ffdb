"""``bench/replay.py`` and its zero-cost trial (issue 27): a suggestion meets the table at its nearest
recorded configuration in the space's own scaling, and a replay through the product's Tune
configuration serves exactly the recorded curves, charges exactly their recorded seconds, and never
imports torch in its workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from replay_trial import Curves, Scale  # noqa: E402  (bench/ is not a package)

SCALES = {"lr_g": Scale("log", 4e-4, 4e-3), "lr_d": Scale("log", 4e-4, 4e-3), "loss": Scale("category")}
# the shapes cpu: section's keys; the start point first (distance 0 from the space's own start)
CONFIGS = [
    {"loss": "bce", "lr_g": 2e-3, "lr_d": 2e-3},
    {"loss": "hinge", "lr_g": 2e-3, "lr_d": 2e-3},
    {"loss": "bce", "lr_g": 4e-4, "lr_d": 4e-4},
    {"loss": "lsgan", "lr_g": 1e-3, "lr_d": 3e-3},
    {"loss": "hinge", "lr_g": 3e-3, "lr_d": 5e-4},
    {"loss": "bce", "lr_g": 1e-3, "lr_d": 1e-3},
]


def write_table(path: Path, evals: int = 4) -> Path:
    """Made-up curves: configuration i falls from 300 - 20 i, 10 a step; seeds 0 and 1 of the
    first, a run cut short (no 'ended') that must never be served, and one that failed at 2."""
    rows = []
    for i, config in enumerate(CONFIGS):
        for seed in (0, 1) if i == 0 else (0,):
            last = 2 if i == 3 else evals
            for k in range(1, last + 1):
                ended = ("discriminator_wins" if i == 3 else "completed") if k == last else ""
                rows.append({"run": f"c{i:02d}-s{seed}", "config_id": i, "seed": seed, "eval": k,
                             "step": 2500 * k, "train_seconds": 100.0 + i, "eval_seconds": 20.0 + seed,
                             "seconds": 0.0, "ended": ended, "config": json.dumps(config),
                             "fid256": 300.0 - 20 * i - 10 * k + seed})
    rows.append({"run": "c09-s0", "config_id": 9, "seed": 0, "eval": 1, "step": 2500, "train_seconds": 1.0,
                 "eval_seconds": 1.0, "seconds": 2.0, "ended": "", "config": json.dumps(CONFIGS[0]),
                 "fid256": 1.0})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_suggestion_meets_the_nearest_recorded_configuration(tmp_path: Path) -> None:
    curves = Curves.read(write_table(tmp_path / "t.csv"), "fid256", SCALES)
    assert 9 not in curves.configs  # cut short by the recording: not a curve
    assert curves.nearest({"loss": "bce", "lr_g": 2e-3, "lr_d": 2e-3}) == (0, 0.0)
    # log scale: 1.1e-3 is nearer 1e-3 than 2e-3 by its logarithm (and by its value too); 1.5e-3 is
    # nearer 2e-3 by logarithm (0.29 < 0.41), though nearer 1e-3 by value
    assert curves.nearest({"loss": "bce", "lr_g": 1.5e-3, "lr_d": 1.5e-3})[0] == 0
    assert curves.nearest({"loss": "bce", "lr_g": 1.1e-3, "lr_d": 1.1e-3})[0] == 5
    # a category outweighs learning rates: the one lsgan configuration, not the bce one with these rates
    config_id, distance = curves.nearest({"loss": "lsgan", "lr_g": 2e-3, "lr_d": 2e-3})
    assert config_id == 3 and distance == pytest.approx((0.301 ** 2 + 0.176 ** 2) ** 0.5, abs=1e-3)
    served = curves.curve(0, "trial-a")
    assert list(served["eval"]) == [1, 2, 3, 4] and served["seed"].nunique() == 1


def test_a_coarser_interval_serves_every_kth_evaluation_with_the_training_between(tmp_path: Path) -> None:
    curves = Curves.read(write_table(tmp_path / "t.csv"), "fid256", SCALES, every=3)
    served = curves.curve(1, "a")  # recorded at evaluations 1-4: served 3, and 4 where the run ended
    assert list(served["step"]) == [7500, 10000] and list(served["eval"]) == [1, 2]
    assert list(served["train_seconds"]) == [303.0, 101.0] and list(served["eval_seconds"]) == [20.0, 20.0]
    assert list(served["fid256"]) == [250.0, 240.0]


@pytest.mark.parametrize("text, expected", [
    ("tpe+asha", ("tpe", "asha", (), 1)),
    ("random+wandb:grace=2", ("random", "wandb", ("--grace-period", "2"), 1)),
    ("tpe+asha:rf=3,every=2", ("tpe", "asha", ("--reduction-factor", "3"), 2)),
])
def test_a_strategy_names_its_sampler_scheduler_and_numbers(text: str, expected: tuple) -> None:
    from replay import Strategy

    got = Strategy.parse(text)
    assert (got.sampler, got.scheduler, got.flags, got.every) == expected


@pytest.mark.parametrize("text", ["tpe", "grid+asha", "tpe+hyperband", "tpe+asha:grace=0", "tpe+asha:eta=3"])
def test_a_strategy_that_is_not_one_is_refused(text: str) -> None:
    from replay import Strategy

    with pytest.raises(ValueError, match=r"a strategy is|options are"):
        Strategy.parse(text)


@pytest.mark.integration
def test_a_replay_serves_the_recorded_curves_through_the_real_driver(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv")
    out = tmp_path / "served.csv"
    command = [sys.executable, str(REPO / "bench" / "replay.py"), "shapes", "--table", str(table),
               "--replays", "2", "--strategies", "tpe+asha;random+fifo;tpe+wandb:every=2",
               "--num-samples", "5",
               "--time-scale", "0.001", "--bias-draws", "300", "--out", str(out),
               "--plot", str(tmp_path / "replay.png"), "--no-record"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    served = pd.read_csv(out)
    recorded = pd.read_csv(table)
    assert (served["torch_imported"] == 0).all()  # the workers stayed small
    for _, row in served.iterrows():  # every result is a recorded evaluation of its configuration
        match = recorded[(recorded["config_id"] == row["config_id"]) & (recorded["step"] == row["step"])]
        assert row["fid256"] in set(match["fid256"])
        if "every" not in row["strategy"]:
            assert row["device_seconds"] in set(match["train_seconds"] + match["eval_seconds"])
    coarse = served[served["strategy"] == "tpe+wandb:every=2"]
    assert set(coarse["step"]) <= {5000, 10000} and coarse["training_iteration"].max() <= 2
    for (strategy, _), rows in served.groupby(["strategy", "replay"]):
        assert rows["trial_id"].nunique() == 5
        assert rows["compute"].iloc[-1] == pytest.approx(rows["device_seconds"].sum())
        per_trial = rows.groupby("trial_id")["training_iteration"].max()
        assert per_trial.max() <= 4  # the plan's max_evals on this CPU
        if strategy.endswith("fifo"):  # to the end of its curve, or its recorded failure
            ends = rows.groupby("trial_id")["config_id"].first().map(lambda i: 2 if i == 3 else 4)
            assert (per_trial == ends).all()
    # the space's start point is recorded exactly, and every replay's sampler suggested it
    assert (served.groupby(["strategy", "replay"])["distance"].min() == 0).all()
    assert (served["distance"] > 0).any()  # and the rest met the table at its nearest configuration
    assert "Mapping bias (300 random draws" in done.stdout and (tmp_path / "replay.png").is_file()
    assert "| tpe+asha | 2 |" in done.stdout and "| random+fifo | 2 |" in done.stdout
    assert "| tpe+wandb:every=2 | 2 |" in done.stdout
    # the made-up curves keep their order from the first evaluation on (c02 and c03 tie at the end)
    assert "against the final fid256 (Spearman's rho, runs): eval 1: +0.99 (7)" in done.stdout
    assert "ASHA's stops in the replays: " in done.stdout
