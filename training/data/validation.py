"""Validation sets: fixed held-out pairs, decoded once."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from ..degradations import (
    TASK_NAMES,
    synthesize,
)
from .files import _split_path, center_crop_to_multiple, decode_image
from .sources import PairSource

logger = logging.getLogger("training.data")  # one logger for the package, as before the split


def validation_pairs(
    sources: Sequence[PairSource],
    *,
    label_names: Sequence[str] = TASK_NAMES,
    seed: int = 0,
    max_per_source: int | None = None,
    multiple_of: int = 1,
) -> Iterator[dict]:
    """Full-image held-out pairs, deterministic: ``{"degraded", "clean"`` (uint8 HWC), ``"task", "task_name",
    "source", "name"}``.

    Sources are read in order; ``max_per_source`` takes a seeded subset (kept in file order). Synthesized
    degradations use ``default_rng([seed, source, pair])`` on the whole clean image (as the official test
    code adds noise to the full image). ``multiple_of=16`` reproduces the PromptIR centre crop. Bad files, pairs
    whose images differ in size (compared before the crop), and images with a side shorter than ``multiple_of``
    (the crop would leave nothing) are skipped with a warning.
    """
    labels = {name: i for i, name in enumerate(label_names)}
    for source_index, source in enumerate(sources):
        indices = np.arange(len(source))
        if max_per_source is not None and max_per_source < len(indices):
            chosen = np.random.default_rng([seed, source_index]).choice(len(indices), max_per_source, replace=False)
            indices = np.sort(chosen)
        for pair_index in indices:
            degraded_path, clean_path = source.pairs[int(pair_index)]
            try:
                clean = decode_image(clean_path)[0]
                if min(clean.shape[:2]) < multiple_of:  # the crop to a multiple would leave no pixel
                    logger.warning("validation: skipping %s (too small: %dx%d px, less than the multiple of %d it "
                                   "is cropped to)", clean_path, clean.shape[1], clean.shape[0], multiple_of)
                    continue
                degraded = None if degraded_path is None else decode_image(degraded_path)[0]
                # Sizes are compared before the crop to a multiple, which can make two sizes equal (36x44 and 40x40
                # both crop to 32x32) and so pass a misaligned pair, as the stream and the protocol refuse it.
                if degraded is not None and degraded.shape != clean.shape:
                    logger.warning("validation: skipping %s (size %s vs %s)", clean_path, degraded.shape, clean.shape)
                    continue
                clean = center_crop_to_multiple(clean, multiple_of)
                if degraded is None:
                    rng = np.random.default_rng([seed, source_index, int(pair_index)])
                    degraded = synthesize(clean, source.synthesis, rng, **dict(source.synthesis_kwargs)).image
                else:
                    degraded = center_crop_to_multiple(degraded, multiple_of)
            except Exception as error:
                logger.warning("validation: skipping %s (%s)", clean_path, error)
                continue
            yield {
                "degraded": degraded,
                "clean": clean,
                "task": labels[source.task_name],
                "task_name": source.task_name,
                "source": source.name,
                "name": _split_path(clean_path)[1],
            }
