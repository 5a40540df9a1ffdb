"""Contact sheets from recorded frames: ranking, outcomes in words, ASHA's rungs, pages at 64+ trials.
The real search's sheets are checked against MLflow in ``test_sheets_search.py``."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from ray.tune.schedulers.async_hyperband import _Bracket

from orchestrator.views import sheets


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (34, 34), (shade, shade, shade)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("grace, factor, max_t", [(1, 2, 3), (2, 3, 20), (1, 4, 64), (5, 2, 5)])
def test_milestones_are_the_rungs_of_rays_asha(grace: int, factor: int, max_t: int) -> None:
    rungs = [milestone for milestone, _ in _Bracket(grace, max_t, factor, 0)._rungs]
    assert sheets.milestones(grace, factor, max_t) == sorted(rungs)


def _search(folder: Path) -> None:
    """Three trials over three evaluations (rungs at 1 and 2, max 3): a completes, b is stopped at
    the second rung, c fails at its first evaluation."""
    for trial, fids in {"a": [300.0, 200.0, 150.0], "b": [250.0, 260.0], "c": [math.inf]}.items():
        sheets.record_card(folder, trial, {"lr_g": 0.0002, "loss": "bce"})
        for k, fid in enumerate(fids, start=1):
            sheets.record_frame(folder, trial, k, 40 * k, fid, _png(40 * k))
    sheets.record_card(folder, "a", {"lr_g": 0.0002, "loss": "bce"}, "completed", "", 3)
    sheets.record_card(folder, "b", {"lr_g": 0.0001, "loss": "hinge"}, "stopped_early", "", 2)
    sheets.record_card(folder, "c", {"lr_g": 0.01, "loss": "bce"}, "failed", "diverged", 1)


def test_each_evaluation_has_a_sheet_ranked_by_fid_with_outcomes(tmp_path: Path) -> None:
    _search(tmp_path)
    written = sheets.write_sheets(tmp_path, "fid128", [1, 2], name="demo")
    assert {p.name for p in written} == {"eval_0001.png", "eval_0002.png", "eval_0003.png", "index.json"}
    index = json.loads((tmp_path / "index.json").read_text())["sheets"]
    first = index["1"]["cells"]
    assert [c["trial_id"] for c in first] == ["b", "a", "c"]  # 250 < 300 < inf
    described = {c["trial_id"]: c["described"] for c in first}
    assert described == {"a": "completed", "b": "stopped early at rung 2 (eval 2)",
                         "c": "failed: diverged (eval 1)"}
    assert [c["trial_id"] for c in index["2"]["cells"]] == ["a", "b"]  # 200 < 260
    assert index["2"]["ended_before"] == ["c"] and index["3"]["ended_before"] == ["b", "c"]
    assert index["2"]["step"] == 80
    label = next(c["label"] for c in index["2"]["cells"] if c["trial_id"] == "b")
    # two hyperparameters a line: a cell is narrow
    assert label.splitlines() == ["b  fid128 260", "stopped early at rung 2 (eval 2)",
                                  "lr_g 0.0001  loss hinge"]
    with Image.open(tmp_path / "eval_0001.png") as image:
        assert image.width >= 900 and image.height > 300  # four columns of readable grids


def test_a_running_trial_says_so_and_redraws_only_what_changed(tmp_path: Path) -> None:
    sheets.record_card(tmp_path, "r", {"ngf": 64})
    sheets.record_frame(tmp_path, "r", 1, 40, 123.4, _png(10))
    sheets.record_frame(tmp_path, "r", 2, 80, 111.1, _png(20))
    written = sheets.write_sheets(tmp_path, "fid128", [1], evals={2})
    assert [p.name for p in written] == ["eval_0002.png", "index.json"]
    cells = json.loads((tmp_path / "index.json").read_text())["sheets"]["1"]["cells"]
    assert cells[0]["described"] == "running" and cells[0]["fid"] == pytest.approx(123.4)


def test_sixty_four_trials_make_pages_a_person_can_read(tmp_path: Path) -> None:
    for i in range(70):
        trial = f"t{i:02d}"
        sheets.record_card(tmp_path, trial, {"lr_g": 1e-4}, "stopped_early", "", 1)
        sheets.record_frame(tmp_path, trial, 1, 40, 300.0 - i, _png(i))
    sheets.write_sheets(tmp_path, "fid128", [1])
    sheet = json.loads((tmp_path / "index.json").read_text())["sheets"]["1"]
    assert sheet["pages"] == ["eval_0001.png", *(f"eval_0001-p{p}.png" for p in range(2, 6))]
    assert [c["page"] for c in sheet["cells"]] == [i // sheets.PAGE + 1 for i in range(70)]
    assert sheet["cells"][0]["trial_id"] == "t69"  # the lowest FID (231) first
    for page in sheet["pages"]:
        with Image.open(tmp_path / page) as image:
            assert image.height <= 1500  # a page is at most four rows of cells


def test_the_callback_redraws_as_results_arrive_and_logs_on_the_parent_run(tmp_path: Path) -> None:
    """ContactSheetLogger as Tune drives it: a checkpoint (grid + report) per evaluation, the trial's
    end; each refresh is drawn beside the results and logged on the search's parent run."""
    from types import SimpleNamespace

    from mlflow import MlflowClient
    from ray.tune import Checkpoint

    from orchestrator.search.sheet_logger import ContactSheetLogger
    from orchestrator.tracking.store import default_tracking_uri, ensure_experiment, start_parent_run

    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "s", (tmp_path / "art").as_uri())
    parent = start_parent_run(client, experiment, "s", {}, {})
    logger = ContactSheetLogger(tmp_path / "sheets", "fid128", [1], 2, ["lr_g"], uri, parent, "s",
                                refresh_s=0)
    trial = SimpleNamespace(trial_id="t1", config={"lr_g": 2e-4, "nz": 100}, last_result={})
    logger.on_trial_start(0, [], trial)
    for k, fid in [(1, 280.0), (2, 240.0)]:
        folder = tmp_path / f"checkpoint_{k}"
        folder.mkdir()
        (folder / "grid.png").write_bytes(_png(60 * k))
        (folder / "report.json").write_text(json.dumps({"fid128": fid, "step": 40 * k}))
        trial.last_result = {"training_iteration": k, "failure": ""}
        logger.on_checkpoint(0, [], trial, Checkpoint.from_directory(folder))
        logger.flush()  # the redraw runs on the drawing thread; wait for it
        index = json.loads((tmp_path / "sheets" / "index.json").read_text())["sheets"]
        assert index[str(k)]["cells"][0]["described"] == "running" and index[str(k)]["cells"][0]["fid"] == fid
    logger.on_trial_complete(0, [], trial)
    logger.on_experiment_end([])
    index = json.loads((tmp_path / "sheets" / "index.json").read_text())["sheets"]
    assert [index[k]["cells"][0]["described"] for k in ("1", "2")] == ["completed", "completed"]
    assert index["1"]["cells"][0]["label"].splitlines()[2] == "lr_g 0.0002"  # only the keys asked for
    logged = {a.path for a in client.list_artifacts(parent, "contact_sheets")}
    assert logged == {f"contact_sheets/{name}" for name in ("eval_0001.png", "eval_0002.png", "index.json")}


def test_a_page_is_drawn_again_only_when_what_it_shows_changed(tmp_path: Path) -> None:
    """Forty trials at one evaluation are three pages; a second drawing with nothing new draws none,
    and the worst trial's end redraws only the last page (the one it is on)."""
    for i in range(40):
        sheets.record_card(tmp_path, f"t{i:02d}", {"lr_g": 1e-4})
        sheets.record_frame(tmp_path, f"t{i:02d}", 1, 40, 100.0 + i, _png(i))
    first = sheets.write_sheets(tmp_path, "fid128", [1])
    assert [p.name for p in first] == ["eval_0001.png", "eval_0001-p2.png", "eval_0001-p3.png", "index.json"]
    assert [p.name for p in sheets.write_sheets(tmp_path, "fid128", [1])] == ["index.json"]
    sheets.record_card(tmp_path, "t39", {"lr_g": 1e-4}, "stopped_early", "", 1)
    assert [p.name for p in sheets.write_sheets(tmp_path, "fid128", [1], evals={1})] == [
        "eval_0001-p3.png", "index.json"]
    cells = json.loads((tmp_path / "index.json").read_text())["sheets"]["1"]["cells"]
    assert cells[-1]["trial_id"] == "t39" and cells[-1]["described"] == "stopped early at rung 1 (eval 1)"
    (tmp_path / "eval_0001.png").unlink()  # a page lost from the folder is drawn again
    assert [p.name for p in sheets.write_sheets(tmp_path, "fid128", [1])] == ["eval_0001.png", "index.json"]


def test_pages_mlflow_did_not_take_are_logged_at_the_next_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page is drawn once; if the tracking server is down when it is, the callback keeps it and
    logs it when the server answers, although nothing on the page changed in between."""
    from mlflow import MlflowClient

    from orchestrator.search import sheet_logger
    from orchestrator.tracking.store import default_tracking_uri, ensure_experiment, start_parent_run

    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "s", (tmp_path / "art").as_uri())
    parent = start_parent_run(client, experiment, "s", {}, {})
    logger = sheet_logger.ContactSheetLogger(tmp_path / "sheets", "fid128", [1], 2, ["lr_g"], uri, parent,
                                             "s", refresh_s=0)
    sheets.record_card(logger.folder, "t1", {"lr_g": 1e-4})
    sheets.record_frame(logger.folder, "t1", 1, 40, 200.0, _png(50))

    class Unreachable(Exception):
        pass

    def down(*args: object, **kwargs: object) -> None:
        raise Unreachable("connection refused")

    monkeypatch.setattr(sheet_logger, "unreachable_errors", lambda: (Unreachable,))
    with monkeypatch.context() as outage:
        outage.setattr(MlflowClient, "log_artifact", down)
        logger._dirty.add(1)
        logger.on_experiment_end([])
    assert (logger.folder / "eval_0001.png").is_file()
    assert not client.list_artifacts(parent, "contact_sheets")
    logger.on_experiment_end([])  # the server is back; the page is not drawn again, but logged
    logged = {a.path for a in client.list_artifacts(parent, "contact_sheets")}
    assert logged == {"contact_sheets/eval_0001.png", "contact_sheets/index.json"}


def test_a_sheet_of_hundreds_draws_its_best_pages_and_lists_every_trial(tmp_path: Path) -> None:
    trials = sheets.PAGE * sheets.MAX_PAGES + 5
    for i in range(trials):
        sheets.record_card(tmp_path, f"t{i:03d}", {"lr_g": 1e-4})
        sheets.record_frame(tmp_path, f"t{i:03d}", 1, 40, 100.0 + i, _png(i % 200))
    written = sheets.write_sheets(tmp_path, "fid128", [1])
    assert len(written) == sheets.MAX_PAGES + 1  # the pages and the index
    sheet = json.loads((tmp_path / "index.json").read_text())["sheets"]["1"]
    assert len(sheet["pages"]) == sheets.MAX_PAGES and len(sheet["cells"]) == trials
    assert [c["page"] for c in sheet["cells"][-6:]] == [sheets.MAX_PAGES, None, None, None, None, None]
    assert sheet["cells"][0]["trial_id"] == "t000"  # the best drawn first; the worst five listed only


def test_a_redraw_runs_on_its_own_thread_and_the_end_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune's loop is not held while the sheets are drawn: a refresh hands the drawing to a thread
    and returns; one draw at a time; the end waits for it and draws what changed since."""
    import threading

    from orchestrator.search import sheet_logger
    from orchestrator.tracking.store import default_tracking_uri

    uri = default_tracking_uri(tmp_path)  # never MLflow's default, a file in the working folder
    logger = sheet_logger.ContactSheetLogger(tmp_path / "sheets", "fid128", [1], 2, ["lr_g"], uri, "", "s",
                                             refresh_s=0)
    monkeypatch.setattr(sheet_logger.MlflowClient, "log_artifact", lambda *a, **k: None)
    release, drawn = threading.Event(), []
    real = sheets.write_sheets

    def slow(*args: object, **kwargs: object) -> list[Path]:
        release.wait(10)
        drawn.append((threading.current_thread().name, set(kwargs["evals"])))  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sheet_logger.sheets, "write_sheets", slow)
    sheets.record_card(logger.folder, "t1", {"lr_g": 1e-4})
    sheets.record_frame(logger.folder, "t1", 1, 40, 200.0, _png(50))
    logger._dirty.add(1)
    logger._refresh()  # returns at once: the draw waits on `release` on the drawing thread
    sheets.record_frame(logger.folder, "t1", 2, 80, 150.0, _png(90))
    logger._dirty.add(2)
    logger._refresh()  # a draw is in flight: this one waits for the next refresh
    assert drawn == [] and logger._dirty == {2}
    release.set()
    logger.on_experiment_end([])
    assert drawn[0] == ("contact-sheets_0", {1}) and drawn[1][1] == {2}
    assert drawn[1][0] == threading.current_thread().name  # the last one, here
    assert (logger.folder / "eval_0002.png").is_file()


def test_the_next_refresh_waits_ten_times_the_last_redraw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redraw of 30 s puts the next one 300 s after it started, not refresh_s (60 s); one of 1 s,
    refresh_s; the end draws at once."""
    from types import SimpleNamespace

    from orchestrator.search import sheet_logger
    from orchestrator.tracking.store import default_tracking_uri

    now, took, drawn = [100.0], [30.0], []

    def draw(*args: object, **kwargs: object) -> list[Path]:
        drawn.append(now[0])
        now[0] += took[0]
        return []

    monkeypatch.setattr(sheet_logger, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(sheet_logger.sheets, "write_sheets", draw)
    logger = sheet_logger.ContactSheetLogger(tmp_path / "sheets", "fid128", [1], 2, ["lr_g"],
                                             default_tracking_uri(tmp_path), "", "s", refresh_s=60)

    def refresh_at(t: float) -> None:
        now[0] = t
        logger._dirty.add(1)
        logger._refresh()
        if logger._drawing is not None:
            logger._drawing.result()

    refresh_at(100.0)
    refresh_at(399.0)
    assert drawn == [100.0]
    took[0] = 1.0
    refresh_at(400.0)
    refresh_at(459.0)
    assert drawn == [100.0, 400.0]
    refresh_at(460.0)
    now[0] = 461.0
    logger._dirty.add(2)
    logger.flush()
    assert drawn == [100.0, 400.0, 460.0, 461.0]
