"""Where a trial's tensors live and in which number format: every device, dtype and memory-format
decision of training is made here, once, and carried as a ``Placement``.

``--precision auto`` is bf16 autocast on a GPU that computes bf16 natively (Ampere and later), fp16
autocast with a gradient scaler on one that does not (T4, V100: bf16 there is missing or emulated
slowly); on the CPU, bf16 where it has bf16 instructions (AMX or AVX512-BF16: oneDNN's bf16
convolutions trained the 32-px DCGAN 2.0-2.4x faster than fp32 on such a Xeon, bench/RESULTS.md)
and fp32 elsewhere. Any precision runs on any device torch's autocast serves, the CPU included,
so the CPU tests run the very code a GPU runs. Channels-last is the default on CUDA (cudnn's fast
convolution layout) and with bf16 on the CPU (oneDNN's), and can be asked for anywhere. Evaluation
(``orchestrator.gan.step.generate``) always runs the generator in fp32: FID, grids and the shapes
decoder score the generator itself, not a rounded forward of it. Ray gives a trial with a
(fractional) GPU share one visible device; ``trial_device`` picks it among the visible ones.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from orchestrator.config import PRECISIONS, check_choice
from orchestrator.errors import ConfigError

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# where torch has fused optimiser kernels (torch.optim's own list; meta, the tests' stand-in, has none)
_FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")

Net = TypeVar("Net", bound=nn.Module)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # resolved: "bf16" | "fp16" | "fp32"
    channels_last: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _AMP_DTYPES.get(self.precision)

    @property
    def fused(self) -> bool:
        """Fused optimiser kernels: one launch per step for the whole net."""
        return self.device.type in _FUSED_DEVICES

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def module(self, net: Net) -> Net:
        """``net`` on this device, in this memory format."""
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        """A 4-D batch in this memory format (on the device it is already on)."""
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator that draws tensors on this device. Meta tensors (the tests' stand-in
        for a GPU) hold no values, and torch has no meta generator: a CPU one drives their draws."""
        where = "cpu" if self.device.type == "meta" else self.device
        return torch.Generator(device=where).manual_seed(seed)

    def describe(self) -> str:
        return f"{self.device} {self.precision}{' channels_last' if self.channels_last else ''}"


def place(
    device: torch.device | str, precision: str = "auto", channels_last: bool | None = None
) -> Placement:
    """The placement of a trial on ``device``: ``precision`` resolved for it, channels-last by
    default on CUDA and for bf16 on the CPU (the layouts cudnn's and oneDNN's fast kernels take)."""
    dev = torch.device(device)
    resolved = resolve_precision(precision, dev)
    fast_layout = dev.type == "cuda" or (dev.type == "cpu" and resolved == "bf16")
    return Placement(
        device=dev,
        precision=resolved,
        channels_last=fast_layout if channels_last is None else channels_last,
    )


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` made concrete for ``device``; bf16 asked of a CUDA device without native bf16 is an
    error, since torch would emulate it at a fraction of fp16's speed."""
    check_choice("--precision", name, PRECISIONS)
    if device.type == "cuda":
        native = bf16_native(device)
        if name == "auto":
            return "bf16" if native else "fp16"
        if name == "bf16" and not native:
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bf16; "
                              "use --precision fp16 (or auto)")
        return name
    if name == "auto":
        return "bf16" if device.type == "cpu" and cpu_bf16_native() else "fp32"
    return name


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 instructions (AMX tiles or AVX512-BF16): without them oneDNN
    emulates bf16, slower than fp32. torch's probes are private, hence the guard."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def bf16_native(device: torch.device) -> bool:
    try:  # torch < 2.5 has no including_emulation and counts emulation as support
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.get_device_capability(device) >= (8, 0)


def trial_device(name: str, gpu_ids: Sequence[str | int], visible: str | None = None) -> torch.device:
    """The device a Ray trial computes on. ``gpu_ids`` are Ray's ids of the GPUs assigned to this
    worker (``ray.get_gpu_ids()``), ``visible`` is ``$CUDA_VISIBLE_DEVICES`` (read when None). Ray
    normally narrows ``CUDA_VISIBLE_DEVICES`` to the assigned GPU, so it is ``cuda:0``; where that is
    turned off (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``) or a node exposes several, the
    assigned id is looked up among the visible ones, so trials sharing a node never all land on GPU 0."""
    device = resolve_device(name)
    if device.type != "cuda" or device.index is not None or not gpu_ids:
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [str(i) for i in gpu_ids]
    if visible is None or not visible.strip():
        return torch.device("cuda", int(ids[0]))  # every GPU visible: Ray's id is the ordinal
    order = [v.strip() for v in visible.split(",")]
    return torch.device("cuda", order.index(ids[0]) if ids[0] in order else 0)
