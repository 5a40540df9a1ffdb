"""One way to write a file that others may be reading: caches, statistics, checkpoints."""

from __future__ import annotations

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
    work, so that an hour's results are never computed and then lost to a bad output path. Raises
    ``ConfigError`` naming ``what`` (e.g. ``--storage runs``) and the reason."""
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise ConfigError(f"{what}: not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {existing} is not writable")
    return path
