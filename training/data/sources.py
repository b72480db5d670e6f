"""Sources: paired folders, clean folders with a synthesis recipe, Hub datasets, and the task presets."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from ..degradations import (
    BLUR_FAMILIES,
    CDD11_TYPES,
    NOISE_SIGMAS,
    TASK_NAMES,
)
from .files import _split_path, dataset_image_files, list_image_files, pair_files

logger = logging.getLogger("training.data")  # one logger for the package, as before the split

OFFICIAL_REPEATS: dict[str, int] = {"noise": 3, "rain": 120, "haze": 1, "blur": 5, "low-light": 20}
"""Per-epoch repeat factors of the PromptIR/AdaIR/PIP loaders (noise: per sigma)."""

PRESET_TASKS: dict[str, tuple[str, ...]] = {
    "3-task": ("noise", "rain", "haze"),
    "5-task": TASK_NAMES,
    "cdd11": CDD11_TYPES,
}
PRESET_LABELS: dict[str, tuple[str, ...]] = {"3-task": TASK_NAMES, "5-task": TASK_NAMES, "cdd11": CDD11_TYPES}
"""Label space of each preset: 3-task keeps the 5-class ids (noise 0, rain 1, haze 2)."""


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
        path: Hub id, local folder (a dataset repo, or a dataset written by ``save_to_disk``) or builder name
            (``"parquet"`` with ``data_files``).
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
        """The rows as a stream: ``load_dataset(..., streaming=True)``, or a folder written by ``save_to_disk``
        (which ``load_dataset`` refuses) read with ``load_from_disk``, one shard per Arrow file."""
        folder = str(self.path)
        if os.path.isfile(os.path.join(folder, "state.json")) or os.path.isfile(
            os.path.join(folder, "dataset_dict.json")
        ):
            saved = datasets.load_from_disk(folder)
            if isinstance(saved, datasets.DatasetDict):
                if self.split not in saved:
                    raise ValueError(f"{self.source_name}: split {self.split!r} not in {folder} ({sorted(saved)})")
                saved = saved[self.split]
            return saved.to_iterable_dataset(num_shards=max(1, len(saved.cache_files)))
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
        return split is None or (len(directories) >= 2 and directories[-2].lower() == split.lower())

    pairs, unpaired = pair_files(_resolve_files(root), "cdd11")
    sources = []
    for cdd_type in types:
        # folder names in any case, as pair_files matches them
        type_pairs = [p for p in pairs if _split_path(p[0])[0][-1].lower() == cdd_type.lower() and in_split(p[0])]
        type_missing = sum(1 for f in unpaired if _split_path(f)[0][-1].lower() == cdd_type.lower() and in_split(f))
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
    how the embedded corpus trains all tasks; synthesized blur is one source per kernel family
    (``blur-synthetic:gaussian``, ``:defocus``, ``:motion``) sharing that repeat evenly (rounded, at least 1
    each). ``repeats`` overrides factors by task name.
    """
    if preset not in PRESET_TASKS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESET_TASKS)}")
    unknown = set(roots) - {"clean", "cdd11", *TASK_NAMES} | ({"noise"} & set(roots))
    if unknown:
        raise ValueError(f"unknown roots {sorted(unknown)}; use 'clean' (the photos noise is synthesized on), "
                         f"'cdd11' or one of {tuple(t for t in TASK_NAMES if t != 'noise')}")
    unused = sorted(set(roots) - {"clean", "cdd11" if preset == "cdd11" else "clean", *PRESET_TASKS[preset]})
    if unused:
        logger.warning(f"preset {preset!r} has no task for roots {unused}: they are not read")
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
        elif synthesize_missing and clean_files is not None and task == "blur":
            # One source per kernel family (like noise per sigma), so `task_probabilities` can weight a family
            # (e.g. ``blur-synthetic:motion=0.2``) and validation takes crops of every family; ``blur=p`` still
            # splits p evenly, as drawing the family uniformly did. The families share the task's repeat (rounded,
            # >= 1 each).
            family_repeat = max(1, round(synthetic_repeat / len(BLUR_FAMILIES)))
            for family in BLUR_FAMILIES:
                sources.append(
                    clean_source(clean_files, "blur", synthesis_kwargs={"family": family},
                                 name=f"blur-synthetic:{family}", repeat=family_repeat)
                )
        elif synthesize_missing and clean_files is not None:
            sources.append(clean_source(clean_files, task, name=f"{task}-synthetic", repeat=synthetic_repeat))
        else:
            raise ValueError(
                f"preset {preset!r} needs roots[{task!r}] (or roots['clean'] with synthesize_missing=True)"
            )
    return sources
