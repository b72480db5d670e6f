"""Whole-image vs tiled inference: wall time, peak memory and agreement (prints ratios against whole-image).

    python benchmarks/bench_tiling.py --size 1024 --tile 256 --dim 16
    python benchmarks/bench_tiling.py --model modeling/demo --size 1024 --tile 512 --json tiling.json
    python benchmarks/bench_tiling.py --model modeling/demo --size 1024 --tile 512 --statistics-passes 3
    python benchmarks/bench_tiling.py --model modeling/demo --size 1024 --tile 512 --statistics-passes 6 \
        --statistics-tolerance 0.01        # restore()'s default: at most 6 passes, stopping once they settle

Each mode runs in its own subprocess so the peak resident memory (CPU) or peak allocated memory (CUDA) of one
mode does not hide the other's (CPU: `VmHWM`, see bench_common.peak_rss_kib). The model is a random Restormer of
width `--dim`, or `--model` (a folder or Hub id: e.g. the shipped weights, `modeling/demo`). The input is random:
this measures cost, and the tiled output's agreement with the whole image's, not restoration quality (for that,
`python -m training.evaluate_model --tile N` scores held-out photos).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import peak_rss_kib  # noqa: E402


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from modeling import RestormerConfig, RestormerForImageRestoration
    from modeling.inference import WHOLE_IMAGE, run_model

    if args.model:
        from modeling.inference import load_model

        model = load_model(args.model, device=args.device)
    else:
        torch.manual_seed(0)
        config = RestormerConfig(dim=args.dim, num_blocks=[1, 1, 1, 1] if args.dim < 48 else [4, 6, 6, 8])
        model = RestormerForImageRestoration(config).eval().to(args.device)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, args.size, args.size, generator=generator)
    # "whole" is the whole image whatever its size (tile=None would tile large images, or by inference_tile).
    tile = args.tile if args.mode == "tiled" else WHOLE_IMAGE
    # Warm-up in the timed run's precision and, tiled, on a crop of two tiles a side: the allocator, the kernels
    # of this dtype and the tile batch's shapes are not charged to the timed run.
    warm = min(args.size, 2 * args.tile) if tile else 64
    run_model(model, image[..., :warm, :warm], tile=tile, tile_overlap=args.overlap if tile else None,
              device=args.device, dtype=args.dtype, statistics_passes=0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    passes_run = [0]
    start = time.perf_counter()
    out = run_model(model, image, tile=tile, tile_overlap=args.overlap, device=args.device, dtype=args.dtype,
                    statistics_passes=args.statistics_passes if tile else 0,
                    statistics_tolerance=args.statistics_tolerance,
                    statistics_callback=lambda number, change: passes_run.append(number))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if args.device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = peak_rss_kib() / 1024
    torch.save(out, args.save)
    return {"mode": args.mode, "seconds": seconds, "peak_mib": peak_mib, "passes_run": max(passes_run)}


def write_report(path: str | None, report: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=None,
                        help="pixels shared by neighbouring tiles (default: restore()'s, min(32, tile // 4))")
    parser.add_argument("--dim", type=int, default=16, help="Restormer width (48 = paper model)")
    parser.add_argument("--model", default=None, help="model folder or Hub id instead of the random Restormer")
    parser.add_argument("--statistics-passes", type=int, default=0,
                        help="tiled run: passes gathering whole-image statistics first (modeling.tile_context)")
    parser.add_argument("--statistics-tolerance", type=float, default=0.0,
                        help="stop those passes once one changes the statistics by at most this (relative); 0, the "
                             "default here: run them all (restore()'s default is 0.01)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--tiled-only", action="store_true",
                        help="skip the whole-image run (sizes whose whole image does not fit): time and peak only")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--mode", choices=("whole", "tiled"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.overlap is None:  # a fixed 32 was refused for tiles under 64 px (at most half the tile)
        from modeling.tiling import default_tile_overlap

        args.overlap = default_tile_overlap(args.tile)
    if args.mode:
        print(json.dumps(run_one(args)))
        return

    import tempfile

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        modes = ("tiled",) if args.tiled_only else ("whole", "tiled")
        for mode in modes:
            save = f"{tmp}/{mode}.pt"
            command = [sys.executable, __file__, "--mode", mode, "--save", save] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k not in ("mode", "save", "tiled_only", "json") and v is not None
            ]
            # The child's stderr goes to ours: a failing mode's traceback (out of memory, a bad option) is in the
            # log, not swallowed into a bare "returned non-zero exit status".
            child = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
            if child.returncode != 0:
                sys.exit(f"bench_tiling: the {mode} run failed with exit status {child.returncode} (its error above)")
            results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
            results[mode]["out"] = torch.load(save, weights_only=True)
            # after each mode: a time limit hit during the tiled run keeps the whole-image figures
            report = {"model": args.model or f"random Restormer, dim {args.dim}", "size": args.size,
                      "tile": args.tile, "overlap": args.overlap, "statistics_passes": args.statistics_passes,
                      "statistics_tolerance": args.statistics_tolerance, "device": args.device, "dtype": args.dtype,
                      **{mode: {k: v for k, v in r.items() if k != "out"} for mode, r in results.items()}}
            write_report(args.json, report)
    tolerance = f" (at most; tolerance {args.statistics_tolerance:g})" if args.statistics_tolerance else ""
    print(f"image {args.size}x{args.size}, tile {args.tile}, overlap {args.overlap}, "
          f"statistics passes {args.statistics_passes}{tolerance}, {report['model']}, {args.device}, {args.dtype}")
    if args.tiled_only:
        print(f" tiled: {results['tiled']['seconds']:.2f} s, peak {results['tiled']['peak_mib']:.0f} MiB, "
              f"{results['tiled']['passes_run']} statistics passes run")
        write_report(args.json, report)
        return
    whole, tiled = results["whole"], results["tiled"]
    mse = ((whole["out"] - tiled["out"]) ** 2).mean().item()
    agreement = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()
    report.update(time_ratio=tiled["seconds"] / whole["seconds"], peak_ratio=tiled["peak_mib"] / whole["peak_mib"],
                  agreement_db=agreement if mse else None)
    write_report(args.json, report)
    for mode in ("whole", "tiled"):
        r = results[mode]
        passes = f", {r['passes_run']} statistics passes run" if mode == "tiled" else ""
        print(f"{mode:>6}: {r['seconds']:.2f} s, peak {r['peak_mib']:.0f} MiB{passes}")
    print(f"tiled/whole: time x{tiled['seconds'] / whole['seconds']:.2f}, "
          f"peak memory x{tiled['peak_mib'] / whole['peak_mib']:.2f}, tiled-vs-whole PSNR {agreement:.1f} dB")


if __name__ == "__main__":
    main()
