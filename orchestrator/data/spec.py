"""``DataSpec``: which images a run asks for, at which resolution; everything the decoded cache
depends on. Its own module because the finders (``sources``) and the cache (``dataset``) both need it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
