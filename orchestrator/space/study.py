"""Where a search's Optuna study lives: beside its results in a sqlite file of its own by default,
or in the database ``--study-storage`` names; the checks made before any work, and the opening."""

from __future__ import annotations

from pathlib import Path

import optuna

from orchestrator.atomic import check_writable_folder
from orchestrator.errors import ConfigError

STUDY_FILE = "optuna.db"  # beside the results: the search's Optuna study


def local_study(storage: str, name: str) -> str | None:
    """A search with local results keeps its Optuna study beside them, in its own sqlite file: MLflow
    and Optuna each keep an ``alembic_version`` table, so they cannot share one database."""
    return None if "://" in storage else f"sqlite:///{Path(storage) / name / STUDY_FILE}"


STUDY_SCHEMES = ("sqlite", "postgresql", "mysql")  # Optuna's RDB storage, SQLAlchemy URLs


def check_study_storage(url: str) -> None:
    """``--study-storage`` names a database Optuna can keep a study in; a sqlite file is a SQLite
    database in a folder this user can write (a server's is contacted later, past the dry run)."""
    flag = f"--study-storage {url}"
    if url.split("://", 1)[0].split("+", 1)[0] not in STUDY_SCHEMES or "://" not in url:
        raise ConfigError(f"{flag}: not a database URL (use sqlite:///FILE or postgresql://USER@HOST/DB)")
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
    """A study database (``sqlite:///optuna.db``) that optuna-dashboard can read."""
    import sqlalchemy.exc  # optuna's own dependency, imported only when a URL is given

    if url.startswith("sqlite:///"):  # sqlite makes its file, not the folder around it
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise ConfigError(f"cannot open optuna storage {url!r}: {str(err).splitlines()[0]}") from None
