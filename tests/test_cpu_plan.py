"""The main job on a machine without a GPU (issue 23): the plan it prints and the search it runs are
the space file's ``cpu:`` section, number for number (the section was sized by bench/RESULTS.md's
learning curves); on a small budget, its trials train that section's configurations in this CPU's
precision, and the summary says what the decoder read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.gan.placement import place
from orchestrator.search.cli import main
from orchestrator.search.cli import parse_args as search_args
from orchestrator.search.plan import make_plan
from orchestrator.space.sampling import space_path

# read with plain YAML, not the parser under test
CPU = yaml.safe_load(space_path("shapes").read_text())["cpu"]
BUDGET = CPU["budget"]


def test_the_main_job_without_a_gpu_plans_the_cpu_section() -> None:
    plan = make_plan(search_args(["shapes", "--gpus-per-trial", "0"]))
    assert plan.cpu_budget and plan.space.variant == "cpu"
    keys = ("num_samples", "max_concurrent", "max_evals", "grace_period", "reduction_factor")
    assert tuple(getattr(plan, k) for k in keys) == tuple(BUDGET[k] for k in keys)
    assert (plan.settings.eval_every, plan.settings.fid_n) == (BUDGET["eval_every"], BUDGET["fid_n"])
    assert dict(plan.space.fixed) == CPU["fixed"]
    assert set(plan.space.sampled_keys()) == set(CPU["params"])
    assert [dict(p) for p in plan.space.start] == CPU["start"]
    assert plan.resources == {"cpu": max(1, (os.cpu_count() or 1) // BUDGET["max_concurrent"]), "gpu": 0}
    # a flag changes what it names and nothing else; --space runs the file's own (GPU) budget
    flagged = make_plan(search_args(["shapes", "--gpus-per-trial", "0", "--max-evals", "9"]))
    assert (flagged.max_evals, flagged.num_samples, flagged.space.variant) == (9, BUDGET["num_samples"],
                                                                               "cpu")
    on_file = make_plan(search_args(["shapes", "--gpus-per-trial", "0", "--space",
                                     str(space_path("shapes"))]))
    assert on_file.space.variant == "" and on_file.settings.eval_every != BUDGET["eval_every"]


@pytest.mark.integration
def test_a_small_main_job_trains_the_cpu_sections_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["shapes", "--gpus-per-trial", "0", "--storage", str(tmp_path), "--name", "cpu",
            "--num-samples", "3", "--max-evals", "2", "--eval-every", "20", "--fid-n", "64", "--limit", "512"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no GPU: the space's cpu: section (3 trials, 2 at once, at most 2 evaluations of 20 steps" in out
    table = pd.read_csv(tmp_path / "cpu" / "results.csv")
    assert len(table) == 3
    for key, value in CPU["fixed"].items():
        assert (table[f"config/{key}"] == value).all(), key
    for key in ("lr_g", "lr_d"):
        low, high = CPU["params"][key]["loguniform"]
        assert table[f"config/{key}"].between(low, high).all()
    assert set(table["config/loss"]) <= set(CPU["params"]["loss"]["choice"])
    start = CPU["start"][0]
    assert any(all(row[f"config/{k}"] == v for k, v in start.items()) for _, row in table.iterrows())
    # every evaluation ran in this CPU's precision and reported what the decoder read
    for path in table["path"]:
        results = [json.loads(line) for line in (Path(path) / "result.json").read_text().splitlines()]
        assert {r["compute_precision"] for r in results} == {place("cpu").precision}
        assert all(0 <= r["mode_coverage"] <= 1 and 0 <= r["decodable"] <= 1 for r in results)
    assert {"mode_coverage", "decodable"} <= set(table.columns)
    assert "classes cleanly (mode coverage" in out
