"""A search the size of a real cluster, measured on this machine by simulation (issue 28).

Each size (``TRIALSxAT_ONCE``) runs in a process of its own: a local multi-node Ray cluster of
logical GPUs (nodes of 8 GPUs, a head that runs no trials), joined with ``--address``, and the
product's driver (``runner.run_search``: the same plan, Optuna sampler, ASHA, MLflow logger, contact
sheets, summary and report page) running ``replay_trial.ReplayTrial`` instead of GAN trials: seeded
synthetic curves (``Curves.synthetic``, one per configuration drawn from the space), each evaluation
slept for ``--interval`` simulated seconds times ``--time-scale``, checkpoints holding a real
generator file and a real sample grid (made once here, from the space's start point, untrained),
no torch in the trials' workers. ``--gpus-per-trial 0.25``: four trials a GPU, so 256 at once is 64
GPUs. Any flag of ``python -m orchestrator.search`` is taken and means what it means there
(``--mlflow-uri`` for a tracking server, sqlite beside the results by default).

Measured per size, from a meter the driver runs as one more Tune callback and timers around the
sampler, the MLflow client and the contact sheets (this process only: the product is unchanged):
- orchestration overhead: 1 - busy trial seconds / (wall x slots), over the whole search and over
  the part of it where trials were still waiting to start (the tail, where fewer trials than slots
  remain, is the schedule's and not the driver's), with the first wave's launch apart;
- the driver's CPU seconds per reported result by quarters of the trials that ended while trials
  waited (as many running in each), and over the whole search its first and last quarter (the last
  holds the tail) and the cores it kept busy; its peak memory (resident set), the GCS's beside it;
- the time from a trial's end to the next trial's start (the slot it freed), the sampler's time per
  suggestion, MLflow calls per second and the store's size, each contact-sheet redraw;
- the summary (timings.json), and ``python -m orchestrator.report`` on the finished search;
- with ``--resume SIZE``: that search's driver is killed (SIGKILL, Ray with it) once half its trials
  have ended, then ``--resume`` is run, and the time until its first result is measured.

    python bench/scale.py shapes --sizes 16x16,64x16,64x64,256x64,256x256,1000x256 --interval 60 \\
        --time-scale 0.25 --fid-n 256 --resume 1000x256
    python bench/scale.py shapes --sizes 8x4 --max-evals 3 --time-scale 0.02 --fid-n 64 --no-record
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import add_common_args, report, table
from ray import tune

from orchestrator.tracking.store import ARTIFACTS_FOLDER, STORE_FILE

BENCH = Path(__file__).resolve().parent
GPU_SHARE, GPUS_PER_NODE = 0.25, 8
EVENTS, MEASURED = "events.csv", "measured.json"  # what the search's own process leaves per size
FIELDS = ("kind", "at", "cpu", "trial_id", "busy")
LINGER = 30.0  # seconds a resumed search runs on after its first result (its pace is counted)


class Meter(tune.Callback):
    """One more Tune callback of the driver (picklable: Tune keeps it with the experiment state, and
    a resumed search goes on writing): one line per trial start, result, end and error, with the
    wall clock, this process's CPU seconds and the seconds the trial spent on the iteration."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.looped = False  # a resumed search's Meter is this one as made (Tune keeps the RunConfig)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.looped:  # Tune's loop turning: the search's own preparation (and a restore) done
            self.looped = True
            self._write("loop", None)

    def _write(self, kind: str, trial: Any, busy: float = 0.0) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([kind, f"{time.time():.4f}", f"{time.process_time():.4f}",
                                    trial.trial_id if trial is not None else "", f"{busy:.4f}"])

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write("start", trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._write("result", trial, float(result.get("time_this_iter_s", 0.0)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write("end", trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write("end", trial)
        self._write("error", trial)  # a trial lost (a resume that could not restore it, issue 28)


def timing(owner: Any, name: str, into: list[float]) -> None:
    """Wrap ``owner.name`` so each call's seconds are appended to ``into``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            into.append(time.perf_counter() - start)

    setattr(owner, name, wrapped)


def artifacts(plan: Any) -> Any:
    """A real generator file and sample grid of the space's first start point (untrained), in the
    files a GAN trial's checkpoint holds them in: what the driver reads and logs is real."""
    from replay_trial import Artifacts

    from orchestrator.data import dataset as datasets
    from orchestrator.gan.checkpoints import GENERATOR_FILE, GRID_FILE, REPORT_FILE, save_generator
    from orchestrator.gan.step import build_state, fixed_latents, generate
    from orchestrator.images import grid_image, save_png
    from orchestrator.trial import GRID_SIZE

    config = plan.space.trial_config(plan.space.start[0] if plan.space.start else {})
    data = datasets.prepare_dataset(datasets.spec_for(plan.settings), plan.settings.cache_dir)  # cached
    state = build_state(config, data.channels, data.resolution, "cpu", 0)
    with tempfile.TemporaryDirectory() as scratch:
        save_generator(state, Path(scratch) / GENERATOR_FILE)
        grid = grid_image(generate(state, fixed_latents(config.nz, GRID_SIZE, 0)))
        save_png(grid, Path(scratch) / GRID_FILE)
        files = tuple((name, (Path(scratch) / name).read_bytes()) for name in (GENERATOR_FILE, GRID_FILE))
    return Artifacts(REPORT_FILE, files)


def logical_cluster(gpus: int) -> Any:
    """A local Ray cluster of ``gpus`` logical GPUs: a head that runs no trials, nodes of
    ``GPUS_PER_NODE`` GPUs and a CPU for each ``GPU_SHARE`` of one; joined at its ``address``."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # trials stay off the head
    for first in range(0, gpus, GPUS_PER_NODE):
        on_node = min(GPUS_PER_NODE, gpus - first)
        cluster.add_node(num_gpus=on_node, num_cpus=int(on_node / GPU_SHARE))
    cluster.wait_for_nodes()
    return cluster


def simulate(size: str, out: Path, rest: list[str], interval: float, time_scale: float, resume: bool) -> int:
    """One size, in this process: the cluster, the driver, the meters; what they measured to
    ``out``."""
    trials, at_once = (int(x) for x in size.split("x"))
    gpus = math.ceil(at_once * GPU_SHARE)
    from asha_vs_fifo import sample_configs
    from replay import scales
    from replay_trial import Curves, ReplayTrial

    from orchestrator.metrics.registry import objective
    from orchestrator.search import runner
    from orchestrator.search.cli import parse_args as search_args
    from orchestrator.search.plan import make_plan

    cluster = logical_cluster(gpus)
    argv = [*rest, "--num-samples", str(trials), "--max-concurrent", str(at_once), "--gpus-per-trial",
            str(GPU_SHARE), "--cpus-per-trial", "1", "--address", cluster.address, "--storage",
            str(out / "runs"), "--name", f"scale-{size}", *(["--resume"] if resume else [])]
    plan = make_plan(search_args(argv))
    metric = objective(plan.settings.fid_n).key
    configs = sample_configs(plan.space, trials, plan.settings.seed)
    curves = Curves.synthetic(configs, metric, scales(plan.space), plan.max_evals, interval,
                              seed=plan.settings.seed, time_scale=time_scale)
    trial = tune.with_parameters(ReplayTrial, curves=curves, artifacts=artifacts(plan))
    names = ("suggest", "sheets", "mlflow", "state", "searcher_state")
    timers: dict[str, list[float]] = {name: [] for name in names}
    from mlflow import MlflowClient
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.search_generator import SearchGenerator

    from orchestrator.views import sheets

    timing(OptunaSearch, "suggest", timers["suggest"])
    timing(sheets, "write_sheets", timers["sheets"])
    # Tune's experiment state (every trial, the searcher, the callbacks), saved by the driver's loop
    # every TUNE_GLOBAL_CHECKPOINT_S; the searcher's part (OptunaSearch pickles its study) timed apart
    timing(TuneController, "save_to_dir", timers["state"])
    timing(SearchGenerator, "save_to_dir", timers["searcher_state"])
    for call in ("log_batch", "log_artifact", "log_artifacts", "log_image", "create_run", "set_terminated",
                 "set_tag", "log_metric", "log_param", "search_runs"):
        timing(MlflowClient, call, timers["mlflow"])
    started = time.time()
    try:
        code = runner.run_search(plan, trial, [Meter(out / EVENTS)])
    finally:
        measured = {"size": size, "resume": resume, "started": started, "ended": time.time(),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "gcs_peak_mib": _peak_mib("gcs_server"), "cpu_s": time.process_time(),
                    "timers": timers, "experiment": plan.experiment_dir}
        name = MEASURED.replace(".json", "-resume.json" if resume else ".json")
        (out / name).write_text(json.dumps(measured))
        import ray

        ray.shutdown()  # the driver's connection first: the cluster refuses to drop its head under it
        cluster.shutdown()
    return code


def _peak_mib(process: str) -> float:
    """The largest peak resident set (VmHWM) among this machine's processes named ``process``."""
    peak = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        hwm = re.search(r"VmHWM:\s+(\d+)", text)
        if hwm and re.search(rf"^Name:\s+{re.escape(process)}", text, re.M):
            peak = max(peak, int(hwm.group(1)) / 1024)
    return peak


def events(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / EVENTS, names=FIELDS).sort_values("at", kind="stable").reset_index(drop=True)


def cpu_per_result_ms(results: pd.DataFrame) -> float:
    """The driver's CPU milliseconds from one of these results to the next, on average."""
    return 1000 * float(results["cpu"].diff().iloc[1:].mean()) if len(results) > 2 else math.nan


def cpu_trend(results: pd.DataFrame, ended_by: np.ndarray, period: float = 60.0) -> dict[str, float]:
    """Whether the driver's CPU per result grows with the trials ended: its CPU milliseconds per result
    in each ``period`` seconds of ``results`` (the median over periods, and the interquartile range),
    and the slope of a least-squares line through them against the trials ended by then, in ms per
    1,000 trials, with its 95 % half-width (two standard errors)."""
    bins = ((results["at"] - results["at"].min()) // period).to_numpy()
    xs, ys = [], []
    for b in np.unique(bins):
        if (bins == b).sum() > 2:
            ys.append(cpu_per_result_ms(results[bins == b]))
            xs.append(float(np.mean(ended_by[bins == b])))
    x, y = np.asarray(xs), np.asarray(ys)
    if len(x) < 3 or np.ptp(x) == 0:
        return {"minute_median_ms": math.nan, "minute_q1_ms": math.nan, "minute_q3_ms": math.nan,
                "slope_ms_per_1000": math.nan, "slope_half_width": math.nan}
    slope, offset = np.polyfit(x, y, 1)
    spread = float(np.sum((y - slope * x - offset) ** 2)) / (len(x) - 2)
    se = math.sqrt(spread / float(np.sum((x - x.mean()) ** 2)))
    return {"minute_median_ms": float(np.median(y)), "minute_q1_ms": float(np.percentile(y, 25)),
            "minute_q3_ms": float(np.percentile(y, 75)), "slope_ms_per_1000": 1000 * float(slope),
            "slope_half_width": 2000 * se}


def waiting_phase(seen: pd.DataFrame, at_once: int) -> dict[str, Any]:
    """The slots while trials still waited for one (from the first trial's start to the last's), where
    the driver's costs show; after it, fewer trials than slots remain (the schedule's tail). A trial's
    busy seconds are its iterations ``[at - busy, at]``, clipped to that window (an iteration under
    way at the last start counts for its part done by then). The first wave's launch (slot-seconds
    before each of the first ``at_once`` trials started: their worker processes starting at once, on
    this machine's cores) is given apart from the overhead it is part of. The driver's CPU per result
    is given by quarters of the trials that ended in the window: the cost of a result as the number of
    finished trials grows, with as many trials running in each quarter; and minute by minute, with
    the line through the minutes (``cpu_trend``)."""
    starts, results, ends = (seen[seen["kind"] == k] for k in ("start", "result", "end"))
    first, last = float(starts["at"].min()), float(starts["at"].max())
    slot_seconds = (last - first) * at_once
    if len(starts["trial_id"].unique()) <= at_once or slot_seconds <= 0:  # nothing ever waited
        return {"overhead_waiting": math.nan, "launch": math.nan,
                "cpu_per_result_quarters_ms": [math.nan] * 4, **cpu_trend(seen.iloc[:0], np.zeros(0))}
    done = results["at"].to_numpy()
    busy = np.clip(np.minimum(done, last) - np.maximum(done - results["busy"].to_numpy(), first), 0, None)
    launch = float((starts["at"].iloc[:at_once] - first).sum())
    in_window = results[results["at"] <= last]
    ended_by = np.searchsorted(np.sort(ends["at"].to_numpy()), in_window["at"].to_numpy())
    ended = int((ends["at"] <= last).sum())
    quarters = [cpu_per_result_ms(in_window[(ended_by >= k * ended / 4) & (ended_by < (k + 1) * ended / 4)])
                for k in range(4)]
    return {"overhead_waiting": 1 - float(busy.sum()) / slot_seconds, "launch": launch / slot_seconds,
            "cpu_per_result_quarters_ms": quarters, **cpu_trend(in_window, ended_by)}


def summarise(out: Path, at_once: int) -> dict[str, Any]:
    """The figures of one size, from what its process left in ``out``."""
    seen = events(out)
    measured = json.loads((out / MEASURED).read_text())
    timings = json.loads((Path(measured["experiment"]) / "timings.json").read_text()) \
        if (Path(measured["experiment"]) / "timings.json").is_file() else {}
    starts, results, ends = (seen[seen["kind"] == k] for k in ("start", "result", "end"))
    busy = float(results["busy"].sum())
    wall = float(seen["at"].max() - starts["at"].min())
    # CPU per result over the whole search, by how many trials had ended: the first quarter of them
    # against the last (which holds the tail, where fewer results a second share the driver's
    # per-second costs: its state saves, the sheets' redraws)
    ended_by = np.searchsorted(np.sort(ends["at"].to_numpy()), results["at"].to_numpy())
    quarter = max(1, len(ends) // 4)

    # a slot's end to the next start: each start after the first wave, from the latest end before it
    free = np.sort(ends["at"].to_numpy())
    later = starts["at"].iloc[at_once:].to_numpy()
    before = np.searchsorted(free, later, side="right") - 1
    gaps = (later - free[before])[before >= 0].tolist()
    suggest, sheets_s, mlflow = (np.asarray(measured["timers"][k]) for k in ("suggest", "sheets", "mlflow"))
    state, searcher_state = (np.asarray(measured["timers"].get(k, [])) for k in ("state", "searcher_state"))
    here = Path(measured["experiment"])  # a local store: the sqlite file and the artifacts beside
    files = [here / STORE_FILE, *(here / ARTIFACTS_FOLDER).rglob("*")]
    store = sum(f.stat().st_size for f in files if f.is_file())
    return {
        "trials": len(starts["trial_id"].unique()), "results": len(results),
        "overhead": 1 - busy / (wall * at_once), **waiting_phase(seen, at_once),
        "driver_cores": float(seen["cpu"].max() - seen["cpu"].min()) / wall,
        "cpu_per_result_early_ms": cpu_per_result_ms(results[ended_by < quarter]),
        "cpu_per_result_late_ms": cpu_per_result_ms(results[ended_by >= len(ends) - quarter]),
        "peak_rss_mib": measured["peak_rss_mib"], "gcs_peak_mib": measured["gcs_peak_mib"],
        "gap_median_s": float(np.median(gaps)) if gaps else math.nan,
        "gap_p95_s": float(np.percentile(gaps, 95)) if gaps else math.nan,
        "suggest_median_ms": 1000 * float(np.median(suggest)) if len(suggest) else math.nan,
        "suggest_last_ms": 1000 * float(np.median(suggest[-max(1, len(suggest) // 10):]))
        if len(suggest) else math.nan,
        "mlflow_calls_per_s": len(mlflow) / wall, "mlflow_seconds": float(mlflow.sum()),
        "store_mib": store / 2**20,
        "sheets_max_s": float(sheets_s.max()) if len(sheets_s) else math.nan,
        "sheets_last_s": float(sheets_s[-1]) if len(sheets_s) else math.nan,
        "summary_s": float(timings.get("summary", math.nan)), "wall_s": wall,
        # Tune's experiment-state saves: how many, their share of the wall clock, the last tenth's
        # median (the searcher's part of it beside)
        "state_saves": len(state), "state_share": float(state.sum()) / wall if len(state) else math.nan,
        "state_last_ms": _last_tenth_ms(state), "searcher_state_last_ms": _last_tenth_ms(searcher_state),
    }


def _last_tenth_ms(seconds: np.ndarray) -> float:
    """The median of the last tenth of ``seconds``, in ms: what a call costs once the search is big."""
    return 1000 * float(np.median(seconds[-max(1, len(seconds) // 10):])) if len(seconds) else math.nan


def time_report(out: Path) -> float:
    measured = json.loads((out / MEASURED).read_text())
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.report", measured["experiment"], "--out",
                           str(out / "report")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"report failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def run_size(size: str, out: Path, args: argparse.Namespace, rest: list[str], resume: bool = False,
             kill_at: float = 0.0, results_after: float = 0.0) -> int:
    """``simulate`` in a child process (its own session: killed with its Ray); SIGKILLed once
    ``kill_at`` of its trials have ended, or ``LINGER`` seconds after its first result later than
    the wall clock ``results_after`` (a resume: running again is what is measured, not the rest)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--one", size, "--out", str(out), "--interval", str(args.interval),
               "--time-scale", str(args.time_scale), *(["--resume-run"] if resume else []), *rest]
    log = (out / ("resume.log" if resume else "search.log")).open("a")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": f"{BENCH.parent}{os.pathsep}{BENCH}"})
    trials, ended, first, read = int(size.split("x")[0]), 0, math.inf, 0
    while child.poll() is None:
        time.sleep(1)
        if (kill_at or results_after) and (out / EVENTS).is_file():
            with (out / EVENTS).open("rb") as f:  # only the whole lines appended since the last look
                f.seek(read)
                new = f.read()
            whole = new[:new.rfind(b"\n") + 1]
            read += len(whole)
            rows = [line.split(b",") for line in whole.splitlines()]
            ended += sum(row[0] == b"end" for row in rows)
            first = min([first, *(float(row[1]) for row in rows if row[0] == b"result"
                                   and float(row[1]) > results_after)])
        if (kill_at and ended >= kill_at * trials) or (results_after and time.time() > first + LINGER):
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return -9
    return child.returncode


def resume_line(size: str, before: pd.DataFrame, after: pd.DataFrame, launched: float,
                restarted: float) -> str:
    """What a resume took, from its command to Tune's loop turning (Ray joined, the search restored),
    to its first trial started, to its first result; beside, the same search's first start."""
    def first(seen: pd.DataFrame, kind: str, since: float) -> float:
        at = seen[(seen["kind"] == kind) & (seen["at"] > since)]["at"]
        return float(at.min() - since) if len(at) else math.nan

    loop, start, result = (first(after, kind, restarted) for kind in ("loop", "start", "result"))
    pace = int(((after["kind"] == "result") & (after["at"] > restarted)
                & (after["at"] <= restarted + result + LINGER)).sum())
    ended = int((before["kind"] == "end").sum())
    lost = int(((after["kind"] == "error") & (after["at"] > restarted)).sum())
    fresh_loop, fresh_start = (first(before, kind, launched) for kind in ("loop", "start"))
    return (f"- Resume of {size}: killed (SIGKILL, its Ray with it) once {ended} of its trials had ended; "
            f"`--resume` had Tune's loop turning {loop:.0f} s after it was started, its first trial "
            f"started at {start:.0f} s and its first result came at {result:.0f} s, {pace} results in the "
            f"{LINGER:.0f} s after that one (then it was stopped: the rest of the search would be the first "
            f"run's figures again); {lost} trials ended in error after the resume. The same search's first "
            f"run: its loop turning at {fresh_loop:.0f} s, its first trial started at {fresh_start:.0f} s.")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="16x16,64x16,64x64,256x64",
                   help="TRIALSxAT_ONCE, comma-separated (default 16x16,64x16,64x64,256x64)")
    p.add_argument("--interval", type=float, default=60.0, help="simulated seconds an evaluation takes")
    p.add_argument("--time-scale", type=float, default=0.25, help="wall seconds slept per simulated one")
    p.add_argument("--resume", help="a size whose search is killed half-way and resumed")
    p.add_argument("--work", type=Path, help="where the searches go (default: a temporary folder)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process of one size
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--resume-run", action="store_true", help=argparse.SUPPRESS)
    add_common_args(p, device=False)
    return p.parse_known_args(argv)


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [  # the table's: a heading, a row's cell
    ("trials", lambda r: f"{r['trials']}"), ("results", lambda r: f"{r['results']}"),
    ("overhead (all)", lambda r: f"{r['overhead']:.1%}"),
    ("overhead (trials waiting; of it the first wave's launch)",
     lambda r: f"{r['overhead_waiting']:.1%}; {r['launch']:.1%}"),
    ("driver CPU/result while trials waited, by quarter of trials ended (ms)",
     lambda r: " / ".join(f"{q:.0f}" for q in r["cpu_per_result_quarters_ms"])),
    ("the same by minute: median (interquartile); the line through the minutes, ms per 1,000 trials ended "
     "(95 %)", lambda r: f"{r['minute_median_ms']:.0f} ({r['minute_q1_ms']:.0f}-{r['minute_q3_ms']:.0f}); "
                         f"{r['slope_ms_per_1000']:+.0f} +/- {r['slope_half_width']:.0f}"),
    ("driver CPU/result, first / last quarter of all (ms); cores busy",
     lambda r: f"{r['cpu_per_result_early_ms']:.0f} / {r['cpu_per_result_late_ms']:.0f}; "
               f"{r['driver_cores']:.2f}"),
    ("driver / GCS peak (MiB)", lambda r: f"{r['peak_rss_mib']:.0f} / {r['gcs_peak_mib']:.0f}"),
    ("end to next start (s, median / p95)", lambda r: f"{r['gap_median_s']:.2f} / {r['gap_p95_s']:.2f}"),
    ("suggest (ms, median / last 10 %)",
     lambda r: f"{r['suggest_median_ms']:.0f} / {r['suggest_last_ms']:.0f}"),
    ("MLflow calls/s", lambda r: f"{r['mlflow_calls_per_s']:.1f}"),
    ("MLflow store (MiB)", lambda r: f"{r['store_mib']:.0f}"),
    ("sheets redraw (s, max / last)", lambda r: f"{r['sheets_max_s']:.1f} / {r['sheets_last_s']:.1f}"),
    ("Tune state saves: n, share of wall, last ms (searcher's)",
     lambda r: f"{r['state_saves']}, {100 * r['state_share']:.1f}%, {r['state_last_ms']:.0f} "
               f"({r['searcher_state_last_ms']:.0f})"),
    ("summary (s)", lambda r: f"{r['summary_s']:.0f}"),
    ("report (s)", lambda r: f"{r.get('report_s', math.nan):.1f}"),
]


def main(argv: list[str] | None = None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    if args.one:
        return simulate(args.one, args.out, rest, args.interval, args.time_scale, args.resume_run)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if bad := [s for s in [*sizes, args.resume or "1x1"] if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", s)]:
        print(f"scale: {bad[0]!r} is not a size TRIALSxAT_ONCE (e.g. 256x64)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-"))
    rows, lines = [], []
    for size in sizes:
        out = work / size
        started = time.time()
        code = run_size(size, out, args, rest)
        if code != 0 or not (out / MEASURED).is_file():
            lines.append(f"- {size}: the search did not finish (exit {code}); its log: {out / 'search.log'}")
            print(lines[-1], flush=True)
            continue
        row = summarise(out, int(size.split("x")[1]))
        row["report_s"] = time_report(out)
        rows.append((size, row))
        print(f"{size}: {time.time() - started:.0f} s; " + ", ".join(
            f"{label} {cell(row)}" for label, cell in COLUMNS), flush=True)
    if args.resume:
        out = work / f"{args.resume}-resume"
        launched = time.time()
        run_size(args.resume, out, args, rest, kill_at=0.5)
        before = events(out)
        restarted = time.time()
        run_size(args.resume, out, args, rest, resume=True, results_after=restarted)
        lines.append(resume_line(args.resume, before, events(out), launched, restarted))
        print(lines[-1], flush=True)
    head = [f"Simulated: evaluations of {args.interval:g} s slept {args.time_scale:g}x "
            f"({args.interval * args.time_scale:g} s of wall each); {GPU_SHARE:g} GPU a trial on nodes of "
            f"{GPUS_PER_NODE} logical GPUs; this machine: {os.cpu_count()} cores. Search flags: "
            f"`{' '.join(rest)}`.", ""]
    body = table(["size", *(label for label, _ in COLUMNS)],
                 [[s, *(cell(r) for _, cell in COLUMNS)] for s, r in rows])
    body = [*body, ""] if rows else []  # a resume alone (--sizes ''): no table
    report("scale", "cpu", [*head, *body, *lines], args)
    pd.DataFrame([{"size": s, **r} for s, r in rows]).to_csv(work / "scale.csv", index=False)
    print(f"every figure: {work / 'scale.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
