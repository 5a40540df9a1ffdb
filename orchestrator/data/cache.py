"""Decoding images into the uint8 dataset cache, and that cache's files on disk.

``decode`` turns what a registry loader found (a ``Listing``: image files, or pixels already in
memory) into one ``[N, C, R, R]`` uint8 array: each image centre-cropped to a square and resized
(antialiased) to 32 or 64 px, files in a process pool. ``write_cache`` stores it atomically as
``<key>.npy``, ``<key>.labels.npy`` and ``<key>.json``; ``read_cache`` memory-maps a complete entry.
Which data to decode, and under which key, is ``orchestrator.data.dataset``'s business.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from orchestrator.atomic import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when decoding changes, so that old caches are never reused
_CHUNK = 256  # files per process-pool task at most; fewer on small sets, so every core has work
_TASKS_PER_WORKER = 4  # enough tasks that a worker finishing early picks up another
_MIN_POOL_FILES = 512  # below this, starting worker processes costs more than it saves
# what PIL raises for a truncated, garbage or hostile file (a broken PNG is a SyntaxError)
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
MAX_PIXELS = 100_000_000  # one image: 100 MP is 300 MB as RGB, more as PIL works on it
WIDE_GREY = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I": 65535}  # PIL modes -> full scale
Failure = tuple[int, str, str]  # an unreadable file: its position, path and the reason


@dataclass(frozen=True)
class Listing:
    """What a loader found, before decoding: files on disk or pixels already in memory."""

    class_names: tuple[str, ...]
    labels: np.ndarray  # int64 [N], indices into class_names
    files: tuple[Path, ...] = ()  # decoded in a process pool
    pixels: np.ndarray | None = None  # uint8 [N, C, H, W], resized in-process


class TooLarge(ValueError):
    """An image whose pixels would not fit in memory once decoded: refused from its header."""


def decode_image(path: str | Path, resolution: int) -> np.ndarray:
    """One image file as RGB uint8 ``[R, R, 3]``: centre square crop, bicubic (antialiased) resize."""
    return _decode_sized(path, resolution)[0]


def _decode_sized(path: str | Path, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image`` and the file's own size. Refused before decoding when larger than
    ``MAX_PIXELS``; 16-bit grey scaled to 8 bits, not clipped (PIL's own conversion turns every
    pixel above 255 white)."""
    with Image.open(path) as image:
        size = image.size
        if size[0] * size[1] > MAX_PIXELS:
            raise TooLarge(f"{size[0]}x{size[1]} is more than {MAX_PIXELS:,} pixels, the limit for one image")
        # libjpeg decodes at 1/2..1/8 scale when the file is far larger than needed (3-4x faster);
        # the resize below still filters down from at least twice the target resolution
        image.draft("RGB", (2 * resolution, 2 * resolution))
        if image.mode in WIDE_GREY:
            grey = np.asarray(image, np.float64) * (255 / WIDE_GREY[image.mode])
            rgb = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8)).convert("RGB")
        else:
            rgb = image.convert("RGB")
        return _crop_resize(rgb, resolution), size


def _crop_resize(image: Image.Image, resolution: int) -> np.ndarray:
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    size = (resolution, resolution)
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC, box=box))


# --- decoding


def decode(
    listing: Listing, index: np.ndarray, resolution: int, desc: str, progress: bool
) -> tuple[np.ndarray, list[Failure]]:
    """The images at ``index``, in order, as uint8 ``[n, C, R, R]``; unreadable files as failures."""
    with tqdm(total=len(index), desc=desc, unit="img", disable=not progress) as bar:
        if listing.pixels is not None:
            return _resize_pixels(listing.pixels[index], resolution, bar), []
        return _decode_files([str(listing.files[i]) for i in index], resolution, bar)


def _resize_pixels(pixels: np.ndarray, resolution: int, bar: tqdm) -> np.ndarray:
    n, channels, height, width = pixels.shape
    if height == width == resolution:
        bar.update(n)
        return np.ascontiguousarray(pixels)
    out = np.empty((n, channels, resolution, resolution), np.uint8)
    for i, image in enumerate(pixels):
        hwc = image[0] if channels == 1 else image.transpose(1, 2, 0)
        resized = _crop_resize(Image.fromarray(np.ascontiguousarray(hwc)), resolution)
        out[i] = resized[None] if channels == 1 else resized.transpose(2, 0, 1)
        if i % 1024 == 1023 or i == n - 1:
            bar.update(i % 1024 + 1)
    return out


def _decode_files(files: list[str], resolution: int, bar: tqdm) -> tuple[np.ndarray, list[Failure]]:
    """All files decoded, in order; failures as (index, file, reason), their rows left black."""
    images = np.zeros((len(files), 3, resolution, resolution), np.uint8)
    failures: list[Failure] = []
    size = chunk_size(len(files), os.cpu_count() or 1)
    starts = range(0, len(files), size)
    chunks = [files[start : start + size] for start in starts]
    small: list[str] = []
    for start, (decoded, failed, tiny) in zip(starts, _map_chunks(chunks, resolution), strict=True):
        images[start : start + len(decoded)] = decoded
        failures += [(start + i, files[start + i], why) for i, why in failed]
        small += tiny
        bar.update(len(decoded))
    if small:  # once, with a count: a folder of thumbnails is not thousands of lines
        log.warning("%d of %d images are less than half of %d px on their shorter side and are upscaled "
                    "(blurry), the first: %s", len(small), len(files), resolution, small[0])
    return images, failures


def chunk_size(files: int, cores: int) -> int:
    """Files per task: at most ``_CHUNK``, and small enough that each core gets a few tasks (256
    files per task left 12 of 16 cores idle on a 1,000-image set)."""
    return max(1, min(_CHUNK, -(-files // (cores * _TASKS_PER_WORKER))))


def _map_chunks(chunks: list[list[str]], resolution: int) -> Iterator[tuple[np.ndarray, list, list]]:
    workers = min(os.cpu_count() or 1, len(chunks))
    if workers < 2 or sum(map(len, chunks)) < _MIN_POOL_FILES:
        yield from (_decode_chunk(chunk, resolution) for chunk in chunks)
        return
    # workers only run PIL and numpy, so the platform's default start method (fork on Linux,
    # as torch's DataLoader uses) is safe even in a process that has initialised CUDA
    pool = ProcessPoolExecutor(workers, initializer=_leave_signals_to_the_parent)
    try:
        yield from pool.map(_decode_chunk, chunks, itertools.repeat(resolution))
    except BaseException:
        # Ctrl-C or SIGTERM: the chunks not started are dropped, not decoded before the command ends
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _leave_signals_to_the_parent() -> None:
    """A decoding worker ignores the terminal's Ctrl-C (sent to the whole process group) and dies
    quietly on SIGTERM: the command ends with its own one line, not one traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_chunk(files: list[str], resolution: int) -> tuple[np.ndarray, list[tuple[int, str]], list[str]]:
    """Runs in a worker process: a chunk of files as uint8 ``[n, 3, R, R]``, what failed, and the
    images less than half the resolution on their shorter side (upscaled: blurry)."""
    out = np.zeros((len(files), 3, resolution, resolution), np.uint8)
    failed, small = [], []
    for i, path in enumerate(files):
        try:
            pixels, (w, h) = _decode_sized(path, resolution)
            out[i] = pixels.transpose(2, 0, 1)
            if 2 * min(w, h) < resolution:
                small.append(f"{path} ({w}x{h})")
        except _UNREADABLE as err:
            failed.append((i, f"{type(err).__name__}: {err}"))
    return out, failed, small


# --- the cache files


def _cache_paths(data_dir: Path, key: str) -> tuple[Path, Path, Path]:
    return data_dir / f"{key}.npy", data_dir / f"{key}.labels.npy", data_dir / f"{key}.json"


def write_cache(data_dir: Path, key: str, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    images_path, labels_path, meta_path = _cache_paths(data_dir, key)
    atomic_write(images_path, lambda f: np.save(f, images))
    atomic_write(labels_path, lambda f: np.save(f, labels))
    # the metadata goes last: its presence marks a complete entry
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))


def read_cache(data_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], Path] | None:
    """A complete entry's images (memory-mapped), labels, class names and .npy path; else None."""
    images_path, labels_path, meta_path = _cache_paths(data_dir, key)
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path)
        names = tuple(meta["class_names"])
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: rebuild
        return None
    if not len(images) == len(labels) == meta.get("count"):
        return None
    return images, labels, names, images_path
