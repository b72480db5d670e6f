"""Evaluate a model on the test sets of the papers' protocols, beside the published numbers.

    python -m training.evaluate_protocol --model org/pip-restormer --protocol 3-task --data_root data/test \
        --output results.json
    python -m training.evaluate_protocol --model out/promptir --protocol 5-task \
        --test_roots noise=data/CBSD68/original_png rain=data/Rain100L/test haze=data/SOTS/outdoor blur=data/GoPro/test \
        low-light=data/LOL/eval15 --tile 512 --output results.json
    python -m training.evaluate_protocol --model out/cpl --protocol cdd11 --test_roots cdd11=gy65896/CDD-11

Protocols (:data:`PROTOCOLS`): ``3-task`` (BSD68 σ 15/25/50, Rain100L, SOTS-outdoor; the average of five columns),
``5-task`` (SOTS-outdoor, Rain100L, BSD68 σ 25, GoPro, LOL; five columns) and ``cdd11`` (the eleven CDD-11 types).
Test folders are read in the official layouts by the corpus readers of :mod:`training.data` (the same pairing
rules as training: Rain100L ``input/`` ↔ ``target/``, SOTS ``<id>_<A>_<beta>`` ↔ ``<id>.png``, GoPro ``blur/`` ↔
``sharp/`` or ``input/`` ↔ ``target/``, LOL ``low/`` ↔ ``high/``, CDD-11 ``<type>/`` ↔ ``clear/``), from a local
folder or a Hub dataset repo id; a dataset with one pair per row (parquet) is read as ``ROOT@DEGRADED,CLEAN``
(column names; ``ROOT@CLEAN`` for the noise test set; ``--hub_split``, default ``test``). ``--data_root`` finds each task's folder below the PromptIR/AdaIR test root
(:data:`DEFAULT_SUBFOLDERS`); ``--test_roots task=DIR|HUB_ID`` names them one by one.

Noisy test images are synthesized exactly as PromptIR's and AdaIR's ``test.py``: one ``numpy`` legacy generator
seeded once (``np.random.seed(0)``), σ 15, 25, 50 in turn (5-task draws all three and keeps σ 25, as AdaIR's
five-task test does) and the clean images in (sorted) file order, each noisy image
``clip(clean + randn(H, W, 3) * σ, 0, 255).astype(uint8)`` on the centre-cropped uint8 image. (The
official code walks ``os.listdir`` order, which is file-system dependent; sorted order is the reproducible
choice.)

Scoring conventions (:data:`CONVENTIONS`: channel, crop to a multiple of 16, SSIM window, border shave; values
always in [0, 1] with data range 1) are named options, each with the papers that use it. Every image is restored
through ``modeling.restore`` (``--tile`` for large images), with the true degradation label for models that take
one (``--degradation auto`` lets the model estimate it). The scores of the degraded inputs are computed once per
test set and convention and reused by later models (:class:`ProtocolTestSets`).

Bad files never stop an evaluation: a file that cannot be decoded, a pair whose sizes differ, and an image too
small to score (smaller than the SSIM window after cropping) are skipped and listed under ``"skipped"``;
16-bit, gray, palette and alpha files are converted to 8-bit RGB by the project's one decoder (as the official
``Image.open(...).convert('RGB')``, except that 16-bit samples round to the nearest 8-bit value where Pillow keeps
the high byte) and listed under ``"converted"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402

from training.data import (  # noqa: E402
    CDD11_TYPES,
    HubPairedSource,
    center_crop_to_multiple,
    cdd11_sources,
    clean_source,
    decode_image,
    paired_source,
)
from training.data.plan import _as_image_record  # noqa: E402  (a Hub row's image cell, as the stream reads it)
from training.checkpointing import check_output_file, write_text_atomic  # noqa: E402
from training.degradations import add_gaussian_noise  # noqa: E402
from training.evaluation import psnr, ssim  # noqa: E402
from training.published_results import published_rows, row_as_dict  # noqa: E402

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricConvention:
    """How PSNR/SSIM are taken. Images are always float in [0, 1], data range 1, clipped, one score per image.

    Args:
        name: registry key.
        channel: ``"rgb"`` (all three channels) or ``"y"`` (BT.601 luma, BasicSR's ``rgb2ycbcr``).
        crop_multiple: centre-crop degraded and clean image to a multiple of this before restoring and scoring
            (PromptIR's ``crop_img(base=16)``); 0 or 1 scores the full image.
        ssim_window: ``"uniform7"`` (skimage's default 7x7 window) or ``"gaussian11"`` (skimage
            ``gaussian_weights=True``: σ 1.5, 11x11).
        ssim_sample_covariance: skimage's default (True: variances over the window scaled by N / (N - 1)), or
            population variances (False), as BasicSR's ``calculate_ssim``, MATLAB's ``ssim`` and pytorch_msssim.
        border_shave: pixels removed from every side before scoring (BasicSR ``crop_border``).
        used_by: which papers score this way, and where that is written.
    """

    name: str
    channel: str = "rgb"
    crop_multiple: int = 16
    ssim_window: str = "uniform7"
    border_shave: int = 0
    used_by: str = ""
    ssim_sample_covariance: bool = True

    def __post_init__(self) -> None:
        if self.channel not in ("rgb", "y"):
            raise ValueError(f"channel must be 'rgb' or 'y', got {self.channel!r}")
        if self.ssim_window not in ("uniform7", "gaussian11"):
            raise ValueError(f"ssim_window must be 'uniform7' or 'gaussian11', got {self.ssim_window!r}")
        if self.crop_multiple < 0 or self.border_shave < 0:
            raise ValueError("crop_multiple and border_shave must be >= 0")

    @property
    def min_size(self) -> int:
        """Smallest image side that can be scored (the SSIM window after the border shave)."""
        return (7 if self.ssim_window == "uniform7" else 11) + 2 * self.border_shave

    def psnr_kwargs(self) -> dict[str, Any]:
        return {"crop_border": self.border_shave, "test_y_channel": self.channel == "y"}

    def ssim_kwargs(self) -> dict[str, Any]:
        return {**self.psnr_kwargs(), "gaussian_weights": self.ssim_window == "gaussian11",
                "sample_covariance": self.ssim_sample_covariance}

    def describe(self) -> str:
        """One sentence for tables and model cards."""
        channel = "RGB" if self.channel == "rgb" else "the Y channel (BT.601)"
        crop = (f"centre-cropped to a multiple of {self.crop_multiple}" if self.crop_multiple > 1 else "full images")
        window = "uniform 7×7" if self.ssim_window == "uniform7" else "Gaussian (σ 1.5, 11×11)"
        if not self.ssim_sample_covariance:
            window += " population-variance"
        shave = f", {self.border_shave} px border shaved" if self.border_shave else ", no border shave"
        return (f"PSNR/SSIM on {channel} in [0, 1] (data range 1), {crop}, SSIM with a {window} window{shave}; "
                f"convention `{self.name}` ({self.used_by}).")


CONVENTIONS: dict[str, MetricConvention] = {
    "promptir": MetricConvention(
        "promptir", used_by="PromptIR, AdaIR and PIP `utils/val_utils.py`; CPL and DPPD report on PromptIR's protocol"
    ),
    "moce-ir": MetricConvention("moce-ir", ssim_window="gaussian11", used_by="MoCE-IR `src/test.py`"),
    "onerestore": MetricConvention(
        "onerestore", crop_multiple=0, used_by="OneRestore `img_file/cal_psnr_ssim.py` on CDD-11: full images"
    ),
    "moce-ir-cdd11": MetricConvention(
        "moce-ir-cdd11", crop_multiple=0, ssim_window="gaussian11", used_by="MoCE-IR on CDD-11: full images"
    ),
    "instructir": MetricConvention(
        "instructir", crop_multiple=0, ssim_window="gaussian11", ssim_sample_covariance=False,
        used_by="InstructIR (full images; its pytorch_msssim SSIM: Gaussian window, population variances)",
    ),
    "y-channel": MetricConvention(
        "y-channel", channel="y", crop_multiple=0, ssim_window="gaussian11", ssim_sample_covariance=False,
        used_by="Restormer's single-task tables, scored as BasicSR's calculate_psnr/calculate_ssim on Y (its "
                "MATLAB deraining script rounds Y to 8 bits first); not comparable with the all-in-one tables "
                "(PromptIR#16)",
    ),
}
"""Named scoring conventions (pick one with ``--convention``)."""


# ---------------------------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestColumn:
    """One column of a protocol's table: a test set, for noise its σ, and the ``--test_roots`` key it reads."""

    name: str
    task: str
    dataset: str
    sigma: Optional[int] = None
    root: str = ""

    @property
    def root_key(self) -> str:
        """Key of ``--test_roots`` that holds this column's images (default: the task)."""
        return self.root or self.task

    @property
    def label(self) -> str:
        """Degradation label given to models that take one."""
        return self.task


@dataclass(frozen=True)
class Protocol:
    name: str
    columns: tuple[TestColumn, ...]
    default_convention: str
    description: str
    #: σ values the official test script draws noise for, in its order, from one generator over the same clean
    #: images; a σ the protocol has no column for is drawn and discarded, so each column gets the official noise.
    #: PromptIR's 3-task and AdaIR's 5-task test.py both walk 15, 25, 50 (5-task then reports 25 only).
    noise_draw_order: tuple[int, ...] = ()


_BSD68, _RAIN, _SOTS = "BSD68", "Rain100L", "SOTS-outdoor"
PROTOCOLS: dict[str, Protocol] = {
    "3-task": Protocol(
        "3-task",
        (TestColumn("haze", "haze", _SOTS), TestColumn("rain", "rain", _RAIN),
         *(TestColumn(f"noise-{s}", "noise", _BSD68, s) for s in (15, 25, 50))),
        "promptir",
        "PromptIR's all-in-one setting: dehazing (SOTS-outdoor), deraining (Rain100L), denoising (BSD68, σ 15/25/50)",
        noise_draw_order=(15, 25, 50),
    ),
    "5-task": Protocol(
        "5-task",
        (TestColumn("haze", "haze", _SOTS), TestColumn("rain", "rain", _RAIN),
         TestColumn("noise-25", "noise", _BSD68, 25), TestColumn("blur", "blur", "GoPro"),
         TestColumn("low-light", "low-light", "LOL-v1")),
        "promptir",
        "IDR's five-task setting: SOTS-outdoor, Rain100L, BSD68 σ 25, GoPro, LOL",
        noise_draw_order=(15, 25, 50),
    ),
    "cdd11": Protocol(
        "cdd11",
        tuple(TestColumn(t, t, "CDD-11", root="cdd11") for t in CDD11_TYPES),
        "onerestore",
        "CDD-11 (OneRestore): eleven single and composite weather/low-light degradations, mean over the types",
    ),
}
"""The protocols' columns, in the papers' column order."""

DEFAULT_SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "noise": ("denoise/bsd68", "denoise/BSD68", "denoise/cbsd68", "denoise/CBSD68", "denoise"),
    "rain": ("derain/Rain100L", "derain/rain100l", "derain"),
    "haze": ("dehaze/outdoor", "dehaze"),
    "blur": ("deblur/gopro", "deblur/GoPro", "GOPRO_deblur/test", "GOPRO_deblur", "deblur"),
    "low-light": ("enhance/lol", "enhance/LOL", "enhance"),
    "cdd11": ("",),
}
"""Where each task's test set sits below ``--data_root`` (PromptIR ``test/`` layout, AdaIR and PIP additions),
tried in order; ``data_root/test`` and ``data_root/Test`` are tried too."""


def _check_one_clean_folder(root: str, files: list[str]) -> None:
    """The noise test set is one folder of clean images: a root whose images sit in several folders (CBSD68's
    release beside its noisyN/ folders, a denoise/ folder holding BSD68 and Urban100) would score noisy or foreign
    images as clean ones, so it is refused with the folders named."""
    folders = sorted({posixpath.dirname(f) for f in files})
    if len(folders) > 1:
        prefix = os.fspath(root).replace(os.sep, "/").rstrip("/") + "/"
        names = [f[len(prefix):] if f.startswith(prefix) else f for f in folders]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ValueError(
            f"the noise test set {root!r} has images in {len(folders)} folders ({shown}): point it at the one "
            "folder of clean images (for CBSD68's release, its original_png/)"
        )


def find_test_roots(protocol: str, data_root: str | os.PathLike, given: Sequence[str] = ()) -> dict[str, str]:
    """``{task: folder}`` for the protocol's tasks found below `data_root` (FileNotFoundError naming the misses);
    tasks in `given` (named by ``--test_roots``) are not looked for."""
    needed = dict.fromkeys(column.root_key for column in PROTOCOLS[protocol].columns if column.root_key not in given)
    data_root = Path(data_root)
    bases = [data_root, data_root / "test", data_root / "Test"]
    found, missing = {}, []
    for task in needed:
        for base in bases:
            candidates = [base / sub if sub else base for sub in DEFAULT_SUBFOLDERS[task]]
            hit = next((c for c in candidates if c.is_dir() and (task != "cdd11" or (c / "clear").is_dir()
                                                                   or (c / "test" / "clear").is_dir())), None)
            if hit is not None:
                found[task] = str(hit)
                break
        else:
            missing.append(f"{task} (tried {', '.join(s or '.' for s in DEFAULT_SUBFOLDERS[task])})")
    if missing:
        raise FileNotFoundError(f"under {data_root}: no test folder for {'; '.join(missing)}; pass --test_roots")
    return found


# ---------------------------------------------------------------------------------------------------------------
# Test sets
# ---------------------------------------------------------------------------------------------------------------


class _Skip(Exception):
    """A file of a test set that cannot be scored; the message is the reason."""


@dataclass
class _Column:
    spec: TestColumn
    pairs: list[tuple[Optional[str], str]]
    noisy: Optional[list[tuple[str, np.ndarray, np.ndarray]]] = None  # materialized (name, degraded, clean)
    input_scores: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # convention -> name -> s


class ProtocolTestSets:
    """The test sets of one protocol, read from `roots` (``{task: folder | Hub id}``), with bad files recorded.

    Paired images are decoded on each pass (a GoPro test set does not fit in memory); noisy images are synthesized
    once, at construction, with PromptIR's seeded generator. Scores of the degraded inputs are cached per
    convention (:meth:`input_score`), so evaluating several models scores the inputs once.
    """

    def __init__(
        self,
        protocol: str,
        roots: Mapping[str, str],
        *,
        convention: MetricConvention,
        seed: int = 0,
        hub_split: str = "test",
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
        self.protocol = PROTOCOLS[protocol]
        self.convention = convention
        self.seed = seed
        self.roots = dict(roots)
        self.skipped: dict[str, dict[str, str]] = {}  # file -> {"column", "reason"}
        self.converted: dict[str, str] = {}  # file -> column
        self.missing_pairs: dict[str, int] = {}
        self.columns: dict[str, _Column] = {}
        self.hub_split = hub_split
        self._blobs: dict[str, bytes] = {}  # row-paired datasets: item key -> encoded image
        self._rows: dict[str, list[tuple[Optional[str], str]]] = {}  # root -> its rows' keys, read once
        missing = sorted({c.root_key for c in self.protocol.columns} - set(self.roots))
        if missing:
            raise ValueError(f"protocol {protocol!r} needs test roots for {missing} (--data_root or --test_roots)")
        cdd11 = None
        for spec in self.protocol.columns:
            root = self.roots[spec.root_key]
            if "@" in root:  # a dataset with one (degraded, clean) pair per row: ROOT@DEGRADED,CLEAN
                pairs = self._row_pairs(root, spec)
            elif spec.task == "noise":
                pairs = list(clean_source(root, "noise", name=f"{spec.dataset}").pairs)
                _check_one_clean_folder(root, [clean for _, clean in pairs])
            elif spec.root_key == "cdd11":
                if cdd11 is None:
                    cdd11 = {s.task_name: s for s in _cdd11_sources(root)}
                pairs = list(cdd11[spec.task].pairs)
                self.missing_pairs[spec.name] = cdd11[spec.task].missing_pairs
            else:
                source = paired_source(root, spec.task, name=spec.dataset, repeat=1)
                pairs = list(source.pairs)
                self.missing_pairs[spec.name] = source.missing_pairs
            self.columns[spec.name] = _Column(spec, pairs)
        self._synthesize_noise()

    def _row_pairs(self, root: str, spec: TestColumn) -> list[tuple[Optional[str], str]]:
        """Rows of a Hub dataset (or local parquet file) ``ROOT@DEGRADED,CLEAN`` (noise: ``ROOT@CLEAN``), streamed
        with the corpus reader `HubPairedSource`; encoded images are kept in memory, decoded on each pass."""
        if root in self._rows:
            return self._rows[root]
        if spec.root_key == "cdd11":
            raise ValueError("CDD-11 is read in its folder layout (<type>/ and clear/), not as ROOT@COLUMNS")
        path, _, names = root.rpartition("@")
        columns = [name for name in names.split(",") if name]
        if len(columns) not in (1, 2) or (len(columns) == 1) != (spec.task == "noise"):
            raise ValueError(f"{root!r}: give ROOT@DEGRADED_COLUMN,CLEAN_COLUMN (noise: ROOT@CLEAN_COLUMN)")
        degraded_column, clean_column = (None, columns[0]) if len(columns) == 1 else columns
        local_parquet = os.path.isfile(path) and path.endswith(".parquet")
        source = HubPairedSource(
            path="parquet" if local_parquet else path, task_name=spec.task, degraded_column=degraded_column,
            clean_column=clean_column, synthesis="noise" if degraded_column is None else None,
            split="train" if local_parquet else self.hub_split, data_files=path if local_parquet else None,
        )
        dataset = source.load()
        for column in filter(None, (degraded_column, clean_column)):
            if isinstance((dataset.features or {}).get(column), datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))  # we decode (bad rows skip)
        pairs = []
        for index, row in enumerate(dataset):
            keys = []
            for column in (degraded_column, clean_column):
                if column is None:
                    keys.append(None)
                    continue
                record = _as_image_record(row[column])
                key = f"{path}/row{index:05d}.{column}"
                if record is None or (record["bytes"] is None and not record["path"]):
                    self._blobs[key] = b""  # an empty cell: decoding fails, the row is skipped and counted
                elif record["bytes"] is not None:
                    self._blobs[key] = record["bytes"]
                else:
                    key = record["path"]
                keys.append(key)
            pairs.append((keys[0], keys[1]))
        self._rows[root] = pairs
        return pairs

    def _synthesize_noise(self) -> None:
        # The official test.py: np.random.seed(0) once, then σ 15, 25, 50 in turn over the same image list; σ values
        # without a column here (5-task's 15 and 50) still take their draws, so σ 25 gets the official noise.
        noise_columns = [c for c in self.columns.values() if c.spec.task == "noise"]
        if not noise_columns:
            return
        by_sigma = {c.spec.sigma: c for c in noise_columns}
        order = self.protocol.noise_draw_order or tuple(by_sigma)
        missing = set(by_sigma) - set(order)
        if missing:
            raise ValueError(f"{self.protocol.name}: σ {sorted(missing)} not in its noise_draw_order {order}")
        pairs = noise_columns[0].pairs  # every noise column reads the one clean test set
        rng = np.random.RandomState(self.seed)
        for column in noise_columns:
            column.noisy = []
        for sigma in order:
            column = by_sigma.get(sigma)
            for _, clean_path in pairs:
                try:
                    clean = self._read(clean_path, (column or noise_columns[0]).spec.name)
                except _Skip as reason:
                    if column is not None:
                        self._skip(clean_path, column.spec.name, str(reason))
                    continue
                noisy = add_gaussian_noise(clean, sigma, rng).image
                if column is not None:
                    column.noisy.append((clean_path, noisy, clean))

    def _skip(self, path: str, column: str, reason: str) -> None:
        if path not in self.skipped:
            logger.warning("%s: skipping %s (%s)", column, path, reason)
        self.skipped.setdefault(path, {"column": column, "reason": reason})

    def _decode(self, path: str, column: str) -> np.ndarray:
        try:
            image, converted = decode_image(self._blobs.get(path, path))
        except Exception as error:  # any undecodable file is skipped and counted, never fatal
            raise _Skip(f"corrupt: {type(error).__name__}: {error}") from error
        if converted:
            self.converted.setdefault(path, column)
        return image

    def _read(self, path: str, column: str, image: Optional[np.ndarray] = None) -> np.ndarray:
        image = self._decode(path, column) if image is None else image
        image = center_crop_to_multiple(image, self.convention.crop_multiple)
        if min(image.shape[:2]) < self.convention.min_size:
            raise _Skip(f"too small: {image.shape[1]}x{image.shape[0]} px after cropping "
                        f"(needs {self.convention.min_size} px for SSIM)")
        return image

    def items(self, name: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(input path, degraded uint8 HWC, clean uint8 HWC)`` of column `name`, in file order."""
        column = self.columns[name]
        if column.noisy is not None:
            yield from column.noisy
            return
        for degraded_path, clean_path in column.pairs:
            try:
                degraded, clean = self._decode(degraded_path, name), self._decode(clean_path, name)
                if degraded.shape != clean.shape:  # before the crop to a multiple, which could hide it
                    raise _Skip(f"size mismatch: {degraded.shape[:2]} vs clean {clean.shape[:2]}")
                degraded, clean = self._read(degraded_path, name, degraded), self._read(clean_path, name, clean)
            except _Skip as reason:
                self._skip(degraded_path, name, str(reason))
                continue
            yield degraded_path, degraded, clean

    def skipped_in(self, name: str) -> int:
        """How many files of column `name` were skipped (a bad BSD68 file counts in every noise column)."""
        files = {path for pair in self.columns[name].pairs for path in pair if path is not None}
        return len(files & self.skipped.keys())

    def input_score(self, name: str, image: str, degraded: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
        """(PSNR, SSIM) of a degraded input against its clean image, computed once per test set; `image` is the
        input's path (file names repeat across the sequences of sets like GoPro)."""
        cache = self.columns[name].input_scores.setdefault(self.convention.name, {})
        if image not in cache:
            cache[image] = (psnr(degraded, clean, **self.convention.psnr_kwargs()),
                            ssim(degraded, clean, **self.convention.ssim_kwargs()))
        return cache[image]

    def dataset_id(self, spec: TestColumn) -> str:
        """The Hub id of the column's test set when it was read from the Hub, else the dataset's name."""
        root = self.roots[spec.root_key].rpartition("@")[0] or self.roots[spec.root_key]
        return root if not os.path.exists(root) and "/" in root else spec.dataset


def _cdd11_sources(root: str) -> list:
    # CDD-11 ships train/ and test/ splits; a folder holding only <type>/ and clear/ is the test split itself.
    # A local root with a test/ folder never falls back to reading everything (that would score train images).
    if os.path.isdir(root):
        return cdd11_sources(root, split="test" if os.path.isdir(os.path.join(root, "test")) else None)
    try:
        return cdd11_sources(root, split="test")
    except ValueError:
        return cdd11_sources(root, split=None)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def _column_label(model: Any, spec: TestColumn, protocol: str) -> Any:
    """The degradation label for a column, checked against the model's own label parser once."""
    from modeling.inference import degradation_label_ids

    candidates = [spec.label]
    if protocol == "cdd11":  # a 5-task model can still be told the parts of a composite (PIP's mixture)
        parts = {"low": "low-light"}
        candidates.append("+".join(parts.get(p, p) for p in spec.task.split("_")))
    errors = []
    for candidate in candidates:
        try:
            degradation_label_ids(model, candidate, 1)
            return candidate
        except ValueError as error:
            errors.append(str(error))
    raise ValueError(f"the model has no label for column {spec.name!r} ({'; '.join(errors)}); "
                     "use --degradation auto if it can estimate the degradation")


def evaluate_protocol(
    model: Any,
    test_sets: ProtocolTestSets,
    *,
    tile: Optional[int] = None,
    tile_overlap: Optional[int] = None,
    degradation: str = "label",
    device: Optional[str] = None,
    dtype: Optional[str] = "fp32",
    progress: bool = False,
) -> dict[str, Any]:
    """Scores of `model` on every column of `test_sets`, the average, and the published rows of the protocol.

    `degradation`: ``"label"`` gives models that take degradation labels the column's true degradation (as the
    papers evaluate PIP); ``"auto"`` lets the model estimate it. Models without labels ignore it.
    Returns the JSON-ready result (see the module docstring and :func:`markdown_report`).
    """
    from modeling import restore
    from modeling.inference import accepts_degradation_labels, load_model, model_inference_tile
    from modeling.modeling_utils import model_fingerprint
    from modeling.tiling import default_tile_overlap

    if degradation not in ("label", "auto"):
        raise ValueError(f"degradation must be 'label' or 'auto', got {degradation!r}")
    model = load_model(model, device=device, dtype=dtype)  # fp32 loads a half-precision checkpoint as float32
    takes_labels = accepts_degradation_labels(model)
    convention = test_sets.convention
    protocol = test_sets.protocol
    tasks: dict[str, dict[str, Any]] = {}
    for spec in protocol.columns:
        label = _column_label(model, spec, protocol.name) if takes_labels and degradation == "label" else None
        kwargs = {"degradation": label if takes_labels and degradation == "label" else "auto"} if takes_labels else {}
        scores, inputs = [], []
        for image_name, degraded, clean in test_sets.items(spec.name):
            restored = restore(degraded.astype(np.float32) / 255.0, model, tile=tile, tile_overlap=tile_overlap,
                               device=device, dtype=dtype, **kwargs)
            scores.append((psnr(restored, clean, **convention.psnr_kwargs()),
                           ssim(restored, clean, **convention.ssim_kwargs())))
            inputs.append(test_sets.input_score(spec.name, image_name, degraded, clean))
        if not scores:
            raise ValueError(f"column {spec.name!r}: no image could be scored (see the skipped files)")
        tasks[spec.name] = {
            "task": spec.task,
            "dataset": spec.dataset,
            "dataset_id": test_sets.dataset_id(spec),
            "sigma": spec.sigma,
            "label": label,
            "psnr": _mean([s[0] for s in scores]),
            "ssim": _mean([s[1] for s in scores]),
            "input_psnr": _mean([s[0] for s in inputs]),
            "input_ssim": _mean([s[1] for s in inputs]),
            "num_images": len(scores),
            "skipped": test_sets.skipped_in(spec.name),
            "missing_pairs": test_sets.missing_pairs.get(spec.name, 0),
        }
        if progress:
            logger.info("%s: %.2f dB / %.4f (%d images)", spec.name, tasks[spec.name]["psnr"],
                        tasks[spec.name]["ssim"], len(scores))
    average = {key: _mean([t[key] for t in tasks.values()]) for key in ("psnr", "ssim", "input_psnr", "input_ssim")}
    config = getattr(model, "config", None)
    tile_used = tile if tile is not None else model_inference_tile(model)
    if tile_overlap is None and tile_used:  # restore() picked its default overlap for these tiles
        tile_overlap = default_tile_overlap(tile_used)
    return {
        "protocol": protocol.name,
        "protocol_description": protocol.description,
        "model_type": getattr(config, "model_type", None),
        # which weights were scored: publish refuses to card another model with these numbers
        "model_fingerprint": model_fingerprint(model),
        "convention": asdict(convention),
        "convention_description": convention.describe(),
        "seed": test_sets.seed,
        # what restore() used: the tile given, else the model's inference_tile (tile=None; whole images up to
        # 4 megapixels otherwise), the overlap and the autocast precision
        "tile": tile_used,
        "tile_overlap": tile_overlap,
        "dtype": dtype,
        "degradation": degradation if takes_labels else None,
        "tasks": tasks,
        "average": average,
        "skipped": {"count": len(test_sets.skipped),
                    "files": [{"file": f, **info} for f, info in sorted(test_sets.skipped.items())]},
        "converted": {"count": len(test_sets.converted),
                      "files": [{"file": f, "column": c} for f, c in sorted(test_sets.converted.items())]},
        "published": [row_as_dict(row) for row in published_rows(protocol.name)],
        "environment": _environment(),
    }


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


#: The scores of every column and of the average; a results file without one of them finite is refused.
SCORE_KEYS = ("psnr", "ssim", "input_psnr", "input_ssim")


def check_protocol_results(results: Any, source: str = "the results") -> None:
    """Raise ``ValueError`` (one line naming `source`) unless `results` is what :func:`evaluate_protocol` writes:
    a known protocol, one entry per column of it with finite scores, and an average that is the mean of the
    columns. Reports and cards are rendered from these files, so a hand-edited or truncated one must not reach
    them (a missing column would change the average, and a missing score would break a table)."""
    import math
    import numbers

    def score(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{source}: {where} is {value!r}, not a finite number")
        return float(value)

    if not isinstance(results, Mapping):
        raise ValueError(f"{source} is a JSON {type(results).__name__}, not an object")
    protocol = PROTOCOLS.get(results.get("protocol"))
    if protocol is None:
        raise ValueError(f"{source}: protocol {results.get('protocol')!r} is none of {', '.join(PROTOCOLS)}")
    for key in ("protocol_description", "convention_description"):
        if not isinstance(results.get(key), str):
            raise ValueError(f"{source}: {key!r} is {results.get(key)!r}, not a text")
    skipped = results.get("skipped")
    if not (isinstance(skipped, Mapping) and isinstance(skipped.get("count"), int)
            and isinstance(skipped.get("files"), list)):
        raise ValueError(f"{source}: 'skipped' is {skipped!r}, not an object with a 'count' and a list of 'files'")
    tasks = results.get("tasks")
    if not isinstance(tasks, Mapping):
        raise ValueError(f"{source}: 'tasks' is a JSON {type(tasks).__name__}, not an object of columns")
    expected = [spec.name for spec in protocol.columns]
    if list(tasks) != expected:
        missing = [name for name in expected if name not in tasks]
        extra = [name for name in tasks if name not in expected]
        raise ValueError(f"{source}: the {protocol.name} protocol scores the columns {', '.join(expected)} in this "
                         f"order; 'tasks' has " + (f"no {', '.join(missing)}" if missing else "")
                         + ("; " if missing and extra else "") + (f"unknown {', '.join(extra)}" if extra else "")
                         + ("" if missing or extra else "them in another order"))
    for name, task in tasks.items():
        if not isinstance(task, Mapping):
            raise ValueError(f"{source}: tasks[{name!r}] is a JSON {type(task).__name__}, not an object")
        for key in SCORE_KEYS:
            score(task.get(key), f"tasks[{name!r}][{key!r}]")
    average = results.get("average")
    if not isinstance(average, Mapping):
        raise ValueError(f"{source}: 'average' is a JSON {type(average).__name__}, not an object")
    for key in SCORE_KEYS:
        mean = _mean([float(task[key]) for task in tasks.values()])
        if not math.isclose(score(average.get(key), f"average[{key!r}]"), mean, rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"{source}: average[{key!r}] is {average[key]!r}, but its columns' mean is {mean!r}")


def _environment() -> dict[str, str]:
    # SSIM/PSNR drift with scikit-image versions (PromptIR#35): record what scored the numbers.
    import skimage
    import torch
    import transformers

    return {"scikit-image": skimage.__version__, "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


def _cell(psnr_value: Optional[float], ssim_value: Optional[float]) -> str:
    if psnr_value is None:
        return "–"
    return f"{psnr_value:.2f}" + (f"/{ssim_value:.3f}" if ssim_value is not None else "")


def markdown_report(results: Mapping[str, Any], model_name: str = "ours") -> str:
    """Two Markdown tables: per-column scores with the input baseline, then ours beside the published rows."""
    tasks = results["tasks"]
    lines = [f"Protocol `{results['protocol']}`: {results['protocol_description']}.",
             "", results.get("convention_description") or "", ""]
    lines += ["| Column | Dataset | Images | Skipped | PSNR (dB) | SSIM | Input PSNR (dB) | Input SSIM |",
              "|---|---|---|---|---|---|---|---|"]
    def number(value: Any, digits: int) -> str:  # a score missing from hand-edited results: "–"
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"

    for name, t in tasks.items():
        lines.append(f"| {name} | {t.get('dataset', '')} | {t.get('num_images', '')} | {t.get('skipped', '')} | "
                     f"{number(t.get('psnr'), 2)} | {number(t.get('ssim'), 4)} | {number(t.get('input_psnr'), 2)} | "
                     f"{number(t.get('input_ssim'), 4)} |")
    avg = results["average"]
    lines.append(f"| **Average** |  |  |  | {number(avg.get('psnr'), 2)} | {number(avg.get('ssim'), 4)} | "
                 f"{number(avg.get('input_psnr'), 2)} | {number(avg.get('input_ssim'), 4)} |")
    columns = list(tasks)
    lines += ["", "PSNR/SSIM beside the published numbers of the same protocol (SSIM columns compare only under the "
              "same SSIM window):", "",
              "| Method | " + " | ".join(columns) + " | Average | Source |",
              "|" + "---|" * (len(columns) + 3)]
    lines.append(f"| **{model_name}** | " + " | ".join(_cell(tasks[c]["psnr"], tasks[c]["ssim"]) for c in columns)
                 + f" | **{_cell(avg['psnr'], avg['ssim'])}** | this evaluation |")
    lines.append("| degraded input | " + " | ".join(_cell(tasks[c]["input_psnr"], tasks[c]["input_ssim"])
                                                for c in columns)
                 + f" | {_cell(avg['input_psnr'], avg['input_ssim'])} | this evaluation |")
    for row in results.get("published", []):
        cells = [_cell(row["tasks"][c]["psnr"], row["tasks"][c]["ssim"]) if c in row["tasks"] else "–"
                 for c in columns]
        average = row["average"] or {}
        window = " (Gaussian SSIM)" if row["ssim_window"] != "uniform7" else ""
        lines.append(f"| {row['method']}{window} | " + " | ".join(cells)
                     + f" | {_cell(average.get('psnr'), average.get('ssim'))} | {row['source']} |")
    notes = [f"- {row['method']}: {row['note']}" for row in results.get("published", []) if row.get("note")]
    if notes:
        lines += ["", "Notes on the published rows:", "", *notes]
    if results["skipped"]["count"]:
        lines += ["", f"Skipped files ({results['skipped']['count']}):", ""]
        lines += [f"- `{s['file']}` ({s['column']}): {s['reason']}" for s in results["skipped"]["files"]]
    return "\n".join(lines)


def model_card_results(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows `training.model_card.build_model_card` takes, copied from an evaluation JSON (never typed in)."""
    return [
        {"task": name, "dataset": t["dataset"], "dataset_id": t.get("dataset_id") or t["dataset"], "split": "test",
         "psnr": t["psnr"], "ssim": t["ssim"], "input_psnr": t["input_psnr"], "input_ssim": t["input_ssim"],
         "num_images": t["num_images"]}
        for name, t in results["tasks"].items()
    ]


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def parse_test_roots(values: Sequence[str]) -> dict[str, str]:
    """``["rain=DIR", "noise=org/id"]`` -> ``{"rain": "DIR", "noise": "org/id"}`` (ValueError for bad items)."""
    roots = {}
    known = set(DEFAULT_SUBFOLDERS)
    for value in values:
        task, sep, root = value.partition("=")
        if not sep or not root:
            raise ValueError(f"--test_roots takes TASK=DIR_OR_HUB_ID, got {value!r}")
        if task not in known:
            raise ValueError(f"--test_roots: unknown task {task!r}; known: {sorted(known)}")
        roots[task] = root
    return roots


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_protocol", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    parser.add_argument("--data_root", default=None, help="test root in the PromptIR/AdaIR layout (see above)")
    parser.add_argument("--test_roots", nargs="*", default=[], metavar="TASK=DIR_OR_HUB_ID",
                        help=f"test set per task ({', '.join(DEFAULT_SUBFOLDERS)}); overrides --data_root")
    parser.add_argument("--hub_split", default="test", help="split of row-paired Hub datasets (ROOT@COLUMNS)")
    parser.add_argument("--convention", default=None, choices=sorted(CONVENTIONS),
                        help="scoring convention (default: the protocol's: promptir for 3/5-task, onerestore for cdd11)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PromptIR's noise generator (official: 0)")
    parser.add_argument("--tile", default=None, type=int, help="restore in tiles of this size (large images)")
    parser.add_argument("--tile_overlap", type=int, default=None)
    parser.add_argument("--degradation", default="label", choices=("label", "auto"),
                        help="models taking labels (PIP, DPPD): the true label (default) or their own estimate")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision (default fp32, so that scores do not depend on the CPU; auto: "
                             "restore()'s default)")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--output", default=None, help="write the results JSON here (and the tables next to it as .md)")
    args = parser.parse_args(argv)
    if args.output and Path(args.output).suffix.lower() == ".md":
        parser.error(f"--output {args.output} names the JSON file; the Markdown report is written beside it as .md")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the evaluation from the command line; prints the Markdown report and returns the results."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    convention = CONVENTIONS[args.convention or PROTOCOLS[args.protocol].default_convention]
    # What the user named (roots, layouts, the model) is checked before any image is restored; a mistake there is
    # one line and exit code 2, as argparse reports a bad option, not a traceback.
    try:
        given = parse_test_roots(args.test_roots) if args.test_roots else {}
        roots = {**(find_test_roots(args.protocol, args.data_root, given) if args.data_root else {}), **given}
        if not roots:
            raise ValueError("give --data_root or --test_roots")
        if args.output:  # written after every image is scored: a path that cannot take them would lose them all
            check_output_file(args.output)
            check_output_file(Path(args.output).with_suffix(".md"), "--output's report")
        test_sets = ProtocolTestSets(args.protocol, roots, convention=convention, seed=args.seed,
                                     hub_split=args.hub_split)
        from modeling.inference import load_model

        model = load_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device,
                           dtype=args.dtype)
    except (OSError, ValueError) as error:
        print(f"python -m training.evaluate_protocol: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    results = evaluate_protocol(model, test_sets, tile=args.tile, tile_overlap=args.tile_overlap,
                                degradation=args.degradation, device=args.device, dtype=args.dtype, progress=True)
    results["model"] = args.model
    report = markdown_report(results, model_name=Path(str(args.model).rstrip("/")).name)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, json.dumps(results, indent=2))
        write_text_atomic(output.with_suffix(".md"), report + "\n")
    sys.stdout.write(report + "\n")
    return results


__all__ = [
    "CONVENTIONS",
    "DEFAULT_SUBFOLDERS",
    "MetricConvention",
    "PROTOCOLS",
    "check_protocol_results",
    "Protocol",
    "ProtocolTestSets",
    "TestColumn",
    "evaluate_protocol",
    "find_test_roots",
    "markdown_report",
    "model_card_results",
    "parse_test_roots",
]


if __name__ == "__main__":
    main()
