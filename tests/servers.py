"""Real servers on 127.0.0.1 for tests: an MLflow tracking server (a sqlite or PostgreSQL backend,
artifacts proxied to a folder) and a PostgreSQL server (Debian's, which
``tests/install-system-deps.sh`` installs)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, backend: str | None = None) -> subprocess.Popen:
    """``mlflow server`` on ``port``; its store is ``backend`` (a database URL), else a sqlite file."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend or f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    stop_server(proc)
    pytest.fail("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class Postgres:
    """A throwaway PostgreSQL server: its own data folder, trust authentication on 127.0.0.1, no
    fsync. ``database(name)`` creates a database and returns its URL. As root, the server runs as
    the ``postgres`` user (it refuses root)."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found:
            pytest.fail("PostgreSQL is not installed: bash tests/install-system-deps.sh (a step of the "
                        "README's test command)", pytrace=False)
        self.bin = Path(found[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
        self.port = free_port()
        as_root = os.geteuid() == 0
        self.run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
        data = self.folder / "data"
        data.mkdir()
        if as_root:
            self.folder.chmod(0o755)
            shutil.chown(data, "postgres")
        subprocess.run([*self.run_as, str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "-N"], check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [*self.run_as, str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(data),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail("PostgreSQL did not start")
            time.sleep(0.5)

    def database(self, name: str) -> str:
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"{self.url}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return f"{self.url}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)
