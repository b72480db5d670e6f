"""Tiles against the whole image on held-out photos, with and without whole-image statistics for the tiles.

    python benchmarks/bench_tile_statistics.py --model modeling/demo --heldout data/embedded/heldout \
        --rows low-light haze --tile 512 --passes 0 3 --json tiles.json
    python benchmarks/bench_tile_statistics.py --model modeling/demo --heldout data/embedded/heldout \
        --rows low-light haze --tile 512 --passes 6 --tolerance 0.01   # restore()'s default

For every photo and row (the held-out evaluation's synthesis: `training.evaluate_model`), the model restores the
degraded photo whole and in `--tile` tiles with each number of statistics passes (`restore(statistics_passes=N,
statistics_tolerance=T)`; 0: every tile uses its own statistics; `--tolerance` 0, the default here: exactly N
passes, else at most N, stopping once they settle; the passes each photo needed are recorded). Labelled (the row's
degradation), fp32, results quantised to 8 bits as a saved PNG holds them. Printed and written per photo and as row
means: the PSNR change against the whole image's result (what tiling costs) and the PSNR of the tiled result
against the whole one (how closely the tiles reproduce it), and the seconds of each tiled restore.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)


def psnr(prediction, reference) -> float:
    import numpy as np

    mse = float(np.mean((prediction.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))


def as_8_bits(image):
    """A float [0, 1] image as a saved 8-bit PNG holds it, back in [0, 1] (float64)."""
    import numpy as np

    return np.round(np.clip(image, 0, 1) * 255) / 255


def measure(model_source: str, heldout: str, rows: list[str], tile: int, passes: list[int],
            overlap: int | None = None, tolerance: float = 0.0) -> list[dict]:
    """One record per (row, photo): whole-image PSNR, and per pass count the tiled PSNR, agreement, seconds and
    the statistics passes run."""
    import numpy as np

    from modeling import restore
    from modeling.inference import accepts_degradation_labels, load_model
    from training.data.files import decode_image, list_image_files
    from training.evaluate_model import check_rows, row_setting, synthesize_row_image

    check_rows(rows)
    model = load_model(model_source)
    labelled = accepts_degradation_labels(model)
    files = list_image_files(heldout)
    if not files:
        raise FileNotFoundError(f"no images in {heldout}")
    records = []
    for row in rows:
        task, _ = row_setting(row)
        options = dict(dtype="fp32", **({"degradation": task} if labelled else {}))
        for index, path in enumerate(files):
            clean = decode_image(path)[0]
            reference = clean.astype(np.float64) / 255
            degraded = synthesize_row_image(clean, row, index)
            whole = as_8_bits(restore(degraded, model, tile=0, **options))
            record = {"row": row, "image": Path(path).name, "input": psnr(degraded, reference),
                      "whole": psnr(whole, reference), "tiled": {}}
            for count in passes:
                passes_run = [0]
                started = time.perf_counter()
                tiled = restore(degraded, model, tile=tile, tile_overlap=overlap, statistics_passes=count,
                                statistics_tolerance=tolerance,
                                statistics_callback=lambda number, change: passes_run.append(number), **options)
                seconds = time.perf_counter() - started
                tiled = as_8_bits(tiled)
                record["tiled"][str(count)] = {
                    "psnr_change": psnr(tiled, reference) - record["whole"],
                    "agreement_db": psnr(tiled, whole),
                    "seconds": seconds,
                    "passes_run": max(passes_run),
                }
            records.append(record)
            print(json.dumps(record), flush=True)
    return records


def summary(records: list[dict], passes: list[int]) -> dict:
    """Per row and pass count: the mean, smallest and largest PSNR change, the lowest agreement, mean seconds."""
    rows: dict = {}
    for record in records:
        for count in passes:
            entry = record["tiled"][str(count)]
            rows.setdefault(record["row"], {}).setdefault(str(count), []).append(entry)
    table = {}
    for row, by_count in rows.items():
        table[row] = {}
        for count, entries in by_count.items():
            changes = [entry["psnr_change"] for entry in entries]
            table[row][count] = {
                "mean_change": sum(changes) / len(changes), "min_change": min(changes), "max_change": max(changes),
                "min_agreement_db": min(entry["agreement_db"] for entry in entries),
                "mean_seconds": sum(entry["seconds"] for entry in entries) / len(entries),
                "mean_passes_run": sum(entry["passes_run"] for entry in entries) / len(entries),
                "max_passes_run": max(entry["passes_run"] for entry in entries),
            }
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--heldout", required=True, help="folder of clean held-out photos")
    parser.add_argument("--rows", nargs="+", default=["low-light", "haze"], help="evaluation rows (noise-25, haze ...)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=None, help="default: restore()'s (32, at most tile // 4)")
    parser.add_argument("--passes", type=int, nargs="+", default=[0, 3],
                        help="statistics passes to compare (the most, with --tolerance)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="restore()'s statistics_tolerance (0, the default: exactly --passes passes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the records and the summary here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    records = measure(args.model, args.heldout, args.rows, args.tile, args.passes, args.overlap, args.tolerance)
    table = summary(records, args.passes)
    print(f"tile {args.tile}, tolerance {args.tolerance:g}, {args.model}: change against the whole image in dB, "
          "mean (range); lowest agreement; passes run (mean, most)")
    for row, by_count in table.items():
        for count, entry in by_count.items():
            print(f"{row:>14}  passes {count}: {entry['mean_change']:+.3f} ({entry['min_change']:+.3f} … "
                  f"{entry['max_change']:+.3f}); agreement >= {entry['min_agreement_db']:.1f} dB; passes run "
                  f"{entry['mean_passes_run']:.2f}, {entry['max_passes_run']}; {entry['mean_seconds']:.1f} s per photo")
    result = {"model": args.model, "tile": args.tile, "overlap": args.overlap, "passes": args.passes,
              "tolerance": args.tolerance,
              "records": records, "summary": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
