"""``shapes``: a built-in, procedurally drawn dataset whose generating classes are known exactly.

Each image is one coloured geometric shape on a dark background. Its class is a (shape, colour,
size) triple: 4 x 4 x 2 = 32 classes, listed in ``SHAPE_CLASSES`` ("red large circle"), so that
mode coverage of a generator can later be measured against a known, finite set of modes.

Shapes are drawn straight at the target resolution, antialiased by supersampling and box
downsampling. Everything random (class order, position, colour and background jitter) comes from
seeds fixed per split and per block of ``BLOCK`` images, so a build is byte-identical for a given
(split, resolution, count), the first N images of any count are the same, and the 32 and 64 px
versions show the same scenes.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
SHAPE_CLASSES: tuple[str, ...] = tuple(
    f"{colour} {size} {shape}" for shape in SHAPES for colour in COLOURS for size in SIZES
)
DEFAULT_COUNTS = {"train": 10_000, "test": 2_000}
GENERATOR_VERSION = 1  # bump when the drawing changes, so old caches are not reused

BLOCK = 32 * len(SHAPE_CLASSES)  # every block holds each class exactly 32 times
_SEED = 20240611
_SPLIT_SEEDS = {"train": 1, "test": 2}
_RGB = np.array([[220, 45, 40], [45, 200, 70], [50, 95, 235], [235, 210, 45]], np.float32)
_RADIUS = np.array([0.16, 0.29], np.float32)  # of the image side, for small and large
_SUPERSAMPLE = 4  # 4x4 samples per pixel: 17 coverage levels, smooth enough at 32 and 64 px
_CHUNK = 512  # images drawn at once; bounds the supersampled masks to ~70 MB at 64 px


def class_parts(label: int) -> tuple[str, str, str]:
    """(shape, colour, size) of a label, the inverse of ``SHAPE_CLASSES``' nesting."""
    shape, rest = divmod(label, len(COLOURS) * len(SIZES))
    colour, size = divmod(rest, len(SIZES))
    return SHAPES[shape], COLOURS[colour], SIZES[size]


def draw_shapes(split: str, resolution: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[count, 3, R, R]`` and labels int64 ``[count]`` (indices into SHAPE_CLASSES)."""
    params = _parameters(split, count)
    images = np.empty((count, 3, resolution, resolution), np.uint8)
    for start in range(0, count, _CHUNK):
        part = {k: v[start : start + _CHUNK] for k, v in params.items()}
        images[start : start + _CHUNK] = _draw_chunk(part, resolution)
    return images, params["label"].astype(np.int64)


def shape_labels(split: str, count: int) -> np.ndarray:
    """``draw_shapes``'s labels without drawing: int64 ``[count]``."""
    return _parameters(split, count)["label"].astype(np.int64)


def _parameters(split: str, count: int) -> dict[str, np.ndarray]:
    """Per-image class and jitter, drawn block by block so that a shorter build is a prefix."""
    blocks = [_block_parameters(split, b) for b in range(max(1, -(-count // BLOCK)))]
    return {key: np.concatenate([b[key] for b in blocks])[:count] for key in blocks[0]}


def _block_parameters(split: str, block: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([_SEED, _SPLIT_SEEDS[split], block])
    label = rng.permutation(np.arange(BLOCK) % len(SHAPE_CLASSES))
    radius = _RADIUS[label % len(SIZES)]
    # keep the whole shape (a triangle reaches 1.25 radii up) inside the frame, with a margin
    reach = 1.25 * radius + 0.04
    cx, cy = (reach + rng.random((2, BLOCK), np.float32) * (1 - 2 * reach)).astype(np.float32)
    colour = _RGB[(label // len(SIZES)) % len(COLOURS)] + rng.uniform(-20, 20, (BLOCK, 3))
    background = rng.uniform(6, 30, (BLOCK, 1)) * np.array([[0.9, 0.95, 1.2]])
    return {
        "label": label,
        "cx": cx,
        "cy": cy,
        "colour": np.clip(colour, 0, 255).astype(np.float32),
        "background": background.astype(np.float32),
    }


def _draw_chunk(params: dict[str, np.ndarray], resolution: int) -> np.ndarray:
    label = params["label"]
    n, side = len(label), resolution * _SUPERSAMPLE
    # sample points at sub-pixel centres, in units of the image side
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side
    dx = grid[None, None, :] - params["cx"][:, None, None]
    dy = grid[None, :, None] - params["cy"][:, None, None]
    radius = _RADIUS[label % len(SIZES)][:, None, None]
    shape = label // (len(COLOURS) * len(SIZES))
    mask = np.zeros((n, side, side), bool)
    for index, inside in enumerate((_circle, _square, _triangle, _cross)):
        rows = shape == index
        if rows.any():
            mask[rows] = inside(dx[rows], dy[rows], radius[rows])
    alpha = _box_downsample(mask.view(np.uint8), _SUPERSAMPLE)[:, None] / np.float32(_SUPERSAMPLE**2)
    background = params["background"][:, :, None, None]
    image = background + alpha * (params["colour"][:, :, None, None] - background)
    return np.rint(image).astype(np.uint8)


def _box_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """Sums of ``factor x factor`` blocks, as float32; strided adds beat ``sum(axis=(2, 4))`` 4x."""
    n, side = mask.shape[0], mask.shape[1] // factor
    cols = mask.reshape(n, side * factor, side, factor)
    cols = sum((cols[..., k] for k in range(1, factor)), cols[..., 0].astype(np.float32))
    rows = cols.reshape(n, side, factor, side)
    return sum((rows[:, :, k] for k in range(1, factor)), rows[:, :, 0])


def _circle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return dx * dx + dy * dy <= r * r


def _square(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    half = 0.85 * r  # about the circle's area
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)


def _triangle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    # apex up, circumradius 1.25 r so its area is not far below the circle's; y grows downwards
    c = 1.25 * r
    return (dy <= c / 2) & (np.sqrt(np.float32(3)) * np.abs(dx) - dy <= c)


def _cross(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    ax, ay, arm = np.abs(dx), np.abs(dy), 0.32 * r
    return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
