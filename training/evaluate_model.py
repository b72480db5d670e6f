"""Evaluate a restoration model on held-out clean photos with synthesized degradations.

    python -m training.evaluate_model --model outputs/pip-restormer-demo/model --heldout data/embedded/heldout \
        --output outputs/pip-restormer-demo/heldout_eval.json

Rows (``--noise_sigmas`` and ``--settings``; default all of noise-15/25/50 and the settings below):

* ``noise-<sigma>``: i.i.d. Gaussian noise of that std on the 0-255 scale (official PromptIR formula);
* ``blur-gaussian``: Gaussian blur, std 2 px (the same as Pillow's ``ImageFilter.GaussianBlur(radius=2)``);
* ``blur-defocus``: out-of-focus disk, radius 3 px;
* ``blur-motion``: straight camera shake, 15 px at an angle drawn per image;
* ``low-light``, ``haze``, ``rain``: the training synthesis with its parameters drawn per image;
* ``blur`` (on request): the training blur mix (random family and parameters).

Any other degradation or CDD-11 composite name of :mod:`training.degradations` is accepted too (labelled with
its own name). For every held-out image and row, the degraded image is synthesized with a seed fixed by (seed,
row name, the image's place in the sorted folder), so a row gives the same images whatever other rows are
requested; a photo evaluated from another folder (alone, or among other photos) gets another synthesis. It is
restored through ``modeling.restore`` (with the true label, and for models with a degradation estimator also without), and
scored with the repository's ``evaluate`` metric (PromptIR protocol). Reported per row: PSNR/SSIM of the
restoration, of the degraded input, of the label-free restoration (``psnr_auto``) and, for noise, of the
classical non-local-means baseline (scikit-image, sigma given).

``--output`` writes JSON in the format of ``training.package_demo``'s ``eval_results.json``: ``heldout`` (the
files scored), the restore settings the numbers were measured with (``seed``, ``tile``, ``tile_overlap``,
``statistics_passes``, ``statistics_tolerance``, ``dtype``, ``auto_mode``; ``restore()``'s defaults resolved) and
``results`` (the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.inference import AUTO_MODES, DEFAULT_AUTO_MODE  # noqa: E402
from training.data import decode_image, list_image_files  # noqa: E402
from training.degradations import synthesize  # noqa: E402
from training.checkpointing import check_output_file, write_text_atomic  # noqa: E402
from training.evaluation import load_restoration_metric  # noqa: E402

SETTINGS: dict[str, tuple[str, dict]] = {
    "blur": ("blur", {}),
    "blur-gaussian": ("blur", {"family": "gaussian", "sigma": 2.0}),
    "blur-defocus": ("blur", {"family": "defocus", "radius": 3.0}),
    "blur-motion": ("blur", {"family": "motion", "length": 15}),
    "low-light": ("low-light", {}),
    "haze": ("haze", {}),
    "rain": ("rain", {}),
}
"""Named held-out rows: ``name -> (degradation synthesized and given to the model, fixed synthesis parameters)``."""

DEFAULT_NOISE_SIGMAS = (15, 25, 50)
DEFAULT_SETTINGS = ("blur-gaussian", "blur-defocus", "blur-motion", "low-light", "haze", "rain")


def nl_means(image: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image non-local means on a float RGB image in [0, 1], with the noise level given (not estimated)."""
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(
        image, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
    ).astype(np.float32)


def row_setting(label: str) -> tuple[str, dict]:
    """``(degradation, synthesis parameters)`` of a held-out row: ``noise-25`` or a :data:`SETTINGS` name."""
    if label.startswith("noise-"):
        return "noise", {"sigma": float(label.removeprefix("noise-"))}
    return SETTINGS.get(label, (label, {}))


def check_rows(labels: Sequence[str]) -> None:
    """Synthesize every row once on a tiny image, so that a misspelled row name or parameter fails before any
    row is evaluated (not after the rows before it have run); ValueError naming the row and the known names."""
    probe = np.full((16, 16, 3), 128, np.uint8)
    for label in labels:
        try:
            task, params = row_setting(label)
            synthesize(probe, task, np.random.default_rng(0), **params)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"row {label!r} cannot be synthesized ({error}); rows are noise-<sigma>, {', '.join(SETTINGS)}"
            ) from None


def synthesize_row_image(clean: np.ndarray, label: str, image_index: int, seed: int = 0) -> np.ndarray:
    """The degraded float [0, 1] image of row ``label`` for held-out image ``image_index``: seeded by the row's
    name and the image's place, so every evaluation (and every tool that inspects one) sees the same inputs."""
    task, params = row_setting(label)
    rng = np.random.default_rng([seed, zlib.crc32(label.encode()), image_index])
    return synthesize(clean, task, rng, **params).image.astype(np.float32) / 255


def _psnr(metric, prediction: np.ndarray, reference: np.ndarray) -> float:
    return float(metric.compute(predictions=[prediction], references=[reference])["psnr"])


def evaluate_heldout(
    model,
    heldout: str | Path,
    *,
    noise_sigmas: tuple[float, ...] = DEFAULT_NOISE_SIGMAS,
    settings: tuple[str, ...] = DEFAULT_SETTINGS,
    seed: int = 0,
    tile: int | None = None,
    tile_overlap: int | None = None,
    statistics_passes: int | None = None,
    statistics_tolerance: float | None = None,
    baseline: bool = True,
    auto_mode: str = DEFAULT_AUTO_MODE,
    dtype: str = "fp32",
) -> dict[str, dict]:
    """Mean scores per row (``noise-25``, ``blur-gaussian``, ...) over the held-out images (see the module doc).

    Besides the means, each row reports every image's PSNR gain over the degraded input by its path under
    ``heldout`` (``image_gains``; ``image_gains_auto`` for the label-free mode run with ``auto_mode``) and the worst of them
    (``min_image_gain``, ``min_image_gain_auto``), since a restoration must never make an image worse.
    ``dtype`` is `restore()`'s precision: "fp32" by default, so that the scores do not depend on the CPU.
    """
    from modeling import restore
    from modeling.inference import accepts_degradation_labels

    check_rows([f"noise-{sigma:g}" for sigma in noise_sigmas] + list(settings))
    metric = load_restoration_metric()
    takes_labels = accepts_degradation_labels(model)
    label_free = takes_labels and getattr(model, "can_estimate_degradation", False)
    files = list_image_files(heldout)
    if not files:
        raise FileNotFoundError(f"no images in {heldout}")
    cleans = [decode_image(path)[0] for path in files]
    all_settings = [(label, *row_setting(label)) for label in [f"noise-{sigma:g}" for sigma in noise_sigmas]]
    all_settings += [(name, *row_setting(name)) for name in settings]
    results = {}
    started = time.monotonic()
    for label, task, params in all_settings:
        degraded, restored, restored_auto, baseline_out = [], [], [], []
        for image_index, clean in enumerate(cleans):
            noisy = synthesize_row_image(clean, label, image_index, seed)
            degraded.append(noisy)
            kwargs = {"degradation": task} if takes_labels else {}
            tiling = dict(tile=tile, tile_overlap=tile_overlap, statistics_passes=statistics_passes,
                          statistics_tolerance=statistics_tolerance)
            restored.append(restore(noisy, model, dtype=dtype, **tiling, **kwargs))
            if label_free:
                restored_auto.append(restore(noisy, model, degradation="auto", auto_mode=auto_mode, dtype=dtype,
                                             **tiling))
            if baseline and task == "noise":
                baseline_out.append(nl_means(noisy, params["sigma"] / 255))
        references = [clean.astype(np.float32) / 255 for clean in cleans]
        scores = metric.compute(predictions=restored, references=references)
        inputs = metric.compute(predictions=degraded, references=references)
        entry = {
            "psnr": float(scores["psnr"]), "ssim": float(scores["ssim"]),
            "input_psnr": float(inputs["psnr"]), "input_ssim": float(inputs["ssim"]), "images": len(cleans),
        }
        entry["psnr_gain"] = entry["psnr"] - entry["input_psnr"]
        input_psnrs = [_psnr(metric, image, reference) for image, reference in zip(degraded, references)]

        def image_gains(outputs: list) -> dict[str, float]:
            return {
                os.path.relpath(path, heldout): _psnr(metric, image, reference) - before
                for path, image, reference, before in zip(files, outputs, references, input_psnrs)
            }

        entry["image_gains"] = image_gains(restored)
        entry["min_image_gain"] = min(entry["image_gains"].values())
        if restored_auto:
            auto = metric.compute(predictions=restored_auto, references=references)
            entry["psnr_auto"], entry["ssim_auto"] = float(auto["psnr"]), float(auto["ssim"])
            entry["image_gains_auto"] = image_gains(restored_auto)
            entry["min_image_gain_auto"] = min(entry["image_gains_auto"].values())
        if baseline_out:
            classical = metric.compute(predictions=baseline_out, references=references)
            entry["nlm_psnr"], entry["nlm_ssim"] = float(classical["psnr"]), float(classical["ssim"])
        results[label] = entry
        # Progress on stderr: a full held-out evaluation takes tens of minutes on a CPU.
        print(f"[evaluate_heldout] {label}: {entry['psnr']:.2f} dB (input {entry['input_psnr']:.2f}), "
              f"{time.monotonic() - started:.0f} s elapsed", file=sys.stderr, flush=True)
    return results


def restore_settings(
    model,
    *,
    seed: int = 0,
    tile: int | None = None,
    tile_overlap: int | None = None,
    statistics_passes: int | None = None,
    statistics_tolerance: float | None = None,
    auto_mode: str = DEFAULT_AUTO_MODE,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """The settings :func:`evaluate_heldout` restores ``model`` with, as its JSON records them (``tile``,
    ``tile_overlap`` and ``dtype`` as ``training.evaluate_protocol`` names them): ``restore()``'s defaults are
    resolved (the model's ``inference_tile``, the overlap for that tile, 6 passes, tolerance 0.01), so that two
    records are equal exactly when their evaluations restored alike. ``tile`` None: whole images up to 4 megapixels."""
    from modeling.inference import (
        DEFAULT_STATISTICS_PASSES,
        model_inference_tile,
        resolve_statistics_tolerance,
    )
    from modeling.tiling import default_tile_overlap

    tile_used = tile if tile is not None else model_inference_tile(model)
    if tile_overlap is None and tile_used:  # restore() picks its default overlap for these tiles
        tile_overlap = default_tile_overlap(tile_used)
    return {
        "seed": seed,
        "tile": tile_used,
        "tile_overlap": tile_overlap,
        "statistics_passes": DEFAULT_STATISTICS_PASSES if statistics_passes is None else statistics_passes,
        "statistics_tolerance": resolve_statistics_tolerance(statistics_tolerance),
        "dtype": dtype,
        "auto_mode": auto_mode,
    }


def markdown_table(results: dict[str, dict]) -> str:
    header = (
        "| degradation | input PSNR | restored PSNR (gain) | SSIM | worst image gain | label-free PSNR "
        "(worst image gain) | NL-means PSNR |\n|---|---|---|---|---|---|---|"
    )
    rows = []
    for name, r in results.items():
        auto = f"{r['psnr_auto']:.2f} ({r['min_image_gain_auto']:+.2f})" if "psnr_auto" in r else "–"
        nlm = f"{r['nlm_psnr']:.2f}" if "nlm_psnr" in r else "–"
        rows.append(
            f"| {name} | {r['input_psnr']:.2f} | {r['psnr']:.2f} ({r['psnr_gain']:+.2f}) | {r['ssim']:.3f} | "
            f"{r['min_image_gain']:+.2f} | {auto} | {nlm} |"
        )
    return "\n".join([header, *rows])


def _row_cost(label: str, baseline: bool) -> float:
    """Relative CPU time of a row (measured: a noise row with non-local means costs about 4/3 of another row)."""
    return 4 / 3 if baseline and row_setting(label)[0] == "noise" else 1.0


def split_rows(labels: list[str], workers: int, baseline: bool) -> list[list[str]]:
    """Rows shared among ``workers`` by estimated cost (longest first, each to the least loaded worker)."""
    shares: list[list[str]] = [[] for _ in range(max(1, min(workers, len(labels))))]
    loads = [0.0] * len(shares)
    for label in sorted(labels, key=lambda row: -_row_cost(row, baseline)):
        target = loads.index(min(loads))
        shares[target].append(label)
        loads[target] += _row_cost(label, baseline)
    return shares


def _evaluate_share(model_source: str, heldout: str, labels: list[str], options: dict) -> dict[str, dict]:
    """One worker process: its own model copy and one thread, restoring only its share of the rows."""
    import torch

    from modeling.inference import load_model

    torch.set_num_threads(1)
    noise = tuple(float(label.removeprefix("noise-")) for label in labels if label.startswith("noise-"))
    settings = tuple(label for label in labels if not label.startswith("noise-"))
    # In the precision scored: an fp32 evaluation loads a checkpoint saved in half precision as float32.
    model = load_model(model_source, dtype=options.get("dtype", "fp32"))
    return evaluate_heldout(model, heldout, noise_sigmas=noise, settings=settings, **options)


def evaluate_heldout_in_processes(
    model_source: str | Path, heldout: str | Path, workers: int, *, noise_sigmas: tuple[float, ...] =
    DEFAULT_NOISE_SIGMAS, settings: tuple[str, ...] = DEFAULT_SETTINGS, **options
) -> dict[str, dict]:
    """:func:`evaluate_heldout` with the rows shared among ``workers`` one-thread processes (spawned, each loading
    ``model_source``), merged back in the usual row order. Every row's images are seeded by the row's own name, so
    the numbers are those of a single-process run, to float rounding (one thread sums in another order). Two
    workers took 25 minutes for the shipped 2.05 M model's nine rows on the 2-core CPU (2026-12-03)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    labels = [f"noise-{sigma:g}" for sigma in noise_sigmas] + list(settings)
    check_rows(labels)
    shares = split_rows(labels, workers, options.get("baseline", True))
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_share, os.fspath(model_source), os.fspath(heldout), share, options)
                   for share in shares]
        merged = {label: row for future in futures for label, row in future.result().items()}
    return {label: merged[label] for label in labels}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--heldout", required=True, help="folder of clean held-out images")
    parser.add_argument("--noise_sigmas", type=float, nargs="*", default=list(DEFAULT_NOISE_SIGMAS))
    parser.add_argument(
        "--settings", nargs="*", default=list(DEFAULT_SETTINGS),
        help=f"rows besides noise (default %(default)s; named rows: {', '.join(SETTINGS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", default=None, type=int,
                        help="tile side (0: whole images; default: as restore(): the model's inference_tile, else "
                             "whole images up to 4 megapixels)")
    parser.add_argument("--tile_overlap", type=int, default=None,
                        help="pixels shared by neighbouring tiles (default: restore()'s, 32 capped at tile // 4)")
    parser.add_argument("--statistics_passes", type=int, default=None,
                        help="with tiles, the most passes gathering whole-image statistics (default: restore()'s, 6 "
                             "whenever tiles split an image)")
    parser.add_argument("--statistics_tolerance", type=float, default=None,
                        help="stop the statistics passes once one changes them by at most this (default: "
                             "restore()'s, 0.01; 0: run them all)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the non-local-means baseline")
    parser.add_argument("--auto_mode", default=DEFAULT_AUTO_MODE, choices=AUTO_MODES,
                        help="how the label-free rows use the estimate (see modeling.restore)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "auto", "bf16"),
                        help="restore()'s precision: fp32 (default, the same scores on every CPU) or auto (what "
                             "restore() does by default here: bf16 on a CPU with native bf16)")
    parser.add_argument("--output", help="write the results as JSON here: the held-out files, the restore settings "
                        "(seed, tile, tile_overlap, statistics_passes, statistics_tolerance, dtype, auto_mode) and "
                        "the rows under 'results'")
    parser.add_argument("--workers", type=int, default=1,
                        help="share the rows among this many one-thread processes (the same numbers to float "
                             "rounding; 2 suit a 2-core CPU)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    options = dict(seed=args.seed, tile=args.tile, tile_overlap=args.tile_overlap,
                   statistics_passes=args.statistics_passes, statistics_tolerance=args.statistics_tolerance,
                   baseline=not args.no_baseline,
                   auto_mode=args.auto_mode, dtype=args.dtype)
    rows = dict(noise_sigmas=tuple(args.noise_sigmas), settings=tuple(args.settings))
    from modeling.inference import load_model

    # What the user named (rows, the held-out folder, the model) is checked before any row runs; a mistake there is
    # one line and exit code 2, as argparse reports a bad option, not a traceback.
    try:
        check_rows([f"noise-{sigma:g}" for sigma in args.noise_sigmas] + list(args.settings))
        if not list_image_files(args.heldout):
            raise FileNotFoundError(f"no images in {args.heldout}")
        if args.output:  # written after every row has run: a path that cannot take it would lose them all
            check_output_file(args.output)
        model = load_model(args.model, dtype=args.dtype)  # fp32 loads a half-precision checkpoint as float32
    except (OSError, ValueError) as error:
        parser.error(str(error))
    # Recorded with the scores: numbers measured with other tiles or another precision are other numbers.
    settings = restore_settings(model, **{key: value for key, value in options.items() if key != "baseline"})
    if args.workers > 1:
        del model  # each worker loads its own copy
        results = evaluate_heldout_in_processes(args.model, args.heldout, args.workers, **rows, **options)
    else:
        results = evaluate_heldout(model, args.heldout, **rows, **options)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        heldout_files = [os.path.relpath(path, args.heldout) for path in list_image_files(args.heldout)]
        evaluation = {"heldout": heldout_files, **settings, "results": results}
        write_text_atomic(args.output, json.dumps(evaluation, indent=2))  # row order kept (no sort_keys)
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
