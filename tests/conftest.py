"""Shared fixtures. Real sample data comes from one place: $ORCHESTRATOR_TEST_DATA, by default the
``shared/data`` folder beside the checkout (see ../shared/ASSETS.md); tests that need it skip with the
reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("ORCHESTRATOR_TEST_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"sample data not found at {root} (set ORCHESTRATOR_TEST_DATA)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never write into the user's ~/.cache from tests."""
    os.environ["ORCHESTRATOR_CACHE"] = str(tmp_path_factory.mktemp("orchestrator-cache"))
