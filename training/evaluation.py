"""Validation during training, and PSNR / SSIM through the repo's local `evaluate` metric module.

The metric lives in ``training/metrics/restoration_psnr_ssim/`` (hub metrics cannot be fetched here) and is the
single implementation of the scoring protocol (see its docstring). `psnr` and `ssim` call the same functions
without `evaluate`'s Arrow buffering, for quick one-off scores. ``import evaluate`` takes seconds, so it happens
lazily, once, on first use.

Validation (used by ``training/train.py``): `build_validation_set` reads the held-out pairs once (a
`ValidationSet`, which also scores the degraded inputs once), `evaluate_model` scores a model on it per task, and
`sample_grid` draws one degraded | restored | clean row per task.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

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
    sample_covariance: bool = True,
) -> float:
    """Mean SSIM over images (uniform 7x7 window as PromptIR/PIP; `gaussian_weights=True` as MoCE-IR; with
    `sample_covariance=False` as well, BasicSR's `calculate_ssim`)."""
    module = _metric_module()
    pairs = _pairs(module, predictions, references)
    return sum(
        module.ssim_pair(p, r, crop_border, test_y_channel, gaussian_weights, data_range, sample_covariance)
        for p, r in pairs
    ) / len(pairs)


def _pairs(module: ModuleType, predictions: Any, references: Any) -> list:
    predictions, references = module.to_float_images(predictions), module.to_float_images(references)
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return list(zip(predictions, references))


# ---------------------------------------------------------------------------------------------------------------
# Degradation labels
# ---------------------------------------------------------------------------------------------------------------


def degradation_label_lookup(
    model: Any, task_names: Sequence[str], used_tasks: Sequence[str] | None = None
) -> torch.Tensor:
    """LongTensor mapping position ``i`` of `task_names` to its class index in ``model.config.degradation_names``.

    Built once, before training: each step then turns the stream's integer ``task`` labels into the model's
    class indices with one indexing operation (``lookup[batch["task"]]``), with no per-step string parsing.
    Names go through the one label parser (``modeling.degradation_labels``: exact names and aliases such as
    "derain"), so a task the data uses but the model lacks fails here, naming the model's classes, instead of at
    the first step. Tasks of `task_names` the data never uses (``used_tasks``; e.g. blur in the 3-task preset)
    map to ``len(degradation_names)``, an index the model's parser refuses, so they can never pass silently.
    """
    from modeling.degradation_labels import degradation_index

    config = getattr(model, "config", None)
    names = list(getattr(config, "degradation_names", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} takes degradation labels but its config has no degradation_names")
    used = set(task_names if used_tasks is None else used_tasks)
    indices = []
    for task in task_names:
        try:
            indices.append(degradation_index(task, names))
        except ValueError as error:
            if task not in used:
                indices.append(len(names))
                continue
            raise ValueError(
                f"task {task!r} of the data is not one of the model's degradation_names {names}; set "
                "model_config.degradation_names (and num_degradations) to the data's tasks"
            ) from error
    return torch.tensor(indices, dtype=torch.long)


def takes_degradation_labels(model: Any) -> bool:
    """Whether `model` is trained/evaluated with the true degradation class (class attribute of the model)."""
    return bool(getattr(model, "accepts_degradation_labels", False))


# ---------------------------------------------------------------------------------------------------------------
# Validation during training
# ---------------------------------------------------------------------------------------------------------------


class ValidationSet(list):
    """Held-out pairs (``{"degraded", "clean"}`` uint8 HWC, ``"task_name"``, ...), in a fixed order.

    The degraded inputs never change, so their scores against the clean images (the "input" baseline columns)
    are computed once, on first use, and reused by every validation.
    """

    def __init__(self, pairs=()) -> None:
        super().__init__(pairs)
        self._input_scores: Optional[dict[str, dict[str, float]]] = None

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(pair["task_name"] for pair in self))

    def input_scores(self) -> dict[str, dict[str, float]]:
        """``{task: {"input_psnr", "input_ssim"}}`` of the degraded inputs (computed once)."""
        if self._input_scores is None:
            metric = load_restoration_metric()
            scores = {}
            for task in self.tasks():
                pairs = [pair for pair in self if pair["task_name"] == task]
                result = metric.compute(
                    predictions=[pair["degraded"] for pair in pairs], references=[pair["clean"] for pair in pairs]
                )
                scores[task] = {"input_psnr": float(result["psnr"]), "input_ssim": float(result["ssim"])}
            self._input_scores = scores
        return self._input_scores


def build_validation_set(
    data_preset: str,
    validation_roots: Mapping[str, str],
    *,
    synthesize_missing: bool = False,
    seed: int = 0,
    images_per_task: Optional[int] = 8,
    crop: int = 0,
) -> ValidationSet:
    """Held-out images per task (from `validation_roots`; synthesized ones follow `synthesize_missing`).

    ``crop`` > 0 keeps the same centre window (at most ``crop`` pixels a side) of degraded and clean image, which
    keeps periodic validation cheap on large photos.
    """
    if not validation_roots:
        return ValidationSet()
    from training.data import PRESET_LABELS, center_crop, preset_sources, validation_pairs

    sources = preset_sources(data_preset, validation_roots, synthesize_missing=synthesize_missing, cdd11_split="test")
    pairs = list(
        validation_pairs(
            sources, label_names=PRESET_LABELS[data_preset], seed=seed, max_per_source=images_per_task, multiple_of=16
        )
    )
    if crop:
        for pair in pairs:
            pair["clean"], pair["degraded"] = center_crop(pair["clean"], crop), center_crop(pair["degraded"], crop)
    # A pair the degradation left unchanged (a flat crop, say) measures nothing and has an infinite input PSNR.
    kept, unchanged_tasks = [], []
    for pair in pairs:
        if np.array_equal(pair["degraded"], pair["clean"]):
            unchanged_tasks.append(pair["task_name"])
        else:
            kept.append(pair)
    if unchanged_tasks:
        logger.warning(f"validation: left out {len(unchanged_tasks)} pair(s) whose degraded image equals the clean "
                       f"one ({', '.join(sorted(set(unchanged_tasks)))})")
    return ValidationSet(kept)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    validation_set: ValidationSet,
    autocast_dtype: Optional[torch.dtype] = None,
    with_labels: bool = True,
) -> dict:
    """PSNR/SSIM per task on held-out pairs (PromptIR protocol: RGB, [0, 1], data range 1).

    Models that take degradation labels get the true class (as a LongTensor) when `with_labels`, else decide
    themselves (PIP's estimator). Returns ``{"tasks": {task: {"psnr", "ssim", "input_psnr", "input_ssim",
    "images"}}, "samples": {task: (degraded, restored, clean)}}`` (uint8 HWC samples: each task's first image).
    The caller switches the model back to training mode.
    """
    if not isinstance(validation_set, ValidationSet):
        validation_set = ValidationSet(validation_set)
    metric = load_restoration_metric()
    model.eval()
    device = next(model.parameters()).device
    lookup = None
    if with_labels and takes_degradation_labels(model):
        tasks = validation_set.tasks()
        lookup = dict(zip(tasks, degradation_label_lookup(model, tasks).tolist()))
    by_task: dict[str, dict[str, list]] = {}
    samples = {}
    for pair in validation_set:
        degraded = torch.from_numpy(pair["degraded"]).to(device).permute(2, 0, 1)[None].float().div_(255)
        kwargs = {}
        if lookup is not None:
            kwargs["degradation_labels"] = torch.tensor([lookup[pair["task_name"]]], dtype=torch.long, device=device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            restored = model(degraded, **kwargs).reconstruction
        restored = restored.float().clamp_(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        entry = by_task.setdefault(pair["task_name"], {"restored": [], "clean": []})
        entry["restored"].append(restored)
        entry["clean"].append(pair["clean"])
        if pair["task_name"] not in samples:
            samples[pair["task_name"]] = (pair["degraded"], (restored * 255).round().astype(np.uint8), pair["clean"])
    inputs = validation_set.input_scores()
    results = {}
    for task, entry in by_task.items():
        scores = metric.compute(predictions=entry["restored"], references=entry["clean"])
        results[task] = {
            "psnr": float(scores["psnr"]), "ssim": float(scores["ssim"]), **inputs[task], "images": len(entry["clean"]),
        }
    return {"tasks": results, "samples": samples}


def sample_grid(samples: Mapping[str, Sequence[np.ndarray]], height: int = 160):
    """A PIL image with one row per task (sorted by name): degraded | restored | clean.

    Every tile is scaled to ``height`` pixels high (keeping its aspect) and centred in a cell as wide as the
    widest tile, then the cells are laid out with `diffusers.utils.make_image_grid`.
    """
    from diffusers.utils import make_image_grid
    from PIL import Image

    rows = [samples[task] for task in sorted(samples)]
    scaled = [
        Image.fromarray(image).resize((max(1, round(image.shape[1] * height / image.shape[0])), height), Image.BICUBIC)
        for images in rows for image in images
    ]
    width = max(tile.width for tile in scaled)
    cells = []
    for tile in scaled:
        cell = Image.new("RGB", (width, height))
        cell.paste(tile, ((width - tile.width) // 2, 0))
        cells.append(cell)
    return make_image_grid(cells, rows=len(rows), cols=len(rows[0]) if rows else 0)


__all__ = [
    "RESTORATION_METRIC_PATH",
    "ValidationSet",
    "build_validation_set",
    "degradation_label_lookup",
    "evaluate_model",
    "load_restoration_metric",
    "psnr",
    "sample_grid",
    "ssim",
    "takes_degradation_labels",
]
