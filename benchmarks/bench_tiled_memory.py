"""Peak memory of a tiled restore of a large photo, in bytes per pixel outside the model.

    python benchmarks/bench_tiled_memory.py                          # 5800², tile 512, a small random PIP
    python benchmarks/bench_tiled_memory.py --size 2048 --source /path/to/another/checkout   # compare code

Each measurement is a fresh interpreter that restores a PNG file (as the CLI does: path in, PIL out, saved as
PNG) with `modeling.restore(..., tile=T)` and reports its peak RSS (`VmHWM`:
`ru_maxrss` would carry this script's own peak over `exec`). The same run on a smaller image is the baseline
(`baseline_side`): at least 2 x 2 tiles, one full batch of `restore()`'s 4 tiles per forward, and above the
label-free estimate's whole-image limit (`estimate_degradation_weights`' `max_pixels`) when the large image is, so
that both images are judged the same way: the same model, activations and libraries as the large run, and

    bytes per pixel = (peak RSS at size² - peak RSS at baseline²) / (size² - baseline²)

counts what grows with the image: decoded input, float planes, the blended output, quantization, the PIL image.
`--source` runs another checkout's `modeling` (e.g. a worktree of an earlier commit) for a before/after pair.
`--reuse-freed-memory` first calls `keep_freed_memory_for_reuse()`, as the CLI does on CPU (glibc keeps freed
activations for the next forward instead of unmapping them: faster, and the peak may grow); without it the child
is a plain `restore()` call, as earlier figures were measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)

CHILD = r"""
import inspect, json, os, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from modeling import restore
from modeling import inference
from modeling.inference import load_model
reused = os.environ.get("BENCH_REUSE_FREED_MEMORY") == "1" and inference.keep_freed_memory_for_reuse()  # as the CLI
model = load_model(sys.argv[1], device="cpu")
start = time.perf_counter()
options = {"channels_last": sys.argv[5] == "on"} if len(sys.argv) > 5 else {}  # older checkouts lack the option
passes = [0]
if "statistics_callback" in inspect.signature(restore).parameters:  # nor do older ones report statistics passes
    options["statistics_callback"] = lambda number, change: passes.append(number)
restored = restore(sys.argv[2], model, tile=int(sys.argv[3]), **options)
restored.save(sys.argv[2] + ".restored.png")
with open("/proc/self/status") as status:  # VmHWM: this image's own peak (ru_maxrss survives exec)
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_kib": peak, "seconds": time.perf_counter() - start, "size": restored.size,
                  "statistics_passes": max(passes), "reused_freed_memory": bool(reused)}))
"""


def write_photo(path: Path, size: int) -> None:
    """A smooth colour image with fine texture (compresses well, so the file stays small)."""
    import numpy as np
    from PIL import Image

    axis = np.linspace(0, 1, size, dtype=np.float32)
    image = np.empty((size, size, 3), dtype=np.uint8)
    for row in range(0, size, 512):  # in bands: the generator must not dominate this script's own memory
        y = axis[row : row + 512, None]
        image[row : row + 512, :, 0] = (127 + 100 * np.sin(9 * y + 4 * axis[None, :])).astype(np.uint8)
        image[row : row + 512, :, 1] = (127 + 100 * np.cos(7 * axis[None, :] - 5 * y)).astype(np.uint8)
        image[row : row + 512, :, 2] = (127 + 60 * np.sin(40 * (y + axis[None, :]))).astype(np.uint8)
    Image.fromarray(image).save(path)


def baseline_side(tile: int, size: int) -> int:
    """Side of the baseline photo for a `size`² photo: 2 x 2 tiles at least, and over `estimate_degradation_weights`'
    whole-image limit when the large photo is. A smaller baseline would be judged whole while the large photo is
    judged on four 512-px crops (1 MP, restored whole by the cautious mode): for tiles under 512 px that forward,
    not the tiling, then made most of the difference of the peaks (185 bytes per pixel at 2048², tile 256)."""
    import inspect

    from modeling.inference import estimate_degradation_weights
    from modeling.tiling import default_tile_overlap

    max_pixels = inspect.signature(estimate_degradation_weights).parameters["max_pixels"].default
    side = 2 * tile - default_tile_overlap(tile)
    if size * size > max_pixels:
        side = max(side, math.isqrt(max_pixels) + 1)
    return side


def measure(source: Path, model_dir: Path, image: Path, tile: int, threads: int, channels_last: str,
            reuse_freed_memory: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS=str(threads),
               BENCH_REUSE_FREED_MEMORY="1" if reuse_freed_memory else "0")
    argv = [str(model_dir), str(image), str(tile), str(threads)] + ([channels_last] if channels_last != "default" else [])
    result = subprocess.run([sys.executable, "-c", CHILD, *argv],
                            env=env, capture_output=True, text=True, cwd=source)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5800, help="side of the large square photo")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--model", default=None, help="model folder (default: a small random PIP, dim 8)")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="checkout whose `modeling` is measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", choices=("default", "on", "off"), default="default",
                        help="restore()'s channels_last (default: its own default, on for CPU); an older --source "
                        "without the option needs 'default'")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="call keep_freed_memory_for_reuse() first, as the CLI does on CPU")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = Path(args.model) if args.model else scratch / "model"
        if args.model is None:
            import torch

            from modeling import PIPConfig, PIPForImageRestoration

            torch.manual_seed(0)
            PIPForImageRestoration(PIPConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                             heads=[1, 1, 2, 2], prompt_dims=[12, 20, 16], prompt_sizes=[8, 4, 4],
                                             degradation_estimator_hidden_dim=16)).save_pretrained(model_dir)
        small, large = scratch / "small.png", scratch / "large.png"
        baseline_size = baseline_side(args.tile, args.size)
        write_photo(small, baseline_size)
        write_photo(large, args.size)
        baseline = measure(args.source, model_dir, small, args.tile, args.threads, args.channels_last,
                           args.reuse_freed_memory)
        big = measure(args.source, model_dir, large, args.tile, args.threads, args.channels_last,
                      args.reuse_freed_memory)
    extra_pixels = args.size**2 - baseline_size**2
    per_pixel = (big["peak_kib"] - baseline["peak_kib"]) * 1024 / extra_pixels
    reused = baseline.get("reused_freed_memory") and big.get("reused_freed_memory")  # False off glibc
    print(f"source {args.source}, tile {args.tile}, {args.threads} threads, channels_last {args.channels_last}, "
          f"freed memory {'reused (as the CLI)' if reused else 'given back (plain restore())'}")
    print(f"{'image':>12} {'peak RSS (MiB)':>15} {'seconds':>9} {'statistics passes':>18}")
    for size, run in ((baseline_size, baseline), (args.size, big)):
        print(f"{size:>5}x{size:<6} {run['peak_kib'] / 1024:>15.0f} {run['seconds']:>9.1f} "
              f"{run.get('statistics_passes', '?'):>18}")
    print(f"bytes per pixel outside the model: {per_pixel:.1f}")


if __name__ == "__main__":
    main()
