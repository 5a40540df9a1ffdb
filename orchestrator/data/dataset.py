"""Datasets by name, decoded once into a keyed uint8 cache, and sampled on the training device.

``prepare_dataset`` looks a name up in the registry (``orchestrator.data.sources``), whose entries each
find their data (or say how to get it) and fingerprint it cheaply. The cache key is a sha256 of the
spec, that fingerprint and ``FORMAT_VERSION``; only on a miss are the images decoded (centre square
crop, antialiased resize to 32 or 64 px) into ``<cache_dir>/data/<key>.npy``, an ``[N, C, R, R]``
uint8 array that later runs memory-map in milliseconds. ``DeviceImages`` then holds that array on
the training device and draws batches there, so training needs no DataLoader.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.config import RESOLUTIONS, RunSettings
from orchestrator.data.cache import (
    FORMAT_VERSION,
    Failure,
    Listing,
    decode,
    decode_image,  # noqa: F401  (re-exported: part of this module's API)
    read_cache,
    write_cache,
)
from orchestrator.data.shapes import SHAPE_CLASSES
from orchestrator.data.shapes_decoder import decode_shapes
from orchestrator.data.sources import (
    FOLDER_PREFIX,
    Source,
    check_present,
    class_names_without_loading,
    finder,
)
from orchestrator.data.spec import DataSpec
from orchestrator.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ClassReader:
    """How a dataset reads the class of a generated image (-1: none), and how many classes it has."""

    read: Callable[[torch.Tensor], np.ndarray]
    classes: int


# datasets whose generated images' classes can be read off the pixels: their evaluations also
# report mode coverage (orchestrator.metrics.modes)
CLASS_READERS: dict[str, ClassReader] = {"shapes": ClassReader(decode_shapes, len(SHAPE_CLASSES))}

SPLITS = ("train", "test")
MAX_SKIPPED_FRACTION = 0.01
_ORDER_SEED = 0  # fixes the shuffled order of which `limit` keeps a prefix


@dataclass(frozen=True, eq=False)
class CachedDataset:
    """A decoded dataset: memory-mapped images, labels indexing ``class_names``, and its key."""

    images: np.ndarray  # uint8 [N, C, R, R], memory-mapped
    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]
    key: str  # identifies the exact data, e.g. for FID statistics caches
    path: Path  # the .npy file

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.images)


class DeviceImages:
    """The whole uint8 cache on one device (on CUDA: in GPU memory); batches drawn there, no DataLoader."""

    def __init__(
        self, images: np.ndarray, device: torch.device | str = "cpu", channels_last: bool = False
    ) -> None:
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
            raise ValueError(f"expected non-empty uint8 [N, C, R, R], got {images.dtype} {images.shape}")
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.images = torch.empty(images.shape, dtype=torch.uint8, device=self.device)
        # copy in slices: a memory-mapped cache is never held twice in host memory
        step = max(1, (64 << 20) // images[0].nbytes)
        for start in range(0, len(images), step):
            part = np.array(images[start : start + step])  # writable, as torch wants
            self.images[start : start + step].copy_(torch.from_numpy(part))

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """float32 in [-1, 1], ``[B, C, R, R]``; indices (with replacement) from ``generator``."""
        index = torch.randint(len(self.images), (batch_size,), generator=generator, device=self.device)
        batch = images_to_float(self.images.index_select(0, index))
        if self.channels_last:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def __len__(self) -> int:
        return len(self.images)


def images_to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range every generator's tanh outputs."""
    return batch_uint8.to(torch.float32).div_(127.5).sub_(1.0)


def spec_for(settings: RunSettings, split: str = "train") -> DataSpec:
    """The data a run's settings ask for."""
    return DataSpec(
        name=settings.dataset,
        split=split,
        resolution=settings.resolution,
        root=settings.data_root,
        limit=settings.max_images,
        classes=settings.classes,
        download=settings.download,
    )


def validate(spec: DataSpec) -> None:
    """Cheap checks (name, split, resolution, limit, classes, data present): a DataError if not."""
    finder(spec)
    if spec.split not in SPLITS:
        raise DataError(f"split {spec.split!r} is not one of {', '.join(SPLITS)}")
    if spec.resolution not in RESOLUTIONS:
        raise DataError(f"resolution {spec.resolution!r} is not supported: use 32 or 64")
    if spec.limit is not None and (type(spec.limit) is not int or spec.limit < 1):
        raise DataError(f"limit {spec.limit!r} must be a positive integer")
    if spec.classes is not None and (isinstance(spec.classes, str) or not spec.classes):
        raise DataError(f"classes {spec.classes!r} must be a non-empty tuple of class names")
    check_present(spec)
    names = None if spec.classes is None else class_names_without_loading(spec)
    if names is not None:
        _check_classes(spec, names)


def prepare_dataset(spec: DataSpec, cache_dir: Path, progress: bool = True) -> CachedDataset:
    """The decoded dataset, from the cache when its key matches, else decoded and cached first."""
    validate(spec)
    source = finder(spec)(spec)
    key = _cache_key(spec, source.identity)
    data_dir = Path(cache_dir) / "data"
    cached = _load_cache(data_dir, key)
    if cached is None:
        _build(spec, source, data_dir, key, progress)
        cached = _load_cache(data_dir, key)
    if cached is None:
        raise DataError(f"the dataset cache in {data_dir} cannot be read back after writing it")
    return cached


def check_fid_n(fid_n: int, available: int, dataset: str) -> None:
    """FID is named after its sample count, so the real side must have that many images."""
    if fid_n > available:
        raise ConfigError(
            f"FID needs {fid_n} real images but {dataset} has {available}: lower --fid-n or raise --limit"
        )


def available(spec: DataSpec, cache_dir: Path) -> int:
    """How many images ``prepare_dataset`` will give, without decoding any: the cache's count on a
    hit, else the count of the selected listing (a decode that skips unreadable files gives a few
    fewer, which the caller's check after preparing still catches)."""
    validate(spec)
    source = finder(spec)(spec)
    cached = read_cache(Path(cache_dir) / "data", _cache_key(spec, source.identity))
    if cached is not None:
        return len(cached[1])
    listing = (source.labels or source.load)()
    return len(_select(spec, listing)[0])


def _check_classes(spec: DataSpec, names: Sequence[str]) -> None:
    for wanted in spec.classes or ():
        if wanted not in names:
            hint = did_you_mean(wanted, names)
            raise DataError(f"{spec.name} has no class {wanted!r}{hint}; valid: {', '.join(names)}")


# --- the cache: its key, what goes in it, and reading it back


def _cache_key(spec: DataSpec, identity: dict[str, Any]) -> str:
    record = {
        "format": FORMAT_VERSION,
        # a folder's resolved path is in `identity`: "folder:./x" and "folder:/abs/x" share a key
        "name": "folder" if spec.name.startswith(FOLDER_PREFIX) else spec.name,
        "split": spec.split,
        "resolution": spec.resolution,
        "limit": spec.limit,
        "classes": None if spec.classes is None else list(spec.classes),
        "source": identity,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _select(spec: DataSpec, listing: Listing) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Indices to decode, their labels, and class names: a fixed shuffle (so that a limit keeps a
    mix of classes), filtered to the chosen classes, which are renumbered in dataset order."""
    _check_classes(spec, listing.class_names)
    order = np.random.default_rng(_ORDER_SEED).permutation(len(listing.labels))
    chosen = [i for i, n in enumerate(listing.class_names) if spec.classes is None or n in spec.classes]
    renumber = np.full(len(listing.class_names), -1, np.int64)
    renumber[chosen] = np.arange(len(chosen))
    order = order[renumber[listing.labels[order]] >= 0][: spec.limit]
    if len(order) == 0:
        raise DataError(f"{spec.name} has no {spec.split} images of classes {spec.classes}")
    names = tuple(listing.class_names[i] for i in chosen)
    return order, renumber[listing.labels[order]], names


def _build(spec: DataSpec, source: Source, data_dir: Path, key: str, progress: bool) -> None:
    listing = source.load()
    index, labels, names = _select(spec, listing)
    desc = f"decoding {spec.name} {spec.split} at {spec.resolution}px"
    images, failures = decode(listing, index, spec.resolution, desc, progress)
    skipped = _check_failures(failures, len(index))
    keep = np.setdiff1d(np.arange(len(index)), [i for i, _, _ in failures])
    meta = {
        "format": FORMAT_VERSION,
        "spec": {k: getattr(spec, k) for k in ("name", "split", "resolution", "limit", "classes")},
        "source": source.identity,
        "count": len(keep),
        "channels": int(images.shape[1]),
        "class_names": names,
        "skipped": skipped,
    }
    if failures:  # indexing copies: only when there are unreadable files to drop
        images, labels = images[keep], labels[keep]
    write_cache(data_dir, key, images, labels, meta)


def _check_failures(failures: list[Failure], total: int) -> list[dict[str, str]]:
    """One line for the unreadable files, with a count (each is in the cache's metadata); too many
    means a broken dataset, not a few bad files."""
    if not failures:
        return []
    _, path, why = failures[0]
    if len(failures) > MAX_SKIPPED_FRACTION * total:
        raise DataError(f"{len(failures)} of {total} images cannot be read, first: {path} ({why})")
    log.warning("skipping %d unreadable image%s of %d, the first: %s (%s)", len(failures),
                "s" if len(failures) > 1 else "", total, path, why)
    return [{"file": path, "error": why} for _, path, why in failures]


def _load_cache(data_dir: Path, key: str) -> CachedDataset | None:
    entry = read_cache(data_dir, key)
    if entry is None:
        return None
    images, labels, names, path = entry
    return CachedDataset(images, labels, names, key, path)
