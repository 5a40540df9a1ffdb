"""One driver per search: a second ``python -m orchestrator.search`` on a search that a live driver
holds (a ``--resume`` while the first still runs, two ``--resume`` started together) is refused
before any work, with one line naming the holder; a driver that died (SIGKILL, a lost head node)
never blocks the next one.

Local results: an exclusive ``flock`` on ``driver.lock`` in the search's folder, held for the
driver's life. The kernel drops it when the process dies, however it dies, so there is nothing stale
to clean up; the file also says who holds it (host, process, since when, the command).

Remote results (``s3://...``, where the head may be another machine and there is no lock to take):
a lease. The holder writes ``driver.lock`` with its identity and a heartbeat it renews every
``RENEW_S``; a lease not renewed for ``LEASE_S`` is dead and may be taken. Two drivers starting
together both write, wait, and read back: the object store keeps one write, and only its writer
goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import ConfigError

LOCK_FILE = "driver.lock"
LEASE_S, RENEW_S, SETTLE_S = 90.0, 15.0, 3.0  # remote: a lease's life, its renewal, a race's settling


def holder_record(command: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "command": command,
            "token": secrets.token_hex(8), "heartbeat": time.time()}


def refusal(folder: str, held: dict[str, Any]) -> ConfigError:
    if not held:  # the lease vanished between our write and our read: someone else is at work there
        return ConfigError(f"the search in {folder} was started by another driver at the same moment; "
                           "wait for it to end, or run --resume once it has")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("since", 0))))
    who = f"process {held.get('pid', '?')} on {held.get('host', '?')} since {since}"
    return ConfigError(f"the search in {folder} is being run by another driver ({who}: "
                       f"{held.get('command', '?')}); wait for it to end, or stop it (kill "
                       f"{held.get('pid', 'PID')} on {held.get('host', 'its host')}) and run --resume")


class LocalLock:
    """``flock`` on the search folder's ``driver.lock``; released by the kernel when the process dies."""

    def __init__(self, folder: Path, command: str, marker: str = "") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.command = command
        self.marker = marker  # the file a search that started leaves in its folder
        self._file: IO[str] | None = None
        self._made: list[Path] = []  # folders acquire made (removed again if the search never used them)
        self._new = False  # whether acquire made the lock file itself

    def acquire(self) -> None:
        folder = self.path.parent
        self._made = [p for p in [folder, *folder.parents] if not p.exists()]
        self._new = not self.path.exists()
        folder.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _holder(f)
            f.close()
            raise refusal(str(self.path.parent), held) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder_record(self.command)))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.seek(0)
                self._file.truncate()  # the record names a holder only while one holds it
            self._file.close()  # closing drops the flock
            self._file = None
        if self._new and not (self.marker and (self.path.parent / self.marker).exists()):
            # a command refused before its search began (a --resume of a name that is not there, a
            # --name on someone's folder): it leaves nothing behind
            with contextlib.suppress(OSError):
                self.path.unlink()
                for folder in self._made:  # deepest first
                    folder.rmdir()


class Lease:
    """A renewed lease object in remote storage (any pyarrow file system)."""

    def __init__(self, folder: str, command: str) -> None:
        import pyarrow.fs as pafs

        self.folder = folder.rstrip("/")
        self.fs, self.path = pafs.FileSystem.from_uri(f"{self.folder}/{LOCK_FILE}")
        self.record = holder_record(command)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        held = self._read()
        if held and held.get("token") != self.record["token"] and _alive(held):
            raise refusal(self.folder, held)
        self._write()
        time.sleep(SETTLE_S)  # a driver that started with us wrote too: the store keeps one of us
        held = self._read()
        if held.get("token") != self.record["token"]:
            raise refusal(self.folder, held)
        self._thread = threading.Thread(target=self._renew, name="driver-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            with contextlib.suppress(OSError):
                if self._read().get("token") == self.record["token"]:
                    self.fs.delete_file(self.path)
            self._thread = None

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            with contextlib.suppress(OSError):  # a storage hiccup: the next renewal tries again
                self._write()

    def _write(self) -> None:
        """Whole or not at all: written beside, then moved over the lease. Two drivers writing the
        lease file itself at the same moment could interleave into a record neither can read, and
        both would then refuse (an object store's PUT is whole anyway; a local or NFS file is not)."""
        self.record["heartbeat"] = time.time()
        beside = f"{self.path}.{self.record['token']}"
        with self.fs.open_output_stream(beside) as out:
            out.write(json.dumps(self.record).encode())
        self.fs.move(beside, self.path)

    def _read(self) -> dict[str, Any]:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return _parse(stream.read().decode(errors="replace"))
        except FileNotFoundError:
            return {}


def _holder(f: IO[str], wait_s: float = 2.0) -> dict[str, Any]:
    """The record of the process holding the flock. A holder that has just taken it empties the file
    and writes its record a moment later; a reader in between waits for it rather than name nobody."""
    deadline = time.monotonic() + wait_s
    while True:
        f.seek(0)
        held = _parse(f.read())
        if held or time.monotonic() > deadline:
            return held
        time.sleep(0.02)


def _alive(held: dict[str, Any]) -> bool:
    return time.time() - float(held.get("heartbeat", 0) or 0) < LEASE_S


def _parse(text: str) -> dict[str, Any]:
    try:
        held = json.loads(text)
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def driver_lock(experiment_dir: str, command: str, marker: str = "") -> LocalLock | Lease:
    """The lock for a search's folder: a flock where it is local, a lease where it is remote;
    ``marker`` is the file a search that started leaves there."""
    if "://" in experiment_dir:
        return Lease(experiment_dir, command)
    return LocalLock(Path(experiment_dir), command, marker)
