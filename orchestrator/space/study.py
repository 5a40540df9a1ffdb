"""Where a search's Optuna study lives: beside its results in a journal file of its own by default,
or in the database ``--study-storage`` names; the checks made before any work, and the opening.

The journal (Optuna's ``JournalStorage``: every change appended to a file, the study kept in memory)
rather than a sqlite database: the sampler reads the study at every suggestion, and sqlite through
Optuna's cache re-read every running trial from the database each time, 732 ms a suggestion at
1,000 trials with 64 running against 113 ms from the journal, side by side (issue 28). A search
begun with a sqlite study (``optuna.db``) keeps it on ``--resume``. optuna-dashboard reads both.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from orchestrator.atomic import check_writable_folder
from orchestrator.errors import ConfigError

STUDY_FILE = "optuna.log"  # beside the results: the search's Optuna study, a journal
SQLITE_STUDY_FILE = "optuna.db"  # where searches begun before the journal keep theirs
JOURNAL_SUFFIX = ".log"  # a study storage that is a path with this suffix is a journal file


def local_study(storage: str, name: str) -> str | None:
    """A search with local results keeps its Optuna study beside them, in a journal file of its own
    (a sqlite file for a search begun with one); None for remote results."""
    if "://" in storage:
        return None
    folder = Path(storage) / name
    if (folder / SQLITE_STUDY_FILE).is_file():
        return f"sqlite:///{folder / SQLITE_STUDY_FILE}"
    return str(folder / STUDY_FILE)


STUDY_SCHEMES = ("sqlite", "postgresql", "mysql")  # Optuna's RDB storage, SQLAlchemy URLs


def check_study_storage(url: str) -> None:
    """``--study-storage`` names a database Optuna can keep a study in, or a journal file (``.log``);
    a sqlite file is a SQLite database, and a file in a folder this user can write (a server's is
    contacted later, past the dry run)."""
    flag = f"--study-storage {url}"
    if "://" not in url and url.endswith(JOURNAL_SUFFIX):
        path = Path(url)
        if path.exists() and not path.is_file():
            raise ConfigError(f"{flag}: {path} is not a file")
        check_writable_folder(path.parent, flag)
        return
    if url.split("://", 1)[0].split("+", 1)[0] not in STUDY_SCHEMES or "://" not in url:
        raise ConfigError(f"{flag}: not a database URL (use sqlite:///FILE, postgresql://USER@HOST/DB or a "
                          "journal file FILE.log)")
    if not url.startswith("sqlite"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ConfigError(f"{flag}: a sqlite study is sqlite:///FILE (four slashes for an absolute path)")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{flag}: {path} is not a database file")
    if path.is_file() and path.stat().st_size and path.read_bytes()[:16] != b"SQLite format 3\x00":
        raise ConfigError(f"{flag}: {path} is not a SQLite database")
    check_writable_folder(path.parent, flag)


def open_study_storage(url: str) -> optuna.storages.BaseStorage:
    """A study journal file (``runs/NAME/optuna.log``) or database (``sqlite:///optuna.db``), either
    of which optuna-dashboard can read."""
    import sqlalchemy.exc  # optuna's own dependency, imported only when a URL is given

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite:///"):  # sqlite makes its file, not the folder around it
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise ConfigError(f"cannot open optuna storage {url!r}: {str(err).splitlines()[0]}") from None
