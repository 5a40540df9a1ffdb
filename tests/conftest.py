"""Shared fixtures. Real sample data comes from one place: $ORCHESTRATOR_TEST_DATA, by default the
``shared/data`` folder beside the checkout (see ../shared/ASSETS.md); tests that need it skip with the
reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever reads the shared smoke search is an integration test too (see pyproject's markers)."""
    for item in items:
        if "smoke_search" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


NO_SAMPLE_DATA = "sample data not found"  # every skip for want of the real data says this


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("ORCHESTRATOR_TEST_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"{NO_SAMPLE_DATA} at {root} (set ORCHESTRATOR_TEST_DATA)")
    return root


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Once, at the end: which tests the real sample data would have run, and how to run them."""
    missed = [r.nodeid for r in terminalreporter.stats.get("skipped", [])
              if NO_SAMPLE_DATA in str(r.longrepr)]
    if missed:
        title = f"{len(missed)} tests skipped: they need the real sample data"
        terminalreporter.write_sep("=", title, yellow=True)
        terminalreporter.write_line("put the shared/data folder (Food-101, MNIST and Fashion-MNIST samples) "
                                    "beside this checkout, or point ORCHESTRATOR_TEST_DATA at it. Skipped:")
        for nodeid in missed:
            terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never write into the user's ~/.cache from tests."""
    os.environ["ORCHESTRATOR_CACHE"] = str(tmp_path_factory.mktemp("orchestrator-cache"))


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README's walkthrough search, run once (4 trials on shapes, the embedded sqlite MLflow
    store) in a fresh folder, and shared by the tests that look at what a finished search leaves
    behind: the MLflow UI, sampling, the report, the README's commands. Returns its argv, the
    storage folder (``FOLDER/runs``), the experiment folder and ``orchestrator.json``'s ids."""
    import json

    from orchestrator.search.cli import main

    folder, argv = tmp_path_factory.mktemp("smoke"), ["shapes", "--smoke-test", "--name", "smoke"]
    cwd = Path.cwd()
    os.chdir(folder)  # the README's command, as a user types it: results under ./runs
    try:
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    storage = folder / "runs"
    experiment = storage / "smoke"
    state = json.loads((experiment / "orchestrator.json").read_text())
    return {"argv": argv, "storage": storage, "experiment_dir": experiment, **state}


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A PostgreSQL server for the session (``servers.Postgres``), stopped and deleted at the end."""
    from servers import Postgres

    server = Postgres()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path: Path) -> dict:
    """An MLflow store in ``tmp_path`` with an experiment and a search's parent run, as a trial logger
    writes into: its uri, client, experiment id and parent run id."""
    from mlflow import MlflowClient

    from orchestrator.tracking.store import default_tracking_uri, ensure_experiment, start_parent_run

    uri = default_tracking_uri(tmp_path / "store")
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "trials", (tmp_path / "artifacts").as_uri())
    return {"uri": uri, "client": client, "experiment": experiment,
            "parent": start_parent_run(client, experiment, "search", {}, {})}
