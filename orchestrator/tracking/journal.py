"""What the search's driver still owes the tracking store, on disk until it is written (issue 24).

Every logging operation of the trial logger is a record (``Entry``: JSON, plus the PNGs it carries)
appended here first and removed once MLflow has it. A server that is down costs nothing: the records
wait, in order, and are written when it is back; a driver that dies (SIGKILL, a lost head) leaves
them for the ``--resume`` that follows, which writes them before anything new. Applying a record
twice logs nothing twice (``trial_logger`` checks what the run already holds), so a crash between
writing to MLflow and removing the record is harmless.

Records are files ``NNNNNNNNNN.json`` (and ``NNNNNNNNNN.NAME`` for each blob) in one folder, written
atomically; the blobs before the record that names them.

Tune's loop appends; one ``Writer`` thread reads, writes to MLflow and removes, so the loop never
waits on MLflow. One lock keeps the numbering and the in-memory list whole, and an append is
complete (visible) before the next one is numbered: records are read in their order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.atomic import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"(\d{10})\.json")


@dataclass(frozen=True)
class Entry:
    """One logging operation of one trial: ``kind`` says what (``result``, ``image``, ``curves``,
    ``tags``, ``end``, ``model``), ``data`` its JSON arguments, ``blobs`` the files it carries."""

    kind: str
    trial_id: str
    config: Mapping[str, Any]  # the trial's hyperparameters: its run may have to be created
    data: Mapping[str, Any] = field(default_factory=dict)
    blobs: Mapping[str, bytes] = field(default_factory=dict)
    seq: int = -1  # its place in the journal (set when appended)


class Journal:
    """The folder of records not yet written; ``None`` keeps them in memory only (a remote search's
    driver without a local results folder)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: list[Entry] = []
        self._next = self._last_seq() + 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        if self.folder is None:
            return len(self._memory)
        return sum(1 for _ in self._names())

    def append(self, entry: Entry) -> Entry:
        with self._lock:
            return self._append(entry)

    def _append(self, entry: Entry) -> Entry:
        entry = Entry(entry.kind, entry.trial_id, dict(entry.config), dict(entry.data), dict(entry.blobs),
                      self._next)
        self._next += 1
        if self.folder is None:
            self._memory.append(entry)
            return entry
        base = self.folder / f"{entry.seq:010d}"
        for name, blob in entry.blobs.items():
            atomic_write(base.with_suffix(f".{name}"), lambda f, b=blob: f.write(b))  # type: ignore[misc]
        record = {"kind": entry.kind, "trial_id": entry.trial_id, "config": entry.config, "data": entry.data,
                  "blobs": sorted(entry.blobs)}
        text = json.dumps(record, default=_plain).encode()
        atomic_write(base.with_suffix(".json"), lambda f: f.write(text))
        return entry

    def pending(self) -> Iterator[Entry]:
        """The records in the order they were appended (re-read: a record appended while a drain
        runs comes after)."""
        if self.folder is None:
            with self._lock:
                memory = list(self._memory)
            yield from memory
            return
        for seq, path in sorted(self._names()):
            try:
                record = json.loads(path.read_text())
                blobs = {name: path.with_suffix(f".{name}").read_bytes() for name in record.get("blobs", [])}
            except (OSError, ValueError):  # cut short by a crash while it was written: never complete
                self._remove(seq, path)
                continue
            yield Entry(record["kind"], record["trial_id"], record["config"], record["data"], blobs, seq)

    def done(self, entry: Entry) -> None:
        if self.folder is None:
            with self._lock:
                self._memory = [e for e in self._memory if e.seq != entry.seq]
            return
        self._remove(entry.seq, self.folder / f"{entry.seq:010d}.json")

    def _remove(self, seq: int, record: Path) -> None:
        record.unlink(missing_ok=True)  # the record first: a blob without one is ignored
        assert self.folder is not None
        for blob in self.folder.glob(f"{seq:010d}.*"):
            with contextlib.suppress(OSError):
                blob.unlink()

    def _names(self) -> Iterator[tuple[int, Path]]:
        if self.folder is None or not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            found = _NAME.fullmatch(path.name)
            if found:
                yield int(found[1]), path

    def _last_seq(self) -> int:
        return max((seq for seq, _ in self._names()), default=0)


class Writer:
    """One thread that runs ``drain`` (write what the journal holds, in order) when asked, and any
    other task, one at a time in the order given. Asking while a drain waits to start asks nothing
    more: that drain sees every record appended before it starts."""

    def __init__(self, drain: Callable[[], None]) -> None:
        self._drain = drain
        self._pool: ThreadPoolExecutor | None = None  # started at the first task
        self._lock = threading.Lock()
        self._queued = False

    def nudge(self) -> None:
        with self._lock:
            if self._queued:
                return
            self._queued = True
        self.run(self._queued_drain)

    def run(self, task: Callable[..., None], *args: Any) -> Future:
        """``task(*args)`` on the thread, after what was asked before; its error is logged there."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-writer")
        return self._pool.submit(_logged, task, *args)

    def wait(self) -> None:
        """Until every task asked for so far is done."""
        if self._pool is not None:
            self.run(lambda: None).result()

    def close(self) -> None:
        """Until every task is done; the thread ends (a later task starts another)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _queued_drain(self) -> None:
        with self._lock:
            self._queued = False  # what is appended from now on needs another drain
        self._drain()


def _logged(task: Callable[..., None], *args: Any) -> None:
    """On the writer thread: an error is logged, never raised into the caller's loop."""
    try:
        task(*args)
    except Exception:
        log.exception("the MLflow writer failed in %s; the journal keeps what was not written",
                      getattr(task, "__name__", task))


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and other numbers a result may hold."""
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return str(value)
