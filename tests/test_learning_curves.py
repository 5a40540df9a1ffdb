"""``bench/learning_curves.py`` (issues 23 and 27): a recording killed mid-run resumes where it stopped,
each evaluation recorded once, the cut run continued from its checkpoint rather than retrained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_a_killed_recording_resumes_where_it_stopped(tmp_path: Path) -> None:
    table = tmp_path / "curves.csv"
    command = [sys.executable, str(REPO / "bench" / "learning_curves.py"), "shapes", "--smoke-test",
               "--configs", "1", "--max-evals", "3", "--fid-n", "32", "--table", str(table), "--no-record",
               "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and _rows(table) < 1:  # the first evaluation is recorded
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its worker, mid-run
    first.wait()
    assert 1 <= _rows(table) < 3
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "1 to train" in again.stdout and "c00-s0: resumed at evaluation" in again.stdout
    rows = pd.read_csv(table, keep_default_na=False)
    assert list(rows["eval"]) == [1, 2, 3] and list(rows["step"]) == [40, 80, 120]
    assert list(rows["ended"]) == ["", "", "completed"]
    assert (rows["seconds"].diff().dropna() > 0).all()  # compute accumulates across the restart
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "0 to train" in done.stdout and len(pd.read_csv(table)) == 3  # a finished table only grows


def _rows(table: Path) -> int:
    return max(0, len(table.read_text().splitlines()) - 1) if table.is_file() else 0
