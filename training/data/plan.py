"""The epoch plan: sources expanded by their repeat factors, permuted per (seed, epoch) and cut into shards."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import datasets
import numpy as np
from PIL import Image

from .sources import HubPairedSource, PairSource

logger = logging.getLogger("training.data")  # one logger for the package, as before the split


class EpochPlan(NamedTuple):
    """Which (source, pair) each position of an epoch reads; ``len(plan)`` examples before skips."""

    source: np.ndarray  # int64, index into the stream's sources
    pair: np.ndarray  # int64, index into that source's pairs

    def __len__(self) -> int:
        return len(self.source)


def _epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def make_epoch_plan(
    sources: Sequence[PairSource],
    *,
    seed: int,
    epoch: int,
    probabilities: Sequence[float] | None = None,
    epoch_length: int | None = None,
    pad_to_multiple: int = 1,
) -> EpochPlan:
    """The shuffled plan of one epoch.

    Without ``probabilities``: every pair of every source ``repeat`` times (the official concatenation), in a
    ``(seed, epoch)`` permutation. With ``probabilities`` (one per source): ``epoch_length`` positions (default:
    the repeated length) each drawn from a source with that probability; within a source, pairs are taken
    from a per-epoch permutation, cycling. The plan is padded by wrap-around to a multiple of
    ``pad_to_multiple`` so that every shard has the same length (as ``DistributedSampler`` does).
    """
    rng = _epoch_rng(seed, epoch)
    sizes = np.array([len(s) for s in sources], dtype=np.int64)
    repeated_length = int(sum(len(s) * s.repeat for s in sources))
    if probabilities is None:
        source_ids = np.concatenate(
            [np.full(len(s) * s.repeat, i, dtype=np.int64) for i, s in enumerate(sources)] or [np.zeros(0, np.int64)]
        )
        pair_ids = np.concatenate(
            [np.tile(np.arange(len(s), dtype=np.int64), s.repeat) for s in sources] or [np.zeros(0, np.int64)]
        )
        order = rng.permutation(len(source_ids))
        source_ids, pair_ids = source_ids[order], pair_ids[order]
    else:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (len(sources),) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"need one non-negative probability per source, got {probabilities}")
        p = np.where(sizes > 0, p, 0.0)
        p = p / p.sum()
        length = repeated_length if epoch_length is None else int(epoch_length)
        source_ids = rng.choice(len(sources), size=length, p=p).astype(np.int64)
        pair_ids = np.zeros(length, dtype=np.int64)
        for i, size in enumerate(sizes):
            positions = np.flatnonzero(source_ids == i)
            if len(positions):
                cycles = math.ceil(len(positions) / size)
                order = np.concatenate([rng.permutation(size) for _ in range(cycles)])
                pair_ids[positions] = order[: len(positions)]
    if len(source_ids) == 0:
        raise ValueError("the epoch plan is empty (no pairs, or all repeats/probabilities are 0)")
    remainder = (-len(source_ids)) % max(pad_to_multiple, 1)
    if remainder:
        wrap = np.arange(remainder) % len(source_ids)
        source_ids = np.concatenate([source_ids, source_ids[wrap]])
        pair_ids = np.concatenate([pair_ids, pair_ids[wrap]])
    return EpochPlan(source_ids, pair_ids)


def _plan_records(shards: list[tuple[int, int]], plan_source: np.ndarray, plan_pair: np.ndarray) -> Iterator[dict]:
    """`from_generator` body: yields light records (no image I/O), so resuming mid-shard is cheap."""
    for start, stop in shards:
        for index in range(start, stop):
            yield {
                "index": index,
                "source": int(plan_source[index]),
                "pair": int(plan_pair[index]),
                "row_degraded": None,
                "row_clean": None,
                "row_task": "",
            }


_RECORD_FEATURES = datasets.Features(
    {
        "index": datasets.Value("int64"),
        "source": datasets.Value("int64"),
        "pair": datasets.Value("int64"),
        "row_degraded": datasets.Image(decode=False),
        "row_clean": datasets.Image(decode=False),
        "row_task": datasets.Value("string"),
    }
)


def _as_image_record(value: Any) -> dict | None:
    """A Hub cell (Image dict, path, bytes, PIL image) -> ``{"bytes", "path"}`` without decoding."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"bytes": value.get("bytes"), "path": value.get("path")}
    if isinstance(value, str):
        return {"bytes": None, "path": value}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    raise TypeError(f"cannot read an image from a {type(value).__name__} cell")


def _hub_row_to_record(row: dict, *, source_index: int, source: HubPairedSource, task_names: Sequence[str] | None):
    task = ""
    if source.task_column is not None:
        value = row[source.task_column]
        # A ClassLabel index names its class; -1 (no label) and other indices outside the names stay numbers,
        # which no model class matches: the row is counted as an unknown task, never given the last class.
        in_range = task_names is not None and isinstance(value, int) and 0 <= value < len(task_names)
        task = task_names[value] if in_range else str(value)
    return {
        "index": -1,
        "source": source_index,
        "pair": -1,
        "row_degraded": _as_image_record(row[source.degraded_column]) if source.degraded_column else None,
        "row_clean": _as_image_record(row[source.clean_column]),
        "row_task": task,
    }
