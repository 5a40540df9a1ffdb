"""One way to write a file that others may be reading: caches, statistics, checkpoints."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from orchestrator.errors import ConfigError


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write through a temporary file beside ``path``, then ``os.replace``: a crash never leaves a
    half-written file under the final name, and readers (other trials, other processes) see the old
    file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable_folder(path: Path, what: str) -> Path:
    """``path`` is a folder this process can write in, or one it can create: checked before any
    work, so that an hour's results are never computed and then lost to a bad output path. Checked
    by trying, not by permission bits (root passes those under /proc, on a read-only mount, or with
    a name longer than the file system allows): the missing folders are made, a file is written in
    the last and removed, and what the check made is removed again. Raises ``ConfigError`` naming
    ``what`` (e.g. ``--storage runs``) and the reason."""
    path = Path(path)
    made: list[Path] = []
    try:
        for folder in [*reversed(path.parents), path]:
            if folder.is_dir():
                continue
            if folder.exists() or folder.is_symlink():
                where = "" if folder == path else f" ({folder} is a file)"
                raise ConfigError(f"{what}: not a folder{where}")
            folder.mkdir()
            made.append(folder)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{what}: cannot write in {path}: {err.strerror or err}") from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return path
