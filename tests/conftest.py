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
