"""Image processor for the restoration models (transformers 5 ``PilBackend``, no torchvision).

Turns PIL images, numpy arrays, torch tensors and file paths into ``pixel_values`` (B, 3, H, W) float32 in
[0, 1], and turns model reconstructions back into images of the original size, bit depth and alpha.

Conventions (documented choices):

* Integer inputs are scaled by their bit depth (uint8 / 255, uint16 / 65535); float inputs must already be in
  [0, 1]. ``do_rescale`` / ``rescale_factor`` of other transformers processors are therefore not used.
* Alpha (RGBA, LA, palette with transparency) is kept aside unchanged and re-attached by ``postprocess``.
* Grayscale inputs are restored as RGB (the models are RGB models) and come back as RGB (RGBA with alpha),
  except 16-bit grayscale PIL images (mode ``I;16``/``I``, e.g. 16-bit PNG files): PIL has no 16-bit RGB mode,
  so those come back as PIL ``I;16`` (ITU-R 601 luma of the result), which saves as a 16-bit PNG. As numpy
  (``output_type="np"``) every 16-bit input comes back as ``uint16`` (H, W, 3) or (H, W, 4).
* Pillow decodes 16-bit *colour* PNG files to 8-bit RGB; to restore 16-bit colour, pass a uint16 numpy array.
* No padding by default (the models pad to their multiple internally); ``do_pad=True`` reflect-pads bottom/right
  to a multiple of ``size_divisor``, and ``postprocess`` crops back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import logging

# One exception class for the whole package (the models raise it too), so callers catch a single type.
from .modeling_utils import RestorationInputError


logger = logging.get_logger(__name__)

# Float inputs slightly outside [0, 1] (rounding in upstream code) are clipped; beyond this they are rejected,
# because a [0, 255] float image silently clipped to [0, 1] would be garbage.
_FLOAT_RANGE_TOLERANCE = 1e-3

_ITU_R_601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class RestorationImageProcessorKwargs(ImagesKwargs, total=False):
    """
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        With `do_pad=True`, reflect-pad height and width (bottom/right) up to a multiple of this number.
    """

    size_divisor: int


def _describe(source: Any) -> str:
    """Short name of an input for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"file '{os.fspath(source)}'"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "")
        return f"PIL image '{name}'" if name else "PIL image"
    if isinstance(source, np.ndarray):
        return f"numpy array of shape {tuple(source.shape)}"
    return type(source).__name__


def _is_torch_tensor(obj: Any) -> bool:
    # torch is optional for the processor itself; only check the type name lazily.
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def load_image_file(path: Union[str, os.PathLike]) -> Image.Image:
    """Open and fully decode an image file, with clear `RestorationInputError`s for bad files."""
    path = Path(path)
    where = f"file '{path}'"
    if not path.exists():
        raise RestorationInputError(f"Input {where} does not exist (not found).")
    if path.is_dir():
        raise RestorationInputError(f"Input {where} is a directory, not an image file.")
    if path.stat().st_size == 0:
        raise RestorationInputError(f"Input {where} is empty (0 bytes).")
    try:
        image = Image.open(path)
    except UnidentifiedImageError as err:
        raise RestorationInputError(f"Input {where} is not an image (unidentified format).") from err
    except OSError as err:
        raise RestorationInputError(f"Input {where} could not be read: {err}.") from err
    try:
        # Image.open is lazy: decoding happens here, which is where truncated files fail.
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise RestorationInputError(f"Input {where} is truncated or corrupt ({err}).") from err
    return image


class RestorationImageProcessor(PilBackend):
    r"""
    Image processor for all-in-one restoration models.

    Accepts PIL images, numpy arrays (HWC or HW; uint8, uint16 or float in [0, 1]), torch tensors (CHW or HW) and
    file paths. Applies EXIF orientation, converts every mode to RGB float32 in [0, 1] and returns
    `pixel_values` plus per-image `metadata` (original size, bit depth, alpha, original mode) that
    [`~RestorationImageProcessor.postprocess`] needs to give back an image like the input.

    Args:
        do_pad (`bool`, *optional*, defaults to `False`):
            Reflect-pad bottom/right to a multiple of `size_divisor`. Not needed for our models, which pad
            internally.
        size_divisor (`int`, *optional*, defaults to 8):
            Multiple used by `do_pad`.
    """

    valid_kwargs = RestorationImageProcessorKwargs
    model_input_names = ["pixel_values"]
    do_pad = False
    size_divisor = 8
    # Integer inputs are scaled by their own bit depth (see module docstring), not by a fixed factor.
    do_rescale = None
    rescale_factor = None

    def __init__(self, **kwargs: Unpack[RestorationImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ input side
    def preprocess(self, images: Any, **kwargs: Unpack[RestorationImageProcessorKwargs]) -> BatchFeature:
        """Convert one image or a list of images into `pixel_values` and `metadata` (see class docstring).

        With `return_tensors="pt"` all images must have the same size (after optional padding).
        """
        return super().preprocess(images, **kwargs)

    def _preprocess_image_like_inputs(self, images: Any, *args, **kwargs) -> BatchFeature:
        # Replaces the base flow (fetch_images / infer channel dim / convert_to_rgb): restoration needs exact
        # bit depths, alpha, EXIF and strict validation, which the generic path does not keep.
        if isinstance(images, (list, tuple)):
            items = list(images)
        else:
            items = [images]
        if len(items) == 0:
            raise RestorationInputError("No images were given (empty list).")
        arrays, metadata = [], []
        for item in items:
            array, meta = self.to_rgb_float(item)
            arrays.append(array)
            metadata.append(meta)
        return self._preprocess(arrays, metadata=metadata, **kwargs)

    def _preprocess(
        self,
        images: list[np.ndarray],
        metadata: Optional[list[dict]] = None,
        do_pad: Optional[bool] = None,
        size_divisor: Optional[int] = None,
        return_tensors: Optional[str] = None,
        **kwargs,
    ) -> BatchFeature:
        size_divisor = size_divisor or self.size_divisor
        processed = []
        for image in images:
            if do_pad:
                image = self.pad_to_multiple(image, size_divisor)
            processed.append(image)
        return BatchFeature(
            data={"pixel_values": processed, "metadata": metadata},
            tensor_type=return_tensors,
            skip_tensor_conversion=["metadata"],
        )

    @staticmethod
    def pad_to_multiple(image: np.ndarray, size_divisor: int) -> np.ndarray:
        """Reflect-pad a CHW array at the bottom/right so H and W become multiples of `size_divisor`."""
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}.")
        height, width = image.shape[-2:]
        pad_h, pad_w = (-height) % size_divisor, (-width) % size_divisor
        if pad_h == 0 and pad_w == 0:
            return image
        # "reflect" needs at least pad+1 pixels; "symmetric" works for any size >= 1 (e.g. 1x1 inputs).
        mode = "reflect" if (height > pad_h and width > pad_w) else "symmetric"
        return np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)

    def to_rgb_float(self, image: Any) -> tuple[np.ndarray, dict]:
        """Convert one input to a (3, H, W) float32 array in [0, 1] and its metadata dict.

        Metadata keys: `original_size` (H, W), `bit_depth` (8, 16 or 32 for float), `alpha` (H, W float32 in
        [0, 1] or None), `original_mode` (PIL mode or a description like "np-uint8-HWC"), `input_type`
        ("pil", "np", "pt" or "path") and `source` (file path or None).
        """
        where = _describe(image)
        source = None
        input_type = "pil"
        if isinstance(image, (str, os.PathLike)):
            source = os.fspath(image)
            input_type = "path"
            image = load_image_file(image)
        if isinstance(image, Image.Image):
            rgb, alpha, bit_depth, mode = self._pil_to_float(image, where)
        elif isinstance(image, np.ndarray):
            input_type = "np"
            rgb, alpha, bit_depth, mode = self._numpy_to_float(image, where, channels_last=True)
        elif _is_torch_tensor(image):
            input_type = "pt"
            array = image.detach().cpu().numpy()
            rgb, alpha, bit_depth, mode = self._numpy_to_float(array, f"torch tensor of shape {tuple(array.shape)}",
                                                               channels_last=False)
        else:
            raise RestorationInputError(
                f"Unsupported input type {type(image).__name__}: pass a PIL image, a numpy array, a torch tensor "
                "or a file path."
            )
        if not np.isfinite(rgb).all() or (alpha is not None and not np.isfinite(alpha).all()):
            raise RestorationInputError(f"Input {where} contains non-finite pixel values (NaN or inf).")
        meta = {
            "original_size": (int(rgb.shape[1]), int(rgb.shape[2])),
            "bit_depth": bit_depth,
            "alpha": alpha,
            "original_mode": mode,
            "input_type": input_type,
            "source": source,
        }
        return rgb, meta

    def _pil_to_float(self, image: Image.Image, where: str) -> tuple[np.ndarray, Optional[np.ndarray], int, str]:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as err:  # broken EXIF blocks should not make a readable image unusable
            logger.warning(f"Ignoring unreadable EXIF orientation of {where}: {err}")
        mode = image.mode
        if image.width == 0 or image.height == 0:
            raise RestorationInputError(f"Input {where} is empty (zero-size image {image.width}x{image.height}).")
        if mode == "P" or mode == "PA":
            has_alpha = mode == "PA" or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode in ("LA", "La", "RGBa"):
            # Un-premultiply where needed; gray + alpha becomes RGBA (R = G = B), exactly.
            image = image.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        if image.mode.startswith("I;16") or image.mode == "I":
            array = np.asarray(image).astype(np.float64)
            if array.max(initial=0) > 65535 or array.min(initial=0) < 0:
                raise RestorationInputError(
                    f"Input {where} has 32-bit integer pixels outside the 16-bit range [0, 65535]."
                )
            gray = (array / 65535.0).astype(np.float32)
            return np.repeat(gray[None], 3, axis=0), None, 16, mode
        if image.mode == "F":
            return self._numpy_to_float(np.asarray(image, dtype=np.float32), where, True)[:3] + (mode,)
        if image.mode not in ("L", "LA", "RGB", "RGBA"):
            raise RestorationInputError(f"Input {where} has unsupported PIL mode '{mode}'.")
        array = np.asarray(image)
        rgb, alpha, bit_depth, _ = self._numpy_to_float(array, where, channels_last=True)
        return rgb, alpha, bit_depth, mode

    def _numpy_to_float(
        self, array: np.ndarray, where: str, channels_last: bool
    ) -> tuple[np.ndarray, Optional[np.ndarray], int, str]:
        if array.size == 0:
            raise RestorationInputError(f"Input {where} is empty (zero-size array).")
        if array.ndim == 2:
            array = array[:, :, None]
        elif array.ndim == 3:
            if not channels_last:
                array = np.moveaxis(array, 0, -1)
        else:
            raise RestorationInputError(
                f"Input {where} must be 2-D (H, W) or 3-D ({'H, W, C' if channels_last else 'C, H, W'}); "
                f"got {array.ndim} dimensions. Pass a list for several images."
            )
        channels = array.shape[-1]
        if channels not in (1, 3, 4):
            hint = ""
            if channels_last and array.shape[0] in (1, 3, 4):
                hint = " It looks channels-first: numpy inputs must be channels-last (H, W, C)."
            raise RestorationInputError(
                f"Input {where} has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA) channels.{hint}"
            )
        dtype = array.dtype
        if dtype == np.uint8:
            scaled, bit_depth = array.astype(np.float32) / 255.0, 8
        elif dtype == np.uint16:
            scaled, bit_depth = array.astype(np.float32) / 65535.0, 16
        elif dtype == np.bool_:
            scaled, bit_depth = array.astype(np.float32), 8
        elif np.issubdtype(dtype, np.floating):
            scaled, bit_depth = array.astype(np.float32), 32
            if not np.isfinite(scaled).all():
                raise RestorationInputError(f"Input {where} contains non-finite pixel values (NaN or inf).")
            low, high = float(scaled.min()), float(scaled.max())
            if low < -_FLOAT_RANGE_TOLERANCE or high > 1 + _FLOAT_RANGE_TOLERANCE:
                raise RestorationInputError(
                    f"Input {where} is a float image with values in [{low:.3g}, {high:.3g}]; float images must be "
                    "in [0, 1] (pass uint8/uint16 arrays for integer pixel values)."
                )
            scaled = np.clip(scaled, 0.0, 1.0)
        else:
            raise RestorationInputError(
                f"Input {where} has unsupported dtype {dtype}; use uint8, uint16 or float in [0, 1]."
            )
        alpha = None
        if channels == 4:
            alpha = np.ascontiguousarray(scaled[:, :, 3])
            scaled = scaled[:, :, :3]
        elif channels == 1:
            scaled = np.repeat(scaled, 3, axis=-1)
        mode = f"np-{dtype}-{'HWC' if channels_last else 'CHW'}-{channels}"
        rgb = np.ascontiguousarray(np.moveaxis(scaled, -1, 0), dtype=np.float32)
        return rgb, alpha, bit_depth, mode

    # ------------------------------------------------------------------ output side
    def postprocess(
        self,
        reconstruction: Any,
        metadata: Union[dict, list[dict]],
        output_type: str = "pil",
    ) -> list[Any]:
        """Turn model outputs back into images like the inputs.

        Args:
            reconstruction: a (B, 3, H', W') tensor/array, or a list of (3, H', W') tensors/arrays (H' >= H, W' >= W:
                padded outputs are cropped to the original size).
            metadata: the `metadata` list returned by `preprocess` (one dict per image).
            output_type: "pil" (PIL image), "np" (HWC numpy in the input's dtype: uint8, uint16 or float32) or
                "pt" (CHW float32 torch tensor in [0, 1]).

        Returns:
            A list of images. Alpha is re-attached (RGBA), gray inputs come back as RGB (16-bit gray PIL: `I;16`).
        """
        if isinstance(metadata, dict):
            metadata = [metadata]
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        items = [reconstruction[i] for i in range(len(reconstruction))]
        if len(items) != len(metadata):
            raise ValueError(f"Got {len(items)} reconstructions but {len(metadata)} metadata entries.")
        return [self._postprocess_one(item, meta, output_type) for item, meta in zip(items, metadata)]

    def _postprocess_one(self, item: Any, meta: dict, output_type: str) -> Any:
        if _is_torch_tensor(item):
            item = item.detach().float().cpu().numpy()
        array = np.asarray(item, dtype=np.float32)
        if array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"Expected a (3, H, W) reconstruction, got shape {tuple(array.shape)}.")
        height, width = meta["original_size"]
        if array.shape[1] < height or array.shape[2] < width:
            raise ValueError(
                f"Reconstruction of size {array.shape[1:]} is smaller than the original size {(height, width)}."
            )
        if not np.isfinite(array).all():
            raise ValueError("The reconstruction contains non-finite values (NaN or inf).")
        rgb = np.clip(np.moveaxis(array[:, :height, :width], 0, -1), 0.0, 1.0)
        alpha = meta.get("alpha")
        if alpha is not None:
            rgb = np.concatenate([rgb, np.asarray(alpha, dtype=np.float32)[:, :, None]], axis=-1)
        bit_depth = meta.get("bit_depth", 8)

        if output_type == "pt":
            import torch

            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, 0)))
        if output_type == "np":
            return _quantize(rgb, bit_depth)
        # PIL
        if bit_depth == 16:
            if str(meta.get("original_mode", "")).startswith("I") and alpha is None:
                luma = rgb[:, :, :3] @ _ITU_R_601_LUMA
                return Image.fromarray(_quantize(luma, 16))  # mode "I;16": round-trips through 16-bit PNG
            logger.warning("PIL has no 16-bit RGB/RGBA mode; returning an 8-bit PIL image (use output_type='np').")
        return Image.fromarray(_quantize(rgb, 8))


def _quantize(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """Convert float [0, 1] to uint8 (8), uint16 (16) or float32 (32), rounding to nearest."""
    if bit_depth == 8:
        return np.round(array * 255.0).astype(np.uint8)
    if bit_depth == 16:
        return np.round(array.astype(np.float64) * 65535.0).astype(np.uint16)
    return array.astype(np.float32)


__all__ = ["RestorationImageProcessor", "RestorationInputError", "load_image_file"]
