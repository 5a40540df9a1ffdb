"""The smoke search's contact sheets (the shared ``smoke_search`` fixture): one per evaluation, beside
the results and on the parent run, every label's FID and outcome as MLflow holds them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from orchestrator.tracking.store import EXPERIMENT_KIND_TAG
from orchestrator.views.sheets import milestones

pytestmark = pytest.mark.integration  # whole searches: deselected by a plain `pytest`

FID = "fid128"
MAX_EVALS, GRACE, FACTOR = 3, 1, 2  # the smoke test's ASHA (see the README's plan)


@pytest.fixture(scope="module")
def trials(smoke_search: dict) -> dict:
    """Trial id -> (run, {step: FID}) from MLflow."""
    client = MlflowClient(smoke_search["tracking_uri"])
    runs = client.search_runs([smoke_search["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{smoke_search['parent_run_id']}'")
    history = {r.info.run_id: client.get_metric_history(r.info.run_id, FID) for r in runs}
    return {r.data.tags["trial_id"]: (r, {m.step: m.value for m in history[r.info.run_id]}) for r in runs}


@pytest.fixture(scope="module")
def index(smoke_search: dict) -> dict:
    return json.loads((smoke_search["experiment_dir"] / "contact_sheets" / "index.json").read_text())


def test_a_sheet_per_evaluation_beside_the_results_and_on_the_parent_run(
    smoke_search: dict, index: dict, tmp_path: Path
) -> None:
    assert sorted(index["sheets"], key=int) == [str(k) for k in range(1, MAX_EVALS + 1)]
    client = MlflowClient(smoke_search["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(smoke_search["parent_run_id"], "contact_sheets")}
    for sheet in index["sheets"].values():
        for page in sheet["pages"]:
            local = smoke_search["experiment_dir"] / "contact_sheets" / page
            assert f"contact_sheets/{page}" in logged
            remote = Path(client.download_artifacts(smoke_search["parent_run_id"], f"contact_sheets/{page}",
                                                    str(tmp_path)))
            assert remote.read_bytes() == local.read_bytes()  # the final sheet was logged, not an early one
            with Image.open(local) as image:
                assert image.width > 900


def test_every_label_holds_the_fid_mlflow_holds_at_that_step(index: dict, trials: dict) -> None:
    seen = 0
    for k, sheet in index["sheets"].items():
        for cell in sheet["cells"]:
            _, fids = trials[cell["trial_id"]]
            assert cell["fid"] == pytest.approx(fids[sheet["step"]], rel=1e-6), (k, cell)
            assert f"{FID} {cell['fid']:.4g}" in cell["label"].splitlines()[0]
            seen += 1
        fids = [c["fid"] for c in sheet["cells"]]
        assert fids == sorted(fids)  # best first
    # every evaluation of every trial is on its sheet
    assert seen == sum(len(fids) for _, fids in trials.values())


def test_a_stopped_trial_appears_stopped_at_its_rung(index: dict, trials: dict) -> None:
    rungs = milestones(GRACE, FACTOR, MAX_EVALS)
    stopped = {t: fids for t, (run, fids) in trials.items() if run.data.tags["outcome"] == "stopped_early"}
    assert stopped, "the smoke search stopped no trial: its start point 2 is there for that"
    for trial, fids in stopped.items():
        last = len(fids)
        assert last in rungs
        cells = [c for s in index["sheets"].values() for c in s["cells"] if c["trial_id"] == trial]
        assert len(cells) == last
        rung = rungs.index(last) + 1
        assert {c["described"] for c in cells} == {f"stopped early at rung {rung} (eval {last})"}
        assert all(trial not in s["ended_before"] for k, s in index["sheets"].items() if int(k) <= last)
        assert all(trial in s["ended_before"] for k, s in index["sheets"].items() if int(k) > last)
    completed = [t for t, (run, _) in trials.items() if run.data.tags["outcome"] == "completed"]
    assert {c["described"] for c in index["sheets"][str(MAX_EVALS)]["cells"]} == {"completed"}
    assert {c["trial_id"] for c in index["sheets"][str(MAX_EVALS)]["cells"]} == set(completed)


def test_the_experiment_says_it_is_model_training(smoke_search: dict) -> None:
    experiment = MlflowClient(smoke_search["tracking_uri"]).get_experiment(smoke_search["experiment_id"])
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_the_search_writes_its_report_and_logs_its_plots(smoke_search: dict) -> None:
    """With ORCHESTRATOR_SCREENSHOTS=DIR set, the first sheet and the plot go to DIR too: the
    README's pictures (see tests/test_mlflow_ui.py)."""
    folder = smoke_search["experiment_dir"]
    if publish := os.environ.get("ORCHESTRATOR_SCREENSHOTS"):
        for source, name in ((folder / "contact_sheets" / "eval_0001.png", "contact-sheet.png"),
                             (folder / "report-quality_vs_cost.png", "quality-vs-cost.png")):
            with Image.open(source) as image:  # 256 colours: a third of the bytes in the README
                image.convert("RGB").quantize(256).save(Path(publish) / name, optimize=True)
    html = (folder / "report.html").read_text()
    assert html.count('class="thumb"') == 4 and "<figcaption>quality against cost" in html
    client = MlflowClient(smoke_search["tracking_uri"])
    plots = {Path(a.path).name for a in client.list_artifacts(smoke_search["parent_run_id"], "plots")}
    assert {"fid_over_time.png", "report-quality_vs_cost.png"} <= plots
    assert (folder / "plots" / "fid_over_time.png").is_file()
