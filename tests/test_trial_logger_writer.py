"""The trial logger off Tune's loop: a sample grid is logged from its PNG bytes in the layout
``MlflowClient.log_image`` makes; Tune's callbacks only journal, one writer thread writes to MLflow
in order; the end waits for it; an error there is logged and kept, never raised into the loop."""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from orchestrator.tracking import trial_logger
from orchestrator.tracking.store import (
    IMAGE_KEY,
    image_step,
    log_png,
)
from orchestrator.tracking.trial_logger import MlflowTrialLogger, image_steps

# log_image's names: images/KEY+step+S+timestamp+MILLISECONDS+UUID[+compressed].png|webp
LAYOUT = re.compile(r"images/(samples\+step\+40\+timestamp\+\d{13}\+[0-9a-f-]{36})(\+compressed\.webp|\.png)")
SLOW_SECONDS = 0.3


class Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.status = trial_id, "RUNNING"
        self.config = {"lr_g": 1e-3, "lr_d": 2e-3}
        self.last_result: dict[str, Any] | None = None
        self.checkpoint = None


def _logger(store: dict[str, Any], journal: Path | None) -> MlflowTrialLogger:
    logger = MlflowTrialLogger(store["uri"], store["experiment"], store["parent"], max_evals=5,
                               journal=journal)
    return pickle.loads(pickle.dumps(logger))  # as Tune keeps it: in the experiment state


def _result(step: int, fid: float) -> dict[str, Any]:
    return {"step": step, "fid32": fid, "training_iteration": step // 10, "started_at": 1.0}


def _run(store: dict[str, Any], trial_id: str) -> Any:
    (run,) = store["client"].search_runs([store["experiment"]], f"tags.trial_id = '{trial_id}'")
    return run


def _history(store: dict[str, Any], trial_id: str) -> list[tuple[int, float]]:
    run_id = _run(store, trial_id).info.run_id
    return [(m.step, m.value) for m in store["client"].get_metric_history(run_id, "fid32")]


def _grid_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (274, 274, 3), dtype=np.uint8)  # 8 x 8 of 32 px
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)  # not what a re-encoding would write
    return buffer.getvalue()


def _images(client: MlflowClient, run_id: str, folder: Path) -> dict[str, bytes]:
    """(kind of file: '.png' or '+compressed.webp') -> its bytes, after checking the names."""
    paths = [a.path for a in client.list_artifacts(run_id, "images")]
    found = [LAYOUT.fullmatch(path) for path in paths]
    assert all(found), paths
    assert len({match[1] for match in found if match}) == 1  # one image: both files share its name
    return {match[2]: Path(client.download_artifacts(run_id, match[0], str(folder))).read_bytes()
            for match in found if match}


def test_a_grid_logged_from_its_png_is_laid_out_as_log_image_lays_it_out(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    client, png = store["client"], _grid_png()
    theirs = client.create_run(store["experiment"]).info.run_id
    ours = client.create_run(store["experiment"]).info.run_id
    client.log_image(theirs, Image.open(io.BytesIO(png)), key=IMAGE_KEY, step=40)
    log_png(client, ours, png, IMAGE_KEY, 40)
    expected, got = _images(client, theirs, tmp_path / "a"), _images(client, ours, tmp_path / "b")
    assert sorted(got) == sorted(expected) == ["+compressed.webp", ".png"]
    assert [a.path for a in client.list_artifacts(ours)] == [a.path for a in client.list_artifacts(theirs)]
    assert got[".png"] == png  # the checkpoint's own bytes, not decoded and encoded again
    thumbnails = [Image.open(io.BytesIO(files["+compressed.webp"])) for files in (got, expected)]
    assert [(t.format, t.size) for t in thumbnails] == [("WEBP", (256, 256))] * 2
    assert np.array_equal(np.asarray(thumbnails[0]), np.asarray(thumbnails[1]))  # MLflow's own resize
    tags = [client.get_run(run).data.tags["mlflow.loggedImages"] for run in (ours, theirs)]
    assert tags == ["True", "True"]
    assert image_steps(client, ours) == [40, 40]
    assert [image_step(a.path) for a in client.list_artifacts(theirs, "images")] == [40, 40]


class SlowClient(MlflowClient):
    """A tracking server that takes its time over every batch, and says in what order it got them."""

    batches: ClassVar[list[tuple[str, list[int]]]] = []

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kw: Any) -> Any:
        time.sleep(SLOW_SECONDS)
        SlowClient.batches.append((run_id, [m.step for m in metrics]))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)


def test_the_loop_never_waits_for_a_slow_store_and_the_end_waits_for_everything(
    tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trial_logger, "MlflowClient", SlowClient)
    monkeypatch.setattr(SlowClient, "batches", [])
    logger = _logger(store, tmp_path / "pending")
    trials = [Trial("a"), Trial("b")]
    logger.on_step_begin(0, trials)
    steps = [10, 20, 30, 40, 50]
    took = []
    for step in steps:
        for i, trial in enumerate(trials):
            started = time.perf_counter()
            logger.on_trial_result(step // 10, trials, trial, _result(step, 100.0 - step - i))
            took.append(time.perf_counter() - started)
    # synchronous, the loop would have waited 12 slow batches (2 runs' params, 10 results)
    assert sum(took) < 4 * SLOW_SECONDS and max(took) < SLOW_SECONDS, took
    assert len(logger.journal) > 0  # the writer is still at it
    assert "_writer" not in logger.__getstate__()
    pickle.loads(pickle.dumps(logger))  # Tune saves its state meanwhile
    for trial in trials:
        trial.status, trial.last_result = "TERMINATED", {**_result(50, 50.0), "evals": 5}
        logger.on_trial_complete(5, trials, trial)
    logger.on_experiment_end(trials)
    assert len(logger.journal) == 0 and not list((tmp_path / "pending").glob("*.json"))
    for i, trial in enumerate(trials):
        run = _run(store, trial.trial_id)
        assert _history(store, trial.trial_id) == [(s, 100.0 - s - i) for s in steps]
        written = [set(batch) for run_id, batch in SlowClient.batches if run_id == run.info.run_id and batch]
        assert written == [{s} for s in steps]  # in the order Tune reported them
        assert run.data.tags["outcome"] == "completed" and run.info.status == "FINISHED"


def test_a_writer_error_is_logged_once_kept_and_never_raised_into_the_loop(
    tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logger = _logger(store, tmp_path / "pending")
    trial = Trial("c")
    apply = logger._apply

    def broken(entry: Any) -> None:
        raise RuntimeError("a bug in the writer")

    logger._apply = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger=trial_logger.__name__):
        logger.on_trial_result(1, [trial], trial, _result(10, 50.0))
        logger.wait()
        logger.on_trial_result(2, [trial], trial, _result(20, 40.0))
        logger.wait()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "trial c" in errors[0].getMessage() and errors[0].exc_info
    assert len(logger.journal) == 2  # kept, in order
    logger._apply = apply  # type: ignore[method-assign]
    monkeypatch.setattr(trial_logger, "RETRY_SECONDS", 0.0)
    logger.on_step_end(3, [trial])
    logger.wait()
    assert len(logger.journal) == 0 and _history(store, "c") == [(10, 50.0), (20, 40.0)]


def test_a_stop_marks_the_trials_it_cut_short_once_the_writer_caught_up(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trial_logger, "MlflowClient", SlowClient)
    logger = _logger(store, None)  # a journal in memory
    cut, done = Trial("d"), Trial("e")
    for trial in (cut, done):
        logger.on_trial_result(1, [cut, done], trial, _result(10, 50.0))
    done.status, done.last_result = "TERMINATED", {**_result(50, 40.0), "evals": 5}
    logger.on_trial_complete(5, [cut, done], done)
    logger.mark_interrupted()  # Ctrl-C: Tune ends the running trial as if it had finished
    cut.status = "TERMINATED"
    assert len(logger.journal) > 0  # neither trial's run may exist yet
    logger.on_experiment_end([cut, done])
    assert len(logger.journal) == 0
    runs = {trial.trial_id: _run(store, trial.trial_id) for trial in (cut, done)}
    assert (runs["d"].data.tags["outcome"], runs["d"].info.status) == ("interrupted", "KILLED")
    assert (runs["e"].data.tags["outcome"], runs["e"].info.status) == ("completed", "FINISHED")


class Stop(Exception):
    pass


def test_a_second_stop_while_the_end_waits_for_a_dead_store_stops_the_writer_too(
    tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logger = _logger(store, tmp_path / "pending")
    monkeypatch.setattr(trial_logger, "unreachable_errors", lambda: (ConnectionError,))
    monkeypatch.setattr(trial_logger, "FINAL_WAIT_SECONDS", 60.0)

    def down(entry: Any) -> None:
        raise ConnectionError("connection refused")

    logger._apply = down  # type: ignore[method-assign]
    trial = Trial("f")
    logger.on_trial_result(1, [trial], trial, _result(10, 50.0))

    def second_stop(signum: int, frame: Any) -> None:
        raise Stop

    previous = signal.signal(signal.SIGINT, second_stop)
    try:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        with caplog.at_level(logging.ERROR, logger=trial_logger.__name__), pytest.raises(Stop):
            logger.on_experiment_end([trial])  # would wait 12 minutes for the store to come back
    finally:
        signal.signal(signal.SIGINT, previous)
    # (an interrupted join marks the thread stopped in Python 3.11: what the writer says tells)
    deadline = time.monotonic() + 10
    while "not written to MLflow" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "1 logging operations not written to MLflow (kept in" in caplog.text
    assert [e.data["step"] for e in logger.journal.pending()] == [10]  # kept for --resume
