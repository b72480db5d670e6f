"""Throughput of the 5-task `datasets` stream vs a plain PyTorch map-style Dataset over the same files.

Both sides read the same epoch plan (official repeat factors), decode with PIL, take a random 128x128 crop and
flip/rot90 mode and synthesize degradations with the same functions. The difference is the streaming machinery
(`from_generator` records, `.map`/`.filter`, bad-data accounting, shard-per-worker reading, state snapshots)
against a ``DataLoader`` over a list of the same plan. Each run times a whole epoch, so both do identical work.

    python benchmarks/bench_data_stream.py                    # small generated corpus (temporary folder)
    python benchmarks/bench_data_stream.py --root data/Train  # real corpus: Denoise/ Derain/ Dehaze/ Deblur/ Enhance/

Tasks missing under ``--root`` are synthesized from the clean photos.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import (  # noqa: E402
    RestorationStream,
    build_dataloader,
    preset_sources,
)
from training.degradations import augment, random_augment_mode, synthesize  # noqa: E402

# Sub-folder names of the PromptIR / PIP / AdaIR training tree.
ROOT_SUBFOLDERS = {
    "clean": ("Denoise",),
    "rain": ("Derain",),
    "haze": ("Dehaze",),
    "blur": ("Deblur", "GOPRO_deblur"),
    "low-light": ("Enhance",),
}


def smooth_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for c in range(3):
        fx, fy, phase = rng.uniform(0.01, 0.08, 2).tolist() + [rng.uniform(0, 6.3)]
        texture = 0.05 * rng.standard_normal((height, width))
        channels.append(0.5 + 0.35 * np.sin(xx * fx + phase) * np.cos(yy * fy) + texture)
    return (np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8)


def generate_corpus(root: Path, clean: int, pairs: int, height: int, width: int) -> dict[str, Path]:
    """A small 5-task tree in the official layouts (PNG, like BSD/Rain100L/GoPro/LOL; JPEG for OTS)."""
    rng = np.random.default_rng(0)

    def save(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(image).save(path)

    for i in range(clean):
        save(root / f"Denoise/{i:04d}.png", smooth_photo(rng, height, width))
    for k in range(pairs):
        base = smooth_photo(rng, height, width)
        darker = (base * 0.4).astype(np.uint8)
        save(root / f"Derain/gt/norain-{k}.png", base)
        streaks = (200 * (rng.random(base.shape[:2]) < 0.01)[..., None]).astype(np.uint8)
        save(root / f"Derain/rainy/rain-{k}.png", np.maximum(base, streaks))
        save(root / f"Dehaze/original/{k:04d}.jpg", base)
        save(root / f"Dehaze/synthetic/part1/{k:04d}_0.8_0.1.jpg", (base * 0.6 + 90).astype(np.uint8))
        save(root / f"Deblur/GOPR0372_07_00/sharp/{k:06d}.png", base)
        save(root / f"Deblur/GOPR0372_07_00/blur/{k:06d}.png", base)
        save(root / f"Enhance/high/{k}.png", base)
        save(root / f"Enhance/low/{k}.png", darker)
    return {task: root / names[0] for task, names in ROOT_SUBFOLDERS.items()}


def roots_from(root: Path) -> dict[str, Path]:
    roots = {}
    for task, names in ROOT_SUBFOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                roots[task] = root / name
                break
    if "clean" not in roots:
        raise SystemExit(f"{root} has no Denoise/ folder of clean photos")
    return roots


def read_rgb(path: str) -> np.ndarray:
    """An image file as an RGB uint8 array (H, W, 3)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class PlainPairDataset(torch.utils.data.Dataset):
    """The baseline: an official-style map-style dataset over (degraded | None, clean, synthesis) entries."""

    def __init__(self, entries: list[tuple[str | None, str, str | None, dict, int]], patch_size: int, seed: int):
        self.entries = entries
        self.patch_size = patch_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        degraded_path, clean_path, synthesis, synthesis_kwargs, task = self.entries[index]
        rng = np.random.default_rng([self.seed, index])
        clean = read_rgb(clean_path)
        images = [clean] if degraded_path is None else [read_rgb(degraded_path), clean]
        height, width = clean.shape[:2]
        top = int(rng.integers(0, height - self.patch_size + 1))
        left = int(rng.integers(0, width - self.patch_size + 1))
        mode = random_augment_mode(rng)
        images = [augment(im[top : top + self.patch_size, left : left + self.patch_size], mode) for im in images]
        if degraded_path is None:
            images = [synthesize(images[0], synthesis, rng, **synthesis_kwargs).image, images[0]]
        degraded, clean = (torch.from_numpy(im.transpose(2, 0, 1).copy()).float().div_(255) for im in images)
        return {"degraded": degraded, "clean": clean, "task": task}


def time_loader(loader, samples: int | None) -> tuple[float, int]:
    """Samples/s after the first batch (worker start-up excluded), over ``samples`` or the whole epoch."""
    iterator = iter(loader)
    next(iterator)
    seen, start = 0, time.perf_counter()
    for batch in iterator:
        seen += batch["degraded"].shape[0]
        if samples is not None and seen >= samples:
            break
    elapsed = time.perf_counter() - start
    return seen / elapsed, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="training tree with Denoise/ Derain/ Dehaze/ Deblur/ Enhance/")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples timed per run (default: the whole epoch, so both loaders do identical work)")
    parser.add_argument("--batch-size", default=8, type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch-size", default=128, type=int)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loader (median is reported)")
    parser.add_argument("--clean", type=int, default=24, help="generated corpus: clean photos")
    parser.add_argument("--pairs", type=int, default=6, help="generated corpus: pairs per paired task")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 480), metavar=("H", "W"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        if args.root:
            roots, corpus = roots_from(args.root), str(args.root)
        else:
            roots = generate_corpus(Path(scratch), args.clean, args.pairs, *args.size)
            corpus = f"generated: {args.clean} clean + 4 x {args.pairs} pairs, {args.size[0]}x{args.size[1]}"
        sources = preset_sources("5-task", roots, synthesize_missing=True)
        stream = RestorationStream(sources, patch_size=args.patch_size, seed=0, shards_per_rank=16)
        plan = stream.plan()
        entries = [
            (*sources[s].pairs[p], sources[s].synthesis, dict(sources[s].synthesis_kwargs),
             stream.label_names.index(sources[s].task_name))
            for s, p in zip(plan.source.tolist(), plan.pair.tolist())
        ]
        plain = PlainPairDataset(entries, args.patch_size, seed=0)

        rates: dict[str, list[float]] = {"stream": [], "plain": []}
        for _ in range(args.repeats):  # alternate the two so that machine noise hits both alike
            for name in ("stream", "plain"):
                if name == "stream":
                    loader = build_dataloader(stream, args.batch_size, num_workers=args.workers)
                else:
                    # the plan is already a (seed, epoch) permutation: same samples, same order as the stream
                    loader = torch.utils.data.DataLoader(plain, batch_size=args.batch_size, shuffle=False,
                                                         num_workers=args.workers, drop_last=True)
                rates[name].append(time_loader(loader, args.samples)[0])
        results = {name: float(np.median(values)) for name, values in rates.items()}

    print(f"corpus: {corpus}; plan: {len(plan)} examples/epoch over {len(sources)} sources; "
          f"patch {args.patch_size}, batch {args.batch_size}, {args.workers} workers, {os.cpu_count()} CPUs")
    for name, label in (("stream", "5-task datasets stream (StatefulDataLoader)"),
                        ("plain", "plain map-style Dataset (DataLoader)      ")):
        runs = ", ".join(f"{r:.1f}" for r in rates[name])
        print(f"{label}: {results[name]:7.1f} samples/s (median of {runs})")
    # runs alternate, so each stream run has a plain run next to it under the same machine load
    paired = [a / b for a, b in zip(rates["stream"], rates["plain"])]
    print(f"ratio stream / plain: {results['stream'] / results['plain']:.2f} "
          f"(per alternating pair: {', '.join(f'{r:.2f}' for r in paired)}; median {np.median(paired):.2f})")


if __name__ == "__main__":
    main()
