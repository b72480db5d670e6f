"""The one inference entry point: ``restore(images, model=...)``.

The CLI, the ``image-restoration`` pipeline and the Space all go through the helpers here, so preprocessing,
batching, tiling, mixed precision and degradation labels behave the same everywhere.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoModelForImageToImage
from transformers.utils import logging

from .image_processing_restoration import RestorationImageProcessor
from .degradation_labels import hard_weights
from .errors import RestorationInputError
from .tile_context import GRID
from .tiling import WHOLE_IMAGE, check_statistics_tolerance, check_tiling, tiled_apply


logger = logging.get_logger(__name__)

#: Degradations whose correction depends most on the whole image's brightness and contrast: tiles that each use
#: their own statistics restore them markedly worse than the whole image does (the README's tiling section has the
#: measurements), so `restore()` warns when it tiles them with `statistics_passes=0`.
WHOLE_IMAGE_DEGRADATIONS = ("low-light", "haze")

#: The most statistics passes `restore()` runs before the restoring pass whenever tiles split an image
#: (`statistics_passes=None`): each pass brings the statistics the tiles use closer to the whole image's
#: (`tile_context`; the README's tiling section measures the passes). Every pass costs one tiled restore.
DEFAULT_STATISTICS_PASSES = 6
#: `restore()` stops gathering once a pass changed the statistics by at most this (relative; from the second pass
#: on, `TileStatistics.relative_change`). Measured on the shipped weights (README), the passes settle below it
#: where tiles come within about 0.05 dB of the whole image; images that settle early save passes.
DEFAULT_STATISTICS_TOLERANCE = 0.01

#: `tile=None` for a model whose config names no `inference_tile`: images above `AUTO_TILE_ABOVE_PIXELS` (4
#: megapixels) are restored in `AUTO_TILE`-sided tiles, smaller ones whole. A whole image costs about 2.3 GiB per
#: megapixel with the shipped weights on CPU in fp32 (benchmarks/bench_tiling.py at 512² and 1024²), so a
#: 12-megapixel phone photo restored whole would need some 28 GiB; tiles, `batch_size` per forward pass, keep the peak near that of a whole
#: 4-megapixel image. Tiles cost some quality (README, "Restore an image"), hence the generous threshold.
AUTO_TILE_ABOVE_PIXELS = 2048 * 2048
AUTO_TILE = 1024

#: Folder of the small demo checkpoint shipped inside the package (used when ``model=None``).
DEMO_CHECKPOINT_DIR = Path(__file__).resolve().parent / "demo"

_DTYPE_ALIASES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinite values."""


def resolve_device(device: Union[str, torch.device, None], model: Optional[torch.nn.Module] = None) -> torch.device:
    """`None` keeps a given model's device (CUDA if available for a freshly loaded one); strings as in torch.

    Raises ValueError for an unknown device string and for a CUDA / MPS device this torch cannot use (CPU-only
    build, no GPU, or an index beyond the visible GPUs).
    """
    if device is not None:
        return _check_device(device)
    if model is not None:
        try:
            return next(model.parameters()).device
        except StopIteration:
            pass
    # No model to follow: CUDA when this torch has a GPU, the CPU otherwise.
    has_gpu = torch.cuda.is_available()
    return torch.device("cuda" if has_gpu else "cpu")


def _check_device(device: Union[str, torch.device]) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r} ({err}); use 'cpu', 'cuda', 'cuda:0', ...") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"Device {str(device)!r} was requested but CUDA is not available ({build}); use 'cpu'.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"Device {str(device)!r} was requested but only {count} CUDA device(s) are visible.")
    elif resolved.type == "meta":  # moving a model there would drop its weights
        raise ValueError(f"Device {str(device)!r} holds no data and cannot restore images; use 'cpu' or 'cuda'.")
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"Device {str(device)!r} was requested but MPS is not available; use 'cpu'.")
    elif resolved.type != "cpu":  # xpu, mtia, hpu, ...: torch's backend module says whether it can run here
        is_available = getattr(getattr(torch, resolved.type, None), "is_available", None)
        try:
            available = bool(is_available()) if callable(is_available) else False
        except Exception:  # noqa: BLE001 - a backend that cannot even answer is not available
            available = False
        if not available:
            raise ValueError(f"Device {str(device)!r} was requested but this torch build cannot use "
                             f"{resolved.type!r} devices here; use 'cpu'.")
    return resolved


# Hub repo ids: "name" or "namespace/name" of letters, digits, "-", "_", "." (huggingface_hub's validate_repo_id).
_HUB_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]+$")


def _missing_local_model(source: str) -> Optional[str]:
    """Error text when `source` (not an existing path) must be a local folder or cannot be loaded offline, else None.

    Local-looking: starts with ".", "/" or "~", contains a backslash or several "/", is not a valid Hub id, or its
    first component is an existing folder ("outputs/nope" next to an outputs/ folder). Such a path fails at once
    instead of waiting on Hub retries. A Hub id that is not cached fails at once when HF_HUB_OFFLINE is set.
    """
    first = source.split("/", 1)[0]
    looks_local = (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
        or not _HUB_ID.match(source)
        or ".." in source
        or ("/" in source and Path(first).is_dir())
    )
    if looks_local:
        return f"Model folder '{source}' does not exist (pass an existing local folder or a Hub id)."
    from huggingface_hub import constants, try_to_load_from_cache

    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    if offline:
        cached = try_to_load_from_cache(source, "config.json")
        if not isinstance(cached, str):
            return (
                f"'{source}' is not a local folder and the Hub model '{source}' is not in the local cache, "
                "while HF_HUB_OFFLINE is set (download it once online, or pass a local folder)."
            )
    return None


#: Environment variable naming what ``dtype=None`` ("auto") means for every entry point at once: "fp32", "bf16",
#: "fp16" or "auto" (the device default, `default_autocast_dtype`). A precision it names acts as that explicit
#: ``dtype`` (also for weights saved in half precision); an explicit ``dtype`` argument wins over it.
DTYPE_ENV = "PROMPT_RESTORE_DTYPE"


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), which oneDNN's bf16 kernels need to be fast."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the (private) probe: assume emulated bf16
        return False


def default_autocast_dtype(device: Union[str, torch.device]) -> Optional[torch.dtype]:
    """What ``dtype=None``/"auto" means on `device`: bf16 autocast on a CPU with native bf16, fp32 (no autocast)
    elsewhere.

    Why: on such a CPU bf16 (with attention and resampling kept in fp32, `restormer_blocks.fp32_in_cpu_inference`)
    restores the shipped model about 2.4 times and a PromptIR-size model 1.6 to 2.5 times as fast as the fp32
    reference at 512², with the shipped weights' held-out means within 0.02 dB of fp32 on all nine rows (README,
    Performance); where bf16 is emulated it is slower than fp32, and on a GPU the plain path is the default as
    for channels-last. `PROMPT_RESTORE_DTYPE` (`DTYPE_ENV`) replaces this choice everywhere, e.g.
    ``PROMPT_RESTORE_DTYPE=fp32``.
    """
    configured = _configured_dtype()
    if configured is not None:
        return resolve_dtype(configured)
    return torch.bfloat16 if torch.device(device).type == "cpu" and native_bf16_cpu() else None


def is_auto(dtype: Union[str, torch.dtype, None]) -> bool:
    """Whether a precision setting asks for the automatic choice: ``None`` or "auto" (any case and spacing)."""
    return dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto")


def _configured_dtype() -> Optional[str]:
    """`PROMPT_RESTORE_DTYPE` when it names a precision (checked, with the variable in the error), else `None`."""
    configured = os.environ.get(DTYPE_ENV, "").strip()
    if is_auto(configured or None):
        return None
    try:
        resolve_dtype(configured)
    except ValueError as err:
        raise ValueError(f"{DTYPE_ENV}={configured!r}: {err}") from None
    return configured


def resolve_dtype(
    dtype: Union[str, torch.dtype, None], device: Union[str, torch.device, None] = None
) -> Optional[torch.dtype]:
    """Map "fp32"/"bf16"/"fp16" (or a torch dtype) to the autocast dtype; fp32 means no autocast (`None`).

    `None` or "auto": the device default (`default_autocast_dtype`); without a `device`, only
    `PROMPT_RESTORE_DTYPE` is checked and `None` comes back (used to validate arguments early).
    """
    if is_auto(dtype):
        if device is None:
            _configured_dtype()
            return None
        return default_autocast_dtype(device)
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key not in _DTYPE_ALIASES:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of 'auto', 'fp32', 'bf16', 'fp16'.")
        dtype = _DTYPE_ALIASES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"Unsupported dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16.")
    return None if dtype == torch.float32 else dtype


def _requested_dtype(dtype: Union[str, torch.dtype, None]) -> tuple[Union[str, torch.dtype, None], str]:
    """The precision a call asks for and how to name it in errors: `dtype`, or for "auto" the precision
    `PROMPT_RESTORE_DTYPE` names (which then counts as that explicit `dtype`), else `None` (the device default)."""
    if not is_auto(dtype):
        return dtype, f"dtype={dtype!r}"
    configured = _configured_dtype()
    return configured, f"{DTYPE_ENV}={configured!r}"


def _autocast_dtype(dtype: Union[str, torch.dtype, None], device: torch.device, input_dtype: torch.dtype
                    ) -> Optional[torch.dtype]:
    """The autocast dtype of one call: the device default ("auto" with no `PROMPT_RESTORE_DTYPE`) applies to fp32
    weights only, since a model already loaded in half precision runs in its own precision."""
    requested, asked = _requested_dtype(dtype)
    if requested is None:
        return default_autocast_dtype(device) if input_dtype == torch.float32 else None
    dtype = requested
    resolved = resolve_dtype(dtype)
    if resolved is None and input_dtype != torch.float32:
        # Weights in half precision would silently run in it: fp32 was asked for.
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(input_dtype, str(input_dtype))
        raise ValueError(
            f"{asked} asks for float32, but the model's weights are {name}: use dtype='auto' (the weights' "
            "own precision) or convert the model (model.float()); a model loaded from a folder or Hub id by "
            "restore(), the CLI, batch restoration or the Space is loaded in float32 for fp32."
        )
    if resolved is not None and input_dtype not in (torch.float32, resolved):
        # Autocast to one half type over weights of the other fails deep inside the first layer ("mixed dtype").
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}
        raise ValueError(
            f"{asked} asks for {name[resolved]} autocast, but the model's weights are {name[input_dtype]}: "
            f"use dtype='auto' (the weights' own precision) or convert the model (model.to({resolved}))."
        )
    return resolved


def resolve_channels_last(channels_last: Optional[bool], device: torch.device) -> bool:
    """`None` (the default everywhere) means channels-last inputs on CPU, where the depthwise convolutions run
    several times faster on them and the whole forward about twice as fast (benchmarks/bench_infer.py), and the
    usual layout elsewhere."""
    if channels_last is None:
        return device.type == "cpu"
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be True, False or None, got {channels_last!r}.")
    return channels_last


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: ``mallopt`` takes its value as a C int: the largest threshold in MiB whose byte count fits one.
_MAX_THRESHOLD_MIB = (2**31 - 1) // 2**20


def keep_freed_memory_for_reuse(threshold_mib: int = 1024) -> bool:
    """Let this process reuse freed activation buffers instead of asking the kernel for fresh pages every forward.

    glibc serves every allocation above 32 MiB with its own ``mmap`` and returns it on free, so each forward of a
    large model on a large image maps, page-faults and zeroes its big activations again. Raising the mmap and
    trim thresholds to ``threshold_mib`` keeps such buffers in the heap for the next allocation
    (benchmarks/bench_malloc.py measures it). It changes the allocator of the whole process, so only an entry
    point that owns its process calls it (the CLI, the Space server, each batch-restoration rank), never
    ``restore()``. Returns whether it was applied: False off glibc (macOS, Windows, musl), where nothing changes.
    ValueError unless ``threshold_mib`` is an integer from 1 to 2047 (``mallopt`` takes a C int of bytes).
    """
    import ctypes
    import platform

    if (isinstance(threshold_mib, bool) or not isinstance(threshold_mib, numbers.Integral)
            or not 1 <= threshold_mib <= _MAX_THRESHOLD_MIB):
        # A larger value would wrap around in the C int (4096 MiB became 0 bytes: every allocation mmapped).
        raise ValueError(f"threshold_mib must be an integer from 1 to {_MAX_THRESHOLD_MIB}, got {threshold_mib!r}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    threshold = int(threshold_mib) * 1024 * 1024
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))


def in_layout(tensor: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """`tensor` in `memory_format` with that format's canonical strides, copied only where they differ.

    ``.contiguous(memory_format=...)`` accepts any strides on size-1 dimensions: one permuted HWC image has batch
    stride 3, not C*H*W, and the convolutions then take another kernel path, so the output would depend (by float
    rounding) on how the caller built the tensor. Canonical strides make it depend on the values only.
    """
    canonical = torch.empty(tensor.shape, device="meta", memory_format=memory_format).stride()
    if tensor.stride() == canonical:
        return tensor
    return torch.empty_like(tensor, memory_format=memory_format).copy_(tensor)


def load_model(
    model: Union[str, os.PathLike, torch.nn.Module, None] = None,
    *,
    trust_remote_code: bool = False,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
) -> torch.nn.Module:
    """Return a model in eval mode on `device`: an instance is used as is, a Hub id / folder is loaded with
    `AutoModelForImageToImage`, `None` loads the packaged demo checkpoint. `device=None` keeps an instance on its
    own device and puts a loaded model on CUDA when available, else on the CPU (`resolve_device`).

    `dtype`: the precision the caller restores in. An explicit precision (or the one `PROMPT_RESTORE_DTYPE` names)
    other than that of weights saved in half precision loads them as float32: for fp32, since they would otherwise
    run in their own precision, and for the other half type (fp16 over a bf16 checkpoint), which autocast can only
    reach from float32 weights. An instance is never changed (`restore()` refuses such a mismatch instead).
    """
    if model is None:
        if not (DEMO_CHECKPOINT_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"No packaged demo checkpoint found at {DEMO_CHECKPOINT_DIR}; pass model=<Hub id or local folder> "
                "(CLI: --model)."
            )
        model = DEMO_CHECKPOINT_DIR
    loaded_here = isinstance(model, (str, os.PathLike))
    if loaded_here:
        source = os.fspath(model)
        if source.startswith("~"):
            source = os.path.expanduser(source)
        if Path(source).exists() and not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"Model folder '{source}' has no config.json; is it a saved checkpoint?")
        if not Path(source).exists():
            problem = _missing_local_model(os.fspath(model))
            if problem is not None:
                raise FileNotFoundError(problem)
        _check_json_object(Path(source) / "config.json")
        try:
            try:
                model, loading = AutoModelForImageToImage.from_pretrained(
                    source, trust_remote_code=trust_remote_code, output_loading_info=True
                )
            except RuntimeError as err:
                if "ignore_mismatched_sizes" not in str(err):
                    raise
                # transformers names the weights of another shape only in a logged report (absent where its logging is
                # off, as in the Space's message): load again past them, so the check below names them and their shapes.
                model, loading = AutoModelForImageToImage.from_pretrained(
                    source, trust_remote_code=trust_remote_code, output_loading_info=True, ignore_mismatched_sizes=True
                )
        except StrictDataclassError as err:  # our configs' own checks, re-raised by the strict dataclass
            reason = " ".join(str(err.__cause__ or err).split())  # the check's own message, without the wrapper's
            raise ValueError(f"Model '{source}' has an invalid config.json: {reason}") from err
        except SafetensorError as err:  # a truncated or corrupt model.safetensors
            raise ValueError(f"Model '{source}' has unreadable weights: {err}") from err
        _check_weights_match_config(source, loading)
        requested = _requested_dtype(dtype)[0]
        if requested is not None and isinstance(model, torch.nn.Module):
            wanted = resolve_dtype(requested) or torch.float32
            if any(p.is_floating_point() and p.dtype not in (torch.float32, wanted) for p in model.parameters()):
                model.float()
    if not callable(model):
        raise TypeError(f"model must be a model instance, a Hub id or a folder, got {type(model).__name__}.")
    if isinstance(model, torch.nn.Module):
        # `None`: an instance stays where it is; a model loaded here starts on the CPU, so it follows the default
        # device (CUDA when available), not its own.
        target = resolve_device(device, None if loaded_here else model)
        if resolve_device(None, model) != target:
            model.to(target)
        model.eval()
    return model


def loading_keys(loading: dict, kind: str) -> list[str]:
    """The sorted weight names of one `kind` of `from_pretrained(..., output_loading_info=True)`'s report; a
    mismatched one (name, shape in the weights, shape the config builds) with both shapes."""
    return sorted(f"{key[0]} ({list(key[1])} in the weights, {list(key[2])} in the model)"
                  if isinstance(key, tuple) and len(key) == 3 else str(key) for key in loading.get(kind) or ())


def _check_weights_match_config(source: str, loading: dict) -> None:
    """transformers only reports weights its model has no place for, or places no weight filled (they stay randomly
    initialised): restoring with such a model gives garbage, so a config that does not describe its weights (another
    model type, another depth, a prompt option switched) is an error naming examples of each kind."""
    problems = []
    for kind, label in (("missing_keys", "missing from the weights"), ("unexpected_keys", "not used by the model"),
                        ("mismatched_keys", "of another shape")):
        keys = loading_keys(loading, kind)
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise ValueError(
            f"Model '{source}': its config.json does not describe its weights: {'; '.join(problems)}. Were the "
            "config and model.safetensors saved from different models?"
        )


def _check_json_object(path: Path) -> None:
    """A local config file that exists must hold a JSON object (transformers fails on anything else with an
    AttributeError deep inside); ValueError naming the file otherwise. Missing files are for the caller."""
    if not path.is_file():
        return
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(content).__name__}")


def load_processor(
    model_source: Union[str, os.PathLike, None], processor: Optional[RestorationImageProcessor] = None,
    model: Any = None,
) -> RestorationImageProcessor:
    """The given processor, else the one saved next to the model (preprocessor_config.json), else defaults; the
    defaults pad (``do_pad=True``) as `model` (when given) pads its input."""
    if processor is not None:
        return processor
    if model_source is not None:
        _check_json_object(Path(os.fspath(model_source)) / "preprocessor_config.json")
        try:
            return RestorationImageProcessor.from_pretrained(os.fspath(model_source))
        except (OSError, ValueError) as err:  # no preprocessor_config.json: defaults are right for our models
            logger.debug(f"Using a default RestorationImageProcessor ({err})")
    default = RestorationImageProcessor()
    return default.padding_like(model) if getattr(model, "config", None) is not None else default


def accepts_degradation_labels(model: Any) -> bool:
    """True for models steered by degradation labels (their class sets ``accepts_degradation_labels``)."""
    return bool(getattr(model, "accepts_degradation_labels", False))


#: How the label-free ("auto") mode turns the estimator's softmax into prompt weights: "soft" blends the prompts by
#: the weights (as the model's own forward), "hard" keeps only the likeliest class's prompt, "cautious" is "hard"
#: unless the runner-up is within `CAUTIOUS_MARGIN` of the top class (see `estimate_degradation_weights`).
AUTO_MODES = ("soft", "hard", "cautious")
#: How ``degradation="auto"`` uses the estimate unless told otherwise. A blend of two prompts restores worse than
#: either prompt alone: on a held-out rainy photo the shipped estimator said rain 0.43 / haze 0.37, and the soft
#: blend lost 4.8 dB against the input where the rain prompt alone gained 3.0 dB (and when the top class is
#: right, "hard" is exactly the labelled restoration). The default is the confident choice, made with care when
#: the estimator hesitates: on a held-out photo with motion blur it said haze 0.45 / blur 0.44, and the haze prompt
#: alone lost 6.2 dB where the blur prompt, which "cautious" chose, gained 0.05 dB.
DEFAULT_AUTO_MODE = "cautious"
#: "cautious": classes whose weight is at most this far below the top class's are all candidates.
CAUTIOUS_MARGIN = 0.1


def degradation_label_ids(model: Any, degradation: Any, count: int) -> Optional[torch.Tensor]:
    """Validate `degradation` for `count` images; return (count, num_degradations) weights, or None for "auto".

    `degradation`: None/"auto" (the model estimates it, once per image), a name, an alias, a mixture
    ("rain+haze"), an index, or a list with one per image; parsed by the model's own parser
    (``modeling.degradation_labels``), so errors name the valid labels before any image is processed.
    Raises ValueError for a model that takes no labels, and for "auto" with a model that cannot estimate.
    """
    if isinstance(degradation, str) and degradation.strip().lower() == "auto":
        degradation = None
    if degradation is None:
        if accepts_degradation_labels(model) and not getattr(model, "can_estimate_degradation", False):
            raise ValueError(
                f"{type(model).__name__} has no degradation estimator: pass degradation=<name> "
                "(CLI: --degradation NAME)."
            )
        return None
    if not accepts_degradation_labels(model):
        raise ValueError(
            f"degradation={degradation!r} was given, but {type(model).__name__} does not take degradation labels; "
            "omit it or use 'auto'."
        )
    if isinstance(degradation, (list, tuple)) and len(degradation) != count:
        raise ValueError(f"Got {len(degradation)} degradation labels for {count} images.")
    return model.degradation_weights(degradation, count, "cpu")


def _estimation_views(pixel_values: torch.Tensor, max_pixels: int, crop: int) -> list[torch.Tensor]:
    """The whole batch when it is small; else four `crop`-sized windows (one per quadrant). Crops, not a
    downscaled copy, because downscaling averages noise away and would fool the estimator."""
    height, width = pixel_values.shape[-2:]
    if height * width <= max_pixels:
        return [pixel_values]
    side_h, side_w = min(crop, height), min(crop, width)
    views = []
    for top in (height // 4 - side_h // 2, 3 * height // 4 - side_h // 2):
        for left in (width // 4 - side_w // 2, 3 * width // 4 - side_w // 2):
            top_c, left_c = min(max(0, top), height - side_h), min(max(0, left), width - side_w)
            views.append(pixel_values[..., top_c : top_c + side_h, left_c : left_c + side_w])
    return views


def _estimation_windows(pixel_values: torch.Tensor, window: int, per_side: int = 4) -> list[torch.Tensor]:
    """A ``per_side`` x ``per_side`` grid of ``window``-sized windows spread evenly over the image (corners
    included; fewer where the image is too small to hold distinct windows, the whole image when it is smaller
    than one window): the size the estimator was trained on, so its statistics mean what they meant then."""
    height, width = pixel_values.shape[-2:]
    side_h, side_w = min(window, height), min(window, width)

    def starts(size: int, side: int) -> list[int]:
        count = min(per_side, size - side + 1)
        return sorted({round(i * (size - side) / max(1, count - 1)) for i in range(count)})

    return [pixel_values[..., top : top + side_h, left : left + side_w]
            for top in starts(height, side_h) for left in starts(width, side_w)]


def estimate_degradation_weights(
    model: Any,
    pixel_values: torch.Tensor,
    *,
    auto_mode: str = DEFAULT_AUTO_MODE,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    max_pixels: int = 1024 * 1024,
    crop: int = 512,
    channels_last: Optional[bool] = None,
    margin: float = CAUTIOUS_MARGIN,
) -> torch.Tensor:
    """The model's degradation weights for each image of a (B, 3, H, W) batch, estimated once per image.

    A model whose config names ``degradation_estimator_window`` (the crop side its estimator was trained on) is
    judged on a 4 x 4 grid of windows of that size; otherwise the whole image is judged, or, when it is large,
    four crops. The windows' softmax weights are averaged. ``auto_mode="hard"`` turns
    the result into a one-hot of the most likely class; ``"soft"`` keeps the averaged weights. Every tile of an
    image then uses these weights, so neighbouring tiles never get different prompts. ``channels_last`` as in
    `run_model`.

    ``"cautious"`` (the default, `DEFAULT_AUTO_MODE`) is "hard" for an image whose top class leads every other by
    more than ``margin``. Otherwise each class within ``margin`` of the top restores the judged windows, and the
    class whose restoration changes them least (mean squared change) is chosen. Why: a prompt for a degradation the image does not have makes
    large, wrong changes (a dehazing prompt stretches the contrast of a merely blurred photo: -6 dB on a held-out
    photo the estimator called haze 0.45 / blur 0.44), while the right prompt changes about as much as the
    degradation did. It costs one forward of the judged windows per candidate, on ambiguous images only.
    """
    if auto_mode not in AUTO_MODES:
        raise ValueError(f"auto_mode must be one of {AUTO_MODES}, got {auto_mode!r}")
    device = resolve_device(device, model if isinstance(model, torch.nn.Module) else None)
    memory_format = torch.channels_last if resolve_channels_last(channels_last, device) else torch.contiguous_format
    param = next(iter(model.parameters()), None)
    input_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    autocast_dtype = _autocast_dtype(dtype, device, input_dtype)
    context = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    window = getattr(getattr(model, "config", None), "degradation_estimator_window", None)
    views = _estimation_windows(pixel_values, window) if window else _estimation_views(pixel_values, max_pixels, crop)

    def estimate(context) -> torch.Tensor:
        with torch.inference_mode(), context:
            return sum(
                model.estimate_degradation(in_layout(view.to(device, input_dtype), memory_format)).float()
                for view in views
            ).cpu() / len(views)

    weights = estimate(context)
    if not torch.isfinite(weights).all() and autocast_dtype is not None:
        # A half-precision kernel gone wrong must not pick a class silently (argmax takes NaN for the largest).
        logger.warning("the degradation estimate in %s was not finite; estimating again in fp32", autocast_dtype)
        weights = estimate(contextlib.nullcontext())
    if not torch.isfinite(weights).all():
        raise NonFiniteOutputError("the model's degradation estimate is not finite (NaN or inf)")
    if auto_mode == "cautious":
        return _least_change_choice(model, views, weights, margin, device=device, dtype=dtype,
                                    channels_last=channels_last)
    return hard_weights(weights) if auto_mode == "hard" else weights


def _least_change_choice(
    model: Any,
    views: list[torch.Tensor],
    weights: torch.Tensor,
    margin: float,
    **run_kwargs: Any,
) -> torch.Tensor:
    """One-hot weights: the top class, or among the classes within ``margin`` of it, the one whose restoration
    of ``views`` (same-size windows, restored in one `run_model` pass per candidate) changes them least (see
    `estimate_degradation_weights`, "cautious")."""
    choice = hard_weights(weights)
    for image, image_weights in enumerate(weights):
        candidates = torch.nonzero(image_weights >= image_weights.max() - margin).flatten().tolist()
        if len(candidates) < 2:
            continue
        windows = torch.cat([view[image : image + 1] for view in views]).float()
        labels = torch.eye(weights.shape[-1])[candidates]
        # The windows are already about the estimator's crop size, so they are restored whole.
        changes = [float((run_model(model, windows, degradation_labels=label[None], tile=WHOLE_IMAGE, **run_kwargs)
                          - windows).pow(2).mean()) for label in labels]
        choice[image] = labels[changes.index(min(changes))]
    return choice


def _reconstruction_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    reconstruction = getattr(output, "reconstruction", None)
    if reconstruction is None and isinstance(output, (tuple, list)):
        reconstruction = output[0]
    if not isinstance(reconstruction, torch.Tensor):
        raise TypeError(f"The model returned {type(output).__name__} without a `reconstruction` tensor.")
    return reconstruction


def model_inference_tile(model: Any) -> Optional[int]:
    """The tile side the model's config asks for when the caller names none (`inference_tile`), else None."""
    return getattr(getattr(model, "config", None), "inference_tile", None)


def resolve_tile(model: Any, tile: Optional[int], size: Sequence[int]) -> int:
    """The tile side for an image of `size` (height, width), 0 for the whole image: `tile` when the caller gives one
    (0: whole), else the model's `inference_tile`, else `AUTO_TILE` for images above `AUTO_TILE_ABOVE_PIXELS`."""
    if tile is not None:
        return tile
    own = model_inference_tile(model)
    if own is not None:
        return own
    return AUTO_TILE if size[-2] * size[-1] > AUTO_TILE_ABOVE_PIXELS else WHOLE_IMAGE


def check_tile_options(
    model: Any, tile: Any, tile_overlap: Any, *, names: tuple[str, str] = ("tile", "tile_overlap")
) -> None:
    """ValueError unless `tile` and `tile_overlap` suit every image they may tile (`check_tiling`). With
    `tile=None`, a given overlap is checked against the tile chosen for large images (the model's `inference_tile`,
    else `AUTO_TILE`), so that a bad overlap fails at once, not only on the first image large enough for tiles."""
    if tile is None and tile_overlap is not None:
        default_tile = model_inference_tile(model) or AUTO_TILE
        check_tiling(default_tile, tile_overlap, names=("the default tile", names[1]))
    else:
        check_tiling(tile, tile_overlap, names=names)


def run_model(
    model: Callable,
    pixel_values: torch.Tensor,
    *,
    degradation_labels: Optional[torch.Tensor] = None,
    tile: Optional[int] = None,
    tile_overlap: Optional[int] = None,
    tile_batch_size: int = 4,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    progress: bool = False,
    channels_last: Optional[bool] = None,
    statistics_passes: int = 0,
    statistics_tolerance: float = 0.0,
    statistics_callback: Optional[Callable[[int, float], None]] = None,
) -> torch.Tensor:
    """Restore a (B, 3, H, W) batch in [0, 1]: whole image or tiled, optional autocast; returns float32 on CPU.

    `tile=None` takes the model's `inference_tile`, else whole images up to `AUTO_TILE_ABOVE_PIXELS` and
    `AUTO_TILE`-sided tiles above (`resolve_tile`); `tile=0` (`WHOLE_IMAGE`) always restores whole images. With
    tiles, the input stays on its device (e.g. CPU) and only tiles go to `device`.
    `degradation_labels`: (B, num_degradations) weights (see `degradation_label_ids`), reused for every tile.
    `channels_last`: feed the model channels-last maps (same outputs up to float rounding); `None`: on CPU only
    (see `resolve_channels_last`). The model's own weights are left as they are.
    `statistics_passes`: with tiles, how many passes gather whole-image statistics for the model's global sites
    before the pass that restores, at most (`tiling.tiled_apply`; tiles are padded to the model's grid as it pads);
    `statistics_tolerance` > 0 stops them once they settle, `statistics_callback` hears of every pass.
    """
    check_statistics_passes(statistics_passes)
    check_statistics_tolerance(statistics_tolerance)
    device = resolve_device(device, model if isinstance(model, torch.nn.Module) else None)
    memory_format = torch.channels_last if resolve_channels_last(channels_last, device) else torch.contiguous_format
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    # Models loaded in half precision need half inputs; autocast handles the fp32-weights case.
    input_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    autocast_dtype = _autocast_dtype(dtype, device, input_dtype)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if degradation_labels is not None:
            # Tiles of all images are stacked position by position, so repeat the weights per position.
            repeats = batch.shape[0] // len(degradation_labels)
            kwargs["degradation_labels"] = degradation_labels.repeat(repeats, 1).to(batch.device)
        context = (
            torch.autocast(device_type=batch.device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with context:
            batch = in_layout(batch.to(input_dtype), memory_format)
            output = model(pixel_values=batch, return_dict=True, **kwargs)
        return _reconstruction_of(output).float()

    if tile is None and model_inference_tile(model) is None and resolve_tile(model, None, pixel_values.shape):
        logger.warning_once(
            f"Images above {AUTO_TILE_ABOVE_PIXELS / 2**20:g} megapixels are restored in {AUTO_TILE}x{AUTO_TILE} "
            "tiles by default, which bounds memory; tile=0 (--tile 0) restores them whole."
        )
    tile, tile_overlap = check_tiling(resolve_tile(model, tile, pixel_values.shape), tile_overlap)
    with torch.inference_mode():
        if tile:
            result = tiled_apply(
                forward, pixel_values, tile, tile_overlap, tile_batch_size=tile_batch_size, device=device,
                progress=progress, statistics_passes=statistics_passes, statistics_tolerance=statistics_tolerance,
                statistics_callback=statistics_callback,
                pad_mode=getattr(getattr(model, "config", None), "pad_mode", "reflect"),
                size_multiple=getattr(getattr(model, "config", None), "size_multiple", GRID),
            )
        else:
            result = forward(pixel_values.to(device))
        finite = bool(torch.isfinite(result).all())  # where the result is: on a GPU one reduction, not a host scan
        result = result.float().cpu()
    if not finite:
        hint = " Try dtype='bf16' or 'fp32' (fp16 overflows easily)." if autocast_dtype == torch.float16 else ""
        raise NonFiniteOutputError(f"The model produced NaN or infinite values.{hint}")
    return result


def check_statistics_passes(statistics_passes: Any, name: str = "statistics_passes") -> None:
    """ValueError unless `statistics_passes` is None (`restore()`'s choice) or an integer >= 0."""
    if statistics_passes is None:
        return
    if isinstance(statistics_passes, bool) or not isinstance(statistics_passes, numbers.Integral) or (
        statistics_passes < 0
    ):
        raise ValueError(f"{name} must be an integer >= 0 (or None for the default), got {statistics_passes!r}.")


def resolve_statistics_passes(
    model: Any, statistics_passes: Optional[int], tile: Optional[int], size: Sequence[int]
) -> int:
    """The statistics passes for restoring an image of `size` (height, width) with `tile` (`None`: `resolve_tile`):
    `statistics_passes` when given, else `DEFAULT_STATISTICS_PASSES` where tiles split the image and 0 where the
    image is restored whole (or one tile holds it)."""
    if statistics_passes is not None:
        return int(statistics_passes)
    tile = resolve_tile(model, tile, size)
    return DEFAULT_STATISTICS_PASSES if tile and max(size) > tile else 0


def resolve_statistics_tolerance(statistics_tolerance: Optional[float]) -> float:
    """`statistics_tolerance`, or `DEFAULT_STATISTICS_TOLERANCE` for `None`; ValueError unless a number >= 0."""
    if statistics_tolerance is None:
        return DEFAULT_STATISTICS_TOLERANCE
    check_statistics_tolerance(statistics_tolerance)
    return float(statistics_tolerance)


def degradations_split_by_tiles(
    model: Any, weights: Optional[torch.Tensor], tile: Optional[int], size: Sequence[int]
) -> list[str]:
    """The `WHOLE_IMAGE_DEGRADATIONS` that restoring an image of `size` (height, width) in `tile`-sided tiles
    (`None`: the model's `inference_tile`) splits: those that are an image's largest weight in `weights`
    ((B, num_degradations)). Empty when the tiles hold the whole image or the degradations are local."""
    tile = resolve_tile(model, tile, size)
    names = getattr(getattr(model, "config", None), "degradation_names", None)
    if not tile or weights is None or not names or max(size) <= tile:
        return []
    return [names[i] for i in sorted(set(weights.argmax(dim=1).tolist())) if names[i] in WHOLE_IMAGE_DEGRADATIONS]


def default_output_type(meta: dict) -> str:
    """Output kind matching the input recorded in `meta`: "np" for numpy, "pt" for tensors, else "pil" — except
    16-bit colour or alpha images (e.g. 16-bit RGB PNG files), which PIL cannot hold: "np" (uint16 (H, W, 3|4))."""
    if meta["input_type"] in ("np", "pt"):
        return meta["input_type"]
    if meta.get("bit_depth") == 16 and not (
        str(meta.get("original_mode", "")).startswith("I") and meta.get("alpha") is None
    ):
        return "np"
    return "pil"


def restore(
    images: Any,
    model: Union[str, os.PathLike, torch.nn.Module, None] = None,
    processor: Optional[RestorationImageProcessor] = None,
    *,
    tile: Optional[int] = None,
    tile_overlap: Optional[int] = None,
    degradation: Any = None,
    auto_mode: str = DEFAULT_AUTO_MODE,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    batch_size: int = 4,
    progress: bool = False,
    trust_remote_code: bool = False,
    channels_last: Optional[bool] = None,
    statistics_passes: Optional[int] = None,
    statistics_tolerance: Optional[float] = None,
    statistics_callback: Optional[Callable[[int, float], None]] = None,
) -> Any:
    """Restore one image or a list of images.

    Args:
        images: a PIL image, numpy array (HWC/HW; uint8, uint16 or float in [0, 1]), CHW torch tensor or file path,
            or a list of them (sizes may differ; same-size images are batched together).
        model: a model instance, a Hub id or local folder (loaded with `AutoModelForImageToImage`), or `None` for
            the demo checkpoint shipped in the package.
        processor: a `RestorationImageProcessor`; default: the one saved with the model, else default settings.
        tile: run on overlapping `tile` x `tile` tiles (bounded memory), at least 8; `0` restores whole images;
            `None` (default) uses the model's `inference_tile` when its config names one, else whole images up to
            4 megapixels and 1024-px tiles above (`resolve_tile`, `AUTO_TILE_ABOVE_PIXELS`).
        tile_overlap: pixels shared by neighbouring tiles (blended smoothly), in [0, tile // 2]; `None`: 32, capped
            at tile // 4. With `tile=None` it is checked against the default tile (`check_tile_options`). See
            `modeling.tiling.check_tiling`.
        degradation: for models taking `degradation_labels` (PIP): a name (e.g. "rain"), an index, a list with
            one per image, or None/"auto" to let the model estimate it, once per image (every tile of an image
            then uses the same prompts). Error for models that cannot take it.
        auto_mode: how "auto" uses the estimate: "cautious" (default: the most likely degradation's prompt, or
            when the top classes are within `CAUTIOUS_MARGIN`, the one whose restoration changes the image least),
            "hard" (only the most likely degradation's prompt) or "soft" (the estimator's softmax weights, as the
            model's own forward). See `estimate_degradation_weights` and `DEFAULT_AUTO_MODE`.
        device: "cpu", "cuda", "cuda:0", ...; `None`: the given model's device, else CUDA if available.
            ValueError for a device this torch cannot use (e.g. "cuda" on a CPU-only build).
        dtype: autocast precision on `device`: `None`/"auto" (default) is bf16 on a CPU with native bf16
            (AVX-512 BF16 or AMX) and fp32 elsewhere, or for weights not in fp32 (`default_autocast_dtype`;
            a precision `PROMPT_RESTORE_DTYPE` names replaces it everywhere, as that explicit `dtype`); "fp32"
            is the plain float32 path; "bf16", "fp16".
        batch_size: images (or tile positions) per forward pass.
        progress: show tqdm progress bars.
        trust_remote_code: passed to `from_pretrained` when `model` is a Hub id or folder.
        channels_last: the CPU fast path: channels-last inputs, same outputs up to float rounding; `None`
            (default) turns it on for CPU devices, `False` gives the plain NCHW path (see `run_model`).
        statistics_passes: with tiles, the most passes that gather whole-image statistics (channel attention,
            pooling, prompt placement) for the tiles before the pass that restores (`modeling.tile_context`), each
            costing one tiled restore; 0: every tile uses its own (faster, but tiles then differ from the whole
            image, by dB on low light, haze and blur). `None` (default): `DEFAULT_STATISTICS_PASSES` (6) whenever
            tiles split the image (`resolve_statistics_passes`).
        statistics_tolerance: stop the statistics passes, from the second on, once a pass changed the statistics
            by at most this (relative; each image of a batch keeps the statistics it settled on, so it restores as
            it does alone); `None` (default): `DEFAULT_STATISTICS_TOLERANCE` (0.01); 0: always run
            `statistics_passes` passes.
        statistics_callback: called after every statistics pass with its number (from 1) and its relative change
            of the statistics (`inf` after the first; in a batch, the largest of the images not yet settled), e.g.
            to report how many passes an image needed.

    Returns:
        The restored image(s) in the kind of the input: PIL for PIL or path inputs, numpy for numpy (uint8
        and uint16 as given; float arrays of any precision as float32, bool as uint8),
        CHW float tensor for tensors; a list for a list input. 16-bit colour files (e.g. 16-bit RGB PNG), which
        PIL cannot hold, come back as uint16 numpy (H, W, 3|4). See `RestorationImageProcessor` for bit depth,
        alpha and grayscale handling.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if auto_mode not in AUTO_MODES:
        raise ValueError(f"auto_mode must be one of {AUTO_MODES}, got {auto_mode!r}.")
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        return []
    # Fail on bad arguments before loading anything.
    resolve_dtype(dtype)
    resolve_channels_last(channels_last, torch.device("cpu"))
    check_tiling(tile, tile_overlap)  # run_model resolves tile=None (resolve_tile)
    check_statistics_passes(statistics_passes)
    statistics_tolerance = resolve_statistics_tolerance(statistics_tolerance)
    if device is not None:
        resolve_device(device)
    model_source = model if isinstance(model, (str, os.PathLike)) else (DEMO_CHECKPOINT_DIR if model is None else None)
    # load_model switches to eval mode; a model the caller passed in training mode goes back to it at the end.
    was_training = isinstance(model, torch.nn.Module) and model.training
    model = load_model(model, trust_remote_code=trust_remote_code, device=device, dtype=dtype)
    processor = load_processor(model_source, processor, model)
    device = resolve_device(device, model if isinstance(model, torch.nn.Module) else None)
    check_tile_options(model, tile, tile_overlap)

    labels = degradation_label_ids(model, degradation, len(items))
    features = processor(items, do_pad=False)
    arrays, metadata = features["pixel_values"], features["metadata"]

    # Group same-size images so they share forward passes; results are written back by index.
    groups: dict[tuple[int, int], list[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(tuple(array.shape[-2:]), []).append(index)
    batches = [idx[i : i + batch_size] for idx in groups.values() for i in range(0, len(idx), batch_size)]

    results: list[Any] = [None] * len(items)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="restoring", unit="img")
    try:
        for batch in batches:
            # One image: a view, not a copy. The list lets go of the arrays, so a batch's input is freed as soon
            # as it is restored (a large image's peak memory).
            if len(batch) == 1:
                pixel_values = torch.from_numpy(arrays[batch[0]])[None]
            else:
                pixel_values = torch.from_numpy(np.stack([arrays[i] for i in batch]))
            for index in batch:
                arrays[index] = None
            if labels is not None:
                weights = labels[batch]
            elif accepts_degradation_labels(model):
                weights = estimate_degradation_weights(
                    model, pixel_values, auto_mode=auto_mode, device=device, dtype=dtype, channels_last=channels_last
                )
            else:
                weights = None
            passes = resolve_statistics_passes(model, statistics_passes, tile, pixel_values.shape[-2:])
            split = [] if passes else degradations_split_by_tiles(model, weights, tile, pixel_values.shape[-2:])
            for name in split:
                resolved_tile = resolve_tile(model, tile, pixel_values.shape[-2:])
                logger.warning_once(
                    f"Restoring a {name} image in {resolved_tile}x{resolved_tile} tiles with statistics_passes=0: "
                    "each tile sees only its own brightness and contrast, which costs quality against the whole "
                    "image (several dB on low light with 256-px tiles). Leave statistics_passes at its default "
                    "(--statistics-passes), or restore the whole image (tile=0, --tile 0) where memory allows."
                )
            try:
                restored = run_model(
                    model,
                    pixel_values,
                    degradation_labels=weights,
                    tile=tile,
                    tile_overlap=tile_overlap,
                    # At most `batch_size` tiles per forward pass, whatever the number of images in the batch.
                    tile_batch_size=max(1, batch_size // len(batch)),
                    device=device,
                    dtype=dtype,
                    progress=progress,
                    channels_last=channels_last,
                    statistics_passes=passes,
                    statistics_tolerance=statistics_tolerance,
                    statistics_callback=statistics_callback,
                )
            except NonFiniteOutputError as err:
                names = [metadata[i]["source"] or f"image {i}" for i in batch]
                raise NonFiniteOutputError(f"{err} Inputs: {', '.join(map(str, names))}.") from err
            del pixel_values
            for position, index in enumerate(batch):
                meta = metadata[index]
                image = restored[position : position + 1]
                results[index] = processor.postprocess(image, [meta], default_output_type(meta))[0]
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return results[0] if single else results


__all__ = [
    "DEMO_CHECKPOINT_DIR",
    "NonFiniteOutputError",
    "WHOLE_IMAGE_DEGRADATIONS",
    "DEFAULT_STATISTICS_PASSES",
    "DEFAULT_STATISTICS_TOLERANCE",
    "check_statistics_passes",
    "resolve_statistics_passes",
    "resolve_statistics_tolerance",
    "RestorationInputError",
    "AUTO_MODES",
    "CAUTIOUS_MARGIN",
    "accepts_degradation_labels",
    "default_output_type",
    "loading_keys",
    "degradation_label_ids",
    "estimate_degradation_weights",
    "load_model",
    "load_processor",
    "model_inference_tile",
    "resolve_tile",
    "check_tile_options",
    "AUTO_TILE",
    "AUTO_TILE_ABOVE_PIXELS",
    "resolve_channels_last",
    "resolve_device",
    "resolve_dtype",
    "default_autocast_dtype",
    "is_auto",
    "native_bf16_cpu",
    "DTYPE_ENV",
    "restore",
    "run_model",
    "degradations_split_by_tiles",
]
