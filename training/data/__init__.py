"""Degradation corpora as `datasets` streams: official layouts, Hub ids, synthesis, mixtures, multi-process.

The package, in the order data flows: :mod:`.files` (the decoder shared with inference, file lists, the official
pairing rules), :mod:`.sources` (paired, clean + synthesis and Hub sources; task presets), :mod:`.plan` (the epoch
plan and its shards), :mod:`.stream` (decoding, cropping and synthesis in loader workers; bad-data counts; the
loader) and :mod:`.validation` (held-out pairs). Everything public is importable from ``training.data``.

What a training step receives (one example of a :class:`RestorationStream`)::

    {"degraded": float32 (3, P, P) in [0, 1]   (or uint8 with output_dtype="uint8"),
     "clean":    same,
     "task":     int label in `label_names` (TASK_NAMES for "3-task"/"5-task", CDD11_TYPES for "cdd11"),
     "task_name": str, "source": str, "index": int (position in the epoch plan; -1 for Hub rows)}

Design (each point answers a trap verified in ``shared/ecosystem*.md``):

* **Sources are file lists.** Layout rules (:func:`pair_files`) turn a list of paths -- a local folder walk
  (:func:`list_image_files`) or a Hub/local dataset repo's resolved files (:func:`dataset_image_files`) -- into
  (degraded, clean) pairs. Clean-only sources carry a synthesis recipe (:mod:`training.degradations`).
* **One epoch = one plan.** Per epoch, the official repeat factors (or sampling probabilities) expand the sources
  into a list of (source, pair) entries, permuted with ``(seed, epoch)`` and cut into ``world_size *
  shards_per_rank`` equal shards, streamed with ``datasets.IterableDataset.from_generator``. A streamed
  imagefolder is a single shard (no worker/rank parallelism); a plan has as many shards as we ask for.
* **No ``.shuffle()``.** Shuffling is the plan permutation, so ``state_dict()``/``load_state_dict()`` resume
  exactly (a shuffle buffer is not saved, and crashes torchdata's loader on resume with workers).
* **We decode, not `datasets`.** The generator yields tiny records; a ``.map`` decodes with the inference decoder
  (:func:`decode_image`: EXIF transpose; gray/RGBA/palette/16-bit -> RGB uint8, rounded), crops, augments and synthesizes; a ``.filter`` drops bad examples.
  A corrupt file decoded by ``datasets`` ends the whole stream; ours is skipped and counted. Because decoding
  happens after the generator, resuming inside a shard re-reads only records, not images.
* **Every random draw of an example** (crop, flip/rot90 mode, noise) comes from ``default_rng([seed, epoch, 0,
  index])`` (a Hub row, which has no index: from a hash of its degraded and clean images): the same example is
  identical whichever rank or DataLoader worker produces it.
* **Multi-process: `split_dataset_by_node`, never accelerate's sharding.** ``RestorationStream(...,
  rank=accelerator.process_index, world_size=accelerator.num_processes)`` gives each rank whole shards; wrap it
  with :func:`build_dataloader` and do **not** pass that loader to ``accelerator.prepare`` (it would split the
  data a second time and silently drop half of it). Move batches to the device yourself.
* **Bad data** (``corrupt``, ``size_mismatch``, ``missing_pair``, ``unknown_task``; plus the harmless
  ``converted`` and ``padded``) is counted per source in a shared-memory tensor that DataLoader workers write
  into; read it with :meth:`RestorationStream.bad_data_counts`, it is logged at the end of each epoch and saved
  in the stream state.

Training loop recipe (step-based; ranks may finish an epoch a few batches apart because of skipped files, so
never wait for the other ranks at an epoch boundary)::

    stream = build_stream("5-task", roots, patch_size=128, seed=0,
                          rank=accelerator.process_index, world_size=accelerator.num_processes)
    loader = build_dataloader(stream, batch_size=8, num_workers=2)
    if resuming:                      # state saved per rank next to the accelerate checkpoint
        stream.set_epoch(saved["epoch"]); loader.load_state_dict(saved["loader"])
    while step < max_steps:
        for batch in loader: ...      # save {"epoch": stream.epoch, "loader": loader.state_dict()}
        stream.set_epoch(stream.epoch + 1)

Hub datasets with one row per pair (e.g. parquet with two image columns) stream through
``datasets.load_dataset(..., streaming=True)`` as :class:`HubPairedSource`; they can be mixed with file-list
sources (by row-level interleaving, before decoding). Their shards are the dataset's files, read in order.
"""

from ..degradations import AUGMENT_MODES, CDD11_TYPES, NOISE_SIGMAS, TASK_NAMES
from .files import (
    IMAGE_EXTENSIONS,
    center_crop,
    center_crop_to_multiple,
    dataset_image_files,
    decode_image,
    list_image_files,
    pair_files,
)
from .plan import EpochPlan, make_epoch_plan
from .sources import (
    OFFICIAL_REPEATS,
    PRESET_LABELS,
    PRESET_TASKS,
    HubPairedSource,
    PairSource,
    cdd11_sources,
    clean_source,
    paired_source,
    preset_sources,
)
from .stream import BAD_DATA_KINDS, RestorationStream, build_dataloader, build_stream
from .validation import validation_pairs

__all__ = [
    "TASK_NAMES",
    "CDD11_TYPES",
    "NOISE_SIGMAS",
    "AUGMENT_MODES",
    "OFFICIAL_REPEATS",
    "PRESET_TASKS",
    "PRESET_LABELS",
    "BAD_DATA_KINDS",
    "IMAGE_EXTENSIONS",
    "PairSource",
    "HubPairedSource",
    "EpochPlan",
    "make_epoch_plan",
    "RestorationStream",
    "decode_image",
    "list_image_files",
    "dataset_image_files",
    "pair_files",
    "paired_source",
    "clean_source",
    "cdd11_sources",
    "preset_sources",
    "build_stream",
    "build_dataloader",
    "validation_pairs",
    "center_crop",
    "center_crop_to_multiple",
]
