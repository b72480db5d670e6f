"""Image files: the decoder (shared with inference), file lists and the official pairing rules."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image, ImageOps

from modeling.image_processing_restoration import (
    RestorationImageProcessor,
    load_image_file,
    quantize,
)

from ..degradations import (
    CDD11_TYPES,
)

logger = logging.getLogger("training.data")  # one logger for the package, as before the split

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
)

# Layout rules per task: (degraded folder, clean folders, clean-name candidates from the degraded stem).
# A degraded file is any file below a folder named like the first element; its clean file sits directly in a
# sibling clean folder (same parent as the degraded folder). Folder names and extensions are compared
# case-insensitively. Stems match as they are first (the official releases name both sides alike), then in any case
# (IMG_1.JPG pairs with img_1.png), where that names a single clean stem.
_SAME_NAME = ("same",)
_LAYOUT_RULES: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    # Rain100L train (official list): rainy/rain-<k>.png -> gt/norain-<k>.png; test/Rain13K: input -> target, the
    # same name (PromptIR, AdaIR) or input/rain-<k> -> target/norain-<k> (PIP's test loader renames rain -> norain).
    "rain": [
        ("rainy", ("gt",), ("norain", "same")),
        ("input", ("target", "gt"), ("same", "norain")),
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
    # LOL: low/<n> -> high/<n> (v1 our485/eval15) or gt/<n> (AdaIR); LOL-v2: Low/<n> -> Normal/<n> (Synthetic),
    # Low/low<k> -> Normal/normal<k> (Real_captured); input/target.
    "low-light": [
        ("low", ("high", "gt", "normal"), ("same", "normal")),
        ("input", ("target",), _SAME_NAME),
    ],
}
# CDD-11: <split>/<type>/<name> -> <split>/clear/<name>
_LAYOUT_RULES["cdd11"] = [(t, ("clear",), _SAME_NAME) for t in CDD11_TYPES]
# A degraded folder used only where its preferred sibling is absent: the original GoPro tree holds every frame twice,
# <seq>/blur (the benchmark's input) and <seq>/blur_gamma (the same frames averaged in another gamma); taking both
# would score (or train on) each sharp frame twice. A tree with blur_gamma alone still pairs.
_FALLBACK_DEGRADED_FOLDERS = {"blur_gamma": "blur"}


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


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` window of an (H, W, ...) array (a side shorter than ``size`` is kept whole)."""
    height, width = image.shape[:2]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[top : top + size, left : left + size]


def center_crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Official PromptIR ``crop_img``: centre-crop height and width down to a multiple of ``multiple``."""
    if multiple <= 1:
        return image
    height, width = image.shape[:2]
    crop_h, crop_w = height % multiple, width % multiple
    return image[crop_h // 2 : height - crop_h + crop_h // 2, crop_w // 2 : width - crop_w + crop_w // 2]


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def list_image_files(root: str | os.PathLike) -> list[str]:
    """All image files below ``root`` (recursive, hidden entries skipped), sorted, as POSIX-style paths."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"not a directory: {root}")
    files = []
    # Linked folders are followed (datasets are often linked into one training root, as PromptIR's setup does);
    # a folder reached twice (a link loop, or two links to one place) is read once.
    seen = {os.path.realpath(root)}
    for directory, subdirs, names in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(d for d in subdirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(directory, name))
            if real not in seen:
                seen.add(real)
                kept.append(name)
        subdirs[:] = kept
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
        elif rule == "normal" and stem.lower().startswith("low"):
            out.append("normal" + stem[len("low") :])  # LOL-v2 Real_captured: Normal/normal<k> for Low/low<k>
        elif rule == "prefix":
            out.append(stem.split("_")[0])  # official: hazy <id>_<A>_<beta> -> clear <id>
    return out


def pair_files(
    files: Sequence[str], layout: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """Pair degraded and clean files by the official naming rules of ``layout``.

    ``layout`` is one of ``"rain"``, ``"haze"``, ``"blur"``, ``"low-light"`` (all official train and test
    layouts of that task, see ``_LAYOUT_RULES``) or ``"cdd11"`` (type folder -> ``clear``). Returns
    ``(pairs, unpaired)``: sorted ``(degraded, clean)`` paths and degraded files without a clean counterpart
    (the callers count and report them). Folder names and extensions pair in any case. A clean stem spelt as the
    rule makes it wins; otherwise one that differs only in case (``Frame_2.PNG`` -> ``frame_2.png``), and a
    ValueError names the files when several clean stems differ from it only in case (which one is meant?).
    When a clean stem exists with several extensions, the degraded file's own extension wins, then ``.png``.
    GoPro's ``blur_gamma`` folder pairs only where no ``blur`` sibling exists (see ``_FALLBACK_DEGRADED_FOLDERS``).
    """
    if layout not in _LAYOUT_RULES:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(_LAYOUT_RULES)}")
    rules = _LAYOUT_RULES[layout]
    clean_folder_names = {c for _, cleans, _ in rules for c in cleans}
    degraded_folder_names = {d for d, _, _ in rules}
    # index of clean candidates: (parent folders, clean folder, stem) -> {extension: path}
    clean_index: dict[tuple[tuple[str, ...], str, str], dict[str, str]] = {}
    # the same keyed by the stem in lower case -> the stems as spelt (a case-sensitive file system may hold several)
    folded_stems: dict[tuple[tuple[str, ...], str, str], set[str]] = {}
    for path in files:
        directories, stem, extension = _split_path(path)
        if directories and directories[-1].lower() in clean_folder_names:
            key = (tuple(directories[:-1]), directories[-1].lower(), stem)
            clean_index.setdefault(key, {})[extension.lower()] = path
            folded_stems.setdefault((*key[:2], stem.lower()), set()).add(stem)

    def clean_candidates(path: str, key: tuple[tuple[str, ...], str, str], exact: bool) -> dict[str, str] | None:
        if exact:
            return clean_index.get(key)
        stems = folded_stems.get((*key[:2], key[2].lower()), set())
        if len(stems) > 1:
            spelt = sorted(next(iter(clean_index[(*key[:2], stem)].values())) for stem in stems)
            raise ValueError(
                f"{path}: its clean counterpart is ambiguous, {len(stems)} clean files differ from its name only in "
                f"case ({', '.join(spelt)}); rename the clean file that belongs to it to the exact name"
            )
        return clean_index.get((*key[:2], next(iter(stems)))) if stems else None

    degraded_folders = set()  # (parent folders, degraded folder name) holding at least one file
    for path in files:
        directories, _, _ = _split_path(path)
        for i, name in enumerate(directories):
            if name.lower() in degraded_folder_names:
                degraded_folders.add((tuple(directories[:i]), name.lower()))

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
        preferred = _FALLBACK_DEGRADED_FOLDERS.get(lowered[position])
        if preferred and (parent, preferred) in degraded_folders:
            continue  # the preferred sibling's files stand for these frames
        keys = [
            (parent, clean_name, clean_stem)
            for degraded_name, clean_names, stem_rules in rules
            if degraded_name == lowered[position]
            for clean_stem in _clean_stem_candidates(stem, stem_rules)
            for clean_name in clean_names
        ]
        # The rules' order first (PromptIR's same name before PIP's rain -> norain), then the stem as spelt before
        # one in another case.
        candidates = next(
            (found for key in keys for exact in (True, False) if (found := clean_candidates(path, key, exact))), None
        )
        if candidates:
            pairs.append((path, candidates.get(extension.lower()) or candidates.get(".png")
                          or sorted(candidates.values())[0]))
        else:
            unpaired.append(path)
    return sorted(pairs), sorted(unpaired)
