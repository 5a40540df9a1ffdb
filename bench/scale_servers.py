"""``bench/scale.py`` with its MLflow logger writing to a real tracking server (issue 28): an
``mlflow server`` on this machine whose store is a sqlite file, or a PostgreSQL database (Debian's
PostgreSQL, a throwaway cluster started as the tests start theirs: ``tests/servers.py``, fsync off),
artifacts proxied to a folder. Each backend runs ``scale.py`` with ``--mlflow-uri http://...`` and the
arguments given after ``--``; its table goes to RESULTS.md as scale.py's own, noted with the backend,
and the server's store size (its database, its artifacts) is printed after it.

    python bench/scale_servers.py --backends sqlite,postgresql -- shapes --sizes 256x64 --interval 60 \\
        --time-scale 0.25 --fid-n 256
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from servers import Postgres, free_port, start_server, stop_server  # noqa: E402  (tests/ is not a package)

BACKENDS = ("sqlite", "postgresql")


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def database_mib(url: str) -> float:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        size = connection.execute(sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    return float(size or 0) / 2**20


def own_work(scale_args: list[str], backend: str) -> list[str]:
    """scale.py's arguments with ``--work`` given a folder of the backend's own inside it (each
    backend's searches apart)."""
    if "--work" not in scale_args:
        return scale_args
    at = scale_args.index("--work") + 1
    return [*scale_args[:at], str(Path(scale_args[at]) / backend), *scale_args[at + 1:]]


def run(backend: str, scale_args: list[str], note: str) -> int:
    """One ``scale.py`` run against a fresh server with ``backend``; its exit status."""
    folder, postgres = Path(tempfile.mkdtemp(prefix=f"scale-server-{backend}-")), None
    try:
        url = None
        if backend == "postgresql":
            postgres = Postgres()
            url = postgres.database("mlflow")
        port = free_port()
        server = start_server(folder, port, url)
        try:
            uri = f"http://127.0.0.1:{port}"
            said = f"MLflow through a tracking server on this machine, {backend} store" + (
                " (a throwaway PostgreSQL, fsync off)" if postgres else "") + (f"; {note}" if note else "")
            scale = [sys.executable, str(BENCH / "scale.py"), *own_work(scale_args, backend)]
            status = subprocess.run([*scale, "--mlflow-uri", uri, "--note", said]).returncode
        finally:
            stop_server(server)
        store = database_mib(url) if url else folder_mib(folder) - folder_mib(folder / "server-artifacts")
        print(f"{backend}: the server's store {store:.0f} MiB, its artifacts "
              f"{folder_mib(folder / 'server-artifacts'):.0f} MiB", flush=True)
        return status
    finally:
        if postgres is not None:
            postgres.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, scale_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite, postgresql")
    p.add_argument("--note", default="", help="a line recorded under each table (what else ran)")
    args = p.parse_args(ours)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - set(BACKENDS) or not scale_args:
        print(f"scale_servers: --backends among {', '.join(BACKENDS)}, and scale.py's arguments after --",
              file=sys.stderr)
        return 2
    return max(run(backend, scale_args, args.note) for backend in backends)


if __name__ == "__main__":
    sys.exit(main())
