"""bench/gpu_acceptance.sh, issue 12's one-call GPU acceptance run: its time arithmetic fits one
device call (quick), and its ``--tiny`` CPU dry run passes every part (slow: minutes on 2 cores)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_acceptance.sh"
DEVICE_CALL_S = 600  # the most one device call may run


def _budget(budget_s: str | None = None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "BUDGET_S"}
    if budget_s is not None:
        env["BUDGET_S"] = budget_s
    done = subprocess.run(["bash", str(SCRIPT), "--print-budget"], capture_output=True, text=True,
                          timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", done.stdout)}


def test_script_parses_and_its_budget_fits_one_device_call() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, timeout=30).returncode == 0
    budget = _budget()
    assert budget["device_limit_s"] == DEVICE_CALL_S
    assert budget["budget_s"] < DEVICE_CALL_S
    # every part runs under `timeout` with what is left, plus its kill grace; then the summary
    assert budget["budget_s"] + budget["kill_grace_s"] + budget["reserve_s"] <= DEVICE_CALL_S
    assert budget["total_s"] == budget["budget_s"] + budget["kill_grace_s"] + budget["reserve_s"]
    assert _budget("300")["budget_s"] == 300
    text = SCRIPT.read_text()
    assert "timeout -k \"$KILL_GRACE_S\"" in text and "BUDGET_S:-540" in text
    python = REPO / "bench" / "gpu_acceptance.py"
    assert subprocess.run([sys.executable, "-m", "py_compile", str(python)], timeout=60).returncode == 0


def test_bad_arguments_exit_2() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--huge"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr


@pytest.mark.slow
def test_tiny_run_passes_every_part(tmp_path: Path) -> None:
    """The whole script on the CPU: GPU tests (skipped here), the search with a worker and a driver
    killed and resumed, the two throughput benchmarks at tiny sizes; nothing recorded."""
    results = (REPO / "bench" / "RESULTS.md").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "BUDGET_S", "NOTE")}
    env["BUDGET_S"] = "1200"  # the 2-core CPU is slower than the device, whose budget is 540 s
    done = subprocess.run(["bash", str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=1800,
                          env=env, cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-2000:]
    summary = out[out.rindex("=== summary"):]
    for part in ("pytest", "search", "step", "fid"):
        assert re.search(rf"^  {part}: passed", summary, re.M), summary
    assert "checks: 4 passed, 0 failed, 2 informational" in summary, summary
    for check in ("search completes after --resume", "trials ran concurrently",
                  "a killed trial worker resumes from its checkpoint",
                  "a killed driver resumes without re-running finished trials"):
        assert f"PASS {check}" in summary, summary
    assert summary.rstrip().endswith("gpu_acceptance: PASSED")
    assert (REPO / "bench" / "RESULTS.md").read_text() == results  # --tiny records nothing
