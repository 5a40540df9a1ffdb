"""Every way a command ends (issue 24): SIGINT and SIGTERM, sent to real processes at any moment, end
every command the same way: what is done is kept, one line says what and how to go on, the exit
status is 130 or 143; a search stopped mid-run has its parent run KILLED, its running trials tagged
interrupted (not stopped early), and the line's --resume command finishes it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
LINE = {signal.SIGINT: "interrupted (Ctrl-C): ", signal.SIGTERM: "terminated (SIGTERM): "}


def _start(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The command, its output into files (a pipe nobody reads while it runs would fill and stall it)."""
    k = len(list(cwd.glob("*.stderr")))
    out, err = (cwd / f"{k}.stdout").open("w"), (cwd / f"{k}.stderr").open("w")
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, text=True, stdout=out, stderr=err,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    proc.files = (cwd / f"{k}.stdout", cwd / f"{k}.stderr")  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    proc.wait(timeout=timeout)
    return tuple(f.read_text() for f in proc.files)  # type: ignore[attr-defined,return-value]


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_search_stopped_mid_run_keeps_its_work_and_says_how_to_go_on(
    signum: signal.Signals, tmp_path: Path
) -> None:
    storage = tmp_path / "runs"
    argv = ["orchestrator.search", "shapes", "--smoke-test", "--storage", str(storage), "--name", "sig"]
    proc = _start(argv, tmp_path)
    results = storage / "sig"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not any(
            p.stat().st_size for p in results.glob("trial_*/result.json")):
        time.sleep(0.5)
    assert proc.poll() is None, _finish(proc, 10)
    proc.send_signal(signum)  # a trial is running: its first evaluation is in
    out, err = _finish(proc, 300)
    assert proc.returncode == STATUS[signum], err[-3000:]
    assert "Traceback" not in err and "Tuner.restore" not in err + out, err[-3000:]
    line = _last_line(err)
    assert line.startswith(LINE[signum] + f"the search is kept in {results}; continue it: "), line
    resume = line.split("continue it: ", 1)[1]
    assert resume.endswith("--resume") and "--name sig" in resume
    state = json.loads((results / "orchestrator.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    assert client.get_run(state["parent_run_id"]).info.status == "KILLED"
    trials = client.search_runs([state["experiment_id"]], "tags.role = 'trial'")
    interrupted = [r for r in trials if r.data.tags.get("outcome") == "interrupted"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)
    assert not [r for r in trials if r.info.status == "RUNNING"]
    # the line's command finishes the search: every trial ends with an outcome of its own
    done = subprocess.run(["bash", "-c", resume], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    trials = client.search_runs([state["experiment_id"]], "tags.role = 'trial'")
    outcomes = {r.data.tags.get("outcome") for r in trials} - {"lost"}
    assert outcomes <= {"completed", "stopped_early", "failed"}, outcomes
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"


COMMANDS = [
    ["orchestrator.search", "shapes", "--smoke-test", "--storage", "runs", "--name", "early"],
    ["orchestrator.train", "shapes", "--steps", "40", "--eval-every", "20", "--fid-n", "32", "--out", "one"],
    ["orchestrator.fid", "shapes", "shapes", "--resolution", "32", "--n", "64"],
]


@pytest.mark.integration
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0].split(".")[1])
def test_a_signal_in_the_first_seconds_is_one_line(argv: list[str], tmp_path: Path) -> None:
    """At random moments of a command's start (imports, checks, the data's decode, the network's
    load): never a traceback, never swallowed while the work goes on."""
    rng = random.Random(0)
    for k in range(4):
        signum = (signal.SIGINT, signal.SIGTERM)[k % 2]
        cache = tmp_path / f"cache{k}"  # empty: the decode and the statistics are part of the start
        proc = _start(argv, tmp_path, {"ORCHESTRATOR_CACHE": str(cache)})
        time.sleep(rng.uniform(0.5, 6.0))
        if proc.poll() is not None:
            continue  # finished before the signal: nothing to check this time
        sent = time.time()
        proc.send_signal(signum)
        _, err = _finish(proc, 120)
        assert time.time() - sent < 60, "the command went on working after the signal"
        assert proc.returncode == STATUS[signum], (proc.returncode, err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        assert _last_line(err).startswith(LINE[signum]), err[-2000:]
