"""Where a command will write is checked before it works (issue 16): an output folder that is a file
or not writable, a tracking URI that is not one, a sqlite store that is a folder, an empty file or
another kind of file. Each is one line and exit status 2, and nothing is written or changed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.atomic import check_writable_folder
from orchestrator.errors import ConfigError
from orchestrator.search.cli import cli_main
from orchestrator.tracking.store import check_store, check_tracking_server


def test_a_writable_folder_may_not_exist_yet(tmp_path: Path) -> None:
    assert check_writable_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checked, not created


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"^--out X: not a folder$"):
        check_writable_folder(tmp_path / "f", "--out X")
    with pytest.raises(ConfigError, match=rf"--out X: not a folder \({tmp_path / 'f'} is a file\)"):
        check_writable_folder(tmp_path / "f" / "sub", "--out X")


def test_a_read_only_folder_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:
        pytest.skip("root writes in a 0500 folder; the kernel's own refusals are tested below")
    with pytest.raises(ConfigError, match=f"--storage runs: cannot write in {locked / 'runs'}: Permission"):
        check_writable_folder(locked / "runs", "--storage runs")


@pytest.mark.parametrize("where", ["/proc/self/runs", "/sys/orchestrator-runs", "/proc/version/runs", "LONG"])
def test_a_folder_the_kernel_refuses_is_found_by_trying(where: str, tmp_path: Path) -> None:
    """What permission bits let root through (issue 24): /proc, /sys, a name longer than the file
    system allows. Nothing is left behind by the check."""
    path = tmp_path / ("x" * 300) / "runs" if where == "LONG" else Path(where)
    with pytest.raises(ConfigError, match=r"^--storage X: (cannot write in .*: .+|not a folder.*)$"):
        check_writable_folder(path, "--storage X")
    assert list(tmp_path.iterdir()) == []


def test_the_check_writes_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    check_writable_folder(tmp_path / "there", "--out")
    check_writable_folder(tmp_path / "a" / "b" / "c", "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["there"] and not list((tmp_path / "there").iterdir())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/x", "not a tracking URI"),
        ("sqllite:///x.db", "not a tracking URI"),
        ("runs/mlflow.db", "not a tracking URI"),
        ("sqlite://x.db", "a sqlite store is sqlite:///FILE"),
        ("sqlite:///DIR", "is a folder, not a database file"),
        ("sqlite:///EMPTY", "is an empty file, not an MLflow store"),
        ("sqlite:///TEXT", "is not a SQLite database, not an MLflow store"),
    ],
)
def test_bad_tracking_uris_are_one_line(uri: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    (tmp_path / "text.db").write_text("hello")
    files = {"DIR": str(tmp_path), "EMPTY": str(tmp_path / "empty.db"), "TEXT": str(tmp_path / "text.db")}
    for name, path in files.items():
        uri = uri.replace(name, path)
    for reading in (True, False):
        with pytest.raises(ConfigError, match=message):
            check_store(uri, reading=reading)
    assert (tmp_path / "empty.db").stat().st_size == 0  # never turned into a database


def test_a_database_that_is_not_an_mlflow_store_is_never_changed(tmp_path: Path) -> None:
    """MLflow would add its tables to any SQLite file: an Optuna study's, or an empty database a
    command that only reads was given."""
    sqlite3.connect(tmp_path / "optuna.db").execute("create table studies (x)").connection.close()
    sqlite3.connect(tmp_path / "blank.db").execute("vacuum").connection.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for reading in (True, False):
        with pytest.raises(ConfigError, match=r"not an MLflow store \(its tables: studies"):
            check_store(f"sqlite:///{tmp_path / 'optuna.db'}", reading=reading)
    with pytest.raises(ConfigError, match=r"not an MLflow store \(no tables\)"):
        check_store(f"sqlite:///{tmp_path / 'blank.db'}", reading=True)
    check_store(f"sqlite:///{tmp_path / 'blank.db'}", reading=False)  # a search may make it one
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    os.mkfifo(tmp_path / "pipe.db")
    with pytest.raises(ConfigError, match="is not a file, not a database file"):
        check_store(f"sqlite:///{tmp_path / 'pipe.db'}", reading=True)  # never opened: it would hang


@pytest.mark.parametrize("uri, message", [
    ("http://[::1", "not a valid URL"), ("http://127.0.0.1:abc", "not a valid URL"),
    ("file:///tmp/mlruns", "not a tracking URI"),
    ("databricks://nosuchprofile", "no Databricks credentials for it"),
])
def test_urls_that_are_not_urls_are_one_line(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_store(uri, reading=True)
        check_tracking_server(uri)


def test_good_tracking_uris_pass(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "m.db").execute("create table experiments (x)").connection.close()
    check_store(f"sqlite:///{tmp_path / 'm.db'}", reading=True)
    check_store(f"sqlite:///{tmp_path / 'new.db'}", reading=False)  # created by the search
    check_store("postgresql+psycopg2://u@db.example/mlflow", reading=False)
    with pytest.raises(ConfigError, match="no such database file"):
        check_store(f"sqlite:///{tmp_path / 'new.db'}", reading=True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--storage", "FILE"], "--storage FILE: not a folder"),
        (["--mlflow-uri", "sqlite:///DIR"], "is a folder, not a database file"),
        (["--mlflow-uri", "gopher://x"], "not a tracking URI"),
        (["--cache-dir", "FILE"], "cache folder FILE: not a folder"),
    ],
)
def test_the_search_checks_its_outputs_in_the_dry_run(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    names = {"FILE": str(tmp_path / "file"), "DIR": str(tmp_path)}
    flags = [names.get(f, f.replace("DIR", str(tmp_path))) for f in flags]
    argv = ["shapes", "--dry-run", "--storage", str(tmp_path / "runs"), *flags]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.replace("FILE", names["FILE"]) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["orchestrator.train", "shapes", "--out", "FILE/sub"], "--out FILE/sub: not a folder"),
        (["orchestrator.report", "nothing", "--out", "FILE/r"], "--out FILE/r: not a folder"),
        (["orchestrator.fid", "shapes", "--save-stats", "FILE/s.npz"], "--save-stats FILE/s.npz: not a"),
        (["orchestrator.sample", "x", "--out", "FILE/g.png"], "--out FILE/g.png: not a folder"),
        # a name longer than the file system allows (255 bytes): tried, not a traceback
        (["orchestrator.sample", "x", "--out", "LONG/g.png"], "File name too long"),
        (["orchestrator.sample", "x", "--out", "LONG"], "File name too long"),
        (["orchestrator.fid", "shapes", "--save-stats", "LONG.npz"], "File name too long"),
        # statistics computed before are never written over
        (["orchestrator.fid", "shapes", "--save-stats", "old.npz"], "--save-stats old.npz already exists"),
    ],
)
def test_other_commands_check_their_outputs_first(command: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "old.npz").write_bytes(b"statistics computed before")
    argv = [a.replace("FILE", str(tmp_path / "file")).replace("LONG", str(tmp_path / ("x" * 300)))
            for a in command]
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message.replace("FILE", str(tmp_path / "file")) in lines[0], proc.stderr


def test_a_database_that_does_not_answer_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from servers import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/mlflow"
    for flag in ("--mlflow-uri", "--study-storage"):
        argv = ["shapes", "--smoke-test", "--storage", str(tmp_path / "runs"), flag, dead]
        assert cli_main([*argv, "--dry-run"]) == 0  # the dry run contacts nothing
        capsys.readouterr()
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag} {dead}: the database does not answer (" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_database_that_answers_passes(postgres) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.tracking.store import check_database, check_tracking_server

    url = postgres.database("answers")
    check_database(url, "--study-storage")
    check_tracking_server(url)
    with pytest.raises(ConfigError, match="the database does not answer"):
        check_database(f"{postgres.url}/no_such_database")
