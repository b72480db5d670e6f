"""The stream: examples decoded, cropped, augmented and synthesized in loader workers; bad data counted."""

from __future__ import annotations

import copy
import functools
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from ..degradations import (
    NOISE_SIGMAS,
    TASK_NAMES,
    augment,
    random_augment_mode,
    synthesize,
    task_label,
)
from .files import center_crop, center_crop_to_multiple, decode_image
from .plan import (
    _RECORD_FEATURES,
    EpochPlan,
    _hub_row_to_record,
    _plan_records,
    make_epoch_plan,
)
from .sources import (
    PRESET_LABELS,
    HubPairedSource,
    PairSource,
    _source_name,
    preset_sources,
)

logger = logging.getLogger("training.data")  # one logger for the package, as before the split

BAD_DATA_KINDS: tuple[str, ...] = ("missing_pair", "corrupt", "size_mismatch", "unknown_task", "converted", "padded")
"""Counted per source. The first four drop an example; ``converted`` (non-RGB8 file) and ``padded`` (smaller
than the patch, reflect-padded) are kept and only reported."""
_DROPPING_KINDS = BAD_DATA_KINDS[:4]
_STATIC_KINDS = ("missing_pair",)  # found when the sources are built, not per epoch
# Bad-data counters live in shared memory with one slot per process: slot 0 for the process that owns the stream,
# slot 1 + i for DataLoader worker i. Each slot has a single writer, so no count is lost to two workers' concurrent
# read-modify-write of one cell; readers sum the slots. Workers beyond the last slot share slots (modulo).
_COUNTER_SLOTS = 65


def _counter_slot() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)


def _pad_to_patch(images: list[np.ndarray], patch_size: int) -> tuple[list[np.ndarray], bool]:
    """Images smaller than the patch on a side, reflect-padded at the bottom/right up to it (and whether they were)."""
    height, width = images[0].shape[:2]
    if height >= patch_size and width >= patch_size:
        return images, False
    pad = ((0, max(patch_size - height, 0)), (0, max(patch_size - width, 0)), (0, 0))
    return [np.pad(im, pad, mode="symmetric") for im in images], True


def _crop_and_augment(
    images: list[np.ndarray], patch_size: int | None, rng: np.random.Generator, augment_flag: bool
) -> tuple[list[np.ndarray], bool]:
    """Same random crop (official ``_crop_patch``) and same flip/rot90 mode for all images of an example."""
    padded = False
    if patch_size:
        images, padded = _pad_to_patch(images, patch_size)
        height, width = images[0].shape[:2]
        top = int(rng.integers(0, height - patch_size + 1))
        left = int(rng.integers(0, width - patch_size + 1))
        images = [im[top : top + patch_size, left : left + patch_size] for im in images]
    mode = random_augment_mode(rng) if augment_flag else 0
    return [augment(im, mode) for im in images], padded


class _ExampleLoader:
    """Picklable ``datasets.map`` function: record -> decoded, cropped, augmented, degraded example."""

    def __init__(
        self,
        sources: Sequence[PairSource | HubPairedSource],
        labels: Mapping[str, int],
        counts: torch.Tensor,
        *,
        patch_size: int | None,
        augment: bool,
        output_dtype: str,
        seed: int,
        epoch: int,
        synthesis_crop_size: int | None = None,
        crop_to_multiple: int = 0,
    ) -> None:
        self.sources = tuple(sources)
        self.labels = dict(labels)
        self.counts = counts
        self.patch_size = patch_size
        self.synthesis_crop_size = synthesis_crop_size
        self.crop_to_multiple = crop_to_multiple
        self.augment = augment
        self.output_dtype = output_dtype
        self.seed = seed
        self.epoch = epoch

    def _count(self, source_index: int, kind: str, what: str = "") -> None:
        self.counts[_counter_slot(), source_index, BAD_DATA_KINDS.index(kind)] += 1
        if kind in _DROPPING_KINDS:
            logger.debug("skipping %s example of %s: %s", kind, _source_name(self.sources[source_index]), what)

    def _decode(self, source_index: int, where: str | bytes | dict) -> np.ndarray | None:
        try:
            if isinstance(where, dict):
                where = where["bytes"] if where.get("bytes") is not None else where["path"]
            image, converted = decode_image(where)
        except Exception as error:  # never end the stream: any undecodable file is skipped and counted
            self._count(source_index, "corrupt", f"{where if isinstance(where, str) else '<bytes>'}: {error}")
            return None
        if converted:
            self._count(source_index, "converted")
        return image

    def _synthesize_on_small_image(
        self, clean: np.ndarray, synthesis: str, synthesis_kwargs: Any, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(degraded patch, clean patch, padded) for an image smaller than the synthesis crop on a side: the
        degradation is synthesized on the largest window the image holds and the patch cut at a random place."""
        region, (top, left), padded = _synthesis_region_patch(
            clean, self.patch_size, self.synthesis_crop_size, rng, self.augment)
        degraded = synthesize(region, synthesis, rng, **dict(synthesis_kwargs)).image
        window = (slice(top, top + self.patch_size), slice(left, left + self.patch_size))
        return degraded[window], region[window], padded

    def _official_crop(self, image: np.ndarray) -> np.ndarray:
        """PromptIR's ``crop_img`` before the random crop: each side down to a multiple of ``crop_to_multiple``
        (a side shorter than one multiple is kept, and later padded to the patch)."""
        multiple = self.crop_to_multiple
        if multiple <= 1 or min(image.shape[:2]) < multiple:
            return image
        return center_crop_to_multiple(image, multiple)

    def _to_output(self, image: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        if self.output_dtype == "uint8":
            return chw
        return chw.astype(np.float32) / np.float32(255.0)

    def __call__(self, record: dict) -> dict:
        source_index = int(record["source"])
        source = self.sources[source_index]
        failed = {"ok": False, "degraded": None, "clean": None, "task": -1, "task_name": "", "source": ""}
        if isinstance(source, HubPairedSource):
            name = source.source_name
            task_name = record["row_task"] or source.task_name
            degraded_where, clean_where = record["row_degraded"], record["row_clean"]
            if clean_where is None or (source.degraded_column and degraded_where is None):
                self._count(source_index, "corrupt", "an empty image cell")  # a row missing an image: skipped
                return failed
            synthesis, synthesis_kwargs = source.synthesis, source.synthesis_kwargs
            # Hub rows have no plan index: their draws are keyed by the row's images, the degraded one included, so
            # rows that share a clean image (CDD-11's types, OTS's hazy renderings of a scene) get their own crops.
            key = zlib.crc32(_cell_key(degraded_where), zlib.crc32(_cell_key(clean_where)))  # clean-only: as before
            rng = np.random.default_rng([self.seed, self.epoch, 1 + source_index, key])
        else:
            name, task_name = source.name, source.task_name
            degraded_where, clean_where = source.pairs[int(record["pair"])]
            synthesis, synthesis_kwargs = source.synthesis, source.synthesis_kwargs
            rng = np.random.default_rng([self.seed, self.epoch, 0, int(record["index"])])
        if task_name not in self.labels:
            self._count(source_index, "unknown_task", task_name)
            return failed
        clean = self._decode(source_index, clean_where)
        if clean is None:
            return failed
        if degraded_where is not None:
            degraded = self._decode(source_index, degraded_where)
            if degraded is None:
                return failed
            if degraded.shape != clean.shape:
                self._count(source_index, "size_mismatch", f"{degraded.shape} vs {clean.shape}")
                return failed
            degraded = self._official_crop(degraded)
        clean = self._official_crop(clean)
        if degraded_where is not None:
            (degraded, clean), padded = _crop_and_augment([degraded, clean], self.patch_size, rng, self.augment)
        elif self.synthesis_crop_size:  # the stream checked patch_size <= synthesis_crop_size
            # Synthesize on a larger crop and keep its centre: blur kernels and rain streaks then reach into the
            # patch from real neighbouring pixels (not from the reflected patch border), and haze's pseudo-depth
            # spans more of the scene, as it does on a whole photo.
            height, width = clean.shape[:2]
            if min(height, width) >= self.synthesis_crop_size:
                (region,), padded = _crop_and_augment([clean], self.synthesis_crop_size, rng, self.augment)
                degraded = center_crop(synthesize(region, synthesis, rng, **dict(synthesis_kwargs)).image,
                                       self.patch_size)
                clean = center_crop(region, self.patch_size)
            else:
                degraded, clean, padded = self._synthesize_on_small_image(clean, synthesis, synthesis_kwargs, rng)
        else:
            (clean,), padded = _crop_and_augment([clean], self.patch_size, rng, self.augment)
            degraded = synthesize(clean, synthesis, rng, **dict(synthesis_kwargs)).image
        if padded:
            self._count(source_index, "padded")
        return {
            "ok": True,
            "degraded": self._to_output(degraded),
            "clean": self._to_output(clean),
            "task": self.labels[task_name],
            "task_name": task_name,
            "source": name,
        }


def _cell_key(where: dict | None) -> bytes:
    """The bytes that identify a Hub image cell (its encoded image, else its path; empty for no cell)."""
    if where is None:
        return b""
    return where.get("bytes") or (where.get("path") or "").encode()


def _synthesis_region_patch(
    clean: np.ndarray, patch_size: int, crop_size: int, rng: np.random.Generator, augment_flag: bool
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """For an image smaller than the synthesis crop on a side: the largest window of at most ``crop_size`` per side
    that it holds (reflect-padded up to the patch where it is smaller than that, which counts as padded), flipped
    or rotated, and a random place for the patch in it. Padding the image up to the crop instead would pin every
    patch to its centre and mix mirrored pixels into it."""
    (clean,), padded = _pad_to_patch([clean], patch_size)
    height, width = clean.shape[:2]
    region_h, region_w = min(crop_size, height), min(crop_size, width)
    top, left = int(rng.integers(0, height - region_h + 1)), int(rng.integers(0, width - region_w + 1))
    region = clean[top : top + region_h, left : left + region_w]
    region = augment(region, random_augment_mode(rng) if augment_flag else 0)
    place = (int(rng.integers(0, region.shape[0] - patch_size + 1)),
             int(rng.integers(0, region.shape[1] - patch_size + 1)))
    return region, place, padded


def _is_ok(example: dict) -> bool:
    return bool(example["ok"])


class RestorationStream(torch.utils.data.IterableDataset):
    """Mixture stream of ``{"degraded", "clean", "task", "task_name", "source", "index"}`` crops.

    A thin, stateful wrapper around the ``datasets.IterableDataset`` of the current epoch: ``set_epoch`` builds
    the next epoch's plan, ``state_dict``/``load_state_dict`` save and restore (epoch, exact stream position,
    bad-data counts), and iteration delegates to `datasets` (which splits shards between DataLoader workers).

    Args:
        sources: file-list sources (:class:`PairSource`), e.g. from :func:`preset_sources`.
        label_names: label space; ``task = label_names.index(task_name)`` (default :data:`TASK_NAMES`).
        patch_size: random crop size (official 128); ``None`` keeps full images (then use batch size 1).
        crop_to_multiple: centre-crop each decoded image to a multiple of this before the random crop, as
            PromptIR's loaders do (``crop_img``, base 16: the outer margin of up to 15 pixels is never sampled);
            0 (default): the whole image.
        synthesis_crop_size: for synthesized degradations, the side of the random crop the degradation is
            synthesized on; the training patch is its centre (``None``: synthesize on the patch itself, as the
            official noise pipeline does). Paired sources ignore it. Larger than ``patch_size`` by at least a blur
            kernel keeps reflected borders out of the patch.
        augment: official flip/rot90 augmentation (modes 1..7, never identity).
        probabilities: optional sampling probability per task name or source name (instead of repeat factors).
        epoch_length: examples per epoch when sampling by ``probabilities`` (default: the repeated length).
        seed: base seed of plans, crops, augmentations and synthesis.
        rank / world_size: this process and the number of processes; the stream keeps this rank's shards
            through ``datasets.distributed.split_dataset_by_node`` (do not also shard with accelerate).
        shards_per_rank: shards of each rank's part; make it a multiple of the DataLoader workers (default 16).
        output_dtype: ``"float32"`` (CHW in [0, 1]) or ``"uint8"`` (CHW, 4x less inter-process traffic).
        hub_sources: :class:`HubPairedSource` streams mixed in by row-level interleaving with weights
            ``source_weights`` (Hub streams shard by their own files, so few files limit worker parallelism).
        local_weight: weight of all file-list sources together against each Hub source's ``weight``.
        stopping_strategy: ``interleave_datasets`` strategy when Hub sources are mixed in.
    """

    def __init__(
        self,
        sources: Sequence[PairSource] = (),
        *,
        label_names: Sequence[str] = TASK_NAMES,
        patch_size: int | None = 128,
        augment: bool = True,
        probabilities: Mapping[str, float] | None = None,
        epoch_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shards_per_rank: int = 16,
        output_dtype: str = "float32",
        hub_sources: Sequence[HubPairedSource] = (),
        local_weight: float = 1.0,
        stopping_strategy: str = "first_exhausted",
        epoch: int = 0,
        synthesis_crop_size: int | None = None,
        crop_to_multiple: int = 0,
    ) -> None:
        super().__init__()
        if not sources and not hub_sources:
            raise ValueError("a stream needs at least one source")
        if output_dtype not in ("float32", "uint8"):
            raise ValueError(f"output_dtype must be 'float32' or 'uint8', got {output_dtype!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        names = [_source_name(s) for s in (*sources, *hub_sources)]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.sources = tuple(sources)
        self.hub_sources = tuple(hub_sources)
        self.label_names = tuple(label_names)
        for source in self.sources:
            task_label(source.task_name, self.label_names)  # fail early with a clear message
        for hub in self.hub_sources:
            if hub.task_column is None:
                task_label(hub.task_name, self.label_names)
        if synthesis_crop_size is not None and (patch_size is None or synthesis_crop_size < patch_size):
            raise ValueError(
                f"synthesis_crop_size ({synthesis_crop_size}) needs a patch_size no larger than it, got {patch_size}"
            )
        if isinstance(crop_to_multiple, bool) or not isinstance(crop_to_multiple, int) or crop_to_multiple < 0:
            raise ValueError(f"crop_to_multiple must be a non-negative integer, got {crop_to_multiple!r}")
        self.patch_size = patch_size
        self.synthesis_crop_size = synthesis_crop_size
        self.crop_to_multiple = crop_to_multiple
        self.augment = augment
        self.epoch_length = epoch_length
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shards_per_rank = int(shards_per_rank)
        self.output_dtype = output_dtype
        self.local_weight = float(local_weight)
        self.stopping_strategy = stopping_strategy
        self.source_probabilities = self._resolve_probabilities(probabilities) if probabilities else None
        # Shared memory: DataLoader workers (forked or spawned) increment counters the main process reads, each
        # worker in its own slot (see _COUNTER_SLOTS).
        self._counts = torch.zeros((_COUNTER_SLOTS, len(names), len(BAD_DATA_KINDS)), dtype=torch.int64)
        self._counts.share_memory_()
        for i, source in enumerate(self.sources):
            self._counts[0, i, BAD_DATA_KINDS.index("missing_pair")] = source.missing_pairs
        self._source_names = tuple(names)
        self._logged_epoch: int | None = None
        self._epoch = int(epoch)
        self._dataset = self._build(self._epoch)

    # -- construction --------------------------------------------------------------------------------------------

    def _resolve_probabilities(self, probabilities: Mapping[str, float]) -> list[float]:
        known = {s.name for s in self.sources} | {s.task_name for s in self.sources}
        unknown = set(probabilities) - known
        if unknown:
            raise ValueError(f"probabilities for unknown tasks/sources {sorted(unknown)}; known: {sorted(known)}")
        out = []
        for source in self.sources:
            if source.name in probabilities:
                out.append(float(probabilities[source.name]))
            elif source.task_name in probabilities:
                siblings = [
                    s for s in self.sources if s.task_name == source.task_name and s.name not in probabilities
                ]
                out.append(float(probabilities[source.task_name]) / len(siblings))
            else:
                out.append(0.0)
        return out

    @property
    def num_shards(self) -> int:
        """Shards of the file-list plan over all ranks (``world_size * shards_per_rank``)."""
        return self.world_size * self.shards_per_rank

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The (padded) epoch plan over all ranks; ``index`` in the examples is a position in it."""
        return make_epoch_plan(
            self.sources,
            seed=self.seed,
            epoch=self._epoch if epoch is None else epoch,
            probabilities=self.source_probabilities,
            epoch_length=self.epoch_length,
            pad_to_multiple=self.num_shards,
        )

    def _build(self, epoch: int) -> datasets.IterableDataset:
        streams: list[datasets.IterableDataset] = []
        weights: list[float] = []
        if self.sources:
            plan = self.plan(epoch)
            shard_length = len(plan) // self.num_shards
            shards = [(i * shard_length, (i + 1) * shard_length) for i in range(self.num_shards)]
            streams.append(
                datasets.IterableDataset.from_generator(
                    _plan_records,
                    features=_RECORD_FEATURES,
                    gen_kwargs={"shards": shards, "plan_source": plan.source, "plan_pair": plan.pair},
                )
            )
            weights.append(self.local_weight)
        for offset, hub in enumerate(self.hub_sources):
            streams.append(self._hub_records(len(self.sources) + offset, hub))
            weights.append(hub.weight)
        if len(streams) == 1:
            records = streams[0]
        else:
            total = sum(weights)
            records = datasets.interleave_datasets(
                streams,
                probabilities=[w / total for w in weights],
                seed=int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]),
                stopping_strategy=self.stopping_strategy,
            )
        if self.world_size > 1:
            if records.num_shards % self.world_size:
                logger.warning(
                    "stream has %d shards, not a multiple of world_size=%d: every rank will read all records "
                    "and keep 1/%d (Hub sources with few files cause this)",
                    records.num_shards, self.world_size, self.world_size,
                )
            records = split_dataset_by_node(records, rank=self.rank, world_size=self.world_size)
        loader = _ExampleLoader(
            self.sources + self.hub_sources,
            {name: i for i, name in enumerate(self.label_names)},
            self._counts,
            patch_size=self.patch_size,
            augment=self.augment,
            output_dtype=self.output_dtype,
            seed=self.seed,
            epoch=epoch,
            synthesis_crop_size=self.synthesis_crop_size,
            crop_to_multiple=self.crop_to_multiple,
        )
        examples = records.map(loader, remove_columns=["pair", "row_degraded", "row_clean", "row_task"])
        return examples.filter(_is_ok).remove_columns(["ok"])

    def _hub_records(self, source_index: int, hub: HubPairedSource) -> datasets.IterableDataset:
        stream = hub.load()
        features = stream.features
        if features is None:
            columns = list(next(iter(stream)).keys())
        else:
            columns = list(features)
            for column, feature in features.items():
                if isinstance(feature, datasets.Image):  # all of them: datasets must not decode (or die on) any
                    stream = stream.cast_column(column, datasets.Image(decode=False))
        needed = [c for c in (hub.degraded_column, hub.clean_column, hub.task_column) if c]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ValueError(f"{hub.source_name}: columns {missing} not in the dataset columns {columns}")
        task_names = None
        if hub.task_column and features is not None and isinstance(features[hub.task_column], datasets.ClassLabel):
            task_names = features[hub.task_column].names
        to_record = functools.partial(_hub_row_to_record, source_index=source_index, source=hub, task_names=task_names)
        return stream.map(to_record, remove_columns=columns, features=_RECORD_FEATURES)

    # -- epochs, state, reports ----------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def dataset(self) -> datasets.IterableDataset:
        """The underlying ``datasets.IterableDataset`` of the current epoch (this rank's part)."""
        return self._dataset

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch``'s plan (call before creating the next DataLoader iterator); logs and resets
        the per-epoch bad-data counts of the epoch that ended."""
        epoch = int(epoch)
        if epoch == self._epoch:
            return
        if self._logged_epoch != self._epoch:
            self.log_bad_data_counts(prefix=f"epoch {self._epoch} finished")
        self.reset_bad_data_counts()
        self._epoch = epoch
        self._dataset = self._build(epoch)

    def state_dict(self) -> dict:
        """Epoch, exact position of the `datasets` stream and bad-data counts (deep copies).

        The counts are this process's own slot (a DataLoader worker's, or the owning process's): the loader keeps
        each worker's state as of the last batch it handed over, so each slot is saved at the position the run
        resumes from. The totals over all slots would include examples other workers had read ahead, which a
        resume reads, and counts, again."""
        return {
            "epoch": self._epoch,
            "dataset": copy.deepcopy(self._dataset.state_dict()),
            "bad_data_slot": self._counts[_counter_slot()].tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: rebuild the saved epoch's plan and continue right after the last example read."""
        epoch = int(state["epoch"])
        if epoch != self._epoch:
            self._epoch = epoch
            self._dataset = self._build(epoch)
        self._dataset.load_state_dict(copy.deepcopy(state["dataset"]))
        slot = self._counts[_counter_slot()]
        if "bad_data_slot" in state:
            saved = torch.tensor(state["bad_data_slot"], dtype=torch.int64)
            if saved.shape == slot.shape:
                slot.copy_(saved)
            return
        # Checkpoints before per-slot counts hold the totals over every slot (read-ahead included): the totals
        # become at least those.
        totals = self._totals()
        saved = torch.tensor(state.get("bad_data", totals.tolist()), dtype=torch.int64)
        if saved.shape == totals.shape:
            self._counts[0] += (saved - totals).clamp_(min=0)

    def _totals(self) -> torch.Tensor:
        """``(source, kind)`` counts summed over the processes' slots."""
        return self._counts.sum(dim=0)

    def bad_data_counts(self, include_zero: bool = False) -> dict[str, dict[str, int]]:
        """``{source: {kind: count}}`` for this rank (all DataLoader workers included) in the current epoch."""
        table = self._totals().tolist()
        report = {}
        for name, row in zip(self._source_names, table):
            counts = {kind: n for kind, n in zip(BAD_DATA_KINDS, row) if n or include_zero}
            if counts or include_zero:
                report[name] = counts
        return report

    def reset_bad_data_counts(self) -> None:
        for kind in BAD_DATA_KINDS:
            if kind not in _STATIC_KINDS:
                self._counts[:, :, BAD_DATA_KINDS.index(kind)] = 0

    def log_bad_data_counts(self, prefix: str = "") -> None:
        report = self.bad_data_counts()
        message = "; ".join(f"{s}: " + ", ".join(f"{k}={n}" for k, n in c.items()) for s, c in report.items())
        logger.info("%s%sbad data per source (rank %d): %s", prefix, ": " if prefix else "", self.rank,
                    message or "none")
        self._logged_epoch = self._epoch

    # -- iteration -----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        yield from self._dataset
        if torch.utils.data.get_worker_info() is None:  # workers share the counters; the main process reports
            self.log_bad_data_counts(prefix=f"epoch {self._epoch} finished")

    def examples_per_epoch(self) -> int:
        """Plan length over all ranks (file-list sources only; before skipped examples)."""
        return len(self.plan()) if self.sources else 0

    def __repr__(self) -> str:
        return (
            f"RestorationStream(sources={list(self._source_names)}, labels={self.label_names}, "
            f"patch_size={self.patch_size}, epoch={self._epoch}, rank={self.rank}/{self.world_size}, "
            f"num_shards={self.num_shards})"
        )


def build_stream(
    preset: str,
    roots: Mapping[str, Any],
    *,
    synthesize_missing: bool = False,
    sigmas: Sequence[float] = NOISE_SIGMAS,
    repeats: Mapping[str, int] | None = None,
    cdd11_split: str | None = "train",
    **stream_kwargs: Any,
) -> RestorationStream:
    """``RestorationStream(preset_sources(preset, roots, ...), label_names=PRESET_LABELS[preset], **stream_kwargs)``."""
    sources = preset_sources(
        preset, roots, synthesize_missing=synthesize_missing, sigmas=sigmas, repeats=repeats, cdd11_split=cdd11_split
    )
    stream_kwargs.setdefault("label_names", PRESET_LABELS[preset])
    return RestorationStream(sources, **stream_kwargs)


def build_dataloader(
    stream: RestorationStream,
    batch_size: int,
    *,
    num_workers: int = 2,
    drop_last: bool = True,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    **kwargs: Any,
):
    """A torchdata ``StatefulDataLoader`` over ``stream`` (exact resume with ``state_dict``/``load_state_dict``).

    Workers are not persistent so that ``stream.set_epoch`` reaches them. Do not pass the result to
    ``accelerator.prepare``: the stream is already split per rank. Starting an epoch draws the workers' base seed
    from the loader's own generator (seeded from the stream's seed), never from torch's global RNG: a draw there
    would shift every random number the training step takes (DPPD's prompt sampling, CPL's negatives) differently
    in a resumed run, whose first epoch starts mid-way, than in the uninterrupted one.
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    if kwargs.get("persistent_workers"):
        raise ValueError("persistent_workers would keep the previous epoch's plan in the workers")
    if num_workers > stream.shards_per_rank:
        logger.warning("num_workers=%d > shards_per_rank=%d: extra workers will idle", num_workers,
                       stream.shards_per_rank)
    if num_workers and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    if kwargs.get("generator") is None:
        kwargs["generator"] = torch.Generator().manual_seed(stream.seed)
    return StatefulDataLoader(
        stream, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory, **kwargs
    )
