"""The one inference entry point: ``restore(images, model=...)``.

The CLI, the ``image-restoration`` pipeline and the Space all go through the helpers here, so preprocessing,
batching, tiling, mixed precision and degradation labels behave the same everywhere.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageToImage
from transformers.utils import logging

from .configuration_backbone import DEGRADATION_NAMES
from .image_processing_restoration import RestorationImageProcessor
from .modeling_utils import RestorationInputError
from .tiling import check_tiling, tiled_apply


logger = logging.get_logger(__name__)

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
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"Device {str(device)!r} was requested but MPS is not available; use 'cpu'.")
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


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """Map "fp32"/"bf16"/"fp16" (or a torch dtype) to the autocast dtype; `None`/fp32 mean no autocast."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key not in _DTYPE_ALIASES:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of 'fp32', 'bf16', 'fp16'.")
        dtype = _DTYPE_ALIASES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"Unsupported dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16.")
    return None if dtype == torch.float32 else dtype


def load_model(
    model: Union[str, os.PathLike, torch.nn.Module, None] = None,
    *,
    trust_remote_code: bool = False,
    device: Union[str, torch.device, None] = None,
) -> torch.nn.Module:
    """Return a model in eval mode on `device`: an instance is used as is, a Hub id / folder is loaded with
    `AutoModelForImageToImage`, `None` loads the packaged demo checkpoint."""
    if model is None:
        if not (DEMO_CHECKPOINT_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"No packaged demo checkpoint found at {DEMO_CHECKPOINT_DIR}; pass model=<Hub id or local folder> "
                "(CLI: --model)."
            )
        model = DEMO_CHECKPOINT_DIR
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if source.startswith("~"):
            source = os.path.expanduser(source)
        if Path(source).exists() and not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"Model folder '{source}' has no config.json; is it a saved checkpoint?")
        if not Path(source).exists():
            problem = _missing_local_model(os.fspath(model))
            if problem is not None:
                raise FileNotFoundError(problem)
        model = AutoModelForImageToImage.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not callable(model):
        raise TypeError(f"model must be a model instance, a Hub id or a folder, got {type(model).__name__}.")
    if isinstance(model, torch.nn.Module):
        target = resolve_device(device, model)
        if resolve_device(None, model) != target:
            model.to(target)
        model.eval()
    return model


def load_processor(
    model_source: Union[str, os.PathLike, None], processor: Optional[RestorationImageProcessor] = None
) -> RestorationImageProcessor:
    """The given processor, else the one saved next to the model (preprocessor_config.json), else defaults."""
    if processor is not None:
        return processor
    if model_source is not None:
        try:
            return RestorationImageProcessor.from_pretrained(os.fspath(model_source))
        except (OSError, ValueError) as err:  # no preprocessor_config.json: defaults are right for our models
            logger.debug(f"Using a default RestorationImageProcessor ({err})")
    return RestorationImageProcessor()


def accepts_degradation_labels(model: Any) -> bool:
    """True when the model's forward has an explicit `degradation_labels` argument (PIP-style models)."""
    forward = getattr(model, "forward", model)
    try:
        return "degradation_labels" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def degradation_label_ids(model: Any, degradation: Any, count: int) -> Optional[Union[list, torch.Tensor]]:
    """Validate `degradation` for `count` images and return what to pass as `degradation_labels`.

    `degradation`: None/"auto" (the model decides, e.g. PIP's estimator), a name, an index, or a list with one
    per image. Models with a `degradation_index(name)` method (PIP) get a per-image list of the given labels, so
    their own label syntax (aliases, "rain+haze" mixtures) works and their errors are raised here, before any
    image is processed; other models that take labels get a LongTensor of indices into
    `config.degradation_names` (default: noise, rain, haze, blur, low-light). Raises ValueError for a model
    whose forward has no `degradation_labels`, for unknown names, and when a model without an estimator
    gets none.
    """
    if isinstance(degradation, str) and degradation.strip().lower() == "auto":
        degradation = None
    if degradation is None:
        if accepts_degradation_labels(model) and getattr(model, "degradation_estimator", False) is None:
            raise ValueError(
                f"{type(model).__name__} has no degradation estimator: pass degradation=<name> "
                "(CLI: --degradation NAME)."
            )
        return None
    if not accepts_degradation_labels(model):
        raise ValueError(
            f"degradation={degradation!r} was given, but {type(model).__name__} does not take degradation labels "
            "(its forward has no `degradation_labels`); omit it or use 'auto'."
        )
    values = list(degradation) if isinstance(degradation, (list, tuple)) else [degradation] * count
    if len(values) != count:
        raise ValueError(f"Got {len(values)} degradation labels for {count} images.")
    index_of = getattr(model, "degradation_index", None)
    if callable(index_of):
        for value in values:
            for part in value.split("+") if isinstance(value, str) else [value]:
                index_of(part)  # raises a clear ValueError naming the valid labels
        return values
    config = getattr(model, "config", None)
    names = [str(name).lower() for name in (getattr(config, "degradation_names", None) or DEGRADATION_NAMES)]
    ids = []
    for value in values:
        if isinstance(value, str) and value.strip().lower() in names:
            ids.append(names.index(value.strip().lower()))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= int(value) < len(names):
            ids.append(int(value))
        else:
            raise ValueError(f"Unknown degradation {value!r}; known degradations: {', '.join(names)} (or 'auto').")
    return torch.tensor(ids, dtype=torch.long)


def _reconstruction_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    reconstruction = getattr(output, "reconstruction", None)
    if reconstruction is None and isinstance(output, (tuple, list)):
        reconstruction = output[0]
    if not isinstance(reconstruction, torch.Tensor):
        raise TypeError(f"The model returned {type(output).__name__} without a `reconstruction` tensor.")
    return reconstruction


def run_model(
    model: Callable,
    pixel_values: torch.Tensor,
    *,
    degradation_labels: Optional[Union[list, torch.Tensor]] = None,
    tile: Optional[int] = None,
    tile_overlap: int = 32,
    tile_batch_size: int = 4,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    progress: bool = False,
) -> torch.Tensor:
    """Restore a (B, 3, H, W) batch in [0, 1]: whole image or tiled, optional autocast; returns float32 on CPU.

    With `tile`, the input stays on its device (e.g. CPU) and only tiles go to `device`.
    """
    device = resolve_device(device, model if isinstance(model, torch.nn.Module) else None)
    autocast_dtype = resolve_dtype(dtype)
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    # Models loaded in half precision need half inputs; autocast handles the fp32-weights case.
    input_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def forward(batch: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if degradation_labels is not None:
            # Tiles of all images are stacked position by position, so repeat the labels per position.
            repeats = batch.shape[0] // len(degradation_labels)
            if isinstance(degradation_labels, torch.Tensor):
                kwargs["degradation_labels"] = degradation_labels.repeat(repeats).to(batch.device)
            else:
                kwargs["degradation_labels"] = list(degradation_labels) * repeats
        context = (
            torch.autocast(device_type=batch.device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with context:
            output = model(pixel_values=batch.to(input_dtype), return_dict=True, **kwargs)
        return _reconstruction_of(output).float()

    with torch.inference_mode():
        if tile:
            result = tiled_apply(
                forward, pixel_values, tile, tile_overlap, tile_batch_size=tile_batch_size, device=device,
                progress=progress,
            )
        else:
            result = forward(pixel_values.to(device))
        result = result.float().cpu()
    if not torch.isfinite(result).all():
        hint = " Try dtype='bf16' or 'fp32' (fp16 overflows easily)." if autocast_dtype == torch.float16 else ""
        raise NonFiniteOutputError(f"The model produced NaN or infinite values.{hint}")
    return result


def _select(labels: Optional[Union[list, torch.Tensor]], indices: list[int]) -> Optional[Union[list, torch.Tensor]]:
    if labels is None:
        return None
    return labels[indices] if isinstance(labels, torch.Tensor) else [labels[i] for i in indices]


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
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    batch_size: int = 4,
    progress: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """Restore one image or a list of images.

    Args:
        images: a PIL image, numpy array (HWC/HW; uint8, uint16 or float in [0, 1]), CHW torch tensor or file path,
            or a list of them (sizes may differ; same-size images are batched together).
        model: a model instance, a Hub id or local folder (loaded with `AutoModelForImageToImage`), or `None` for
            the demo checkpoint shipped in the package.
        processor: a `RestorationImageProcessor`; default: the one saved with the model, else default settings.
        tile: run on overlapping `tile` x `tile` tiles (bounded memory), at least 8; `None` restores whole images.
        tile_overlap: pixels shared by neighbouring tiles (blended smoothly), in [0, tile // 2]; `None`: 32, capped
            at tile // 4. See `modeling.tiling.check_tiling`.
        degradation: for models taking `degradation_labels` (PIP): a name (e.g. "rain"), an index, a list with
            one per image, or None/"auto" to let the model decide. Error for models that cannot take it.
        device: "cpu", "cuda", "cuda:0", ...; `None`: the given model's device, else CUDA if available.
            ValueError for a device this torch cannot use (e.g. "cuda" on a CPU-only build).
        dtype: "fp32" (default), "bf16" or "fp16": autocast precision on `device`.
        batch_size: images (or tile positions) per forward pass.
        progress: show tqdm progress bars.
        trust_remote_code: passed to `from_pretrained` when `model` is a Hub id or folder.

    Returns:
        The restored image(s) in the kind of the input: PIL for PIL or path inputs, numpy (input dtype) for numpy,
        CHW float tensor for tensors; a list for a list input. 16-bit colour files (e.g. 16-bit RGB PNG), which
        PIL cannot hold, come back as uint16 numpy (H, W, 3|4). See `RestorationImageProcessor` for bit depth,
        alpha and grayscale handling.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        return []
    # Fail on bad arguments before loading anything.
    resolve_dtype(dtype)
    tile, tile_overlap = check_tiling(tile, tile_overlap)
    if device is not None:
        resolve_device(device)
    model_source = model if isinstance(model, (str, os.PathLike)) else (DEMO_CHECKPOINT_DIR if model is None else None)
    # load_model switches to eval mode; a model the caller passed in training mode goes back to it at the end.
    was_training = isinstance(model, torch.nn.Module) and model.training
    model = load_model(model, trust_remote_code=trust_remote_code, device=device)
    processor = load_processor(model_source, processor)
    device = resolve_device(device, model if isinstance(model, torch.nn.Module) else None)

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
            pixel_values = torch.from_numpy(np.stack([arrays[i] for i in batch]))
            try:
                restored = run_model(
                    model,
                    pixel_values,
                    degradation_labels=_select(labels, batch),
                    tile=tile,
                    tile_overlap=tile_overlap,
                    # At most `batch_size` tiles per forward pass, whatever the number of images in the batch.
                    tile_batch_size=max(1, batch_size // len(batch)),
                    device=device,
                    dtype=dtype,
                    progress=progress,
                )
            except NonFiniteOutputError as err:
                names = [metadata[i]["source"] or f"image {i}" for i in batch]
                raise NonFiniteOutputError(f"{err} Inputs: {', '.join(map(str, names))}.") from err
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
    "RestorationInputError",
    "accepts_degradation_labels",
    "default_output_type",
    "degradation_label_ids",
    "load_model",
    "load_processor",
    "resolve_device",
    "resolve_dtype",
    "restore",
    "run_model",
]
