"""Exact mode coverage on ``shapes``: a deterministic decoder of the drawn classes, no network.

``decode_shapes`` reads back the (shape, colour, size) class of each image, or -1 when the image is
not a clean shape; mode coverage (``orchestrator.metrics.modes``) is then the fraction of the 32
``SHAPE_CLASSES`` a generator produces. A learned classifier would name a class for anything, blurry
blobs included; this decoder instead accepts an image only when every piece of evidence agrees with one class:

- foreground: the per-pixel coverage ``alpha`` in [0, 1], read linearly from the channel sum
  between the background level (the median of the frame's outer ring, which shapes keep clear
  of) and the foreground level (a high quantile). The drawing antialiases by coverage, so on real images
  ``alpha`` is the drawn coverage itself and areas and moments are exact to sub-pixel level;
- shape: dimensionless features of ``alpha`` (fill of its bounding box, aspect, vertical and
  horizontal skewness, normalised moment of inertia), each within a tolerance of one prototype;
- colour: the chromaticity of the fully covered pixels, within a tolerance of one prototype, so
  grey, desaturated or mixed colours match none;
- size: the area against the shape's drawn small and large areas;
- clean: high contrast on a dark background, nothing on the frame's border, one compact object
  (little coverage outside the box of the clearly covered pixels), and a rim of partly covered
  pixels about one pixel wide, as antialiasing gives; blur widens the rim.

Pixel noise of a few levels (as a generator leaves) is tolerated: a dead zone at both ends of the
coverage keeps it from adding up over the background, and the moments are taken inside the box.

Tolerance boxes of different prototypes never overlap (a test checks it), so "within one box" is
the confidence test: an image near two classes lies in neither box and is rejected. Everything is
scale-free, so 32 and 64 px read the same; it runs batched in torch, on the images' own device.

It lives beside the drawing code whose colours and sizes it reads back, not in ``metrics/`` (where
STYLE's sketch puts coverage): so the metrics need no dataset code, and sit on the data's floor;
the coverage arithmetic on its labels is ``metrics/modes.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from orchestrator.data.shapes import COLOURS, SIZES

_CHUNK = 1024  # images decoded at once: ~200 MB of float32 work at 64 px

# shape features, in this order, measured on the drawn images (train and test, 32 and 64 px):
# fill of the soft bounding box, width / height, skewness down and across, (mu20 + mu02) / area^2
_SHAPE_PROTOTYPES = torch.tensor(
    [
        [math.pi / 4, 1.0, 0.0, 0.0, 1 / (2 * math.pi)],  # circle (fill reads ~0.79: rim pixels)
        [1.0, 1.0, 0.0, 0.0, 1 / 6],  # square
        [0.55, 2 / math.sqrt(3), -0.566, 0.0, 0.193],  # triangle, apex up: mass low, skew -0.566
        [0.54, 1.0, 0.0, 0.0, 0.196],  # cross
    ]
)
# the apex of a small triangle at 32 px covers little of a pixel, so its fill and aspect wander most
_SHAPE_TOLERANCE = torch.tensor([0.085, 0.1, 0.2, 0.15, 0.014])

# chromaticity (rgb / sum) of the drawn colours, mirroring shapes._RGB; jitter is +-20 a channel
_RGB = torch.tensor([[220, 45, 40], [45, 200, 70], [50, 95, 235], [235, 210, 45]], dtype=torch.float32)
_COLOUR_PROTOTYPES = _RGB / _RGB.sum(1, keepdim=True)
_COLOUR_TOLERANCE = torch.full((3,), 0.12)

# drawn areas as a fraction of the frame: radius (shapes._RADIUS) squared times each outline's area
# in radii: circle, square of half-side 0.85, triangle of circumradius 1.25, cross of arm 0.32
_RADIUS = torch.tensor([0.16, 0.29])
_AREA_FACTOR = torch.tensor([math.pi, 1.7**2, 3 * math.sqrt(3) / 4 * 1.25**2, 4 * 0.64 - 0.64**2])
_AREA_TOLERANCE = 0.3  # |log(area / drawn area)|; small and large differ by log(3.3) = 1.19
# perimeter / sqrt(area) of each outline, to turn a count of rim pixels into a rim width in pixels
_PERIMETER_FACTOR = torch.tensor([2 * math.pi, 4 * 1.7, 3 * math.sqrt(3) * 1.25, 8.0]) / _AREA_FACTOR.sqrt()

_MIN_CONTRAST = 120.0  # channel-sum levels; the dimmest drawn colour clears its background by ~160
_MAX_BACKGROUND = 150.0  # channel sum; the drawn background stays below 92
_MAX_RIM_WIDTH = 1.6  # pixels; antialiased edges give <= ~1, a 3-pixel box blur ~2
_MAX_BORDER_ALPHA = 0.02  # mean coverage of the frame's outer ring; drawn shapes keep clear of it
_MAX_STRAY = 0.1  # of the coverage outside the shape's window: a second object, or heavy noise
_DEAD_ZONE = 0.15  # of the contrast: coverage below reads 0, above 1 - this reads 1
_CORE_ALPHA = 0.9  # pixels at least this covered give the colour
_RIM = (0.15, 0.85)  # coverage strictly between these counts as a partly covered rim pixel


def decode_shapes(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class index into ``SHAPE_CLASSES`` of each image ``[N, 3, R, R]``, or -1 where not a clean shape.

    uint8 images are read as 0..255; floating-point ones as the generator's [-1, 1], rounded to
    the same 256 levels so that both give the same labels.
    """
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] < 16:
        raise ValueError(f"expected images [N, 3, R, R] with R >= 16, got {shape}")
    # converted chunk by chunk: a float copy of the whole batch would be 4x its uint8 size
    labels = [_decode_chunk(_as_levels(images[i : i + _CHUNK])) for i in range(0, shape[0], _CHUNK)]
    if not labels:
        return np.zeros(0, np.int64)
    return torch.cat(labels).cpu().numpy().astype(np.int64)


def _as_levels(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """float32 in 0..255, integral, on the input's device."""
    # np.array copies: torch refuses to wrap read-only arrays (memory-mapped caches) cleanly
    x = images.detach() if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    if x.dtype == torch.uint8:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"expected uint8 or floating-point images, got {x.dtype}")
    # round to the 8-bit levels: generated images are saved that way anyway, and it makes the
    # uint8 -> [-1, 1] -> decode round trip exact rather than a hair off at every threshold
    return ((x.float() + 1) * 127.5).round().clamp(0, 255)


def _decode_chunk(x: torch.Tensor) -> torch.Tensor:
    alpha, clean = _coverage(x)
    geometry = _geometry(alpha)
    shape = _match(geometry["shape"], _SHAPE_PROTOTYPES.to(x.device), _SHAPE_TOLERANCE.to(x.device))
    colour = _match(_chroma(x, alpha), _COLOUR_PROTOTYPES.to(x.device), _COLOUR_TOLERANCE.to(x.device))
    size = _size(geometry["area"], shape)
    rim = geometry["rim"] / _PERIMETER_FACTOR.to(x.device)[shape.clamp(min=0)]
    ok = clean & (rim <= _MAX_RIM_WIDTH) & (geometry["border"] <= _MAX_BORDER_ALPHA)
    ok &= geometry["stray"] <= _MAX_STRAY
    ok &= (shape >= 0) & (colour >= 0) & (size >= 0)
    label = (shape * len(COLOURS) + colour) * len(SIZES) + size
    return torch.where(ok, label, torch.full_like(label, -1))


def _coverage(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel coverage ``[N, R, R]`` and whether the image has a bright shape on a dark ground."""
    brightness = x.sum(1)  # linear in coverage, unlike max or luma after clipping
    # drawn shapes keep clear of the frame's outer ring, so its median is the background; a
    # median over the ring is 16x cheaper than over the frame at 64 px, and the costliest step
    background = x[:, :, _ring(x)].median(2).values.sum(1)
    # the level of the brightest 1/64 of the frame: every drawn shape fully covers more than that,
    # and unlike the maximum it ignores a few hot pixels
    k = max(1, brightness[0].numel() // 64)
    foreground = brightness.flatten(1).topk(k, 1).values[:, -1]
    contrast = foreground - background
    scale = contrast.clamp(min=1)[:, None, None]
    alpha = ((brightness - background[:, None, None]) / scale).clamp(0, 1)
    return alpha, (contrast >= _MIN_CONTRAST) & (background <= _MAX_BACKGROUND)


def _geometry(alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shape features ``[N, 5]`` (see ``_SHAPE_PROTOTYPES``), area, rim count, border and stray coverage."""
    side = alpha.shape[-1]
    window = _window(alpha)
    # rim pixels are counted on the raw coverage: the dead zone below would narrow a blurred rim
    rim = (window & (alpha > _RIM[0]) & (alpha < _RIM[1])).sum((1, 2))
    # a dead zone at both ends: pixel noise on the background would otherwise add up, over many
    # pixels, to mass and extent far from the shape (generated images are never quite clean)
    alpha = ((alpha - _DEAD_ZONE) / (1 - 2 * _DEAD_ZONE)).clamp(0, 1)
    total = alpha.sum((1, 2)).clamp(min=1e-6)
    alpha = alpha * window
    mass = alpha.sum((1, 2)).clamp(min=1e-6)
    return {
        "shape": _shape_features(alpha, mass),
        "area": mass / side**2,
        "rim": rim / mass.sqrt(),
        "border": alpha[:, _ring(alpha)].mean(1),
        "stray": 1 - mass / total,
    }


def _window(alpha: torch.Tensor) -> torch.Tensor:
    """The bounding box of the clearly covered pixels, grown by a pixel for the rim ``[N, R, R]``."""
    strong = alpha > 0.5
    index = torch.arange(alpha.shape[-1], device=alpha.device)
    rows, cols = (_span(hit, index) for hit in (strong.any(2), strong.any(1)))
    return rows[:, :, None] & cols[:, None, :]


def _span(hit: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """From the first to the last set index of each row ``[N, R]``, one more each side; empty if none."""
    first = torch.where(hit, index, len(index)).amin(1, keepdim=True) - 1
    last = torch.where(hit, index, -1).amax(1, keepdim=True) + 1
    return (index >= first) & (index <= last)


def _shape_features(alpha: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Fill of the soft bounding box, aspect, skewness down and across, normalised inertia ``[N, 5]``."""
    # soft bounding box: a column's extent is its most covered pixel, so partly covered edge
    # columns count by their coverage and the box is sub-pixel exact for straight edges
    width = alpha.amax(1).sum(-1).clamp(min=1e-6)
    height = alpha.amax(2).sum(-1).clamp(min=1e-6)
    # the moments used here are all of one axis, so the row and column profiles hold them:
    # O(N R) work after two sums instead of O(N R^2) per moment
    across, down = alpha.sum(1), alpha.sum(2)
    grid = torch.arange(alpha.shape[-1], dtype=alpha.dtype, device=alpha.device) + 0.5
    dx = grid - ((across * grid).sum(-1) / mass)[:, None]
    dy = grid - ((down * grid).sum(-1) / mass)[:, None]
    mu20 = (across * dx**2).sum(-1).clamp(min=1e-6)
    mu02 = (down * dy**2).sum(-1).clamp(min=1e-6)
    skew_x = (across * dx**3).sum(-1) * mass.sqrt() / mu20**1.5
    skew_y = (down * dy**3).sum(-1) * mass.sqrt() / mu02**1.5
    return torch.stack([mass / (width * height), width / height, skew_y, skew_x, (mu20 + mu02) / mass**2], 1)


def _ring(images: torch.Tensor) -> torch.Tensor:
    """The outermost pixels of the frame, as a boolean mask ``[R, R]``."""
    ring = torch.ones(images.shape[-2:], dtype=torch.bool, device=images.device)
    ring[1:-1, 1:-1] = False
    return ring


def _chroma(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """rgb / (r + g + b) of the fully covered pixels ``[N, 3]``; NaN where there are none."""
    core = (alpha >= _CORE_ALPHA).unsqueeze(1).to(x.dtype)
    rgb = (x * core).sum((2, 3)) / core.sum((2, 3))
    return rgb / rgb.sum(1, keepdim=True).clamp(min=1)


def _match(features: torch.Tensor, prototypes: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
    """Index of the prototype whose tolerance box holds each row ``[N, F]``, or -1 (NaN matches none)."""
    inside = ((features[:, None, :] - prototypes[None]).abs() <= tolerance).all(-1)
    # boxes are disjoint, so at most one column is set; argmax picks it
    index = inside.long().argmax(1)
    return torch.where(inside.any(1), index, torch.full_like(index, -1))


def _size(area: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """0 small, 1 large, -1 when the area is neither size of the decoded shape."""
    drawn = _AREA_FACTOR.to(area.device)[shape.clamp(min=0)][:, None] * _RADIUS.to(area.device) ** 2
    off = (area[:, None].clamp(min=1e-9) / drawn).log().abs()
    best = off.argmin(1)
    return torch.where(off.min(1).values <= _AREA_TOLERANCE, best, torch.full_like(best, -1))
