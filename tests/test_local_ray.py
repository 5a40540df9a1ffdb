"""A search on a machine where `ray start --head` runs, or ran (issue 16). Ray's own ``ray.init``
joins the cluster that `ray start` registered and refuses the search's CPU count; when that cluster
was killed without `ray stop`, its address file stays and every search failed the same way. A
search without ``--address`` starts its own Ray, and says so when another one runs here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from servers import free_port

from orchestrator.search.cli import parse_args
from orchestrator.search.plan import make_plan
from orchestrator.search.runner import _start_ray

pytestmark = pytest.mark.integration  # starts two Ray clusters: deselected by a plain `pytest`


def _address_file() -> Path:
    from ray._common.utils import get_ray_address_file  # where `ray start` registers its cluster

    return Path(get_ray_address_file(None))


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real `ray start --head` on a free port (1 CPU), stopped the way a crash stops it: its process
    group killed, no `ray stop`, so its address file is left behind."""
    port = free_port()
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray_cli, "the ray command is not installed"
    registered = _address_file()
    before = registered.read_text() if registered.exists() else None
    log = (tmp_path / "ray-head.log").open("wb")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while not (registered.exists() and registered.read_text().strip().endswith(f":{port}")):
        assert head.poll() is None and time.time() < deadline, (tmp_path / "ray-head.log").read_text()
        time.sleep(1)
    try:
        yield head, port
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=60)
        log.close()
        # leave the machine's registration as it was
        if registered.exists() and registered.read_text().strip().endswith(f":{port}"):
            if before is None:
                registered.unlink()
            else:
                registered.write_text(before)


def test_a_search_starts_its_own_ray_beside_a_running_or_dead_one(
    ray_head: tuple[subprocess.Popen[bytes], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head, port = ray_head
    plan = make_plan(parse_args(["shapes", "--smoke-test", "--storage", str(tmp_path)]))
    _start_ray(plan)
    try:
        out = capsys.readouterr().out
        assert "a Ray cluster started by `ray start` is running here (" in out and f":{port})" in out
        assert "this search starts its own. To run on that cluster instead: --address auto" in out
        # its own: all this machine's CPUs, not the head's one, and another GCS
        assert ray.cluster_resources()["CPU"] == os.cpu_count()
        assert not ray.get_runtime_context().gcs_address.endswith(f":{port}")
    finally:
        ray.shutdown()

    os.killpg(head.pid, signal.SIGKILL)  # the head dies without `ray stop`
    head.wait(timeout=60)
    assert _address_file().read_text().strip().endswith(f":{port}")  # its address file stays behind
    _start_ray(plan)
    try:
        assert "ray start" not in capsys.readouterr().out  # nothing answers there: nothing to say
        assert ray.cluster_resources()["CPU"] == os.cpu_count()
    finally:
        ray.shutdown()


def test_a_trial_that_fits_no_node_stops_the_search_with_one_line(
    ray_head: tuple[subprocess.Popen[bytes], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Joined with --address, a cluster whose nodes cannot hold a trial (here one node of 1 CPU, no
    GPU, asked for a GPU share) is waited for, as an autoscaling one may start a node, then refused;
    Tune alone would leave the trials PENDING forever."""
    from orchestrator.errors import ConfigError
    from orchestrator.search.runner import _wait_for_a_node

    _, port = ray_head
    plan = make_plan(parse_args(["shapes", "--smoke-test", "--storage", str(tmp_path), "--address",
                                 f"127.0.0.1:{port}", "--gpus-per-trial", "0.5", "--device", "cpu"]))
    _start_ray(plan)
    try:
        started = time.time()
        with pytest.raises(ConfigError, match=r"no node of the Ray cluster has 1 CPU \+ 0.5 GPU for a trial "
                                              r"\(its nodes: 1 CPU \+ 0 GPU\)"):
            _wait_for_a_node(plan, wait_s=6)
        assert 6 <= time.time() - started < 30
        assert "waiting up to 6 s for the cluster to start one" in capsys.readouterr().out
        fits = make_plan(parse_args(["shapes", "--smoke-test", "--storage", str(tmp_path), "--address",
                                     f"127.0.0.1:{port}", "--gpus-per-trial", "0", "--cpus-per-trial", "1"]))
        _wait_for_a_node(fits, wait_s=0)  # returns at once
    finally:
        ray.shutdown()


def test_its_own_ray_is_told_the_gpus_torch_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not left to Ray's NVML detection, which a VM or container may not offer although CUDA works:
    a GPU search there would wait for GPUs Ray does not know of."""
    from orchestrator.search import runner

    asked: dict[str, object] = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: asked.update(kwargs))
    monkeypatch.setattr(runner, "gpu_count", lambda: 3)
    monkeypatch.setattr(runner, "_local_ray_cluster", lambda: None)
    monkeypatch.setattr(runner, "catch_signals", lambda: None)
    runner._start_ray(make_plan(parse_args(["shapes", "--smoke-test", "--storage", str(tmp_path)])))
    assert asked == {"address": "local", "include_dashboard": False, "num_cpus": os.cpu_count(),
                     "num_gpus": 3}
