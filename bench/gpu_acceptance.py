"""Issue 12's GPU acceptance search: one real search on the built-in ``shapes`` dataset, a trial's
worker killed mid-trial, then the driver killed and the search resumed, with every claim checked
from what the search left behind. ``bench/gpu_acceptance.sh`` runs it as one part of its budget.

1. ``python -m orchestrator.search shapes`` (a child process in its own session) with 8 trials at
   ``--gpus-per-trial 0.25`` (4 share the GPU at once), early stopping off (grace period = max evals)
   and a small space of healthy DCGAN settings, so every trial is meant to run its whole budget.
2. Once a trial's second result has reached the driver (so its first checkpoint is registered) and
   it still has evaluations to go, its Ray actor (the process whose working directory is the
   trial's, titled ``ray::ResourceTrainable``) is SIGKILLed. Tune restarts the trial from its last
   checkpoint (``--max-failures 3``): on CUDA this is the checkpoint restore path of issue 12.
3. Once Tune's saved experiment state holds a finished trial, the restored trial has reported
   again and another trial is part-way, the driver's whole session (driver, GCS, raylet, workers)
   is SIGKILLed, and the same command is run with ``--resume``.
4. Checks: the resumed search exits 0 with every trial completed; the best trial's FID fell from its
   first evaluation to its last; trials overlapped in time, and (on CUDA) at least two trial actors
   held the GPU at once and every result says it ran on cuda; the killed trial resumed from its
   checkpoint (new actor, ``iterations_since_restore`` 1 at a later iteration, steps continuing),
   finished its budget, and its MLflow run holds each step once; the trials finished before the
   driver died were not run again (same MLflow steps, one run each, no result after the kill).

Prints one ``PASS``/``FAIL``/``INFO`` line per check, writes ``acceptance.json`` into ``--workdir``
and, unless ``--no-record`` (implied by ``--tiny``), appends its table to bench/RESULTS.md. Exit
status 0 when every check passed.

    PYTHONPATH=. python bench/gpu_acceptance.py --workdir /tmp/acc [--budget 400] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO, add_common_args, report, table

NAME = "gpu-accept"
SESSIONS = "search-sessions.txt"  # the session id (= driver pid) of every search started
TRIAL_DIR = re.compile(r"/working_dirs/trial_([0-9a-f]+)$")  # a trial actor's working directory
LOGDIR = re.compile(r"^Result logdir: (.+)$", re.M)  # Tune's status: the driver's copy of the results

# Device sizes: 8 trials, 4 at once on the GPU, 5 evaluations of 100 steps, FID on 512 images.
# --tiny: the same logic on 2 CPU cores in a few minutes (trials on the CPU, 2 at once).
SIZES = {
    False: {"num_samples": 8, "max_concurrent": 8, "gpus_per_trial": 0.25, "max_evals": 5,
            "eval_every": 100, "fid_n": 512, "limit": 5000, "batch": 64, "ngf": "[32, 64]", "ndf": 64},
    True: {"num_samples": 4, "max_concurrent": 2, "gpus_per_trial": 0.0, "max_evals": 3,
           "eval_every": 10, "fid_n": 32, "limit": 300, "batch": 32, "ngf": "[32]", "ndf": 32},
}

# healthy DCGAN settings only (bce, Adam at beta1 0.5, learning rates near 2e-4): every trial should
# run its whole budget, so "completed" is a fair thing to require; d_norm and the EMA generator are
# sampled so spectral norm and the EMA update run on the device too
SPACE = """\
resolution: 32
budget: {{eval_every: {eval_every}, max_evals: {max_evals}, grace_period: {max_evals}, reduction_factor: 2,
         fid_n: {fid_n}}}
fixed: {{batch_size: {batch}, nz: 100, ndf: {ndf}, loss: bce, optimizer: adam, beta1: 0.5, beta2: 0.999}}
params:
  lr_g: {{loguniform: [1.0e-4, 3.0e-4]}}
  lr_d: {{loguniform: [1.0e-4, 3.0e-4]}}
  ngf: {{choice: {ngf}}}
  d_norm: {{choice: [batch, spectral]}}
  ema_decay: {{choice: [0.0, 0.99]}}
start:
  - {{lr_g: 2.0e-4, lr_d: 2.0e-4, d_norm: batch, ema_decay: 0.0}}
health: {{patience: 1000}}  # the failure detectors never fire (a condition must hold 1000 evaluations):
                            # every trial is to run its whole budget; a NaN still stops one
"""


class OutOfTime(Exception):
    pass


@dataclass
class Check:
    name: str
    ok: bool | None  # None: informational (not required at these sizes)
    detail: str

    @property
    def word(self) -> str:
        return "INFO" if self.ok is None else "PASS" if self.ok else "FAIL"


@dataclass
class Run:
    """What the watcher saw while the first search ran."""

    driver_pid: int = 0
    launched: float = 0.0
    first_result_s: float | None = None
    worker_kill: dict[str, Any] = field(default_factory=dict)
    driver_kill: dict[str, Any] = field(default_factory=dict)
    cuda_actors_max: int = 0  # trial actors seen holding /dev/nvidia* open at the same moment
    actors_max: int = 0
    exit_code: int | None = None  # of the first search when it ended by itself


# ---------------------------------------------------------------- processes


def session_pids(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (the search's driver started it: all of them are ours)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
    return pids


def trial_of(pid: int) -> str | None:
    """The trial a Tune actor is running: Tune makes its working directory the trial's."""
    try:
        found = TRIAL_DIR.search(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return found.group(1) if found else None


def holds_gpu(pid: int) -> bool:
    """Whether the process has a CUDA context: an open /dev/nvidia* device file."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/nvidia"):
                return True
    return False


def trial_actors(sid: int) -> dict[int, str]:
    """pid -> trial id of every trial actor of the session."""
    found = {}
    for pid in session_pids(sid):
        if pid == sid:
            continue
        trial = trial_of(pid)
        if trial:
            found[pid] = trial
    return found


def kill_session(sid: int, grace: float = 15.0) -> int:
    """SIGKILL the driver's process group, then any process left in its session (Ray's workers sit
    in groups of their own), by pid. Returns how many were left for the sweep."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)
    deadline, swept = time.monotonic() + grace, 0
    while time.monotonic() < deadline:
        left = session_pids(sid)
        if not left:
            break
        time.sleep(0.5)
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            swept += 1
    return swept


def launch(argv: list[str], log: Path, sessions: Path) -> subprocess.Popen:
    """The search in a session of its own, its id noted in ``sessions`` (for ``--cleanup``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "orchestrator.search", *argv]
    print("$ " + " ".join(shlex.quote(a) for a in command[1:]) + f"   (output: {log})", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
    with sessions.open("a") as f:
        f.write(f"{proc.pid}\n")
    return proc


def cleanup(workdir: Path) -> int:
    """Kill what is left of the searches this script started in ``workdir`` (after it was itself
    killed at the time limit): every process of their sessions, by pid. Returns how many."""
    count = 0
    with contextlib.suppress(OSError):
        for line in (workdir / SESSIONS).read_text().split():
            sid = int(line)
            if session_pids(sid):
                count += len(session_pids(sid))
                kill_session(sid, grace=5)
    return count


def stop(signum: int, frame: Any) -> None:
    raise OutOfTime(f"{signal.Signals(signum).name} (the time limit)")


# ---------------------------------------------------------------- what the search writes


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Tune's result.json (one JSON object per line); a line being written is left out."""
    rows = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def driver_histories(sid: int, experiment: Path, log: Path) -> dict[str, list[dict[str, Any]]]:
    """trial id -> the rows of its result.json as the driver writes them, live: the copy in --storage
    is synced only now and then. Found in Ray's session folder (named after the driver's pid), else
    where Tune's status says ("Result logdir: ..."); else the storage copy."""
    roots = dict.fromkeys([Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray", Path("/tmp/ray")])
    folders = [f for root in roots
               for f in root.glob(f"session_*_{sid}/artifacts/*/{experiment.name}/driver_artifacts")]
    if not folders:
        with contextlib.suppress(OSError):
            folders = [Path(found.strip()) for found in LOGDIR.findall(log.read_text(errors="replace"))[-1:]]
    for folder in folders:
        results = {r.parent.name.removeprefix("trial_"): read_rows(r)
                   for r in folder.glob("trial_*/result.json")}
        if results:
            return results
    return storage_histories(experiment)


def storage_histories(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    return {folder.name.removeprefix("trial_"): read_rows(folder / "result.json")
            for folder in experiment.glob("trial_*") if (folder / "result.json").exists()}


def merged(*sources: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The union of several copies of the trials' histories, each result once, in report order (a
    driver killed before its periodic sync leaves the storage copy short of its last results)."""
    found: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for source in sources:
        for trial, rows in source.items():
            for row in rows:
                key = (row.get("pid"), row.get("training_iteration"), row.get("reported_at"))
                found.setdefault(trial, {})[key] = row
    return {trial: sorted(rows.values(), key=lambda r: float(r.get("reported_at") or r.get("timestamp") or 0))
            for trial, rows in found.items()}


def saved_statuses(experiment: Path) -> dict[str, str]:
    """trial id -> status in the newest experiment state Tune saved to storage (what --resume sees)."""
    states = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return {}
    statuses = {}
    for item in data.get("trial_data", []):
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            trial = json.loads(item[0]) if isinstance(item[0], str) else item[0]
            statuses[str(trial["trial_id"])] = str(trial["status"])
    return statuses


def mlflow_trials(experiment: Path, fid_key: str) -> dict[str, list[dict[str, Any]]]:
    """trial id -> its MLflow child runs (normally one): outcome tag and the steps of its FID history,
    read through the package's own reader of a search (``orchestrator.tracking.store``)."""
    from orchestrator.errors import ConfigError
    from orchestrator.tracking import store

    db = experiment / "mlflow.db"
    if not db.exists():
        return {}
    uri = store.default_tracking_uri(experiment)
    try:
        search = store.read_search(experiment.name, uri)
    except ConfigError as err:  # no search run, or no trial run yet
        print(f"(MLflow store holds no search yet: {err})", flush=True)
        return {}
    client = store.connect(uri)
    best_run = client.get_run(search.parent_run_id).data.tags.get("best_run_id")
    trials: dict[str, list[dict[str, Any]]] = {}
    for row in search.rows:
        history = sorted(client.get_metric_history(row["run_id"], fid_key),
                         key=lambda m: (m.step, m.timestamp))
        trials.setdefault(str(row["trial_id"] or "?"), []).append({
            "run": row["run_id"], "outcome": row["outcome"], "steps": [m.step for m in history],
            "fid": [m.value for m in history], "best": best_run == row["run_id"],
        })
    return trials


def restarts(rows: list[dict[str, Any]], after: float) -> list[dict[str, Any]]:
    """Rows that start a restored run of the trial (its first result on a new actor) after ``after``."""
    return [r for r in rows[1:] if r.get("iterations_since_restore") == 1
            and float(r.get("reported_at", r.get("timestamp", 0))) > after]


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = peak = 0
    for _, change in events:  # at equal times an end sorts first: a handover is not an overlap
        running += change
        peak = max(peak, running)
    return peak


# ---------------------------------------------------------------- the run


def search_argv(sizes: dict[str, Any], workdir: Path, space: Path) -> list[str]:
    argv = ["shapes", "--space", str(space), "--name", NAME, "--storage", str(workdir / "runs"),
            "--cache-dir", str(workdir / "cache"), "--seed", "0",
            "--num-samples", str(sizes["num_samples"]), "--max-concurrent", str(sizes["max_concurrent"]),
            "--max-evals", str(sizes["max_evals"]), "--grace-period", str(sizes["max_evals"]),
            "--eval-every", str(sizes["eval_every"]), "--fid-n", str(sizes["fid_n"]),
            "--limit", str(sizes["limit"]), "--gpus-per-trial", f"{sizes['gpus_per_trial']:g}",
            "--max-failures", "3"]
    if sizes["gpus_per_trial"]:
        argv += ["--device", "cuda"]
    else:
        argv += ["--device", "cpu", "--cpus-per-trial", "1"]
    help_text = subprocess.run([sys.executable, "-m", "orchestrator.search", "--help"], capture_output=True,
                               text=True, cwd=REPO, timeout=120).stdout
    if "--precision" in help_text:  # added by issue 12's work; the default is auto anyway
        argv += ["--precision", "auto"]
    return argv


def watch(proc: subprocess.Popen, experiment: Path, sizes: dict[str, Any], deadline: float,
          run: Run, cuda: bool, log: Path) -> None:
    """Follow the first search; kill a trial's worker, later the driver, when the moment comes."""
    sid, evals = proc.pid, sizes["max_evals"]
    last_gpu_sample = 0.0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise OutOfTime("the first search was still running at the end of the budget")
        actors = trial_actors(sid)
        run.actors_max = max(run.actors_max, len(actors))
        if cuda and time.monotonic() - last_gpu_sample > 1.0:
            last_gpu_sample = time.monotonic()
            run.cuda_actors_max = max(run.cuda_actors_max, sum(holds_gpu(p) for p in actors))
        histories = driver_histories(sid, experiment, log)
        if run.first_result_s is None and any(histories.values()):
            run.first_result_s = time.time() - run.launched
        if not run.worker_kill:
            for pid, trial in actors.items():
                rows = histories.get(trial, [])
                done = max((int(r.get("training_iteration", 0)) for r in rows), default=0)
                # its second result reached the driver: checkpoint 1 is registered; evaluations remain
                if 2 <= done < evals and rows[-1].get("pid") == pid:
                    os.kill(pid, signal.SIGKILL)
                    run.worker_kill = {"trial": trial, "pid": pid, "iteration": done,
                                       "step": int(rows[-1].get("step", 0)), "at": time.time()}
                    print(f"killed trial {trial}'s worker (pid {pid}, SIGKILL) after its result {done} "
                          f"(step {run.worker_kill['step']})", flush=True)
                    break
        else:
            killed = run.worker_kill["trial"]
            statuses = saved_statuses(experiment)
            # its restored run has reported; or it failed for good, or never came back: the checks
            # say so, and the driver's part is still worth testing
            recovered = (bool(restarts(histories.get(killed, []), run.worker_kill["at"]))
                         or statuses.get(killed) == "ERROR" or time.time() - run.worker_kill["at"] > 180)
            finished = sorted(t for t, s in statuses.items() if s == "TERMINATED")
            part_way = sorted(t for t, rows in histories.items() if rows and statuses.get(t) != "TERMINATED"
                              and int(rows[-1].get("training_iteration", 0)) < evals)
            if recovered and finished and part_way:
                before = {t: list(rows) for t, rows in histories.items()}
                run.driver_kill = {"at": time.time(), "finished": finished, "part_way": part_way,
                                   "saved_statuses": statuses, "histories": before}
                swept = kill_session(sid)
                run.driver_kill["swept"] = swept
                proc.wait()
                print(f"killed the driver's session (SIGKILL) with {len(finished)} trial(s) finished in "
                      f"Tune's saved state and {len(part_way)} part-way; {swept} process(es) outlived the "
                      "group kill and were killed by pid", flush=True)
                return
        time.sleep(0.25)
    run.exit_code = proc.returncode


def expected_precision(cuda: bool) -> str:
    """What ``--precision auto`` resolves to on this machine's device: bf16 on a GPU (or CPU) that
    computes it natively, fp16 on an older GPU, else fp32."""
    from orchestrator.gan.placement import place

    return place("cuda" if cuda else "cpu").precision


def verify(run: Run, experiment: Path, sizes: dict[str, Any], resume_code: int | None, fid_key: str,
           tiny: bool, cuda: bool, before_kill: dict[str, list[dict[str, Any]]]) -> list[Check]:
    evals, every = sizes["max_evals"], sizes["eval_every"]
    all_steps = [every * (i + 1) for i in range(evals)]
    checks: list[Check] = []
    csv = experiment / "results.csv"
    rows: list[dict[str, str]] = []
    if csv.exists():
        import csv as csvlib

        with csv.open() as f:
            rows = list(csvlib.DictReader(f))
    runs = mlflow_trials(experiment, fid_key)
    stored = storage_histories(experiment)
    histories = merged(before_kill, stored)

    # 1. the resumed search completed, every trial its whole budget
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    complete = (resume_code == 0 and len(rows) == sizes["num_samples"]
                and outcomes.get("completed", 0) == len(rows)
                and all(int(r["steps"]) == all_steps[-1] for r in rows))
    failures = "; ".join(f"{r['trial_id']}: {r['failure']}" for r in rows if r.get("failure"))
    checks.append(Check("search completes after --resume", complete,
                        f"resume exit status {resume_code}; results.csv: {len(rows)} trials "
                        f"({', '.join(f'{n} {o}' for o, n in outcomes.items()) or 'none'}), "
                        f"expected {sizes['num_samples']} completed at step {all_steps[-1]}"
                        + (f"; failures: {failures}" if failures else "")))

    # 2. FID fell for the best trial
    best = next((r for rs in runs.values() for r in rs if r["best"]), None)
    if best is None and rows:
        best = next(iter(runs.get(rows[0]["trial_id"], [])), None)
    if best and len(best["fid"]) >= 2:
        first, last = best["fid"][0], best["fid"][-1]
        fell = math.isfinite(last) and last < first
        trial = next(t for t, rs in runs.items() if best in rs)
        detail = (f"best trial {trial}: {fid_key} {first:.1f} at step {best['steps'][0]} -> {last:.1f} at "
                  f"step {best['steps'][-1]} ({', '.join(f'{v:.1f}' for v in best['fid'])})")
        checks.append(Check("FID falls over the best trial's evaluations", None if tiny else fell,
                            detail + (" (not required at --tiny sizes)" if tiny else "")))
    else:
        checks.append(Check("FID falls over the best trial's evaluations", False, "no best trial with two "
                            "evaluations in MLflow"))

    # 3. trials ran at once (and on the GPU)
    intervals = [(float(r["started"]), float(r["ended"])) for r in rows
                 if r.get("started") not in (None, "", "nan") and r.get("ended") not in (None, "", "nan")]
    peak = peak_overlap(intervals)
    checks.append(Check("trials ran concurrently", peak >= 2,
                        f"peak {peak} trials with overlapping [started_at, reported_at] (results.csv); "
                        f"at most {run.actors_max} trial actors alive at once"))
    devices = sorted({str(r.get("device")) for rs in histories.values() for r in rs if r.get("device")})
    precisions = sorted({str(r.get("compute_precision")) for rs in histories.values() for r in rs})
    expected = expected_precision(cuda)
    checks.append(Check("trials computed in the precision --precision auto resolves to here",
                        precisions == [expected],
                        f"expected {expected} (orchestrator.gan.placement.place); the trials reported "
                        f"{', '.join(precisions) or 'none'}: a silent fall-back to fp32 would show here"))
    if cuda:
        on_cuda = run.cuda_actors_max >= 2 and all(d.startswith("cuda") for d in devices)
        checks.append(Check("trials computed on cuda, several at once", on_cuda,
                            f"at most {run.cuda_actors_max} trial actors held /dev/nvidia* at the same "
                            f"moment; devices the trials reported: {', '.join(devices) or 'none reported'}"))
    else:
        checks.append(Check("trials computed on cuda, several at once", None,
                            f"--tiny: trials on the CPU (devices reported: {', '.join(devices) or 'none'})"))

    # 4. the killed worker's trial resumed from its checkpoint and finished
    kill = run.worker_kill
    if not kill:
        checks.append(Check("a killed trial worker resumes from its checkpoint", False,
                            "no trial could be caught part-way to kill its worker"))
    else:
        trial = kill["trial"]
        again = restarts(histories.get(trial, []), kill["at"])
        first = again[0] if again else {}
        it = int(first.get("training_iteration", 0))
        resumed = (bool(again) and first.get("pid") != kill["pid"] and it >= 2
                   and int(first.get("step", -1)) == it * every)
        final = next((r for r in rows if r["trial_id"] == trial), None)
        trial_runs = runs.get(trial, [])
        steps_once = len(trial_runs) == 1 and trial_runs[0]["steps"] == all_steps
        finished = (final is not None and final["outcome"] == "completed"
                    and int(final["steps"]) == all_steps[-1])
        restored = (f"restored on pid {first.get('pid')} at iteration {it}, step {first.get('step')} "
                    "(not from step 0)" if again else "no restored result seen")
        checks.append(Check(
            "a killed trial worker resumes from its checkpoint", resumed and finished and steps_once,
            f"trial {trial}: worker pid {kill['pid']} killed after result {kill['iteration']} "
            f"(step {kill['step']}); {restored}; outcome {final['outcome'] if final else 'missing'} at step "
            f"{final['steps'] if final else '-'}; MLflow: {len(trial_runs)} run(s), steps "
            f"{trial_runs[0]['steps'] if trial_runs else []}"))

    # 5. after the driver's death, --resume ran no finished trial again
    dk = run.driver_kill
    if not dk:
        checks.append(Check("a killed driver resumes without re-running finished trials", False,
                            "the driver was not killed: the first search " + (
                                f"ended by itself (exit status {run.exit_code})" if run.exit_code is not None
                                else "never reached a finished trial with another part-way")))
    else:
        problems, rerun = [], []
        for trial in dk["finished"]:
            trial_runs = runs.get(trial, [])
            late = [r for r in stored.get(trial, []) if float(r.get("reported_at", 0)) > dk["at"]]
            if late or len(trial_runs) != 1 or trial_runs[0]["steps"] != all_steps:
                rerun.append(trial)
                problems.append(f"{trial}: {len(late)} result(s) after the kill, {len(trial_runs)} MLflow "
                                f"run(s), steps {[r['steps'] for r in trial_runs]}")
        resumed, fresh = [], []
        for trial in dk["part_way"]:
            again = restarts(stored.get(trial, []), dk["at"])
            (resumed if again and int(again[0].get("training_iteration", 0)) >= 2 else fresh).append(trial)
        lost = [t for t, rs in runs.items() for r in rs if r["outcome"] == "lost"]
        duplicated = [t for t, rs in runs.items() for r in rs if len(r["steps"]) != len(set(r["steps"]))]
        ok = resume_code == 0 and not rerun and not duplicated
        checks.append(Check(
            "a killed driver resumes without re-running finished trials", ok,
            f"{len(dk['finished'])} finished before the kill, {len(rerun)} of them run again; "
            f"{len(dk['part_way'])} part-way: {len(resumed)} resumed from a checkpoint, {len(fresh)} started "
            f"afresh or not resumed; {len(lost)} MLflow run(s) tagged lost; "
            f"{sum(len(rs) for rs in runs.values())} child runs for {len(rows)} trials; "
            f"runs with a step twice: {len(duplicated)}" + (f"; {'; '.join(problems)}" if problems else "")))
    return checks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, device=False)
    p.add_argument("--workdir", type=Path, required=True, help="the search's storage, cache, logs")
    p.add_argument("--budget", type=float, default=420, help="seconds for everything, resume included")
    p.add_argument("--tiny", action="store_true", help="CPU sizes, nothing recorded")
    p.add_argument("--cleanup", action="store_true", help="only kill what is left of the searches started "
                   "in --workdir (after this script was killed) and exit")
    args = p.parse_args()
    if args.cleanup:
        print(f"cleanup: {cleanup(args.workdir)} leftover search process(es) killed")
        return 0
    args.no_record = args.no_record or args.tiny
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    deadline = started + args.budget
    sizes = SIZES[args.tiny]
    cuda = bool(sizes["gpus_per_trial"])
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    space = workdir / "space.yaml"
    space.write_text(SPACE.format(**sizes))
    experiment = workdir / "runs" / NAME
    os.environ["ORCHESTRATOR_CACHE"] = str(workdir / "cache")
    sys.path.insert(0, str(REPO))
    from orchestrator.metrics.frechet import metric_name

    fid_key = metric_name(sizes["fid_n"])
    run, resume_code, procs = Run(), None, []
    before_kill: dict[str, list[dict[str, Any]]] = {}
    note = ""
    try:
        argv = search_argv(sizes, workdir, space)
        run.launched = time.time()
        proc = launch(argv, workdir / "search-1.log", workdir / SESSIONS)
        procs.append(proc)
        run.driver_pid = proc.pid
        watch(proc, experiment, sizes, deadline, run, cuda, workdir / "search-1.log")
        phase1 = time.time() - run.launched
        ended = f"exit status {run.exit_code}" if run.exit_code is not None else "driver killed"
        print(f"first search: {phase1:.0f} s, {ended}", flush=True)
        if run.driver_kill:
            before_kill = run.driver_kill.pop("histories")
            left = deadline - time.monotonic()
            if left < 20:
                raise OutOfTime("no time left to resume")
            resumed_at = time.time()
            proc = launch([*argv, "--resume"], workdir / "search-2.log", workdir / SESSIONS)
            procs.append(proc)
            try:
                resume_code = proc.wait(timeout=left - 5)
            except subprocess.TimeoutExpired:
                raise OutOfTime("the resumed search was still running at the end of the budget") from None
            print(f"resumed search: {time.time() - resumed_at:.0f} s, exit status {resume_code}", flush=True)
        else:
            resume_code = run.exit_code
    except OutOfTime as err:
        note = str(err)
        print(f"stopping: {err}", flush=True)
    finally:
        for proc in procs:
            if proc.poll() is None or session_pids(proc.pid):
                kill_session(proc.pid, grace=5)
                proc.wait()
    for name, code in (("search-1.log", run.exit_code), ("search-2.log", resume_code)):
        if code not in (None, 0) and (workdir / name).exists():  # say why, before the checks do
            tail = (workdir / name).read_text(errors="replace").splitlines()[-25:]
            print(f"--- the end of {workdir / name} (exit status {code}):", *tail, "---", sep="\n",
                  flush=True)
    checks = verify(run, experiment, sizes, resume_code, fid_key, args.tiny, cuda, before_kill)
    if note:
        checks.append(Check("within the budget", False, note))
    wall = time.monotonic() - started
    for c in checks:
        print(f"{c.word} {c.name}: {c.detail}", flush=True)
    failed = [c for c in checks if c.ok is False]
    print(f"gpu_acceptance search: {len(checks) - len(failed)} of {len(checks)} checks passed or "
          f"informational, {len(failed)} failed, {wall:.0f} s", flush=True)
    (workdir / "acceptance.json").write_text(json.dumps({
        "checks": [vars(c) for c in checks], "wall_s": wall, "sizes": sizes,
        "worker_kill": run.worker_kill, "driver_kill": {k: v for k, v in run.driver_kill.items()},
        "first_result_s": run.first_result_s, "cuda_actors_max": run.cuda_actors_max,
    }, indent=2, default=str))
    lines = table(["check", "result", "evidence"],
                  [[c.name, c.word, c.detail.replace("|", "/")] for c in checks])
    lines += ["", f"shapes, {sizes['num_samples']} trials of {sizes['max_evals']} x {sizes['eval_every']} "
              f"steps (early stopping off), FID on {sizes['fid_n']} images, {sizes['gpus_per_trial']:g} GPU "
              f"per trial, --max-concurrent {sizes['max_concurrent']}; first result "
              f"{run.first_result_s or math.nan:.0f} s after launch; {wall:.0f} s for both searches and the "
              "checks."]
    import torch

    if cuda and not torch.cuda.is_available():  # device sizes without a GPU: nothing worth recording
        args.no_record = True
    report("gpu_acceptance", "cuda" if cuda and torch.cuda.is_available() else "cpu", lines, args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
