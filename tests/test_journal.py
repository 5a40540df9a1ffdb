"""What the driver owes MLflow survives it (issue 24): the trial logger writes through a journal on
disk; a store that is unreachable keeps the entries, in order, until it answers; a logger restored
in a new driver (a --resume) writes what the dead one left, once; and what Tune recorded that MLflow
lacks, with no journal left at all (a lost head), is rebuilt from the trials' result.json and the
sample grids of their checkpoints."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from PIL import Image

from orchestrator.tracking import trial_logger
from orchestrator.tracking.journal import Entry, Journal
from orchestrator.tracking.trial_logger import MlflowTrialLogger


def test_entries_come_back_in_order_with_their_blobs_and_survive_a_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    for i in range(3):
        journal.append(Entry("image", f"t{i}", {"lr_g": 1e-3}, {"step": i}, {"grid": bytes([i]) * 10}))
    again = Journal(tmp_path / "j")  # a new driver
    entries = list(again.pending())
    assert [(e.trial_id, e.data["step"], e.blobs["grid"][:1]) for e in entries] == [
        ("t0", 0, b"\x00"), ("t1", 1, b"\x01"), ("t2", 2, b"\x02")]
    again.done(entries[0])
    assert len(again) == 2 and [e.trial_id for e in Journal(tmp_path / "j").pending()] == ["t1", "t2"]
    later = again.append(Entry("tags", "t3", {}, {"tags": {"a": "b"}}))
    assert later.seq > entries[-1].seq  # numbering goes on after what is there


def test_a_record_cut_short_by_a_crash_is_dropped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(Entry("tags", "t", {}, {"tags": {}}))
    (tmp_path / "0000000099.json").write_text('{"kind": "res')  # a write the crash cut
    assert [e.trial_id for e in journal.pending()] == ["t"] and not (tmp_path / "0000000099.json").exists()


class Trial:
    def __init__(self, trial_id: str, local_path: Path, status: str = "RUNNING") -> None:
        self.trial_id, self.local_path, self.status = trial_id, str(local_path), status
        self.path = str(local_path)  # local storage: the checkpoints are beside result.json
        self.config = {"lr_g": 1e-3, "lr_d": 2e-3}
        self.last_result: dict[str, Any] | None = None
        self.checkpoint = None


class Unreachable(OSError):
    pass


def _logger(store: dict[str, Any], journal: Path) -> MlflowTrialLogger:
    logger = MlflowTrialLogger(store["uri"], store["experiment"], store["parent"], max_evals=3,
                               journal=journal)
    return pickle.loads(pickle.dumps(logger))  # as Tune keeps it: in the experiment state


def _result(step: int, fid: float) -> dict[str, Any]:
    return {"step": step, "fid32": fid, "training_iteration": step // 10, "started_at": 1.0}


def _history(store: dict[str, Any], trial_id: str) -> list[tuple[int, float]]:
    (run,) = store["client"].search_runs([store["experiment"]], f"tags.trial_id = '{trial_id}'")
    return [(m.step, m.value) for m in store["client"].get_metric_history(run.info.run_id, "fid32")]


def test_an_outage_then_a_dead_driver_loses_nothing_and_logs_nothing_twice(
    tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "pending"
    first = _logger(store, journal)
    trial = Trial("a", tmp_path / "trial_a")
    first.on_trial_result(1, [trial], trial, _result(10, 50.0))
    first.wait()  # the logger's writer thread writes it
    assert _history(store, "a") == [(10, 50.0)] and len(first.journal) == 0
    # the server goes away: the next results wait on disk, in order
    monkeypatch.setattr(trial_logger, "unreachable_errors", lambda: (Unreachable,))

    def down(*args: Any, **kwargs: Any) -> None:
        raise Unreachable("connection refused")

    monkeypatch.setattr(first, "_apply", down)
    first.on_trial_result(2, [trial], trial, _result(20, 40.0))
    first.on_trial_result(3, [trial], trial, _result(30, 30.0))
    trial.status, trial.last_result = "TERMINATED", _result(30, 30.0)
    first.on_trial_complete(3, [trial], trial)
    first.wait()  # its writer has tried them all, and failed
    assert len(list(journal.glob("*.json"))) == 4  # two results, the outcome, the end
    # the driver dies here (nothing more runs in it); the server is back; a --resume restores the
    # logger from Tune's state, and on its first turn writes what the dead one owed
    monkeypatch.undo()
    resumed = _logger(store, journal)
    resumed.on_step_begin(0, [trial])
    assert _history(store, "a") == [(10, 50.0), (20, 40.0), (30, 30.0)]
    (run,) = store["client"].search_runs([store["experiment"]], "tags.trial_id = 'a'")
    assert run.data.tags["outcome"] == "completed" and run.info.status == "FINISHED"
    assert not list(journal.glob("*.json"))
    # replayed again (a crash between writing and removing): nothing twice
    for result in (_result(20, 40.0), _result(30, 30.0)):
        resumed.journal.append(Entry("result", "a", trial.config, trial_logger.result_data(result, None)))
    again = _logger(store, journal)
    again.on_step_begin(0, [trial])
    assert _history(store, "a") == [(10, 50.0), (20, 40.0), (30, 30.0)]


def test_what_tune_recorded_is_rebuilt_without_a_journal(tmp_path: Path, store: dict[str, Any]) -> None:
    """A head lost with its journal: the resume compares each trial's result.json with its run."""
    folder = tmp_path / "trial_b"
    folder.mkdir()
    rows = [_result(10 * i, 60.0 - i) for i in (1, 2, 3)]
    (folder / "result.json").write_text("\n".join(json.dumps(r) for r in rows))
    for i in (2, 3):  # the checkpoints kept (the first one deleted, num_to_keep), each with its grid
        checkpoint = folder / f"checkpoint_{i:06d}"
        checkpoint.mkdir()
        (checkpoint / "report.json").write_text(json.dumps({"step": 10 * i}))
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(buffer, "PNG")
        (checkpoint / "grid.png").write_bytes(buffer.getvalue())
    first = _logger(store, tmp_path / "lost")
    trial = Trial("b", folder)
    first.on_trial_result(1, [trial], trial, rows[0])  # only the first evaluation reached MLflow
    first.wait()
    trial.status = "TERMINATED"
    resumed = _logger(store, tmp_path / "new-head")
    resumed.on_step_begin(0, [trial])
    assert _history(store, "b") == [(10, 59.0), (20, 58.0), (30, 57.0)]
    (run,) = store["client"].search_runs([store["experiment"]], "tags.trial_id = 'b'")
    assert run.data.tags["outcome"] == "completed" and run.info.status == "FINISHED"
    grids = sorted(trial_logger.image_steps(store["client"], run.info.run_id))
    assert sorted(set(grids)) == [20, 30]  # (MLflow keeps a thumbnail beside each image)
    resumed.on_step_begin(0, [trial])
    again = _logger(store, tmp_path / "third")
    again.on_step_begin(0, [trial])  # however often it runs: once
    assert _history(store, "b") == [(10, 59.0), (20, 58.0), (30, 57.0)]
    assert sorted(trial_logger.image_steps(store["client"], run.info.run_id)) == grids


def test_what_waits_is_written_within_seconds_of_the_servers_return(
    tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = _logger(store, tmp_path / "pending")
    trial = Trial("c", tmp_path / "trial_c")
    monkeypatch.setattr(trial_logger, "unreachable_errors", lambda: (Unreachable,))
    apply = logger._apply

    def down(entry: Entry) -> None:
        raise Unreachable("down")

    logger._apply = down  # type: ignore[method-assign]
    logger.on_trial_result(1, [trial], trial, _result(10, 50.0))
    logger.wait()
    assert len(logger.journal) == 1
    logger._apply = apply  # type: ignore[method-assign]
    monkeypatch.setattr(trial_logger, "RETRY_SECONDS", 0.0)
    logger.on_step_end(2, [trial])  # Tune's loop turns several times a second: no result needed
    logger.wait()
    assert len(logger.journal) == 0 and _history(store, "c") == [(10, 50.0)]


def test_a_resume_looks_once_at_every_trial_whose_run_has_ended(
    tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten trials ended and one still running: the first turn of a resume asks MLflow once for the
    ended runs (a page), and only the running trial's run is looked at (its missing step written)."""
    first = _logger(store, tmp_path / "pending")
    trials = []
    for i in range(11):
        folder = tmp_path / f"trial_{i}"
        folder.mkdir()
        trial = Trial(f"t{i}", folder)
        rows = [_result(10, 50.0 + i), _result(20, 40.0 + i)]
        (folder / "result.json").write_text("\n".join(json.dumps(r) for r in rows))
        for row in rows if i < 10 else rows[:1]:  # the running one's second result never reached MLflow
            first.on_trial_result(1, [trial], trial, row)
        if i < 10:
            trial.status, trial.last_result = "TERMINATED", rows[-1]
            first.on_trial_complete(2, [trial], trial)
        trials.append(trial)
    first.wait()
    resumed = _logger(store, tmp_path / "pending")
    calls: list[str] = []
    for name in ("search_runs", "get_metric_history", "list_artifacts", "get_run"):
        real = getattr(MlflowClient, name)
        monkeypatch.setattr(MlflowClient, name, lambda self, *a, _n=name, _r=real, **k: (calls.append(_n),
                                                                                      _r(self, *a, **k))[1])
    resumed.on_step_begin(0, trials)
    assert calls.count("search_runs") == 2 and calls.count("get_metric_history") == 1, calls  # one page; t10
    assert _history(store, "t10") == [(10, 60.0), (20, 50.0)]
    assert all(_history(store, f"t{i}") == [(10, 50.0 + i), (20, 40.0 + i)] for i in range(10))
