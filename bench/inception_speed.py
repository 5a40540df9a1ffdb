"""The FID feature pass, side by side in one run: pytorch-fid's network as it is built (the product's
feature pass before issue 15) against the pass the product runs now (``inference_copy``: batch norms
folded into the convolutions, channels-last tensors).

Both score the same images, in batches of ``--batch`` (the trial's evaluation batch), alternating
the two ``--repeats`` times so drift of a shared machine hits both alike: real Food-101 images
(centre crops at ``--resolution``, as a decoded dataset holds them: the reference side, scored once
per dataset) and a newly initialised DCGAN generator's images from the fixed evaluation latents (what
every evaluation of every trial scores; on this CPU the network as built runs at about half its
speed on such images, against its speed on real ones). Reports img/s of each, the speed-up (the
median over repeats of each side's time), the largest relative difference of the pool3 features,
and the FID between the real and the generated images from each side's features, with its relative
difference (target: <= 1e-4).

Each side's rate is also given in GFLOP/s (the network's floating-point operations per image, counted
by torch's FlopCounterMode, times img/s), beside the fp32 matrix-multiply rate of the same threads
measured in the same run: the most any fp32 implementation of the pass could reach here. ``--threads
1`` is what one trial of a search running two at once on two cores has.

    PYTHONPATH=. python bench/inception_speed.py [--device cpu] [--n 200] [--repeats 3]
    PYTHONPATH=. python bench/inception_speed.py --threads 1      # one trial's share of a 2-core search
    PYTHONPATH=. python bench/inception_speed.py --n 20 --repeats 1 --no-record   # a check that it runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import add_common_args, median, rate, report, shared_data, table, timed
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.metrics.frechet import FeatureStats, fid
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


def generated_images(n: int, size: int) -> torch.Tensor:
    """What a trial's first evaluation scores: a new DCGAN generator's images, latents seeded."""
    from orchestrator.config import TrialConfig
    from orchestrator.gan.models import build_models
    from orchestrator.gan.step import fixed_latents

    config = TrialConfig()
    torch.manual_seed(0)
    generator, _ = build_models(config, 3, size)
    with torch.no_grad():
        return generator.eval()(fixed_latents(config.nz, n, 12345)).clamp(-1, 1)


def features(net: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device,
             channels_last: bool) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = _to_unit_rgb(images[start : start + batch], device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            out.append(net(x)[0].flatten(1).cpu())
    return torch.cat(out)


def flops_per_image(net: torch.nn.Module, device: torch.device) -> float:
    x = torch.zeros(2, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 2


def gemm_gflops(device: torch.device, size: int = 4096, repeats: int = 5) -> float:
    """fp32 matrix-multiply GFLOP/s on ``device``: the practical ceiling of a convolution network."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    seconds = [timed(lambda: a @ b, device) for _ in range(repeats)]
    return 2 * size**3 / median(seconds) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--data-root", type=Path, default=shared_data())
    p.add_argument("--n", type=int, default=200, help="images per pass")
    p.add_argument("--batch", type=int, default=100, help="images per forward (the trial's EVAL_BATCH)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    extractor = load_inception(device=device)
    images = food_images(args.data_root, args.n, args.resolution)
    sides = {"pytorch-fid's network (before)": (extractor.net, False),
             "inference_copy (now)": (extractor.fast, True)}
    inputs = {"real Food-101": images, "generated": generated_images(args.n, args.resolution)}
    for net, channels_last in sides.values():  # warm-up: first calls pick kernels and allocate
        features(net, images[: args.batch], args.batch, device, channels_last)
    seconds: dict[tuple[str, str], list[float]] = {(side, kind): [] for side in sides for kind in inputs}
    feats: dict[tuple[str, str], torch.Tensor] = {}
    for _ in range(args.repeats):
        for kind, batch in inputs.items():
            for side, (net, channels_last) in sides.items():
                start = time.perf_counter()
                feats[side, kind] = features(net, batch, args.batch, device, channels_last)  # synchronous
                seconds[side, kind].append(time.perf_counter() - start)
    before, now = sides
    gflop, peak = flops_per_image(extractor.fast, device) / 1e9, gemm_gflops(device)
    rows, fids = [], {}
    for side in sides:
        real, fake = FeatureStats(2048), FeatureStats(2048)
        real.update(feats[side, "real Food-101"])
        fake.update(feats[side, "generated"])
        fids[side] = fid(real, fake)
        speeds = [args.n / median(seconds[side, kind]) for kind in inputs]
        rows.append([side, *(f"{rate(v)} ({v * gflop:.0f} GFLOP/s)" for v in speeds), f"{fids[side]:.6f}"])
    ceiling = f"{rate(peak / gflop)} ({peak:.0f} GFLOP/s)"
    rows.append(["fp32 matrix multiply, the ceiling", ceiling, ceiling, ""])
    lines = table(["feature pass", *(f"img/s, {kind}" for kind in inputs), "FID real vs generated"], rows)
    speedups = {kind: median(seconds[before, kind]) / median(seconds[now, kind]) for kind in inputs}
    worst = max(float((feats[now, k] - feats[before, k]).abs().max() / feats[before, k].abs().max())
                for k in inputs)
    relative = abs(fids[now] - fids[before]) / fids[before]
    lines += ["", "speed-up " + ", ".join(f"{v:.2f}x on {k} images" for k, v in speedups.items())
              + f" (target >= 2); FID relative difference {relative:.2e} (target <= 1e-4); largest pool3 "
              f"difference {worst:.2e} of the largest feature. {args.n} images of each at {args.resolution} "
              f"px, batches of {args.batch}, {args.repeats} alternating repeats, "
              f"{torch.get_num_threads()} torch threads, {gflop:.2f} GFLOP per image."]
    report("inception_speed", device, lines, args)


if __name__ == "__main__":
    main()
