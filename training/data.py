"""Degradation corpora as `datasets` streams: official layouts, Hub ids, synthesis, mixtures, multi-process.

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
  index])``: the same example is identical whichever rank or DataLoader worker produces it.
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

from __future__ import annotations

import copy
import functools
import io
import logging
import math
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image, ImageOps

from modeling.image_processing_restoration import RestorationImageProcessor, load_image_file, quantize

from .degradations import (
    AUGMENT_MODES,
    CDD11_TYPES,
    NOISE_SIGMAS,
    TASK_NAMES,
    augment,
    random_augment_mode,
    synthesize,
    task_label,
)


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
    "center_crop_to_multiple",
]

logger = logging.getLogger(__name__)

OFFICIAL_REPEATS: dict[str, int] = {"noise": 3, "rain": 120, "haze": 1, "blur": 5, "low-light": 20}
"""Per-epoch repeat factors of the PromptIR/AdaIR/PIP loaders (noise: per sigma)."""

PRESET_TASKS: dict[str, tuple[str, ...]] = {
    "3-task": ("noise", "rain", "haze"),
    "5-task": TASK_NAMES,
    "cdd11": CDD11_TYPES,
}
PRESET_LABELS: dict[str, tuple[str, ...]] = {"3-task": TASK_NAMES, "5-task": TASK_NAMES, "cdd11": CDD11_TYPES}
"""Label space of each preset: 3-task keeps the 5-class ids (noise 0, rain 1, haze 2)."""

BAD_DATA_KINDS: tuple[str, ...] = ("missing_pair", "corrupt", "size_mismatch", "unknown_task", "converted", "padded")
"""Counted per source. The first four drop an example; ``converted`` (non-RGB8 file) and ``padded`` (smaller
than the patch, reflect-padded) are kept and only reported."""
_DROPPING_KINDS = BAD_DATA_KINDS[:4]
_STATIC_KINDS = ("missing_pair",)  # found when the sources are built, not per epoch

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
)

# Layout rules per task: (degraded folder, clean folders, clean-name candidates from the degraded stem).
# A degraded file is any file below a folder named like the first element; its clean file sits directly in a
# sibling clean folder (same parent as the degraded folder). Names are compared case-insensitively.
_SAME_NAME = ("same",)
_LAYOUT_RULES: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    # Rain100L train (official list): rainy/rain-<k>.png -> gt/norain-<k>.png; test/Rain13K: input -> target.
    "rain": [
        ("rainy", ("gt",), ("norain", "same")),
        ("input", ("target", "gt"), _SAME_NAME),
        ("rain", ("norain",), _SAME_NAME),
    ],
    # RESIDE OTS: synthetic/partN/<id>_<A>_<beta>.jpg -> original/<id>.jpg; SOTS: input/<id>_a_b.jpg -> target/<id>.png
    "haze": [
        ("synthetic", ("original",), ("prefix", "same")),
        ("input", ("target", "gt", "clear"), ("prefix", "same")),
        ("hazy", ("clear", "gt"), ("prefix", "same")),
    ],
    # GoPro: <seq>/blur/<n> -> <seq>/sharp/<n> (also flattened blur/ sharp/, blur_gamma/); AdaIR test input/target.
    "blur": [
        ("blur", ("sharp",), _SAME_NAME),
        ("blur_gamma", ("sharp",), _SAME_NAME),
        ("input", ("target",), _SAME_NAME),
    ],
    # LOL: low/<n> -> high/<n> (v1 our485/eval15) or gt/<n> (AdaIR); input/target.
    "low-light": [
        ("low", ("high", "gt", "normal"), _SAME_NAME),
        ("input", ("target",), _SAME_NAME),
    ],
}
# CDD-11: <split>/<type>/<name> -> <split>/clear/<name>
_LAYOUT_RULES["cdd11"] = [(t, ("clear",), _SAME_NAME) for t in CDD11_TYPES]


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------


def _open_binary(path: str):
    if "://" in path:  # hf://, s3://, https://: resolved through fsspec like datasets does
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _inference_view(image: Image.Image | np.ndarray) -> tuple[np.ndarray, bool]:
    """The processor's float conversion of a decoded file, reduced to 8 bits (the rounding of `postprocess`)."""
    global _PROCESSOR
    if _PROCESSOR is None:
        _PROCESSOR = RestorationImageProcessor()
    rgb, meta = _PROCESSOR.to_rgb_float(image)
    converted = meta["bit_depth"] != 8 or meta["original_mode"] != "RGB"
    return np.ascontiguousarray(quantize(rgb, 8).transpose(1, 2, 0)), converted


_PROCESSOR: RestorationImageProcessor | None = None


def decode_image(source: str | os.PathLike | bytes) -> tuple[np.ndarray, bool]:
    """Decode a path, URL or encoded bytes to a uint8 ``(H, W, 3)`` RGB array: what inference sees, at 8 bits.

    Training and inference share one decoder: the file is read by `modeling`'s ``load_image_file`` (EXIF
    orientation, 16-bit colour PNGs at 16 bits, decompression-bomb guard) and converted by the image
    processor's rules (gray -> RGB, alpha set aside, palette, CMYK, 1-bit, 16-bit / 65535), then rounded to
    the nearest 8-bit value. So a 16-bit pixel ``v`` trains as ``round(v / 257)``, exactly the value the
    processor's float ``v / 65535`` quantizes to. Returns ``(array, converted)`` where ``converted`` says the
    file was not 8-bit RGB. Raises ``OSError`` (unreadable URL) or ``ValueError`` (`RestorationInputError`:
    corrupt, truncated, empty, bomb) for bad files.
    """
    if not isinstance(source, (bytes, bytearray)) and "://" in os.fspath(source):
        with _open_binary(os.fspath(source)) as stream:  # hf://, s3://, https:// through fsspec
            source = stream.read()
    image = load_image_file(source)
    if isinstance(image, Image.Image) and image.mode == "RGB":
        # 8-bit RGB, nearly every training file: the processor's float round trip would give these very values
        # (round(255 * float32(v / 255)) == v, tested), so skip it and only apply the EXIF orientation.
        try:
            return np.asarray(ImageOps.exif_transpose(image), dtype=np.uint8).copy(), False
        except Exception:  # unreadable EXIF: the processor's path below ignores it, with a warning
            pass
    return _inference_view(image)


def center_crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Official PromptIR ``crop_img``: centre-crop height and width down to a multiple of ``multiple``."""
    if multiple <= 1:
        return image
    height, width = image.shape[:2]
    crop_h, crop_w = height % multiple, width % multiple
    return image[crop_h // 2 : height - crop_h + crop_h // 2, crop_w // 2 : width - crop_w + crop_w // 2]


# ----------------------------------------------------------------------------------------------------------------
# File lists and pairing rules
# ----------------------------------------------------------------------------------------------------------------


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def list_image_files(root: str | os.PathLike) -> list[str]:
    """All image files below ``root`` (recursive, hidden entries skipped), sorted, as POSIX-style paths."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"not a directory: {root}")
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files.extend(os.path.join(directory, n) for n in names if not n.startswith(".") and _is_image(n))
    return sorted(f.replace(os.sep, "/") for f in files)


def dataset_image_files(path_or_id: str, split: str | None = None, **builder_kwargs) -> list[str]:
    """Image files of a dataset repo (Hub id or local folder) as resolved by ``datasets.load_dataset_builder``.

    Nothing is downloaded: Hub files come back as ``hf://datasets/...`` URLs that :func:`decode_image` opens
    through fsspec, so a folder-layout repo (e.g. CDD-11 ``train/<type>/<name>``) pairs like a local folder.
    """
    builder = datasets.load_dataset_builder(path_or_id, **builder_kwargs)
    data_files = builder.config.data_files or {}
    files: list[str] = []
    for split_name, split_files in data_files.items():
        if split is None or str(split_name) == split:
            files.extend(str(f) for f in split_files)
    archives = [f for f in files if f.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz"))]
    if archives and not any(_is_image(f) for f in files):
        raise ValueError(
            f"{path_or_id} stores its images in archives ({archives[:2]}...); download and extract them "
            "(huggingface_hub.snapshot_download) and pass the extracted folder instead"
        )
    return sorted(f for f in files if _is_image(f))


def _split_path(path: str) -> tuple[list[str], str, str]:
    """'a/b/c/name.png' -> (['a', 'b', 'c'], 'name', '.png') on '/'-separated paths (also URLs)."""
    *directories, filename = path.replace("\\", "/").split("/")
    stem, extension = os.path.splitext(filename)
    return directories, stem, extension


def _clean_stem_candidates(stem: str, rules: tuple[str, ...]) -> list[str]:
    out = []
    for rule in rules:
        if rule == "same":
            out.append(stem)
        elif rule == "norain" and stem.lower().startswith("rain-"):
            out.append("norain-" + stem[len("rain-") :])  # official: gt/norain-<k> for rainy/rain-<k>
        elif rule == "prefix":
            out.append(stem.split("_")[0])  # official: hazy <id>_<A>_<beta> -> clear <id>
    return out


def pair_files(
    files: Sequence[str], layout: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """Pair degraded and clean files by the official naming rules of ``layout``.

    ``layout`` is one of ``"rain"``, ``"haze"``, ``"blur"``, ``"low-light"`` (all official train and test
    layouts of that task, see ``_LAYOUT_RULES``) or ``"cdd11"`` (type folder -> ``clear``). Returns
    ``(pairs, unpaired)``: sorted ``(degraded, clean)`` paths and degraded files without a clean counterpart.
    When a clean stem exists with several extensions, the degraded file's own extension wins, then ``.png``.
    """
    if layout not in _LAYOUT_RULES:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(_LAYOUT_RULES)}")
    rules = _LAYOUT_RULES[layout]
    clean_folder_names = {c for _, cleans, _ in rules for c in cleans}
    degraded_folder_names = {d for d, _, _ in rules}
    # index of clean candidates: (parent folders, clean folder, stem) -> {extension: path}
    clean_index: dict[tuple[tuple[str, ...], str, str], dict[str, str]] = {}
    for path in files:
        directories, stem, extension = _split_path(path)
        if directories and directories[-1].lower() in clean_folder_names:
            key = (tuple(directories[:-1]), directories[-1].lower(), stem)
            clean_index.setdefault(key, {})[extension.lower()] = path

    pairs: list[tuple[str, str]] = []
    unpaired: list[str] = []
    for path in files:
        directories, stem, extension = _split_path(path)
        lowered = [d.lower() for d in directories]
        # the innermost folder named like a degraded folder decides the rule (e.g. .../synthetic/part1/x.jpg)
        position = next((i for i in range(len(lowered) - 1, -1, -1) if lowered[i] in degraded_folder_names), None)
        if position is None or (lowered[-1] in clean_folder_names and position != len(lowered) - 1):
            continue  # not below a degraded folder (clean files, unrelated files)
        parent = tuple(directories[:position])
        match = None
        for degraded_name, clean_names, stem_rules in rules:
            if degraded_name != lowered[position]:
                continue
            for clean_stem in _clean_stem_candidates(stem, stem_rules):
                for clean_name in clean_names:
                    candidates = clean_index.get((parent, clean_name, clean_stem))
                    if candidates:
                        match = candidates.get(extension.lower()) or candidates.get(".png") or sorted(
                            candidates.values()
                        )[0]
                        break
                if match:
                    break
            if match:
                break
        if match:
            pairs.append((path, match))
        else:
            unpaired.append(path)
    return sorted(pairs), sorted(unpaired)


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSource:
    """A list of (degraded, clean) file pairs of one task; ``degraded=None`` means "synthesize from clean".

    Args:
        name: unique name, used in logs and bad-data reports (e.g. ``"rain100l"``, ``"noise-s25"``).
        task_name: the task this source teaches (``TASK_NAMES`` or a ``CDD11_TYPES`` entry).
        pairs: ``((degraded_path | None, clean_path), ...)``; paths may be local or fsspec URLs.
        synthesis: degradation name for clean-only pairs (``"noise"``, ``"rain"``, ``"low_haze"``, ...).
        synthesis_kwargs: fixed parameters of the synthesis, e.g. ``{"sigma": 25}``.
        repeat: how many times the source is listed per epoch (official factors: :data:`OFFICIAL_REPEATS`).
        missing_pairs: degraded files found without a clean counterpart (reported as ``missing_pair``).
    """

    name: str
    task_name: str
    pairs: tuple[tuple[str | None, str], ...]
    synthesis: str | None = None
    synthesis_kwargs: Mapping[str, Any] = field(default_factory=dict)
    repeat: int = 1
    missing_pairs: int = 0

    def __post_init__(self) -> None:
        if self.repeat < 0:
            raise ValueError(f"{self.name}: repeat must be >= 0, got {self.repeat}")
        if any(d is None for d, _ in self.pairs) and self.synthesis is None:
            raise ValueError(f"{self.name}: clean-only pairs need a `synthesis`")

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class HubPairedSource:
    """A dataset with one (degraded, clean) pair per row, streamed with ``datasets.load_dataset(streaming=True)``.

    Args:
        path: Hub id, local folder or builder name (``"parquet"`` with ``data_files``).
        task_name: task of every row (ignored for rows whose ``task_column`` is set).
        degraded_column: image column (``Image`` feature, path string or bytes); ``None`` = synthesize.
        clean_column: image column of the ground truth.
        task_column: optional per-row task name (string or ``ClassLabel``), e.g. the CDD-11 type.
        synthesis / synthesis_kwargs: as for :class:`PairSource`, when ``degraded_column`` is ``None``.
        config_name / split / data_files / revision: passed to ``load_dataset``.
        weight: relative sampling weight when mixed with other sources (see ``RestorationStream.source_weights``).
    """

    path: str
    task_name: str = ""
    degraded_column: str | None = "degraded"
    clean_column: str = "clean"
    task_column: str | None = None
    synthesis: str | None = None
    synthesis_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    config_name: str | None = None
    split: str = "train"
    data_files: Any = None
    revision: str | None = None
    weight: float = 1.0

    @property
    def source_name(self) -> str:
        return self.name or os.path.basename(str(self.path).rstrip("/")) or str(self.path)

    def load(self) -> datasets.IterableDataset:
        kwargs = {"split": self.split, "streaming": True}
        if self.data_files is not None:
            kwargs["data_files"] = self.data_files
        if self.revision is not None:
            kwargs["revision"] = self.revision
        return datasets.load_dataset(self.path, self.config_name, **kwargs)


def _source_name(source: PairSource | HubPairedSource) -> str:
    return source.source_name if isinstance(source, HubPairedSource) else source.name


def _resolve_files(root: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A folder, a single file, a dataset repo (Hub id) or a list of those -> sorted image files."""
    if isinstance(root, (list, tuple)):
        return sorted({f for r in root for f in _resolve_files(r)})
    root = os.fspath(root)
    if os.path.isdir(root):
        return list_image_files(root)
    if os.path.isfile(root):
        return [root.replace(os.sep, "/")]
    return dataset_image_files(root)


def paired_source(
    root: str | os.PathLike | Sequence[str],
    task_name: str,
    *,
    name: str | None = None,
    layout: str | None = None,
    repeat: int | None = None,
) -> PairSource:
    """Paired source of ``task_name`` from a folder / repo / file list, using that task's layout rules.

    ``repeat`` defaults to the official factor of the task (rain x120, blur x5, low-light x20, haze x1).
    """
    layout = layout or task_name
    files = _resolve_files(root)
    pairs, unpaired = pair_files(files, layout)
    if name is None:
        folder = "files" if isinstance(root, (list, tuple)) else os.path.basename(os.fspath(root).rstrip("/"))
        name = f"{task_name}:{folder}"
    if unpaired:
        logger.warning("%s: %d degraded files without a clean counterpart (e.g. %s)", name, len(unpaired), unpaired[0])
    if not pairs:
        raise ValueError(f"{name}: no {layout} pairs found under {root!r} (checked {len(files)} image files)")
    return PairSource(
        name=name,
        task_name=task_name,
        pairs=tuple(pairs),
        repeat=OFFICIAL_REPEATS.get(task_name, 1) if repeat is None else repeat,
        missing_pairs=len(unpaired),
    )


def clean_source(
    root: str | os.PathLike | Sequence[str],
    synthesis: str = "noise",
    *,
    synthesis_kwargs: Mapping[str, Any] | None = None,
    task_name: str | None = None,
    name: str | None = None,
    repeat: int = 1,
) -> PairSource:
    """Clean photos (BSD400, WED, DIV2K, any folder) degraded on the fly by ``synthesis``."""
    files = _resolve_files(root)
    if not files:
        raise ValueError(f"no images found under {root!r}")
    return PairSource(
        name=name or f"{synthesis}-synthetic",
        task_name=task_name or synthesis,
        pairs=tuple((None, f) for f in files),
        synthesis=synthesis,
        synthesis_kwargs=dict(synthesis_kwargs or {}),
        repeat=repeat,
    )


def cdd11_sources(
    root: str | os.PathLike | Sequence[str],
    *,
    split: str | None = "train",
    types: Sequence[str] = CDD11_TYPES,
    repeat: int = 1,
) -> list[PairSource]:
    """One paired source per CDD-11 type: ``<split>/<type>/<name>`` -> ``<split>/clear/<name>``."""
    def in_split(path: str) -> bool:  # <split>/<type>/<name>
        directories = _split_path(path)[0]
        return split is None or (len(directories) >= 2 and directories[-2] == split)

    pairs, unpaired = pair_files(_resolve_files(root), "cdd11")
    sources = []
    for cdd_type in types:
        type_pairs = [p for p in pairs if _split_path(p[0])[0][-1] == cdd_type and in_split(p[0])]
        type_missing = sum(1 for f in unpaired if _split_path(f)[0][-1] == cdd_type and in_split(f))
        if not type_pairs:
            raise ValueError(f"CDD-11 type {cdd_type!r}: no pairs under {root!r} (split {split!r})")
        sources.append(
            PairSource(f"cdd11:{cdd_type}", cdd_type, tuple(type_pairs), repeat=repeat, missing_pairs=type_missing)
        )
    return sources


def preset_sources(
    preset: str,
    roots: Mapping[str, Any],
    *,
    synthesize_missing: bool = False,
    sigmas: Sequence[float] = NOISE_SIGMAS,
    repeats: Mapping[str, int] | None = None,
    cdd11_split: str | None = "train",
) -> list[PairSource]:
    """Sources of a preset (``"3-task"``, ``"5-task"``, ``"cdd11"``) from ``roots``.

    ``roots`` keys: ``"clean"`` (BSD400+WED-like photos for noise; folder, repo or list), ``"rain"``,
    ``"haze"``, ``"blur"``, ``"low-light"``, ``"cdd11"``. Noise is one source per sigma (official x3 each);
    paired tasks use their official repeat factors. With ``synthesize_missing=True`` a task without a root is
    synthesized from the clean photos (repeat ``3 * len(sigmas)``, the weight of the whole noise task), which is
    how the embedded corpus trains all tasks. ``repeats`` overrides factors by task name.
    """
    if preset not in PRESET_TASKS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESET_TASKS)}")
    unknown = set(roots) - {"clean", "cdd11", *TASK_NAMES}
    if unknown:
        raise ValueError(f"unknown roots {sorted(unknown)}; use 'clean', 'cdd11' or one of {TASK_NAMES}")
    factors = {**OFFICIAL_REPEATS, **(repeats or {})}
    clean = roots.get("clean")
    synthetic_repeat = factors.get("synthetic", 3 * len(sigmas))

    if preset == "cdd11":
        if roots.get("cdd11") is not None:
            return cdd11_sources(roots["cdd11"], split=cdd11_split, repeat=factors.get("cdd11", 1))
        if not (synthesize_missing and clean is not None):
            raise ValueError("preset 'cdd11' needs roots['cdd11'] (or roots['clean'] with synthesize_missing=True)")
        files = _resolve_files(clean)
        return [
            clean_source(files, t, name=f"cdd11-synthetic:{t}", repeat=factors.get("cdd11", 1)) for t in CDD11_TYPES
        ]

    sources: list[PairSource] = []
    clean_files = _resolve_files(clean) if clean is not None else None
    for task in PRESET_TASKS[preset]:
        if task == "noise":
            if clean_files is None:
                raise ValueError(f"preset {preset!r} needs roots['clean'] (clean photos for denoising)")
            for sigma in sigmas:
                sources.append(
                    clean_source(clean_files, "noise", synthesis_kwargs={"sigma": float(sigma)},
                                 name=f"noise-s{sigma:g}", repeat=factors["noise"])
                )
        elif roots.get(task) is not None:
            sources.append(paired_source(roots[task], task, repeat=factors.get(task, 1)))
        elif synthesize_missing and clean_files is not None:
            sources.append(clean_source(clean_files, task, name=f"{task}-synthetic", repeat=synthetic_repeat))
        else:
            raise ValueError(
                f"preset {preset!r} needs roots[{task!r}] (or roots['clean'] with synthesize_missing=True)"
            )
    return sources


# ----------------------------------------------------------------------------------------------------------------
# Epoch plan
# ----------------------------------------------------------------------------------------------------------------


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
        task = task_names[value] if task_names is not None and isinstance(value, int) else str(value)
    return {
        "index": -1,
        "source": source_index,
        "pair": -1,
        "row_degraded": _as_image_record(row[source.degraded_column]) if source.degraded_column else None,
        "row_clean": _as_image_record(row[source.clean_column]),
        "row_task": task,
    }


# ----------------------------------------------------------------------------------------------------------------
# Example loading (runs inside the `datasets` map, i.e. in DataLoader workers)
# ----------------------------------------------------------------------------------------------------------------


def _crop_and_augment(
    images: list[np.ndarray], patch_size: int | None, rng: np.random.Generator, augment_flag: bool
) -> tuple[list[np.ndarray], bool]:
    """Same random crop (official ``_crop_patch``) and same flip/rot90 mode for all images of an example."""
    padded = False
    if patch_size:
        height, width = images[0].shape[:2]
        if height < patch_size or width < patch_size:
            pad = ((0, max(patch_size - height, 0)), (0, max(patch_size - width, 0)), (0, 0))
            images = [np.pad(im, pad, mode="symmetric") for im in images]
            height, width, padded = max(height, patch_size), max(width, patch_size), True
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
    ) -> None:
        self.sources = tuple(sources)
        self.labels = dict(labels)
        self.counts = counts
        self.patch_size = patch_size
        self.augment = augment
        self.output_dtype = output_dtype
        self.seed = seed
        self.epoch = epoch

    def _count(self, source_index: int, kind: str, what: str = "") -> None:
        self.counts[source_index, BAD_DATA_KINDS.index(kind)] += 1
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
            synthesis, synthesis_kwargs = source.synthesis, source.synthesis_kwargs
            key = clean_where.get("bytes") or (clean_where.get("path") or "").encode()
            rng = np.random.default_rng([self.seed, self.epoch, 1 + source_index, zlib.crc32(key)])
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
            (degraded, clean), padded = _crop_and_augment([degraded, clean], self.patch_size, rng, self.augment)
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


def _is_ok(example: dict) -> bool:
    return bool(example["ok"])


# ----------------------------------------------------------------------------------------------------------------
# The stream
# ----------------------------------------------------------------------------------------------------------------


class RestorationStream(torch.utils.data.IterableDataset):
    """Mixture stream of ``{"degraded", "clean", "task", "task_name", "source", "index"}`` crops.

    A thin, stateful wrapper around the ``datasets.IterableDataset`` of the current epoch: ``set_epoch`` builds
    the next epoch's plan, ``state_dict``/``load_state_dict`` save and restore (epoch, exact stream position,
    bad-data counts), and iteration delegates to `datasets` (which splits shards between DataLoader workers).

    Args:
        sources: file-list sources (:class:`PairSource`), e.g. from :func:`preset_sources`.
        label_names: label space; ``task = label_names.index(task_name)`` (default :data:`TASK_NAMES`).
        patch_size: random crop size (official 128); ``None`` keeps full images (then use batch size 1).
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
        self.patch_size = patch_size
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
        # Shared memory: DataLoader workers (forked or spawned) increment the same counters the main process reads.
        self._counts = torch.zeros((len(names), len(BAD_DATA_KINDS)), dtype=torch.int64).share_memory_()
        for i, source in enumerate(self.sources):
            self._counts[i, BAD_DATA_KINDS.index("missing_pair")] = source.missing_pairs
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
        """Epoch, exact position of the `datasets` stream and bad-data counts (deep copies)."""
        return {
            "epoch": self._epoch,
            "dataset": copy.deepcopy(self._dataset.state_dict()),
            "bad_data": self._counts.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: rebuild the saved epoch's plan and continue right after the last example read."""
        epoch = int(state["epoch"])
        if epoch != self._epoch:
            self._epoch = epoch
            self._dataset = self._build(epoch)
        self._dataset.load_state_dict(copy.deepcopy(state["dataset"]))
        saved = torch.tensor(state.get("bad_data", self._counts.tolist()), dtype=torch.int64)
        if saved.shape == self._counts.shape:
            # max, not assignment: another worker may already have counted past the saved totals
            torch.maximum(self._counts, saved, out=self._counts)

    def bad_data_counts(self, include_zero: bool = False) -> dict[str, dict[str, int]]:
        """``{source: {kind: count}}`` for this rank (all DataLoader workers included) in the current epoch."""
        table = self._counts.tolist()
        report = {}
        for name, row in zip(self._source_names, table):
            counts = {kind: n for kind, n in zip(BAD_DATA_KINDS, row) if n or include_zero}
            if counts or include_zero:
                report[name] = counts
        return report

    def reset_bad_data_counts(self) -> None:
        for kind in BAD_DATA_KINDS:
            if kind not in _STATIC_KINDS:
                self._counts[:, BAD_DATA_KINDS.index(kind)] = 0

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
    ``accelerator.prepare``: the stream is already split per rank.
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    if kwargs.get("persistent_workers"):
        raise ValueError("persistent_workers would keep the previous epoch's plan in the workers")
    if num_workers > stream.shards_per_rank:
        logger.warning("num_workers=%d > shards_per_rank=%d: extra workers will idle", num_workers,
                       stream.shards_per_rank)
    if num_workers and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    return StatefulDataLoader(
        stream, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory, **kwargs
    )


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


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
    code adds noise to the full image). ``multiple_of=16`` reproduces the PromptIR centre crop. Bad files are
    skipped with a warning.
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
                clean = center_crop_to_multiple(decode_image(clean_path)[0], multiple_of)
                if degraded_path is None:
                    rng = np.random.default_rng([seed, source_index, int(pair_index)])
                    degraded = synthesize(clean, source.synthesis, rng, **dict(source.synthesis_kwargs)).image
                else:
                    degraded = center_crop_to_multiple(decode_image(degraded_path)[0], multiple_of)
            except Exception as error:
                logger.warning("validation: skipping %s (%s)", clean_path, error)
                continue
            if degraded.shape != clean.shape:
                logger.warning("validation: skipping %s (size %s vs %s)", clean_path, degraded.shape, clean.shape)
                continue
            yield {
                "degraded": degraded,
                "clean": clean,
                "task": labels[source.task_name],
                "task_name": source.task_name,
                "source": source.name,
                "name": _split_path(clean_path)[1],
            }
