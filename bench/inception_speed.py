"""The FID feature pass, side by side in one run: pytorch-fid's network as it is built (the product's
feature pass before issue 15) against the pass the product runs now (``inference_copy``: batch norms
folded into the convolutions, channels-last tensors).

Both score the same real Food-101 images (centre crops at ``--resolution``, as a decoded dataset
holds them), in batches of ``--batch`` (the trial's evaluation batch), alternating the two
``--repeats`` times so drift of a shared machine hits both alike. Reports img/s of each, the
speed-up (the median over repeats of each side's time), the largest relative difference of the
pool3 features, and the FID between two halves of the images computed from each side's features,
with its relative difference (target: <= 1e-4).

    PYTHONPATH=. python bench/inception_speed.py [--device cpu] [--n 200] [--repeats 3]
    PYTHONPATH=. python bench/inception_speed.py --n 20 --repeats 1 --no-record   # a check that it runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import add_common_args, median, rate, report, shared_data, table
from PIL import Image

from orchestrator.metrics.fid import FeatureStats, fid
from orchestrator.metrics.inception import _to_unit_rgb, load_inception


def food_images(root: Path, n: int, size: int) -> torch.Tensor:
    """``n`` Food-101 images, every class in turn, as float [-1, 1] ``[n, 3, size, size]``."""
    files = sorted((root / "food-101" / "images").glob("*/*.jpg"))
    if len(files) < n:
        raise SystemExit(f"{len(files)} Food-101 images under {root}, {n} wanted (../shared/ASSETS.md)")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]
    out = []
    for path in picked:
        with Image.open(path) as image:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            crop = image.convert("RGB").crop((left, top, left + side, top + side))
            out.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def features(net: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device,
             channels_last: bool) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = _to_unit_rgb(images[start : start + batch], device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            out.append(net(x)[0].flatten(1).cpu())
    return torch.cat(out)


def half_fid(feats: torch.Tensor) -> float:
    a, b = FeatureStats(feats.shape[1]), FeatureStats(feats.shape[1])
    a.update(feats[::2])
    b.update(feats[1::2])
    return fid(a, b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--data-root", type=Path, default=shared_data())
    p.add_argument("--n", type=int, default=200, help="images per pass")
    p.add_argument("--batch", type=int, default=100, help="images per forward (the trial's EVAL_BATCH)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    extractor = load_inception(device=device)
    images = food_images(args.data_root, args.n, args.resolution)
    sides = {"pytorch-fid's network (before)": (extractor.net, False),
             "inference_copy (now)": (extractor.fast, True)}
    for net, channels_last in sides.values():  # warm-up: first calls pick kernels and allocate
        features(net, images[: args.batch], args.batch, device, channels_last)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    feats: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, (net, channels_last) in sides.items():
            start = time.perf_counter()
            feats[name] = features(net, images, args.batch, device, channels_last)  # synchronous: .cpu()
            seconds[name].append(time.perf_counter() - start)
    before, now = sides
    speedup = median(seconds[before]) / median(seconds[now])
    worst = float((feats[now] - feats[before]).abs().max() / feats[before].abs().max())
    fids = {name: half_fid(feats[name]) for name in sides}
    relative = abs(fids[now] - fids[before]) / fids[before]
    rows = [[name, rate(args.n / median(seconds[name])), f"{fids[name]:.6f}"] for name in sides]
    halves = f"FID between halves ({args.n // 2} vs {args.n // 2} images)"
    lines = table(["feature pass", "img/s", halves], rows)
    lines += ["", f"speed-up {speedup:.2f}x (target >= 2); FID relative difference {relative:.2e} "
              f"(target <= 1e-4); largest pool3 difference {worst:.2e} of the largest feature. "
              f"{args.n} Food-101 images at {args.resolution} px, batches of {args.batch}, "
              f"{args.repeats} alternating repeats, {torch.get_num_threads()} torch threads."]
    report("inception_speed", device, lines, args)


if __name__ == "__main__":
    main()
