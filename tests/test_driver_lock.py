"""One driver per search (issue 24): a second driver is refused with one line naming the holder,
locally (a flock the kernel drops with its process) and in remote storage (a renewed lease, here on
a pyarrow file system); a driver that died never blocks the next; real drivers racing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.search import lock as locks

REPO = Path(__file__).resolve().parents[1]


def test_a_held_search_refuses_a_second_driver_naming_the_holder(tmp_path: Path) -> None:
    first = locks.LocalLock(tmp_path / "s", "python -m orchestrator.search shapes --name s")
    first.acquire()
    with pytest.raises(ConfigError, match=rf"being run by another driver \(process {os.getpid()} on "
                                          rf"{socket.gethostname()} since .*--name s\); wait for it"):
        locks.LocalLock(tmp_path / "s", "again").acquire()
    first.release()
    second = locks.LocalLock(tmp_path / "s", "again")
    second.acquire()  # free once the holder let go
    second.release()


def test_a_driver_refused_in_the_holders_first_instant_still_names_it(tmp_path: Path) -> None:
    """The holder takes the flock, empties the file, then writes its record: a second driver that
    reads in between (two --resume started together, CI) waits for the record instead of naming
    nobody."""
    import fcntl

    tmp_path.joinpath("s").mkdir()
    path = tmp_path / "s" / locks.LOCK_FILE
    holder = path.open("a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, the record not yet written

    def write_late() -> None:
        time.sleep(0.3)
        holder.write(json.dumps(locks.holder_record("the first")))
        holder.flush()

    writer = threading.Thread(target=write_late)
    writer.start()
    named = rf"being run by another driver \(process {os.getpid()} .*the first\)"
    with pytest.raises(ConfigError, match=named):
        locks.LocalLock(tmp_path / "s", "second").acquire()
    writer.join()
    holder.close()


def test_a_lock_taken_for_nothing_leaves_no_folder(tmp_path: Path) -> None:
    lock = locks.LocalLock(tmp_path / "typo", "x")
    lock.acquire()
    lock.release()
    assert not (tmp_path / "typo").exists()


def test_a_dead_holder_never_blocks(tmp_path: Path) -> None:
    code = ("import time; from orchestrator.search.lock import LocalLock; "
            f"lock = LocalLock({str(tmp_path)!r}, 'x'); lock.acquire(); print('held', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"process {holder.pid} on"):
        locks.LocalLock(tmp_path, "y").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = locks.LocalLock(tmp_path, "y")
    lock.acquire()  # the kernel dropped the dead process's lock: nothing stale to clean
    assert json.loads((tmp_path / locks.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.fixture
def quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "SETTLE_S", 0.3)
    monkeypatch.setattr(locks, "RENEW_S", 0.2)
    monkeypatch.setattr(locks, "LEASE_S", 1.5)


def test_a_remote_lease_refuses_while_renewed_and_is_taken_once_dead(
    tmp_path: Path, quick_lease: None
) -> None:
    folder = f"file://{tmp_path}/remote"
    (tmp_path / "remote").mkdir()
    first = locks.Lease(folder, "first")
    first.acquire()
    time.sleep(2.0)  # longer than a lease: only renewals keep it
    with pytest.raises(ConfigError, match="being run by another driver"):
        locks.Lease(folder, "second").acquire()
    first._stop.set()  # the holder dies without a word: its lease is no longer renewed
    time.sleep(2.0)
    taker = locks.Lease(folder, "third")
    taker.acquire()
    taker.release()
    assert not (tmp_path / "remote" / locks.LOCK_FILE).exists()


def test_two_drivers_racing_for_a_lease_one_wins(tmp_path: Path, quick_lease: None) -> None:
    folder = f"file://{tmp_path}"
    outcomes: list[str] = []

    def start(name: str) -> None:
        try:
            locks.Lease(folder, name).acquire()
            outcomes.append("won")
        except ConfigError:
            outcomes.append("refused")

    racers = [threading.Thread(target=start, args=(f"d{i}",)) for i in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(outcomes) == ["refused", "won"]


@pytest.mark.integration
def test_real_drivers_one_search_one_driver(tmp_path: Path) -> None:
    """A --resume while the first driver runs is refused before any work; after the first is
    SIGKILLed, two --resume started together: one runs the search to its end, one is refused."""
    argv = [sys.executable, "-m", "orchestrator.search", "shapes", "--smoke-test", "--storage",
            str(tmp_path / "runs"), "--name", "one"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    folder = tmp_path / "runs" / "one"
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and not list(folder.glob("trial_*/result.json")):
        time.sleep(0.5)
    assert first.poll() is None
    second = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"being run by another driver (process {first.pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.poll() is None  # the holder went on
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    errs = [tmp_path / f"racer{i}.stderr" for i in range(2)]  # files: an unread pipe would fill
    racers = [subprocess.Popen([*argv, "--resume"], env=env, stdout=subprocess.DEVNULL, stderr=err.open("w"))
              for err in errs]
    ended = [(r.wait(timeout=900), err.read_text()) for r, err in zip(racers, errs, strict=True)]
    assert sorted(code for code, _ in ended) == [0, 2], ended
    refused = next(err for code, err in ended if code == 2)
    assert "being run by another driver" in refused
    table = (folder / "results.csv").read_text().splitlines()
    assert len(table) == 1 + 4  # the search's 4 trials, not more
    # Tune's state as the first driver saved it and as the one --resume that ran went on: no third
    assert len(list(folder.glob("experiment_state*.json"))) == 2
