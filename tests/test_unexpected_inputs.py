"""Outputs checked by trying them and files that are not what they seem (issue 24, parts 4 and 5):
an empty cache variable or home, a train --out holding another run, a --name on someone's folder,
images too large to decode, 16-bit images, thumbnails, a folder of unreadable files, a results
folder cut short, a budget no trial can run. Each is one line (exit 2 where it stops the command),
and nothing already there is changed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.data import cache
from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.spec import DataSpec
from orchestrator.report import cli_main as report_cli
from orchestrator.search.cli import cli_main as search_cli
from orchestrator.train import cli_main as train_cli

REPO = Path(__file__).resolve().parents[1]


def _one_line(code: int, capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("env", "message"), [
    ({"ORCHESTRATOR_CACHE": ""}, "$ORCHESTRATOR_CACHE is set but empty"),
    ({"ORCHESTRATOR_CACHE": " "}, "$ORCHESTRATOR_CACHE is set but empty"),
    ({"HOME": ""}, "$HOME is empty, so there is no ~/.cache"),
])
def test_an_empty_cache_or_home_is_refused_like_every_empty_path(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_CACHE"}
    for command in (["orchestrator.search", "shapes", "--dry-run"], ["orchestrator.train", "shapes"]):
        done = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, capture_output=True, text=True,
                              env={**base, "PYTHONPATH": str(REPO), **env}, timeout=300)
        assert done.returncode == 2 and done.stderr.strip() == f"error: {done.stderr.strip()[7:]}"
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # not the current folder: nothing written there


@pytest.mark.parametrize("name", ["checkpoint.pt", "generator.pt", "state.pt", "samples_step000100.png"])
def test_train_never_writes_over_another_runs_checkpoint(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one-trial command's own files, or a trial's checkpoint folder: refused, untouched."""
    (tmp_path / name).write_bytes(b"another run's")
    err = _one_line(train_cli(["shapes", "--out", str(tmp_path)]), capsys)
    assert "holds another run's checkpoint and grids: give a new folder" in err
    assert (tmp_path / name).read_bytes() == b"another run's"


def test_a_search_never_moves_into_a_folder_of_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    argv = ["shapes", "--smoke-test", "--storage", str(tmp_path), "--name", "docs"]
    err = _one_line(search_cli(argv), capsys)
    assert "holds files that are not a search's (notes.txt)" in err
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["notes.txt"]


def test_a_budget_no_trial_could_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["shapes", "--dry-run", "--max-evals", "2000000", "--eval-every", "2000"]
    err = _one_line(search_cli(argv), capsys)
    assert "more than any trial can run (2,147,483,647)" in err


def _folder(root: Path, images: dict[str, Image.Image]) -> DataSpec:
    (root / "data").mkdir(exist_ok=True)
    for name, image in images.items():
        image.save(root / "data" / name)
    return DataSpec(name=f"folder:{root / 'data'}", split="train", resolution=32)


def test_an_image_too_large_to_decode_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "MAX_PIXELS", 50_000)  # the same check, at a size a test can write
    images = {f"{i:03d}.png": Image.new("RGB", (40, 40), (i, 0, 0)) for i in range(200)}
    images["huge.png"] = Image.new("1", (400, 300))
    opened: list[str] = []
    real = Image.Image.load

    def load(self: Image.Image) -> object:
        opened.append(getattr(self, "filename", ""))
        return real(self)

    monkeypatch.setattr(Image.Image, "load", load)
    with caplog.at_level(logging.WARNING):
        data = prepare_dataset(_folder(tmp_path, images), tmp_path / "cache", progress=False)
    assert len(data) == 200
    assert not [f for f in opened if f.endswith("huge.png")]  # refused before any pixel was decoded
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(lines) == 1 and "huge.png" in lines[0] and "400x300 is more than 50,000 pixels" in lines[0]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I")
    pixels = cache.decode_image(tmp_path / "ramp.png", 32)
    assert pixels.min() < 10 and pixels.max() > 245 and len(np.unique(pixels)) > 20  # clipped: all 255


def test_thumbnails_and_unreadable_files_are_one_line_each_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = {f"{i:04d}.png": Image.new("RGB", (8 if i < 30 else 48, 8 if i < 30 else 48), (i % 255, 9, 9))
              for i in range(1200)}
    spec = _folder(tmp_path, images)
    for i in range(10):
        (tmp_path / "data" / f"broken{i}.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        data = prepare_dataset(spec, tmp_path / "cache", progress=False)
    assert len(data) == 1200
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert any("skipping 10 unreadable images of 1210, the first: " in m for m in messages)
    assert any("30 of 1210 images are less than half of 32 px" in m and "(8x8)" in m for m in messages)


def test_report_names_a_history_cut_short(
    smoke_search: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished trial whose result.json lost its end (a full disk, an interrupted copy): the report
    names the file, where it showed an infinite FID."""
    import shutil

    folder = tmp_path / "smoke"
    shutil.copytree(smoke_search["experiment_dir"], folder)
    history = sorted(folder.glob("trial_*/result.json"))[0]
    text = history.read_text()
    history.write_text(text[: len(text) - 40])
    err = _one_line(report_cli([str(folder)]), capsys)
    lines = len(text.strip().splitlines())
    assert f"{history}: damaged at line {lines} of {lines}" in err
