"""PSNR / SSIM for validation and benchmarks through the repo's local `evaluate` metric module.

The metric lives in ``training/metrics/restoration_psnr_ssim/`` (hub metrics cannot be fetched here) and is the
single implementation of the scoring protocol (see its docstring). `psnr` and `ssim` call the same functions
without `evaluate`'s Arrow buffering, for quick one-off scores. ``import evaluate`` takes seconds, so it happens
lazily, once, on first use.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

#: Folder of the local metric module; pass it to ``evaluate.load``.
RESTORATION_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "restoration_psnr_ssim"


@functools.lru_cache(maxsize=None)
def load_restoration_metric(
    experiment_id: Optional[str] = None, num_process: int = 1, process_id: int = 0
) -> Any:
    """The PSNR/SSIM `evaluate.Metric`, loaded offline from `RESTORATION_METRIC_PATH` (cached per arguments).

    Single-process use keeps the buffered images in memory; for `evaluate`'s own multi-process gathering pass
    `num_process`, `process_id` and a shared `experiment_id` (then the buffer lives in cache files).
    """
    import evaluate  # lazy: ~4 s

    return evaluate.load(
        str(RESTORATION_METRIC_PATH),
        experiment_id=experiment_id,
        num_process=num_process,
        process_id=process_id,
        keep_in_memory=num_process == 1,
    )


def _metric_module() -> ModuleType:
    # The Python module evaluate imported the metric from: its helper functions are the scoring code itself.
    return inspect.getmodule(type(load_restoration_metric()))


def psnr(
    predictions: Any,
    references: Any,
    *,
    crop_border: int = 0,
    test_y_channel: bool = False,
    data_range: float = 1.0,
) -> float:
    """Mean PSNR (dB) over images: one image or a batch (numpy channels-last, torch channels-first, uint8 or [0, 1])."""
    module = _metric_module()
    pairs = _pairs(module, predictions, references)
    return sum(module.psnr_pair(p, r, crop_border, test_y_channel, data_range) for p, r in pairs) / len(pairs)


def ssim(
    predictions: Any,
    references: Any,
    *,
    crop_border: int = 0,
    test_y_channel: bool = False,
    gaussian_weights: bool = False,
    data_range: float = 1.0,
) -> float:
    """Mean SSIM over images (uniform 7x7 window as PromptIR/PIP; `gaussian_weights=True` as MoCE-IR)."""
    module = _metric_module()
    pairs = _pairs(module, predictions, references)
    return sum(
        module.ssim_pair(p, r, crop_border, test_y_channel, gaussian_weights, data_range) for p, r in pairs
    ) / len(pairs)


def _pairs(module: ModuleType, predictions: Any, references: Any) -> list:
    predictions, references = module.to_float_images(predictions), module.to_float_images(references)
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return list(zip(predictions, references))


__all__ = ["RESTORATION_METRIC_PATH", "load_restoration_metric", "psnr", "ssim"]
