"""What starting many trials at once costs, without this project: where a resume's wait goes (issue 28).

On ``scale.py``'s logical cluster (a head that runs nothing, nodes of 8 GPUs and 4 CPUs a GPU), for
each count of trials at once: ``tune.Tuner`` with a trainable that does nothing (1 CPU and a quarter
GPU a trial, as ``scale.py`` asks), then as many plain Ray actors of the same resources that import
``--module`` (``ray.tune`` by default, what every trial's worker imports) and nothing else. Measured:
the first, median and last start after ``fit()`` (or the actors' creation), the CPU seconds each
new worker had spent by then (its start and imports), and the machine's busy CPU seconds over the
whole start. Where the workers' CPU over the machine's cores accounts for the wait, that is the
limit: a cluster node starts its own trials' workers on its own cores.

    python bench/trial_start.py --at-once 8,32,64
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
from common import add_common_args, report, table
from ray import tune
from scale import GPU_SHARE, logical_cluster


def busy_cpu_seconds() -> float:
    """The machine's CPU seconds spent outside idle and I/O wait since boot (``/proc/stat``)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def nothing(config: dict) -> None:
    """A trial that notes when it started and its worker's CPU seconds so far, then reports once."""
    Path(config["folder"], str(config["i"])).write_text(f"{time.time()} {own_cpu_seconds()}")
    tune.report({"done": 1})


@ray.remote(num_cpus=1, num_gpus=GPU_SHARE)
class Importer:
    def __init__(self, module: str) -> None:
        __import__(module)

    def started(self) -> tuple[float, float]:
        return time.time(), own_cpu_seconds()


def with_tune(n: int, scratch: Path) -> list[tuple[float, float]]:
    folder = scratch / f"starts-{n}"
    folder.mkdir()
    tuner = tune.Tuner(tune.with_resources(nothing, {"cpu": 1, "gpu": GPU_SHARE}),
                       param_space={"i": tune.grid_search(list(range(n))), "folder": str(folder)},
                       tune_config=tune.TuneConfig(max_concurrent_trials=n),
                       run_config=tune.RunConfig(storage_path=str(scratch / "runs"), verbose=0))
    begun = time.time()
    tuner.fit()
    return [(float(at) - begun, float(cpu)) for at, cpu in (p.read_text().split() for p in folder.iterdir())]


def with_actors(n: int, module: str) -> list[tuple[float, float]]:
    begun = time.time()
    actors = [Importer.remote(module) for _ in range(n)]  # type: ignore[attr-defined]
    starts = ray.get([actor.started.remote() for actor in actors])
    for actor in actors:
        ray.kill(actor)
    return [(at - begun, cpu) for at, cpu in starts]


def row(what: str, n: int, starts: list[tuple[float, float]], busy: float) -> list[object]:
    at = sorted(a for a, _ in starts)
    cpu = statistics.median(c for _, c in starts)
    return [what, n, f"{at[0]:.1f} / {statistics.median(at):.1f} / {at[-1]:.1f}", f"{cpu:.2f}",
            f"{n * cpu:.0f}", f"{busy:.0f}", f"{busy / os.cpu_count():.0f}"]  # type: ignore[operator]


def measure(n: int, module: str) -> list[list[object]]:
    """Both ways of starting ``n`` workers at once, on a fresh cluster of ``n`` slots."""
    cluster = logical_cluster(math.ceil(n * GPU_SHARE))
    ray.init(address=cluster.address, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for what in ("Tune, a trainable that does nothing", f"plain actors importing {module}"):
            before = busy_cpu_seconds()
            starts = with_tune(n, Path(scratch)) if what.startswith("Tune") else with_actors(n, module)
            rows.append(row(what, n, starts, busy_cpu_seconds() - before))
            print(rows[-1], flush=True)
    ray.shutdown()
    cluster.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at-once", default="8,32,64", help="counts of trials started at once, comma-separated")
    p.add_argument("--module", default="ray.tune", help="what each plain actor imports")
    add_common_args(p, device=False)
    args = p.parse_args(argv)
    rows = [r for n in (int(x) for x in args.at_once.split(",")) for r in measure(n, args.module)]
    lines = table(["what", "at once", "start after fit(), first / median / last s",
                   "a worker's CPU s by its start (median)", "workers' CPU s", "machine's busy CPU s",
                   "the same over its cores, s"], rows)
    report("Starting trials at once, without the project (issue 28)", "cpu", lines, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
