"""Gradio Space: restore degraded photos with the prompt-restoration models.

Locally (with this repository installed: ``pip install -e ".[space]"``)::

    python space/app.py                          # shipped demo weights, http://127.0.0.1:7860
    python space/app.py --model outputs/pip-restormer-demo/model

On Hugging Face Spaces this file is the ``app_file``; ``space/build_space.py`` copies the ``modeling`` package
next to it (see ``space/README.md``). Settings come from ``SPACE_*`` environment variables (``SpaceSettings``).

Every restoration goes through ``modeling.restore`` (preprocessing, tiling, degradation labels); the app only
checks uploads, caches models, shows the weights the model used and writes the PNG download.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from transformers import PretrainedConfig

import modeling
from modeling.image_processing_restoration import RestorationImageProcessor, colour_bits_decoded_to_8, write_png
from modeling.inference import (
    AUTO_MODES,
    DEFAULT_AUTO_MODE,
    DEMO_CHECKPOINT_DIR,
    accepts_degradation_labels,
    estimate_degradation_weights,
    keep_freed_memory_for_reuse,
    load_model,
    load_processor,
    model_inference_tile,
    resolve_device,
    resolve_dtype,
    degradations_split_by_tiles,
    resolve_statistics_passes,
    restore,
)
from modeling.tiling import WHOLE_IMAGE


logger = logging.getLogger("prompt_restoration_space")

#: Model-picker value of the weights shipped inside the package (``modeling/demo``).
DEMO_MODEL = "demo"
#: Degradation-picker value that lets the model's estimator decide.
AUTO = "auto"
#: Formats a browser shows as they are; others get a PNG copy for the "before" half of the slider.
_BROWSER_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


def _env_float(environ, name: str, default: Optional[float], allow_zero: bool = False) -> Optional[float]:
    """A positive (or with ``allow_zero``, non-negative) finite number from ``name`` (unset or empty:
    ``default``); ValueError naming the variable."""
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and (number > 0 or (allow_zero and number == 0))):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} number, got {environ[name]!r}")
    return number


def _env_int(environ, name: str, default: Optional[int], minimum: int = 1) -> Optional[int]:
    """An integer of at least ``minimum`` from ``name`` (unset or empty: ``default``); ValueError naming it."""
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {environ[name]!r}")
    return number


def _env_switch(environ, name: str) -> Optional[bool]:
    """Unset or empty: None (the library's default); 1/true/yes/on or 0/false/no/off; anything else is an error."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be one of 1/true/yes/on or 0/false/no/off, got {environ[name]!r}")


@dataclass(frozen=True)
class SpaceSettings:
    """Everything an operator may tune; `from_env` reads the ``SPACE_*`` variable named in each comment."""

    model: str = DEMO_MODEL  # SPACE_MODEL: default model ("demo", a Hub id or a local folder of ours)
    extra_models: tuple[str, ...] = ()  # SPACE_MODELS: more picker entries, comma-separated
    max_megapixels: float = 4.0  # SPACE_MAX_MEGAPIXELS: larger images are refused with a message
    max_file_mb: float = 20.0  # SPACE_MAX_FILE_MB: upload size limit (server-side too, via launch)
    min_side: int = 16  # smaller images are refused (nothing to restore in a few pixels)
    # SPACE_TILE: images with a side above this run tiled (tile x tile, one tile per forward pass: about the memory
    # of a whole tile-sided image). Tiles cost time (statistics passes) or quality (without them), so the default
    # restores photos up to 1024 px whole (README, "Restore an image").
    tile: int = 1024
    # SPACE_STATISTICS_PASSES: the most passes gathering whole-image statistics for tiled images before the
    # restoring pass (each costs one tiled restore); None: restore()'s default (6); 0: tiles use their own statistics.
    statistics_passes: Optional[int] = None
    # SPACE_STATISTICS_TOLERANCE: the passes stop once one changes the statistics by at most this (relative);
    # None: restore()'s default (0.01); 0: always run them all.
    statistics_tolerance: Optional[float] = None
    concurrency: Optional[int] = None  # SPACE_CONCURRENCY: restorations at once; None: 1 on CPU, 2 on GPU
    queue_size: int = 64  # SPACE_QUEUE_SIZE: waiting requests beyond this are turned away ("queue is full")
    model_cache_size: int = 2  # SPACE_MODEL_CACHE_SIZE: models kept loaded (least recently used evicted)
    device: Optional[str] = None  # SPACE_DEVICE: None = CUDA when available, else CPU
    dtype: Optional[str] = None  # SPACE_DTYPE: None = auto (bf16 on a CPU with native bf16), "fp32", "bf16", "fp16"
    channels_last: Optional[bool] = None  # SPACE_CHANNELS_LAST: None = the CPU fast path on CPU; 0 turns it off
    # SPACE_REUSE_FREED_MEMORY: None = on when serving on CPU (freed activations stay in the heap for the next
    # request: modeling.inference.keep_freed_memory_for_reuse); 0 turns it off. Applied by main() only, since
    # it changes the allocator of the whole process.
    reuse_freed_memory: Optional[bool] = None
    examples_dir: Path = field(default_factory=lambda: DEMO_CHECKPOINT_DIR / "examples")  # SPACE_EXAMPLES_DIR
    output_dir: Optional[Path] = None  # SPACE_OUTPUT_DIR: restored PNGs; None: <system temp>/prompt-restoration-space
    output_ttl_s: float = 3600.0  # restored PNGs are deleted after this many seconds
    preload: bool = True  # load the default model at start-up (first request is then fast)

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "SpaceSettings":
        environ = os.environ if environ is None else environ
        extra = tuple(m.strip() for m in environ.get("SPACE_MODELS", "").split(",") if m.strip())
        settings = cls(
            model=environ.get("SPACE_MODEL", "").strip() or DEMO_MODEL,
            extra_models=extra,
            max_megapixels=_env_float(environ, "SPACE_MAX_MEGAPIXELS", cls.max_megapixels),
            max_file_mb=_env_float(environ, "SPACE_MAX_FILE_MB", cls.max_file_mb),
            tile=_env_int(environ, "SPACE_TILE", cls.tile, minimum=8),
            statistics_passes=_env_int(environ, "SPACE_STATISTICS_PASSES", None, minimum=0),
            statistics_tolerance=_env_float(environ, "SPACE_STATISTICS_TOLERANCE", None, allow_zero=True),
            concurrency=_env_int(environ, "SPACE_CONCURRENCY", None),
            queue_size=_env_int(environ, "SPACE_QUEUE_SIZE", cls.queue_size),
            model_cache_size=_env_int(environ, "SPACE_MODEL_CACHE_SIZE", cls.model_cache_size),
            device=environ.get("SPACE_DEVICE", "").strip() or None,
            dtype=environ.get("SPACE_DTYPE", "").strip() or None,
            channels_last=_env_switch(environ, "SPACE_CHANNELS_LAST"),
            reuse_freed_memory=_env_switch(environ, "SPACE_REUSE_FREED_MEMORY"),
            examples_dir=Path(environ.get("SPACE_EXAMPLES_DIR", "").strip() or DEMO_CHECKPOINT_DIR / "examples"),
            output_dir=Path(environ["SPACE_OUTPUT_DIR"]) if environ.get("SPACE_OUTPUT_DIR", "").strip() else None,
        )
        settings = replace(settings, **overrides)
        try:
            resolve_dtype(settings.dtype)  # an unknown SPACE_DTYPE fails here, not on every request
        except ValueError as error:
            raise ValueError(f"SPACE_DTYPE: {error}") from None
        return settings

    def reuses_freed_memory(self, device: torch.device) -> bool:
        """Whether `main` keeps freed memory for reuse when serving on ``device`` (the default: on CPU only)."""
        return device.type == "cpu" if self.reuse_freed_memory is None else self.reuse_freed_memory

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


def _message(text: Any) -> str:
    """Gradio renders messages as HTML: escape what comes from users (file names, model ids)."""
    return html.escape(str(text), quote=False)


# ---------------------------------------------------------------------------------------------- model cache
@dataclass
class LoadedModel:
    """A model in eval mode on the Space's device, with the processor saved next to it."""

    source: str
    model: torch.nn.Module
    processor: Any

    @property
    def takes_labels(self) -> bool:
        return accepts_degradation_labels(self.model)

    @property
    def can_estimate(self) -> bool:
        return bool(getattr(self.model, "can_estimate_degradation", False))

    @property
    def degradation_names(self) -> list[str]:
        return list(self.model.config.degradation_names) if self.takes_labels else []

    def degradation_choices(self) -> list[str]:
        """Picker entries: "auto" when the model can estimate, then its degradation names."""
        if not self.takes_labels:
            return [AUTO]
        return ([AUTO] if self.can_estimate else []) + self.degradation_names


class ModelCache:
    """Loads each model once and keeps the `capacity` most recently used ones (thread-safe: the queue runs
    handlers in worker threads). Two requests for the same new model wait for one load."""

    def __init__(self, capacity: int, device: torch.device, dtype: Optional[str] = None) -> None:
        if capacity < 1:
            raise ValueError(f"The model cache needs room for at least one model, got {capacity}.")
        self.capacity = capacity
        self.device = device
        self.dtype = dtype  # SPACE_DTYPE: an explicit fp32 loads half-precision checkpoints as float32
        self._entries: "OrderedDict[str, LoadedModel]" = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0  # how many times a model was actually loaded (tests check the caching)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def get(self, key: str) -> LoadedModel:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key]
            try:
                loaded = self._load(key)
            except BaseException:  # failed keys leave nothing behind (users type arbitrary ids)
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._entries[key] = loaded
                self._entries.move_to_end(key)
                while len(self._entries) > self.capacity:
                    evicted, _ = self._entries.popitem(last=False)
                    logger.info("Evicted model %s from the cache", evicted)
                self._loading.pop(key, None)
                self.loads += 1
        return loaded

    def _load(self, source: str) -> LoadedModel:
        _check_model_type(source)
        try:
            model = load_model(source, device=self.device, dtype=self.dtype)
            processor = load_processor(source)
        except Exception as err:  # missing folder, unknown Hub id, network, corrupt weights: all the user's to fix
            raise gr.Error(_message(f"Could not load the model '{source}': {err}")) from err
        if not isinstance(model, modeling.PromptRestorationPreTrainedModel):
            raise gr.Error(_message(f"'{source}' is not one of this project's restoration models."))
        logger.info("Loaded model %s on %s", source, self.device)
        return LoadedModel(source=source, model=model, processor=processor)


def _check_model_type(source: str) -> None:
    """Refuse a checkpoint that is not one of ours from its config.json alone, before any weights download."""
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        return  # a folder that is no checkpoint at all: load_model says so ("has no config.json")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError):
        return  # load_model reports a missing folder / unknown or uncached Hub id with a clear message
    if not isinstance(config_dict, dict):
        return  # a config.json that is not a JSON object: load_model says so
    model_type = config_dict.get("model_type")
    if model_type not in modeling.MODEL_CLASSES:
        raise gr.Error(
            _message(
                f"'{source}' is a '{model_type}' model; this Space runs {', '.join(sorted(modeling.MODEL_CLASSES))} "
                "models of the prompt-restoration project."
            )
        )


# ---------------------------------------------------------------------------------------------- uploads
@dataclass
class UploadInfo:
    width: int
    height: int
    has_alpha: bool
    browser_format: bool
    frames: int
    colour_bits_read_as_8: Optional[int] = None  # a 16-bit colour TIFF or PPM, which Pillow decodes to 8 bits


def check_upload(path: str, settings: SpaceSettings) -> UploadInfo:
    """Size, file-size and format checks from the file header only (nothing is decoded); gr.Error when refused."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise gr.Error("The uploaded file could not be read; please upload it again.") from err
    if size > settings.max_file_bytes:
        raise gr.Error(
            f"The file is {size / 2**20:.1f} MB; this demo accepts files up to {settings.max_file_mb:g} MB."
        )
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode, info, fmt = image.mode, image.info, image.format
            frames = int(getattr(image, "n_frames", 1))
            colour_bits = colour_bits_decoded_to_8(image)
            turned = _exif_orientation(image) != 1
    except Image.DecompressionBombError as err:
        raise gr.Error(f"The image is far too large; this demo accepts up to {settings.max_megapixels:g} megapixels.") from err
    except MemoryError:
        raise
    except Exception as err:
        # Unidentified formats and broken headers; a damaged later frame fails n_frames with whatever Pillow's
        # parser meets (IndexError, TypeError, ...).
        raise gr.Error("The file is not an image this demo can read (PNG, JPEG, WebP, BMP, TIFF, ...).") from err
    if width * height > settings.max_pixels:
        raise gr.Error(
            f"The image is {width}×{height} = {width * height / 1e6:.1f} megapixels; this demo accepts up to "
            f"{settings.max_megapixels:g} megapixels. Crop or downscale it and try again."
        )
    if min(width, height) < settings.min_side:
        raise gr.Error(
            f"The image is {width}×{height} px; it needs at least {settings.min_side} px on each side."
        )
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in info
    # Browsers do not all apply EXIF orientation (Chromium ignores it in WebP files), and the restored image is
    # turned: a rotated upload gets a turned PNG preview, so that both halves of the slider match.
    return UploadInfo(width, height, has_alpha, fmt in _BROWSER_FORMATS and not turned, frames, colour_bits)


def _exif_orientation(image: Image.Image) -> Optional[int]:
    """The EXIF orientation tag (1: as stored), or None when the EXIF data cannot be read."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: the image may still decode; let the preview decide the turn
        return None


class UploadImage(gr.Image):
    """``gr.Image`` whose upload errors (non-image files, broken headers) become a clear ``gr.Error`` instead of
    a bare "Error". A template: the browser uses the stock Image component."""

    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError as err:
            raise gr.Error("The image is far too large for this demo.") from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise gr.Error("The file is not an image this demo can read (PNG, JPEG, WebP, BMP, TIFF, ...).") from err


# ---------------------------------------------------------------------------------------------- outputs
#: Names of the per-request folders `OutputFolder.new` makes (a uuid4 in hex): the only ones it prunes.
_REQUEST_FOLDER = re.compile(r"^[0-9a-f]{32}$")


class OutputFolder:
    """Per-request folders for the PNG downloads (under the system temp dir by default), deleted after `ttl_s`
    seconds; gradio copies what a request returns into its own cache, which `delete_cache` cleans."""

    def __init__(self, root: Optional[Path], ttl_s: float) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "prompt-restoration-space"
        self.ttl_s = ttl_s
        self._last_prune = 0.0
        self._lock = threading.Lock()

    def check(self) -> None:
        """Create the root now, so that an unusable SPACE_OUTPUT_DIR stops the Space at start-up, not each request."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"SPACE_OUTPUT_DIR {self.root} cannot hold the restored images: {error}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ValueError(f"SPACE_OUTPUT_DIR {self.root} is not writable")

    def new(self) -> Path:
        self.prune()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def prune(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._last_prune < min(60.0, self.ttl_s):
                return
            self._last_prune = now
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not _REQUEST_FOLDER.match(folder.name):  # the operator's own files in SPACE_OUTPUT_DIR stay
                continue
            try:
                if now - folder.stat().st_mtime > self.ttl_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def _output_name(upload_path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload_path).stem).strip("._")[:64] or "image"
    return f"{stem}_restored.png"


def _before_image(path: str, info: UploadInfo, folder: Path) -> str:
    """The upload itself when a browser can show it as it is, else (e.g. TIFF, an EXIF-rotated file) a PNG copy,
    turned as the model sees it, for the slider."""
    if info.browser_format:
        return path
    preview = folder / "before.png"
    # Decoded as the model sees it (16-bit gray scaled down, float TIFF in [0, 1], alpha kept), not with Pillow's
    # convert("RGB"), which clips 16-bit and float samples to white or black.
    rgb, meta = RestorationImageProcessor().to_rgb_float(path)
    planes = [*rgb] + ([meta["alpha"]] if meta["alpha"] is not None else [])
    pixels = (np.stack(planes, axis=-1) * 255.0).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGBA" if len(planes) == 4 else "RGB").save(preview, format="PNG")
    return str(preview)


def weights_frame(names: list[str], weights: torch.Tensor) -> pd.DataFrame:
    return pd.DataFrame({"degradation": names, "weight": [round(float(w), 4) for w in weights.reshape(-1)]})


# ---------------------------------------------------------------------------------------------- the Space
class RestorationSpace:
    """State shared by all sessions (settings, model cache, output folder) and the event handlers."""

    def __init__(self, settings: SpaceSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.models = ModelCache(settings.model_cache_size, self.device, settings.dtype)
        self.outputs = OutputFolder(settings.output_dir, settings.output_ttl_s)
        self.outputs.check()

    @property
    def concurrency(self) -> int:
        if self.settings.concurrency is not None:
            return max(1, self.settings.concurrency)
        # One restoration at a time keeps all CPU cores on it (torch is already multi-threaded); a GPU gains
        # from overlapping one request's decode/encode with another's forward pass.
        return 2 if self.device.type == "cuda" else 1

    def model_key(self, choice: Optional[str]) -> str:
        choice = (choice or "").strip() or self.settings.model
        if choice == DEMO_MODEL:
            return str(DEMO_CHECKPOINT_DIR)
        local = Path(choice).expanduser()
        return str(local.resolve()) if local.exists() else choice

    def get_model(self, choice: Optional[str]) -> LoadedModel:
        key = self.model_key(choice)
        if key == str(DEMO_CHECKPOINT_DIR) and not (DEMO_CHECKPOINT_DIR / "config.json").is_file():
            raise gr.Error(
                "The shipped demo weights are not installed (modeling/demo/config.json is missing): type a Hub id "
                "or a local folder in the model box, or set SPACE_MODEL."
            )
        return self.models.get(key)

    def example_paths(self) -> list[str]:
        folder = self.settings.examples_dir
        return sorted(str(p) for p in folder.glob("*.png")) if folder.is_dir() else []

    # ------------------------------------------------------------------ handlers
    def restore_image(
        self,
        image_path: Optional[str],
        model_choice: Optional[str],
        degradation: Optional[str],
        auto_mode: Optional[str],
        progress=gr.Progress(track_tqdm=True),
    ):
        """Restore one image: returns (before, after) for the slider, the PNG download, the weights chart and a
        status line. Refusals are ``gr.Error``s; the server keeps serving."""
        started = time.perf_counter()
        if not image_path:
            raise gr.Error("Upload, paste or pick an example image first.")
        info = check_upload(image_path, self.settings)
        notes = []
        if info.has_alpha:
            notes.append("The image has an alpha channel (transparency): it is kept as it is; only the colours are restored.")
        if info.frames > 1:
            notes.append(f"The file has {info.frames} frames; only the first one is restored.")
        if info.colour_bits_read_as_8:
            notes.append(f"The file has {info.colour_bits_read_as_8}-bit colour samples, which are read at 8 bits "
                         "here: the result is 8-bit (a 16-bit PNG keeps all 16 bits).")
        loaded = self.get_model(model_choice)
        model, processor = loaded.model, loaded.processor
        label = None if (degradation or AUTO).strip().lower() == AUTO else degradation
        auto_mode = auto_mode or DEFAULT_AUTO_MODE
        # A model that names its own tile (config.inference_tile) always runs on those tiles, which
        # also bounds memory; other models run whole unless the image is larger than SPACE_TILE. "Whole" is
        # passed as tile=0: restore(tile=None) would tile images above its own 4-megapixel threshold, which a
        # SPACE_TILE above 2048 lets through, while the status said "whole image".
        tile = model_inference_tile(model)
        if tile is None:
            tile = self.settings.tile if max(info.width, info.height) > self.settings.tile else WHOLE_IMAGE

        try:
            chart = weights = None
            argument: Any = label
            if loaded.takes_labels and label is None and loaded.can_estimate:
                # The weights restore(degradation="auto") would estimate, computed once by the same function and
                # handed to restore(), so the chart shows exactly what the model used and nothing runs twice.
                pixel_values = torch.from_numpy(np.stack(processor(image_path, do_pad=False)["pixel_values"]))
                weights = estimate_degradation_weights(
                    model, pixel_values, auto_mode=auto_mode, device=self.device, dtype=self.settings.dtype,
                    channels_last=self.settings.channels_last,
                )
                argument = weights
            elif loaded.takes_labels and label is not None:
                weights = model.degradation_weights(label, 1)
            if weights is not None:
                chart = weights_frame(loaded.degradation_names, weights)
            passes = resolve_statistics_passes(model, self.settings.statistics_passes, tile, (info.height, info.width))
            passes_run: list[int] = []  # the statistics passes restore() ran (it stops once they settle)
            # A smaller upload runs whole only where SPACE_TILE chose the tiles, not a model's own inference_tile.
            remedy = (f"this model restores every image in its own {tile}×{tile} tiles" if model_inference_tile(model)
                      else f"a smaller upload (at most {self.settings.tile} px a side, restored whole) may restore it better")
            for name in [] if passes else degradations_split_by_tiles(model, weights, tile, (info.height, info.width)):
                notes.append(f"Restored in {tile}×{tile} tiles: {name} is corrected from the whole image's "
                             f"brightness and contrast, which tiles do not see; {remedy}.")
            restored = restore(
                image_path,
                model,
                processor,
                tile=tile,
                degradation=argument,
                auto_mode=auto_mode,
                device=self.device,
                dtype=self.settings.dtype,
                progress=True,
                channels_last=self.settings.channels_last,
                batch_size=1,  # one tile per forward: the peak memory of one tile, whatever the image size
                statistics_passes=passes,
                statistics_tolerance=self.settings.statistics_tolerance,
                statistics_callback=lambda number, change: passes_run.append(number),
            )
        except gr.Error:
            raise
        except (ValueError, TypeError) as err:  # RestorationInputError, bad labels, NonFinite outputs, ...
            raise gr.Error(_message(err)) from err
        except (MemoryError, torch.OutOfMemoryError) as err:
            raise gr.Error("Ran out of memory on this image; try a smaller one.") from err
        except Exception as err:  # keep serving whatever happened; the log has the traceback
            logger.exception("Restoration failed")
            raise gr.Error(_message(f"Restoration failed ({type(err).__name__}: {err}).")) from err

        if (isinstance(restored, np.ndarray) and restored.dtype == np.uint16) or getattr(restored, "mode", "") == "I;16":
            notes.append("16-bit image: restored at 16 bits; the PNG download keeps all 16 bits.")
        folder = self.outputs.new()
        output_path = folder / _output_name(image_path)
        write_png(restored, output_path)
        before = _before_image(image_path, info, folder)
        for note in notes:
            gr.Warning(note)
        elapsed = time.perf_counter() - started
        how = f"tiled ({tile}×{tile} tiles)" if tile else "whole image"
        if tile and passes_run:
            count = max(passes_run)
            how += f" with whole-image statistics ({count} pass{'es' if count > 1 else ''})"
        # The restored size, not the file header's: EXIF orientation may have turned the image.
        height, width = restored.shape[:2] if isinstance(restored, np.ndarray) else restored.size[::-1]
        status = (
            f"Restored {width}×{height} px with `{_message(Path(loaded.source).name or loaded.source)}` "
            f"on {self.device.type.upper()}, {how}, in {elapsed:.2f} s."
        )
        status = "\n\n".join([status] + [f"⚠️ {note}" for note in notes])
        if chart is not None:  # bars in the model's class order (the plot would sort names alphabetically)
            chart_update = gr.BarPlot(value=chart, sort=list(chart["degradation"]), visible=True)
        else:
            chart_update = gr.BarPlot(value=None, visible=False)
        return (before, str(output_path)), str(output_path), chart_update, status

    def model_changed(self, model_choice: Optional[str]):
        """Load (or fetch from the cache) the picked model and offer its degradation labels."""
        loaded = self.get_model(model_choice)
        choices = loaded.degradation_choices()
        if not loaded.takes_labels:
            note = "This model takes no degradation label."
        elif not loaded.can_estimate:
            note = "This model has no degradation estimator: pick the degradation."
        else:
            note = "auto: the model's estimator decides; or pick the degradation."
        return gr.Dropdown(choices=choices, value=choices[0], interactive=len(choices) > 1, info=note)

    # ------------------------------------------------------------------ UI
    def build(self) -> gr.Blocks:
        settings = self.settings
        loaded: Optional[LoadedModel] = None
        if settings.preload:
            try:
                loaded = self.get_model(None)
            except gr.Error as err:  # the Space still starts; restoring then shows the same message
                logger.warning("Default model not loaded: %s", err)
        degradation_choices = loaded.degradation_choices() if loaded is not None else [AUTO]
        model_choices = [("Shipped demo weights", DEMO_MODEL)] if settings.model == DEMO_MODEL else [(settings.model, settings.model)]
        model_choices += [(m, m) for m in settings.extra_models if m != settings.model]

        with gr.Blocks(title="All-in-one image restoration", delete_cache=(1800, 3600)) as demo:
            gr.Markdown(
                "# All-in-one image restoration\n"
                "One network for noise, rain, haze, blur and low light (PIP / PromptIR / Restormer). "
                "Upload or paste a degraded photo, or pick an example, then press **Restore**."
            )
            with gr.Row():
                with gr.Column():
                    image_in = UploadImage(
                        label="Degraded image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                        height=360, elem_id="degraded-image",
                    )
                    model_in = gr.Dropdown(
                        model_choices, value=model_choices[0][1], label="Model", allow_custom_value=True,
                        info="The shipped weights, or type a Hub id / local folder of a prompt-restoration model.",
                    )
                    degradation_in = gr.Dropdown(
                        degradation_choices, value=degradation_choices[0], label="Degradation",
                        interactive=len(degradation_choices) > 1,
                        info="auto: the model's estimator decides; or pick the degradation.",
                    )
                    with gr.Accordion("Advanced", open=False):
                        auto_mode_in = gr.Radio(
                            list(AUTO_MODES), value=DEFAULT_AUTO_MODE, label="Auto mode",
                            info="hard: only the most likely degradation's prompt; soft: the estimator's weights; "
                                 "cautious: hard, but when two degradations are about as likely, the one whose "
                                 "restoration changes the image least.",
                        )
                    button = gr.Button("Restore", variant="primary", elem_id="restore-button")
                    gr.Markdown(
                        f"Limits: {settings.max_megapixels:g} megapixels, {settings.max_file_mb:g} MB. Images with a "
                        f"side above {settings.tile} px are restored in {settings.tile}×{settings.tile} tiles "
                        "(models whose config names their own tile size always use theirs). "
                        f"Running on {self.device.type.upper()}."
                    )
                with gr.Column():
                    slider = gr.ImageSlider(
                        label="Before / after", type="filepath", format="png", elem_id="before-after",
                        max_height=480,
                    )
                    download = gr.File(label="Restored image (full-resolution PNG)", elem_id="download")
                    chart = gr.BarPlot(
                        x="degradation", y="weight", y_lim=[0, 1], label="Degradation weights used",
                        height=180, visible=loaded is None or loaded.takes_labels, elem_id="weights",
                        sort=loaded.degradation_names if loaded is not None and loaded.takes_labels else None,
                    )
                    status = gr.Markdown(elem_id="status")
            examples = self.example_paths()
            if examples:
                gr.Examples(
                    [[path] for path in examples], inputs=[image_in], label="Examples (degraded crops)",
                    examples_per_page=12,
                )
            model_in.change(
                self.model_changed, inputs=model_in, outputs=degradation_in, api_name="model_changed",
                concurrency_limit=1, concurrency_id="model_load",
            )
            button.click(
                self.restore_image,
                inputs=[image_in, model_in, degradation_in, auto_mode_in],
                outputs=[slider, download, chart, status],
                api_name="restore",
            )
        demo.queue(default_concurrency_limit=self.concurrency, max_size=settings.queue_size)
        return demo

    def launch_kwargs(self) -> dict:
        """Arguments for ``demo.launch`` that belong to the settings (upload size limit, served folders)."""
        allowed = [str(self.settings.examples_dir)] if self.settings.examples_dir.is_dir() else []
        allowed.append(str(self.outputs.root))
        return {"max_file_size": self.settings.max_file_bytes, "allowed_paths": allowed}


def build_demo(settings: Optional[SpaceSettings] = None) -> tuple[gr.Blocks, RestorationSpace]:
    """The queued Blocks app and its shared state; launch with ``demo.launch(**space.launch_kwargs(), ...)``."""
    space = RestorationSpace(settings or SpaceSettings.from_env())
    return space.build(), space


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="default model: 'demo', a Hub id or a local folder (env SPACE_MODEL)")
    parser.add_argument("--host", default=None, help="server address (default 127.0.0.1; Spaces set 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="server port (default 7860 or the next free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"model": args.model} if args.model else {}
    try:  # a bad SPACE_* value stops the Space with one line naming it
        settings = SpaceSettings.from_env(**overrides)
        demo, space = build_demo(settings)
    except ValueError as error:
        parser.error(str(error))
    if space.settings.reuses_freed_memory(space.device):
        keep_freed_memory_for_reuse()  # this process is the server: nothing else shares its allocator
    demo.launch(server_name=args.host, server_port=args.port, **space.launch_kwargs())


if __name__ == "__main__":
    main()
