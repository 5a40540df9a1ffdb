"""A wheel install (not the editable one the README uses) still has the built-in search spaces."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_carries_the_built_in_search_spaces(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: setuptools leaves build/ in the tree it builds
    for folder in ("orchestrator", "search_spaces"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # build with the setuptools already here when there is one: no download
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("orchestrator-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, capture_output=True)
    probe = ("import orchestrator.space.sampling as s; "
             "print(s.space_path('food101')); print(s.load_space(s.space_path('shapes')).resolution)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    path, resolution = done.stdout.split()
    assert Path(path) == tmp_path / "site" / "orchestrator" / "search_spaces" / "food101.yaml"
    assert int(resolution) == 32
