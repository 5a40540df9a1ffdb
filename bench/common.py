"""What every benchmark under bench/ shares: argument defaults, naming the device, timing with the
device synchronised, markdown tables, appending to bench/RESULTS.md, and running a search.

Not a script: the benchmarks import it (``python bench/X.py`` puts bench/ on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "RESULTS.md"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default=default_device(), help="cuda when available, else cpu")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--note", default="", help="a line recorded under the table (what else ran)")


def on_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: str | torch.device) -> None:
    if on_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str | torch.device) -> float:
    """Seconds of ``fn()``, the device's queued work included (synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rate(x: float) -> str:
    """A rate to three significant figures, with thousands separators: 12,300 / 45.6 / 0.789."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's model with its core count; torch's version either way."""
    device = torch.device(device)
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{what}, torch {torch.__version__}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table; floats are formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def command_line() -> str:
    """The command as it was run, relative to the repository when it can be."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
        script = script.resolve().relative_to(REPO)
    args = list(sys.argv[1:])
    if "--note" in args:  # recorded as its own line
        at = args.index("--note")
        del args[at : at + 2]
    args = [a for a in args if not a.startswith("--note=")]
    return "python " + " ".join(shlex.quote(a) for a in [str(script), *args])


def report(name: str, device: str | torch.device, lines: Sequence[str], args: argparse.Namespace) -> None:
    """Print the section and, unless ``--no-record``, append it to RESULTS.md."""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = [f"### {name}: {device_name(device)}, {when}", "", f"`{command_line()}`", "", *lines]
    if args.note:
        section += ["", f"Note: {args.note}"]
    text = "\n".join(section) + "\n"
    print("\n" + text)
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write("\n" + text)
        print(f"(appended to {RESULTS})")


def target(ok: bool | None, what: str) -> int:
    """One line for a benchmark's target: PASS, FAIL, or INFO where this device or these sizes cannot
    judge it. Returns the exit status it asks for: 1 when the target was missed."""
    print(f"{'INFO' if ok is None else 'PASS' if ok else 'FAIL'} target: {what}", flush=True)
    return 1 if ok is False else 0


def shared_data() -> Path:
    """The sample data folder (../shared/data beside the checkout, or $ORCHESTRATOR_TEST_DATA)."""
    return Path(os.environ.get("ORCHESTRATOR_TEST_DATA", REPO.parent / "shared" / "data"))


def run_search(argv: Sequence[str], log: Path) -> tuple[float, float, int]:
    """``python -m orchestrator.search ARGV`` in a child process, its output to ``log``.
    Returns (wall-clock start as time.time(), wall seconds, exit status)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    command = [sys.executable, "-m", "orchestrator.search", *argv]
    print("$ " + " ".join(shlex.quote(a) for a in command[1:]), flush=True)
    started = time.time()
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    wall = time.time() - started
    if code != 0:
        tail = log.read_text().splitlines()[-30:]
        print("\n".join(tail), file=sys.stderr)
    return started, wall, code
