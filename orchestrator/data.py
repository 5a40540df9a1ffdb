"""Datasets by name, decoded once into a keyed uint8 cache, and sampled on the training device.

``prepare_dataset`` looks a name up in the registry, whose entries each find their data (or say
how to get it) and fingerprint it cheaply. The cache key is a sha256 of the spec, that fingerprint
and ``FORMAT_VERSION``; only on a miss are the images decoded (centre square crop, antialiased
resize to 32 or 64 px) into ``<cache_dir>/data/<key>.npy``, an ``[N, C, R, R]`` uint8 array that
later runs memory-map in milliseconds. ``DeviceImages`` then holds that array on the training
device and draws batches there, so training needs no DataLoader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator import shapes
from orchestrator.config import RunSettings
from orchestrator.datacache import (
    FORMAT_VERSION,
    Failure,
    Listing,
    decode,
    decode_image,  # noqa: F401  (re-exported: part of this module's API)
    read_cache,
    write_cache,
)
from orchestrator.errors import DataError, did_you_mean

log = logging.getLogger(__name__)

RESOLUTIONS = (32, 64)
SPLITS = ("train", "test")
FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_SKIPPED_FRACTION = 0.01
_ORDER_SEED = 0  # fixes the shuffled order of which `limit` keeps a prefix
# where each torchvision dataset lives under the data root
_LOCATIONS = {
    "food101": "food-101",
    "mnist": "MNIST/raw",
    "fashion-mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


@dataclass(frozen=True)
class DataSpec:
    """Which images, at which resolution: everything the decoded cache depends on."""

    name: str  # registry name or "folder:PATH"
    split: str = "train"  # "train" | "test"
    resolution: int = 64  # 32 | 64
    root: Path | None = None  # None -> $ORCHESTRATOR_DATA or ~/.cache/orchestrator/datasets
    limit: int | None = None  # at most this many images (a prefix of a fixed shuffled order)
    classes: tuple[str, ...] | None = None
    download: bool = False


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


@dataclass(frozen=True)
class _Source:
    identity: dict[str, Any]  # what the data depends on beyond the spec: part of the cache key
    load: Callable[[], Listing]  # the slow part, run only on a cache miss


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
    _finder(spec)
    if spec.split not in SPLITS:
        raise DataError(f"split {spec.split!r} is not one of {', '.join(SPLITS)}")
    if spec.resolution not in RESOLUTIONS:
        raise DataError(f"resolution {spec.resolution!r} is not supported: use 32 or 64")
    if spec.limit is not None and (type(spec.limit) is not int or spec.limit < 1):
        raise DataError(f"limit {spec.limit!r} must be a positive integer")
    if spec.classes is not None and (isinstance(spec.classes, str) or not spec.classes):
        raise DataError(f"classes {spec.classes!r} must be a non-empty tuple of class names")
    _check_present(spec)
    names = None if spec.classes is None else _class_names_without_loading(spec)
    if names is not None:
        _check_classes(spec, names)


def prepare_dataset(spec: DataSpec, cache_dir: Path, progress: bool = True) -> CachedDataset:
    """The decoded dataset, from the cache when its key matches, else decoded and cached first."""
    validate(spec)
    source = _finder(spec)(spec)
    key = _cache_key(spec, source.identity)
    data_dir = Path(cache_dir) / "data"
    cached = _load_cache(data_dir, key)
    if cached is None:
        _build(spec, source, data_dir, key, progress)
        cached = _load_cache(data_dir, key)
    if cached is None:
        raise DataError(f"the dataset cache in {data_dir} cannot be read back after writing it")
    return cached


# --- the registry: each entry finds its data and fingerprints it; `load` does the slow part


def _shapes(spec: DataSpec) -> _Source:
    count = shapes.DEFAULT_COUNTS[spec.split]

    def load() -> Listing:
        images, labels = shapes.draw_shapes(spec.split, spec.resolution, count)
        return Listing(shapes.SHAPE_CLASSES, labels, pixels=images)

    return _Source({"generator": shapes.GENERATOR_VERSION, "count": count}, load)


def _food101(spec: DataSpec) -> _Source:
    from torchvision.datasets import Food101

    root = _data_root(spec)
    _download_if_missing(spec, lambda: Food101(root, spec.split, download=True))
    meta = _expected_path(spec) / "meta" / f"{spec.split}.json"
    try:
        identity = {"root": str(root.resolve()), "meta": hashlib.sha256(meta.read_bytes()).hexdigest()}
    except OSError as err:
        raise DataError(f"cannot read {meta}: {err.strerror}; {_fetch_hint(spec)}") from err

    def load() -> Listing:
        found = _open_torchvision(spec, lambda: Food101(root, spec.split))
        # the public __getitem__ decodes full-size in this process; the paths let a pool do it
        labels = np.asarray(found._labels, np.int64)
        return Listing(tuple(found.classes), labels, files=tuple(found._image_files))

    return _Source(identity, load)


def _idx_dataset(class_name: str) -> Callable[[DataSpec], _Source]:
    """MNIST and Fashion-MNIST: torchvision's idx readers; one channel, 28 px."""

    def find(spec: DataSpec) -> _Source:
        import torchvision.datasets

        make = getattr(torchvision.datasets, class_name)
        root = _data_root(spec)
        _download_if_missing(spec, lambda: make(root, download=True))

        def load() -> Listing:
            found = _open_torchvision(spec, lambda: make(root, train=spec.split == "train"))
            labels = found.targets.numpy().astype(np.int64)
            return Listing(tuple(found.classes), labels, pixels=found.data.numpy()[:, None])

        return _Source(_files_identity(_expected_path(spec)), load)

    return find


def _cifar10(spec: DataSpec) -> _Source:
    from torchvision.datasets import CIFAR10

    root = _data_root(spec)
    _download_if_missing(spec, lambda: CIFAR10(root, download=True))

    def load() -> Listing:
        found = _open_torchvision(spec, lambda: CIFAR10(root, train=spec.split == "train"))
        pixels = found.data.transpose(0, 3, 1, 2)
        return Listing(tuple(found.classes), np.asarray(found.targets, np.int64), pixels=pixels)

    return _Source(_files_identity(_expected_path(spec)), load)


def _folder(spec: DataSpec) -> _Source:
    """Class sub-folders become labels (sorted by name); a flat folder is one class."""
    root = _folder_root(spec)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(d.name, _images_in(d.rglob("*"))) for d in subdirs]
    groups = [(name, files) for name, files in groups if files] or [(root.name, _images_in(root.iterdir()))]
    files = tuple(path for _, group in groups for path in group)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    labels = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g) for _, g in groups])
    listing = Listing(tuple(name for name, _ in groups), labels, files=files)
    return _Source(_files_identity(root, files), lambda: listing)


_REGISTRY: dict[str, Callable[[DataSpec], _Source]] = {
    "shapes": _shapes,
    "food101": _food101,
    "mnist": _idx_dataset("MNIST"),
    "fashion-mnist": _idx_dataset("FashionMNIST"),
    "cifar10": _cifar10,
}
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


# --- finding data


def _finder(spec: DataSpec) -> Callable[[DataSpec], _Source]:
    if spec.name.startswith(FOLDER_PREFIX):
        return _folder
    if spec.name not in _REGISTRY:
        valid = ", ".join((*DATASETS, f"{FOLDER_PREFIX}PATH"))
        raise DataError(f"unknown dataset {spec.name!r}{did_you_mean(spec.name, DATASETS)}; valid: {valid}")
    return _REGISTRY[spec.name]


def _data_root(spec: DataSpec) -> Path:
    if spec.root is not None:
        return Path(spec.root).expanduser()
    default = Path.home() / ".cache" / "orchestrator" / "datasets"
    return Path(os.environ.get("ORCHESTRATOR_DATA", default)).expanduser()


def _folder_root(spec: DataSpec) -> Path:
    return Path(spec.name[len(FOLDER_PREFIX) :]).expanduser().resolve()


def _expected_path(spec: DataSpec) -> Path:
    return _data_root(spec) / _LOCATIONS[spec.name]


def _fetch_hint(spec: DataSpec) -> str:
    return f"pass --download to fetch it, or --data-root DIR holding {_LOCATIONS[spec.name]}/"


def _check_present(spec: DataSpec) -> None:
    if spec.name.startswith(FOLDER_PREFIX):
        if not spec.name[len(FOLDER_PREFIX) :]:
            raise DataError(f"{FOLDER_PREFIX} needs a directory, e.g. {FOLDER_PREFIX}/data/faces")
        if not _folder_root(spec).is_dir():
            raise DataError(f"image folder {_folder_root(spec)} does not exist")
    elif spec.name in _LOCATIONS and not spec.download and not _expected_path(spec).is_dir():
        raise DataError(f"{spec.name} data not found at {_expected_path(spec)}: {_fetch_hint(spec)}")


def _download_if_missing(spec: DataSpec, make: Callable[[], object]) -> None:
    """torchvision downloads only what is missing, or incomplete after an interrupted download."""
    if not spec.download:
        return
    try:
        make()
    except (RuntimeError, OSError) as err:  # no network is a URLError, an OSError
        raise DataError(
            f"cannot download {spec.name} into {_data_root(spec)} ({err}); "
            f"without a network, copy its files to {_expected_path(spec)}"
        ) from err


def _open_torchvision(spec: DataSpec, make: Callable[[], Any]) -> Any:
    """Build a torchvision dataset; its errors speak of its API, ours name the path and the fix."""
    try:
        return make()
    except (RuntimeError, OSError) as err:  # a failed download is a URLError, an OSError
        where = _expected_path(spec)
        raise DataError(
            f"{spec.name} data at {where} is missing or corrupt ({err}); {_fetch_hint(spec)}"
        ) from err


def _images_in(paths: Iterator[Path]) -> list[Path]:
    # names starting with "." are editor and macOS resource-fork debris, never images
    return sorted(
        p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _files_identity(root: Path, files: Sequence[Path] | None = None) -> dict[str, Any]:
    """The resolved root and a digest of (relative path, size, mtime) of its files."""
    paths = sorted(p for p in root.iterdir() if p.is_file()) if files is None else files
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"root": str(root.resolve()), "files": digest.hexdigest()}


def _class_names_without_loading(spec: DataSpec) -> Sequence[str] | None:
    """Class names where a glance gives them, so a typo fails in `validate`; else checked on load."""
    if spec.name == "shapes":
        return shapes.SHAPE_CLASSES
    if spec.name.startswith(FOLDER_PREFIX):
        root = _folder_root(spec)
        return [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] or [root.name]
    listed = _expected_path(spec) / "meta" / "classes.txt" if spec.name == "food101" else None
    return listed.read_text().split() if listed is not None and listed.is_file() else None


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


def _build(spec: DataSpec, source: _Source, data_dir: Path, key: str, progress: bool) -> None:
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
    write_cache(data_dir, key, images[keep], labels[keep], meta)


def _check_failures(failures: list[Failure], total: int) -> list[dict[str, str]]:
    """Log each unreadable file; too many means a broken dataset, not a few bad files."""
    for _, path, why in failures:
        log.warning("skipping unreadable image %s (%s)", path, why)
    if len(failures) > MAX_SKIPPED_FRACTION * total:
        _, path, why = failures[0]
        raise DataError(f"{len(failures)} of {total} images cannot be read, first: {path} ({why})")
    return [{"file": path, "error": why} for _, path, why in failures]


def _load_cache(data_dir: Path, key: str) -> CachedDataset | None:
    entry = read_cache(data_dir, key)
    if entry is None:
        return None
    images, labels, names, path = entry
    return CachedDataset(images, labels, names, key, path)
