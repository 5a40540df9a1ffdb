"""Where each dataset's files are, how to list them, and what to say when they are missing.

A finder takes a ``DataSpec`` and returns a ``Source``: an ``identity`` that fingerprints the data
cheaply (a generator version, a digest of file names, sizes and mtimes) and a ``load`` that lists
its images (files to decode, or pixels already in memory) only on a cache miss. The built-in names
are in ``DATASETS``; ``folder:PATH`` reads any folder of images, one class per sub-folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.config import IMAGE_SUFFIXES
from orchestrator.data import shapes
from orchestrator.data.cache import Listing
from orchestrator.data.spec import DataSpec
from orchestrator.errors import DataError, did_you_mean, first_line

FOLDER_PREFIX = "folder:"
# where each torchvision dataset lives under the data root
_LOCATIONS = {
    "food101": "food-101",
    "mnist": "MNIST/raw",
    "fashion-mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


@dataclass(frozen=True)
class Source:
    """What a finder found: a cheap fingerprint of the data, and how to list it."""

    identity: dict[str, Any]  # what the data depends on beyond the spec: part of the cache key
    load: Callable[[], Listing]  # the slow part, run only on a cache miss
    # the labels alone, where ``load`` does real work before decoding (drawing pixels)
    labels: Callable[[], Listing] | None = None


# --- the registry: each entry finds its data and fingerprints it; `load` does the slow part


def _shapes(spec: DataSpec) -> Source:
    count = shapes.DEFAULT_COUNTS[spec.split]

    def load() -> Listing:
        images, labels = shapes.draw_shapes(spec.split, spec.resolution, count)
        return Listing(shapes.SHAPE_CLASSES, labels, pixels=images)

    def labels() -> Listing:
        return Listing(shapes.SHAPE_CLASSES, shapes.shape_labels(spec.split, count))

    return Source({"generator": shapes.GENERATOR_VERSION, "count": count}, load, labels)


def _food101(spec: DataSpec) -> Source:
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

    return Source(identity, load)


def _idx_dataset(class_name: str) -> Callable[[DataSpec], Source]:
    """MNIST and Fashion-MNIST: torchvision's idx readers; one channel, 28 px."""

    def find(spec: DataSpec) -> Source:
        import torchvision.datasets

        make = getattr(torchvision.datasets, class_name)
        root = _data_root(spec)
        _download_if_missing(spec, lambda: make(root, download=True))

        def load() -> Listing:
            found = _open_torchvision(spec, lambda: make(root, train=spec.split == "train"))
            labels = found.targets.numpy().astype(np.int64)
            return Listing(tuple(found.classes), labels, pixels=found.data.numpy()[:, None])

        return Source(_files_identity(_expected_path(spec)), load)

    return find


def _cifar10(spec: DataSpec) -> Source:
    from torchvision.datasets import CIFAR10

    root = _data_root(spec)
    _download_if_missing(spec, lambda: CIFAR10(root, download=True))

    def load() -> Listing:
        found = _open_torchvision(spec, lambda: CIFAR10(root, train=spec.split == "train"))
        pixels = found.data.transpose(0, 3, 1, 2)
        return Listing(tuple(found.classes), np.asarray(found.targets, np.int64), pixels=pixels)

    return Source(_files_identity(_expected_path(spec)), load)


def _folder(spec: DataSpec) -> Source:
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
    return Source(_files_identity(root, files), lambda: listing)


_REGISTRY: dict[str, Callable[[DataSpec], Source]] = {
    "shapes": _shapes,
    "food101": _food101,
    "mnist": _idx_dataset("MNIST"),
    "fashion-mnist": _idx_dataset("FashionMNIST"),
    "cifar10": _cifar10,
}
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


# --- finding data


def finder(spec: DataSpec) -> Callable[[DataSpec], Source]:
    """The registry entry for ``spec.name``; a DataError listing the valid names if none."""
    if spec.name.startswith(FOLDER_PREFIX):
        return _folder
    if spec.name not in _REGISTRY:
        valid = ", ".join((*DATASETS, f"{FOLDER_PREFIX}PATH"))
        raise DataError(f"unknown dataset {spec.name!r}{did_you_mean(spec.name, DATASETS)}; valid: {valid}")
    return _REGISTRY[spec.name]


def _data_root(spec: DataSpec) -> Path:
    if spec.root is not None:
        return _home_expanded(spec.root)
    default = Path.home() / ".cache" / "orchestrator" / "datasets"
    return _home_expanded(os.environ.get("ORCHESTRATOR_DATA", default))


def _folder_root(spec: DataSpec) -> Path:
    return _home_expanded(spec.name[len(FOLDER_PREFIX) :]).resolve()


def _home_expanded(path: str | Path) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~someone who has no account here
        raise DataError(f"{path}: no such user's home folder") from None


def _expected_path(spec: DataSpec) -> Path:
    return _data_root(spec) / _LOCATIONS[spec.name]


def _fetch_hint(spec: DataSpec) -> str:
    return f"pass --download to fetch it, or --data-root DIR holding {_LOCATIONS[spec.name]}/"


def check_present(spec: DataSpec) -> None:
    """A DataError naming the path and the fix when the data is not where it should be."""
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
    # a failed download is a URLError (an OSError); a damaged file makes torchvision's readers
    # raise whatever their parsing meets first (AssertionError on an idx header, ValueError on a
    # cut one, JSONDecodeError, AttributeError on a meta file of another shape): all mean the same
    except Exception as err:
        where = _expected_path(spec)
        raise DataError(
            f"{spec.name} data at {where} is missing or corrupt ({first_line(err)}); {_fetch_hint(spec)}"
        ) from None


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


def class_names_without_loading(spec: DataSpec) -> Sequence[str] | None:
    """Class names where a glance gives them, so a typo fails in `validate`; else checked on load."""
    if spec.name == "shapes":
        return shapes.SHAPE_CLASSES
    if spec.name.startswith(FOLDER_PREFIX):
        root = _folder_root(spec)
        return [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] or [root.name]
    listed = _expected_path(spec) / "meta" / "classes.txt" if spec.name == "food101" else None
    if listed is None or not listed.is_file():
        return None
    try:
        return listed.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {listed} ({first_line(err)}); {_fetch_hint(spec)}") from None
