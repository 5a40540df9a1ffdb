"""The GPU acceptance run (issues 12 and 25): every part of the GPU path in one device call that
leaves time for a second, each part under a budget of its own, one PASS / FAIL / INFO line each.

    bash bench/gpu_acceptance.sh [--tiny]     # the entry point: finds the staged packages and weights
    python bench/gpu_harness.py --print-budget
    python bench/gpu_harness.py --preflight   # only the first part: what the run needs is there

Parts, in order (``PARTS``): preflight (the staged packages import, CUDA answers, the FID weights
load and run on the device: seconds, so a machine that lost its staging fails at once, not after
minutes), pytest (the GPU-marked tests), search (``bench/gpu_acceptance.py``: a search on CUDA with a
worker and the driver killed and resumed), step and fid (``bench/step_throughput.py`` and
``bench/fid_eval.py`` at reduced sizes, each failing on a missed target), quality
(``bench/search_quality.py``, three small searches).

How a part is judged: its command's exit status 0 is PASS, any other FAIL; a required part stopped
at its time limit FAIL; a part not started for want of time, and an extra part (quality on the
device) cut at its limit, INFO. On the device a GPU test that skips is a FAIL (a skip there means
something is not staged), except one that needs a newer GPU than this one. The run passes when no
part failed. ``--tiny`` runs every part on the CPU at tiny sizes, quality included and required,
nothing recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = sys.executable

DEVICE_CALL_S = 600  # the most one device call may run
RUN_S = 360  # this run's share: a second run fits in the same 15 minutes of device time
KILL_GRACE_S = 10  # a part that ignores SIGTERM is killed this much after its limit
RESERVE_S = 20  # start-up, the summary and the copies to $OUT, outside every part
BUDGET_S = {False: RUN_S - KILL_GRACE_S - RESERVE_S, True: 1500}  # --tiny: 2 CPU cores, no device call
MIN_START_S = 15  # a part with less than this left is not started
ALLOWED_SKIP = re.compile(r"needs Ampere")  # a GPU test may skip on an older GPU for this reason only
PACKAGES = ("ray", "ray.tune", "optuna", "mlflow", "sqlalchemy", "alembic", "pytorch_fid", "pytest",
            "pandas", "matplotlib", "yaml")
OUT_FILES = ("harness.log", "search-1.log", "search-2.log", "acceptance.json", "pytest.xml",
             "search_quality.png")  # with bench/RESULTS.md and results.csv: the 8 files $OUT brings back


@dataclass(frozen=True)
class Part:
    name: str
    argv: tuple[str, ...]
    cap_s: int  # its own budget: the most it may run
    required: bool = True  # an extra part runs only when time is left, and is never a FAIL for time
    min_s: int = MIN_START_S  # not started with less than this left of the run's budget


@dataclass
class Outcome:
    name: str
    word: str  # PASS, FAIL or INFO
    detail: str
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # sub-checks, printed under the part


def parts(tiny: bool, work: Path, note: str = "") -> list[Part]:
    """What runs, with the sizes and budgets of the device or of --tiny."""
    said = f"gpu_acceptance (issue 25), reduced sizes{'; ' + note if note else ''}"
    noted = [] if tiny else ["--note", said]
    quiet = ["--no-record"] if tiny else noted
    gpu_files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if "pytest.mark.gpu" in p.read_text() and p.name != "test_gpu_acceptance.py")
    search_cap = 600 if tiny else 170
    if tiny:
        step = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--repeats", "1", "--batches", "4",
                "--curve-steps", "6", "--curve-batch", "4", "--smooth", "3"]
        fid = ["--device", "cpu", "--n", "32", "--batch", "16", "--pfid-batch", "16", "--train-steps", "0"]
        quality = ["--device", "cpu", "--num-samples", "4", "--max-concurrent", "2", "--eval-every", "5",
                   "--max-evals", "2", "--fid-n", "16", "--limit", "200"]
    else:
        step = ["--steps", "50", "--warmup", "10", "--repeats", "3", "--batches", "64,512", "--curve-steps",
                "200", "--smooth", "20"]
        # n above Inception's 2,048 dimensions, where pytorch-fid's sqrtm is defined and the target judged
        fid = ["--n", "2500", "--train-steps", "100"]
        quality = ["--num-samples", "8", "--max-concurrent", "8", "--eval-every", "50", "--max-evals", "3",
                   "--fid-n", "256", "--limit", "3000"]
    return [
        Part("preflight", (PY, str(BENCH / "gpu_harness.py"), "--preflight", *(["--tiny"] if tiny else [])),
             60 if tiny else 20),
        Part("pytest", (PY, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                        f"--junitxml={work / 'pytest.xml'}", *gpu_files), 120 if tiny else 45),
        Part("search", (PY, str(BENCH / "gpu_acceptance.py"), "--workdir", str(work),
                        "--budget", "{cap_less_10}", *(["--tiny"] if tiny else noted)), search_cap),
        Part("step", (PY, str(BENCH / "step_throughput.py"), *step, *quiet), 120 if tiny else 40),
        Part("fid", (PY, str(BENCH / "fid_eval.py"), *fid, *quiet), 150 if tiny else 55),
        Part("quality", (PY, str(BENCH / "search_quality.py"), *quality, "--plot",
                         str(work / "search_quality.png"), *quiet), 450 if tiny else 0,
             required=tiny, min_s=120),  # on the device: what is left, if 120 s are
    ]


def judge(part: Part, code: int | None, seconds: float) -> Outcome:
    """A finished part's word: ``code`` None when it was stopped at its limit."""
    if code is None:
        if part.required:
            return Outcome(part.name, "FAIL", f"stopped at its time limit ({part.cap_s} s)", seconds)
        return Outcome(part.name, "INFO", f"an extra part, cut at its time limit after {seconds:.0f} s",
                       seconds)
    if code == 0:
        return Outcome(part.name, "PASS", f"{seconds:.0f} s", seconds)
    return Outcome(part.name, "FAIL", f"exit status {code} after {seconds:.0f} s", seconds)


def run_command(argv: tuple[str, ...], cap_s: float, log: Path) -> int | None:
    """``argv`` in a process group of its own, its output to the terminal and ``log``; SIGTERM to the
    group at ``cap_s``, SIGKILL ``KILL_GRACE_S`` later. None when it was stopped at the limit."""
    with log.open("a") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True, text=True, bufsize=1)
        deadline = time.monotonic() + cap_s
        stopped = False
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while True:
            line = proc.stdout.readline()
            if line:
                sys.stdout.write(line)
                sink.write(line)
                continue
            if proc.poll() is not None:
                rest = proc.stdout.read() or ""
                sys.stdout.write(rest)
                sink.write(rest)
                break
            if not stopped and time.monotonic() > deadline:
                stopped = True
                _signal_group(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + KILL_GRACE_S
            elif stopped and time.monotonic() > deadline:
                _signal_group(proc.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)
        sys.stdout.flush()
    return None if stopped else proc.returncode


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def pytest_outcome(outcome: Outcome, report: Path, on_device: bool) -> Outcome:
    """Reads the junit report: on the device every GPU test must run (a skip there hides a missing
    package or file), and at least one must pass; on the CPU they all skip."""
    try:
        suite = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError) as err:
        return Outcome(outcome.name, "FAIL", f"no pytest report ({err}); {outcome.detail}", outcome.seconds)
    cases = list(suite.iter("testcase"))
    skipped = [(c.get("name", "?"), (c.find("skipped").get("message") or "")) for c in cases
               if c.find("skipped") is not None]
    failed = [c.get("name", "?") for c in cases
              if c.find("failure") is not None or c.find("error") is not None]
    passed = len(cases) - len(skipped) - len(failed)
    counts = f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped of {len(cases)} GPU tests"
    lines = [f"skipped {name}: {why}" for name, why in skipped]
    if outcome.word != "PASS" or failed:
        return Outcome(outcome.name, "FAIL", f"{counts}; {outcome.detail}", outcome.seconds, lines)
    if on_device:
        hidden = [name for name, why in skipped if not ALLOWED_SKIP.search(why)]
        if hidden or not passed:
            return Outcome(outcome.name, "FAIL", f"{counts}: on the device none may skip and one must pass",
                           outcome.seconds, lines)
    elif not cases:
        return Outcome(outcome.name, "FAIL", "no GPU test was collected", outcome.seconds)
    return Outcome(outcome.name, "PASS", f"{counts}, {outcome.detail}", outcome.seconds, lines)


def search_outcome(outcome: Outcome, report: Path) -> Outcome:
    """Adds the search's own checks (acceptance.json), one line each."""
    try:
        checks = json.loads(report.read_text())["checks"]
    except (OSError, ValueError, KeyError):
        return outcome
    words = {"PASS": 0, "FAIL": 0, "INFO": 0}
    for c in checks:
        words["INFO" if c["ok"] is None else "PASS" if c["ok"] else "FAIL"] += 1
    outcome.lines = [f"{'INFO' if c['ok'] is None else 'PASS' if c['ok'] else 'FAIL'} {c['name']}"
                     for c in checks]
    outcome.detail += (f"; checks: {words['PASS']} passed, {words['FAIL']} failed, "
                       f"{words['INFO']} informational")
    if words["FAIL"]:
        outcome.word = "FAIL"
    return outcome


def run(tiny: bool, budget: float, work: Path, out: Path | None, note: str = "") -> int:
    started = time.monotonic()
    deadline = started + budget
    log = work / "harness.log"
    results = REPO / "bench" / "RESULTS.md"
    say = _sayer(log)
    say(f"gpu_acceptance: {'--tiny, CPU sizes, nothing recorded' if tiny else 'device sizes'}, budget "
        f"{budget:.0f} s, work folder {work}")
    outcomes: list[Outcome] = []
    checks: dict[str, Callable[[Outcome], Outcome]] = {
        "pytest": lambda o: pytest_outcome(o, work / "pytest.xml", not tiny),
        "search": lambda o: search_outcome(o, work / "acceptance.json"),
    }
    for part in parts(tiny, work, note):
        left = deadline - time.monotonic()
        if outcomes and outcomes[0].name == "preflight" and outcomes[0].word == "FAIL":
            outcomes.append(Outcome(part.name, "INFO", "not run: the preflight failed"))
            continue
        cap = min(part.cap_s or left, left)
        if cap < part.min_s:
            outcomes.append(Outcome(part.name, "INFO", f"not run for want of time: {left:.0f} s left, "
                                    "it needs "
                                    f"{part.min_s} s"))
            say(f"=== {part.name}: not run, {left:.0f} s left")
            continue
        argv = tuple(a.replace("{cap_less_10}", str(int(cap) - 10)) for a in part.argv)  # its own stop, first
        say(f"=== {part.name}, at most {cap:.0f} s: {' '.join(argv)}")
        begun = time.monotonic()
        code = run_command(argv, cap, log)
        outcome = judge(Part(part.name, argv, int(cap), part.required), code, time.monotonic() - begun)
        outcomes.append(checks.get(part.name, lambda o: o)(outcome))
        if part.name == "search":
            subprocess.run([PY, str(BENCH / "gpu_acceptance.py"), "--workdir", str(work), "--cleanup"],
                           cwd=REPO, check=False)  # whatever a search killed at its limit left running
        save(out, work, results)
    failed = [o for o in outcomes if o.word == "FAIL"]
    say(f"=== summary ({time.monotonic() - started:.0f} s of {budget:.0f} s; work folder {work})")
    for o in outcomes:
        say(f"  {o.word} {o.name}: {o.detail}")
        for line in o.lines:
            say(f"      {line}")
    infos = sum(o.word == "INFO" for o in outcomes)
    say(f"gpu_acceptance: {'FAILED' if failed else 'PASSED'} ({len(outcomes) - len(failed) - infos} passed, "
        f"{len(failed)} failed, {infos} informational)")
    save(out, work, results)
    return 1 if failed else 0


def _sayer(log: Path) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, flush=True)
        with log.open("a") as f:
            f.write(line + "\n")

    return say


def save(out: Path | None, work: Path, results: Path) -> None:
    """What the device tool brings back: at most 8 files from $OUT."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    sources = [results, *(work / name for name in OUT_FILES), work / "runs" / "gpu-accept" / "results.csv"]
    for source in sources:
        if source.is_file():
            shutil.copy2(source, out / source.name)


# ---------------------------------------------------------------- preflight


def preflight(tiny: bool) -> int:
    """Seconds, not minutes: every package the run imports, CUDA, and the FID weights loaded and run
    on the device. One line each; exit status 1 when anything is missing."""
    problems = 0
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            where = Path(getattr(module, "__file__", "") or "?").parent
            print(f"ok {name} {getattr(module, '__version__', '')} ({where})", flush=True)
        except Exception as err:  # an import can fail any way: a missing wheel, a clashing version
            problems += 1
            print(f"MISSING {name}: {type(err).__name__}: {err}", flush=True)
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        print(f"ok cuda: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
              f"torch {torch.__version__}", flush=True)
    elif not tiny:
        problems += 1
        print(f"MISSING cuda: torch {torch.__version__} sees no CUDA device (on a CPU: --tiny)", flush=True)
    sys.path.insert(0, str(REPO))
    try:
        from orchestrator.metrics.inception import load_inception, resolve_weights

        path = resolve_weights()
        net = load_inception(path, device="cuda" if cuda else "cpu")
        features, _ = net(torch.zeros(2, 3, 32, 32))
        assert features.shape == (2, 2048) and bool(torch.isfinite(features).all())
        print(f"ok FID weights: {path} ({path.stat().st_size / 1e6:.1f} MB), {net.name} on {net.device}",
              flush=True)
    except Exception as err:  # WeightsError, a truncated file, a device error: all one line
        problems += 1
        print(f"MISSING FID weights: {type(err).__name__}: {err}", flush=True)
    print(f"preflight: {'FAILED, ' + str(problems) + ' missing' if problems else 'everything is there'}",
          flush=True)
    return 1 if problems else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true",
                   help="every part on the CPU at tiny sizes, nothing recorded")
    p.add_argument("--preflight", action="store_true", help="only check that what the run needs is there")
    p.add_argument("--print-budget", action="store_true", help="the time arithmetic; nothing run")
    args = p.parse_args()
    if args.preflight:
        return preflight(args.tiny)
    budget = float(os.environ.get("BUDGET_S") or BUDGET_S[args.tiny])
    if args.print_budget:
        plan = parts(args.tiny, Path("/tmp/work"))
        required = sum(part.cap_s for part in plan if part.required)
        print(f"budget_s={budget:.0f} required_caps_s={required} kill_grace_s={KILL_GRACE_S} "
              f"reserve_s={RESERVE_S} total_s={budget + KILL_GRACE_S + RESERVE_S:.0f} run_s={RUN_S} "
              f"device_limit_s={DEVICE_CALL_S}")
        print(" ".join(f"{part.name}={part.cap_s or 'rest'}{'' if part.required else '(extra)'}"
                       for part in plan))
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("gpu_acceptance: torch sees no CUDA device; this is the device run (on a CPU: --tiny)",
              file=sys.stderr)
        return 2
    # under /tmp, not $TMPDIR: Ray's socket paths inside it must stay under 108 bytes
    work = Path(tempfile.mkdtemp(prefix=f"gpu-acceptance-{time.strftime('%Y%m%d-%H%M%S')}-", dir="/tmp"))
    os.environ["ORCHESTRATOR_CACHE"] = str(work / "cache")  # a fresh cache, as a first search has
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    return run(args.tiny, budget, work, out, os.environ.get("NOTE", ""))


if __name__ == "__main__":
    sys.exit(main())
