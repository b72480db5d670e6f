"""Image processor for the restoration models (transformers 5 ``PilBackend``, no torchvision).

Turns PIL images, numpy arrays, torch tensors and file paths into ``pixel_values`` (B, 3, H, W) float32 in
[0, 1], and turns model reconstructions back into images of the original size, bit depth and alpha.

Conventions (documented choices):

* Integer inputs are scaled by their bit depth (uint8 / 255, uint16 / 65535); float inputs must already be in
  [0, 1]. ``do_rescale`` / ``rescale_factor`` of other transformers processors are therefore not used; neither
  are resizing, cropping and normalizing (restoration keeps the input's size and range): those settings, given a
  value that asks for them, raise a ValueError (`check_processor_settings`) rather than being ignored.
* Alpha (RGBA, LA, palette with transparency) is kept aside unchanged and re-attached by ``postprocess``.
* Grayscale inputs are restored as RGB (the models are RGB models) and come back as RGB (RGBA with alpha),
  except 16-bit grayscale PIL images (mode ``I;16``/``I``, e.g. 16-bit PNG files): PIL has no 16-bit RGB mode,
  so those come back as PIL ``I;16`` (ITU-R 601 luma of the result), which saves as a 16-bit PNG. As numpy
  (``output_type="np"``) every 16-bit input comes back as ``uint16`` (H, W, 3) or (H, W, 4).
* Pillow decodes 16-bit *colour* PNG files (RGB, RGBA, gray + alpha) to 8 bits, so `load_image_file` reads those
  with pypng instead and returns a uint16 (H, W, 3|4) array (gray + alpha becomes RGBA); they are restored at 16
  bits and `write_png` writes uint16 results back losslessly. Without pypng installed they fall back to Pillow's
  8-bit decoding, with a warning.
* Files above Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused with a
  `RestorationInputError`; raise that limit to restore larger files you trust. So are PostScript (EPS) files,
  whatever their name: Pillow decodes them by running Ghostscript.
* No padding by default (the models pad to their multiple internally); ``do_pad=True`` pads bottom/right to a
  multiple of ``size_divisor`` with ``pad_mode`` (the names of the model configs: "reflect", which falls back to
  replicate where a side is not longer than its pad, as the models do, "replicate" or "constant" zeros), and
  ``postprocess`` crops back. The processor saved with a model carries the model's ``pad_mode`` and multiple
  (`RestorationImageProcessor.padding_like`), so a pre-padded image restores as ``restore()`` restores it.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import io
import numbers
import os
import re
import warnings
from pathlib import Path
from typing import IO, Any, Optional, Union

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
        With `do_pad=True`, pad height and width (bottom/right) up to a multiple of this number.
    pad_mode (`str`, *optional*, defaults to `self.pad_mode`):
        How `do_pad=True` pads: "reflect", "replicate" or "constant" (zeros), as the models' `pad_mode`.
    """

    size_divisor: int
    pad_mode: str


#: Padding modes of `do_pad`, named as the models' `pad_mode` config values (torch's `F.pad` modes).
PAD_MODES = ("reflect", "replicate", "constant")


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


def _bomb_error(where: str, err: Exception) -> RestorationInputError:
    # Pillow's own message quotes twice the limit for the error and the limit for the warning; state it once.
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"has {found.group(1)} pixels, more than" if found else "is larger than"
    return RestorationInputError(
        f"Input {where} {size} Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); not decoding it. Raise that limit to restore larger files you trust."
    )


# PNG colour types (IHDR byte 25) whose 16-bit samples Pillow reduces to 8 bits: gray + alpha, RGB, RGBA.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_16_BIT_COLOUR_TYPES = (2, 4, 6)


def _is_16_bit_colour_png(header: bytes) -> bool:
    """Whether a file's first 26 bytes are those of a 16-bit RGB, RGBA or gray + alpha PNG."""
    # Signature (8 bytes), IHDR length and type (8), width and height (8), bit depth (1), colour type (1).
    return (
        len(header) >= 26
        and header.startswith(_PNG_SIGNATURE)
        and header[12:16] == b"IHDR"
        and header[24] == 16
        and header[25] in _PNG_16_BIT_COLOUR_TYPES
    )


def colour_bits_decoded_to_8(image: Image.Image) -> Optional[int]:
    """The bits per sample of a colour TIFF or PPM that Pillow will decode to 8-bit RGB(A) (None otherwise):
    Pillow has no 16-bit colour mode, and only 16-bit colour PNGs have another reader here (pypng)."""
    if image.mode not in ("RGB", "RGBA"):
        return None
    if image.format == "TIFF":
        samples = image.tag_v2.get(258, (8,))
        bits = max(samples) if isinstance(samples, tuple) else int(samples)
    elif image.format == "PPM" and image.tile and isinstance(image.tile[0].args, tuple):
        bits = int(image.tile[0].args[-1]).bit_length()  # (rawmode, maxval) when maxval is not 255
    else:
        return None
    return bits if bits > 8 else None


def _read_png_16(source: Union[Path, bytes], where: str, orientation: int) -> Optional[np.ndarray]:
    """Decode a 16-bit colour PNG to uint16 (H, W, 3|4) with pypng (None when pypng is not installed)."""
    try:
        import png  # pypng: pure Python, reads and writes the 16-bit colour PNGs Pillow cannot
    except ImportError:
        png = None
    if png is None:
        logger.warning(f"Input {where} is a 16-bit colour PNG; install pypng to restore it at 16 bits (using 8).")
        return None
    try:
        reader = png.Reader(bytes=source) if isinstance(source, bytes) else png.Reader(filename=os.fspath(source))
        width, height, rows, info = reader.asDirect()
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError, EOFError) as err:
        raise RestorationInputError(f"Input {where} is truncated or corrupt ({err}).") from err
    array = array.reshape(height, width, info["planes"])
    if info["bitdepth"] != 16:  # an sBIT chunk made pypng reduce the samples; scale back to the 16-bit range
        array = np.round(array * (65535.0 / (2 ** info["bitdepth"] - 1))).astype(np.uint16)
    if info["greyscale"]:  # gray (+ alpha) -> RGB(A): the models are RGB models
        array = np.concatenate([np.repeat(array[:, :, :1], 3, axis=-1), array[:, :, 1:]], axis=-1)
    return _apply_exif_orientation(array, orientation)


def _apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """What `ImageOps.exif_transpose` does to a PIL image, for an (H, W, C) array."""
    transforms = {
        2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
        3: lambda a: a[::-1, ::-1],  # ROTATE_180
        4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
        5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
        6: lambda a: np.rot90(a, -1),  # ROTATE_270 (counter-clockwise) = 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
        8: lambda a: np.rot90(a, 1),  # ROTATE_90 (counter-clockwise)
    }
    transform = transforms.get(orientation)
    return np.ascontiguousarray(transform(array)) if transform else array


def load_image_file(source: Union[str, os.PathLike, bytes]) -> Union[Image.Image, np.ndarray]:
    """Open and fully decode an image file (a path, or its encoded bytes), with clear `RestorationInputError`s.

    Returns a PIL image, or a uint16 (H, W, 3|4) array (EXIF orientation applied) for a 16-bit colour PNG, which
    PIL cannot hold. Files above `PIL.Image.MAX_IMAGE_PIXELS` (Pillow's decompression-bomb guard, also the
    warning zone below twice that limit) are refused. This is the one decoder of the project: inference reads
    files through it, and training (`training.data.decode_image`) reduces what it returns to 8 bits.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        where = f"image bytes ({len(source)} bytes)"
        if not source:
            raise RestorationInputError(f"Input {where} is empty (0 bytes).")
        header, opened = source[:26], io.BytesIO(source)
    else:
        source = Path(source)
        where = f"file '{source}'"
        if not source.exists():
            raise RestorationInputError(f"Input {where} does not exist (not found).")
        if source.is_dir():
            raise RestorationInputError(f"Input {where} is a directory, not an image file.")
        if source.stat().st_size == 0:
            raise RestorationInputError(f"Input {where} is empty (0 bytes).")
        with open(source, "rb") as handle:
            header = handle.read(26)
        opened = source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(opened)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _bomb_error(where, err) from err
        except UnidentifiedImageError as err:
            raise RestorationInputError(f"Input {where} is not an image (unidentified format).") from err
        except (OSError, SyntaxError, ValueError) as err:  # e.g. a PPM header cut short or not a number
            raise RestorationInputError(f"Input {where} could not be read: {err}.") from err
        if image.format == "EPS":
            # Pillow picks the reader from the content, whatever the name, and decodes PostScript by running
            # Ghostscript on it: an interpreter that must not see files from uploads or downloaded archives.
            image.close()
            raise RestorationInputError(
                f"Input {where} is a PostScript (EPS) file, which is not decoded (Pillow would run Ghostscript on "
                "it); convert it to PNG to restore it."
            )
        if image.format == "PNG" and _is_16_bit_colour_png(header):
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:  # broken EXIF blocks should not make a readable image unusable
                orientation = 1
            array = _read_png_16(source, where, orientation)
            if array is not None:
                image.close()
                return array
        bits = colour_bits_decoded_to_8(image)
        if bits:
            logger.warning(
                f"Input {where} has {bits}-bit colour samples, which Pillow decodes to 8 bits: it is restored and "
                "written at 8 bits (save it as a 16-bit PNG to keep the depth)."
            )
        try:
            # Image.open is lazy: decoding happens here, which is where truncated files fail.
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _bomb_error(where, err) from err
        except MemoryError:
            raise
        except Exception as err:  # Pillow's decoders also fail on damaged data with IndexError, TypeError, ...
            image.close()
            raise RestorationInputError(f"Input {where} is truncated or corrupt ({err}).") from err
        try:
            # Counting frames reads the header of every later frame (GIF, TIFF): a damaged one fails here, with
            # whatever exception Pillow's parser meets (IndexError, TypeError, SyntaxError, ...).
            frames = int(getattr(image, "n_frames", 1) or 1)
        except MemoryError:
            raise
        except Exception as err:
            image.close()
            raise RestorationInputError(
                f"Input {where} is truncated or corrupt after its first frame ({err})."
            ) from err
        if frames > 1:
            logger.warning(f"Input {where} has {frames} frames (pages); only the first one is restored.")
            # Pillow keeps a multi-frame file open for seeking: detach the first frame (EXIF orientation applied
            # now, while the file's tags are at hand) and close the file.
            try:
                first = ImageOps.exif_transpose(image)
            except Exception as err:  # broken EXIF blocks should not make a readable image unusable
                logger.warning(f"Ignoring unreadable EXIF orientation of {where}: {err}")
                first = image.copy()
                first.info.pop("exif", None)  # read as one frame, it would fail (and be reported) again
            image.close()
            image = first
        if image.mode == "F":
            logger.warning(f"Input {where} has 32-bit float samples: it is restored and written at 8 bits.")
    return image


def write_png(image: Union[Image.Image, np.ndarray], file: Union[str, os.PathLike, IO[bytes]]) -> None:
    """Write a restored image as PNG, losslessly: PIL images with Pillow; numpy uint8 / uint16 arrays (H, W),
    (H, W, 3) or (H, W, 4) at their own bit depth (16-bit colour with pypng, as Pillow cannot write it)."""
    if isinstance(image, Image.Image):
        image.save(file, format="PNG")
        return
    array = np.asarray(image)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or (
        array.ndim == 3 and array.shape[2] not in (1, 3, 4)
    ):
        raise ValueError(
            f"write_png takes a PIL image or a uint8/uint16 (H, W[, 1|3|4]) array, got {array.dtype} "
            f"{tuple(array.shape)}."
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8 or array.ndim == 2:
        Image.fromarray(array).save(file, format="PNG")  # 8-bit anything and 16-bit gray ("I;16")
        return
    try:
        import png  # pypng: pure Python, reads and writes the 16-bit colour PNGs Pillow cannot
    except ImportError:
        png = None
    if png is None:
        raise ImportError("Writing 16-bit colour PNGs needs pypng: pip install pypng")
    height, width, channels = array.shape
    writer = png.Writer(width, height, greyscale=False, alpha=channels == 4, bitdepth=16)
    # Packed rows (big-endian bytes) let zlib do the work; pypng's per-value packing is much slower.
    rows = np.ascontiguousarray(array.astype(">u2")).reshape(height, -1).view(np.uint8)
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as handle:
            writer.write_packed(handle, rows)
    else:
        writer.write_packed(file, rows)


#: Pillow save options per format for lossy formats (high quality: a restored archive should not lose detail).
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def write_image(
    image: Union[Image.Image, np.ndarray], file: Union[str, os.PathLike, IO[bytes]], format: str = "PNG"
) -> None:
    """Write a restored image in `format` (a Pillow format name such as "PNG", "JPEG", "TIFF").

    PNG goes through `write_png` (lossless, 16-bit gray and colour kept). Other formats are written by Pillow;
    uint8 arrays become PIL images, and a 16-bit colour array, which those formats cannot take through Pillow,
    is refused with a ValueError rather than silently reduced to 8 bits.
    """
    format = format.upper()
    if format == "PNG":
        write_png(image, file)
        return
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"cannot write a {image.dtype} {tuple(image.shape)} image as {format} (Pillow writes 16-bit colour "
                "only as PNG, through pypng); restore into PNG instead."
            )
        image = Image.fromarray(image)
    if format == "JPEG" and image.mode not in ("RGB", "L"):  # JPEG has no alpha; keep the colour
        image = image.convert("RGB")
    image.save(file, format=format, **_SAVE_OPTIONS.get(format, {}))


#: transformers' generic image settings that this processor does not apply: restoration keeps the input's size and
#: [0, 1] range, and numpy inputs are always (H, W[, C]). A value that asks for one of them is refused, not ignored.
UNUSED_IMAGE_SETTINGS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "pad_size", "data_format", "input_data_format",
)
#: Keys transformers writes into preprocessor_config.json besides the settings.
_SAVED_METADATA_KEYS = frozenset({"image_processor_type", "auto_map", "processor_class", "feature_extractor_type"})
# Set while a saved preprocessor_config.json is read back (``from_dict``): keys of a newer version of this package
# are then kept with a warning instead of being refused, as the model configs do.
_READING_SAVED_SETTINGS = contextvars.ContextVar("reading_saved_processor_settings", default=False)


def check_processor_settings(settings: dict, *, known: tuple[str, ...], saved: bool = False) -> None:
    """Check `RestorationImageProcessor` settings (constructor or call kwargs): `do_pad` a bool, `size_divisor` an
    integer >= 1, `pad_mode` one of `PAD_MODES`, no generic setting of `UNUSED_IMAGE_SETTINGS` that asks for work
    this processor does not do (ValueError), and no unknown key (TypeError naming the closest setting; a warning
    for a `saved` file)."""
    do_pad = settings.get("do_pad")
    if do_pad is not None and not isinstance(do_pad, (bool, np.bool_)):
        raise ValueError(f"do_pad must be True or False, got {do_pad!r}.")
    size_divisor = settings.get("size_divisor")
    if size_divisor is not None and (
        isinstance(size_divisor, bool) or not isinstance(size_divisor, numbers.Integral) or size_divisor < 1
    ):
        raise ValueError(f"size_divisor must be an integer >= 1, got {size_divisor!r}.")
    pad_mode = settings.get("pad_mode")
    if pad_mode is not None and pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be 'reflect', 'replicate' or 'constant', got {pad_mode!r}.")
    asked = [f"{key}={settings[key]!r}" for key in UNUSED_IMAGE_SETTINGS if settings.get(key) not in (None, False)]
    if asked:
        raise ValueError(
            f"RestorationImageProcessor does not resize, crop, rescale or normalize, and reads numpy arrays as "
            f"(H, W[, C]): {', '.join(asked)} would be ignored. Integer inputs are scaled by their bit depth to "
            "[0, 1] and images keep their size (see the module docstring)."
        )
    unknown = sorted(key for key in settings if key not in known and key not in _SAVED_METADATA_KEYS
                     and not str(key).startswith("_"))
    if not unknown:
        return
    if saved:
        logger.warning(f"RestorationImageProcessor: keeping settings unknown to this version: {unknown}")
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), ("do_pad", "size_divisor", "pad_mode"), n=1, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"RestorationImageProcessor got unknown setting(s) {', '.join(hints)}.")


class RestorationImageProcessor(PilBackend):
    r"""
    Image processor for all-in-one restoration models.

    Accepts PIL images, numpy arrays (HWC or HW; uint8, uint16 or float in [0, 1]), torch tensors (CHW or HW) and
    file paths. Applies EXIF orientation, converts every mode to RGB float32 in [0, 1] and returns
    `pixel_values` plus per-image `metadata` (original size, bit depth, alpha, original mode) that
    [`~RestorationImageProcessor.postprocess`] needs to give back an image like the input.

    Args:
        do_pad (`bool`, *optional*, defaults to `False`):
            Pad bottom/right to a multiple of `size_divisor` with `pad_mode`. Not needed for our models, which pad
            internally; a processor with the model's own settings (`padding_like`) pads as the model does.
        size_divisor (`int`, *optional*, defaults to 8):
            Multiple used by `do_pad`.
        pad_mode (`str`, *optional*, defaults to `"reflect"`):
            How `do_pad` pads, named as the models' `pad_mode`: "reflect" (replicate where a side is not longer
            than its pad, as the models do), "replicate" or "constant" (zeros).

    Other settings raise, at construction and per call (`check_processor_settings`): a misspelt one a TypeError
    naming the closest, transformers' resize / crop / rescale / normalize settings a ValueError, since this
    processor does not apply them. A saved file's unknown key (a newer version's) is kept, with a warning.
    """

    valid_kwargs = RestorationImageProcessorKwargs
    model_input_names = ["pixel_values"]
    do_pad = False
    size_divisor = 8
    pad_mode = "reflect"
    # Integer inputs are scaled by their own bit depth (see module docstring), not by a fixed factor.
    do_rescale = None
    rescale_factor = None

    def __init__(self, **kwargs: Unpack[RestorationImageProcessorKwargs]) -> None:
        # transformers would keep a misspelt or unused setting as an attribute and silently not apply it.
        check_processor_settings(kwargs, known=tuple(self.valid_kwargs.__annotations__),
                                 saved=_READING_SAVED_SETTINGS.get())
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, image_processor_dict: dict, **kwargs):
        """As transformers, but a saved file may hold settings of a newer version (kept, with a warning)."""
        token = _READING_SAVED_SETTINGS.set(True)
        try:
            return super().from_dict(image_processor_dict, **kwargs)
        finally:
            _READING_SAVED_SETTINGS.reset(token)

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
        pad_mode: Optional[str] = None,
        return_tensors: Optional[str] = None,
        **kwargs,
    ) -> BatchFeature:
        check_processor_settings({"do_pad": do_pad, "size_divisor": size_divisor, "pad_mode": pad_mode, **kwargs},
                                 known=tuple(self.valid_kwargs.__annotations__))
        size_divisor = self.size_divisor if size_divisor is None else size_divisor
        pad_mode = self.pad_mode if pad_mode is None else pad_mode
        processed = []
        for image in images:
            if do_pad:
                image = self.pad_to_multiple(image, size_divisor, pad_mode)
            processed.append(image)
        return BatchFeature(
            data={"pixel_values": processed, "metadata": metadata},
            tensor_type=return_tensors,
            skip_tensor_conversion=["metadata"],
        )

    def padding_like(self, model: Any) -> "RestorationImageProcessor":
        """A copy of this processor whose `do_pad` pads as `model` (a model or its config) pads its input: the
        config's `pad_mode` and `size_multiple`. Other settings are kept. This is the processor saved with a model
        (`save_restoration_folder`), so that an image pre-padded by it restores as `restore()` restores it: the
        padded pixels enter the channel attention and the prompt pooling, so other padding changes the output."""
        config = getattr(model, "config", model)
        wanted = {}
        # A model of another package may have neither setting, or values of its own: those are not adopted.
        if getattr(config, "pad_mode", None) in PAD_MODES:
            wanted["pad_mode"] = config.pad_mode
        multiple = getattr(config, "size_multiple", None)
        if isinstance(multiple, numbers.Integral) and not isinstance(multiple, bool) and multiple >= 1:
            wanted["size_divisor"] = int(multiple)
        changed = {name: (getattr(self, name), value) for name, value in wanted.items() if getattr(self, name) != value}
        overridden = [f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()
                      if old != getattr(type(self), name)]
        if overridden:
            logger.warning(f"RestorationImageProcessor: padding as the model pads: {', '.join(overridden)}.")
        matched = copy.deepcopy(self)
        for name, value in wanted.items():
            setattr(matched, name, value)
        return matched

    @staticmethod
    def pad_to_multiple(image: np.ndarray, size_divisor: int, pad_mode: str = "reflect") -> np.ndarray:
        """Pad a CHW array at the bottom/right so H and W become multiples of `size_divisor`, as the models pad
        (`pad_to_multiple`) with the same `pad_mode`: "reflect" (replicate for an image with a side not longer
        than its pad), "replicate" or "constant" (zeros)."""
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}.")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be 'reflect', 'replicate' or 'constant', got {pad_mode!r}.")
        height, width = image.shape[-2:]
        pad_h, pad_w = (-height) % size_divisor, (-width) % size_divisor
        if pad_h == 0 and pad_w == 0:
            return image
        # "reflect" needs at least pad+1 pixels. The fallback is the models' own ("edge" = replicate), so that a
        # pre-padded image restores as restore() restores it: any other content enters the channel attention
        # and prompt pooling over the padded image (symmetric padding moved a 4x4 image's output by 0.03).
        mode = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}[pad_mode]
        if mode == "reflect" and (pad_h >= height or pad_w >= width):
            mode = "edge"
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
        if input_type == "path" and isinstance(image, np.ndarray):  # a 16-bit colour PNG, as uint16 RGB(A)
            rgb, alpha, bit_depth, _ = self._numpy_to_float(image, where, channels_last=True)
            mode = f"PNG-{'RGBA' if alpha is not None else 'RGB'};16"
        elif isinstance(image, Image.Image):
            rgb, alpha, bit_depth, mode = self._pil_to_float(image, where)
        elif isinstance(image, np.ndarray):
            input_type = "np"
            rgb, alpha, bit_depth, mode = self._numpy_to_float(image, where, channels_last=True)
        elif _is_torch_tensor(image):
            input_type = "pt"
            tensor = image.detach().cpu()
            # numpy has no bfloat16: such tensors are read as float32 (exact), then like any float input.
            array = (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()
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
        transparent = "transparency" in image.info  # a PNG tRNS colour (or GIF index): those pixels get alpha 0
        if mode == "P" or mode == "PA":
            image = image.convert("RGBA" if mode == "PA" or transparent else "RGB")
        elif mode == "1":  # Pillow maps a 1-bit PNG's tRNS value to alpha itself
            image = image.convert("RGBA" if transparent else "L")
        elif mode in ("L", "RGB") and transparent:
            image = image.convert("RGBA")
        elif mode == "La":  # premultiplied gray + alpha, which Pillow converts to nothing else: divide it out here
            gray, alpha = np.moveaxis(np.asarray(image, dtype=np.float32), -1, 0)
            gray = np.where(alpha > 0, np.clip(gray * 255.0 / np.maximum(alpha, 1.0), 0.0, 255.0), 0.0)
            image = Image.fromarray(np.stack([gray, alpha], axis=-1).round().astype(np.uint8), "LA")
            image = image.convert("RGBA")
        elif mode in ("LA", "RGBa"):
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
            alpha = None
            if transparent and isinstance(image.info["transparency"], int):  # 16-bit gray PNG with a tRNS value
                alpha = (array != image.info["transparency"]).astype(np.float32)
            return np.repeat(gray[None], 3, axis=0), alpha, 16, mode
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
        if not array.dtype.isnative:  # e.g. '>u2' from a big-endian TIFF: the same values in this machine's order
            array = array.astype(array.dtype.newbyteorder("="))
        dtype = array.dtype
        if dtype in (np.uint8, np.uint16):
            return self._integer_to_float(array, channels, channels_last)
        if dtype == np.bool_:
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

    @staticmethod
    def _integer_to_float(
        array: np.ndarray, channels: int, channels_last: bool
    ) -> tuple[np.ndarray, Optional[np.ndarray], int, str]:
        """uint8/uint16 (H, W, C) -> (3, H, W) float32 written once: value / (2**bits - 1), the same float32 division
        as ``astype(float32) / max``, without the HWC float copies (a large image's peak memory)."""
        dtype = array.dtype
        bit_depth, top = (8, np.float32(255.0)) if dtype == np.uint8 else (16, np.float32(65535.0))
        planes = np.moveaxis(array, -1, 0)  # a view, (C, H, W)
        rgb = np.empty((3, *array.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.divide(planes[0 if channels == 1 else channel], top, out=rgb[channel], dtype=np.float32)
        alpha = np.divide(planes[3], top, dtype=np.float32) if channels == 4 else None
        mode = f"np-{dtype}-{'HWC' if channels_last else 'CHW'}-{channels}"
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
        rgb = np.moveaxis(array[:, :height, :width], 0, -1)  # a view; clipped below, a band of rows at a time
        alpha = meta.get("alpha")
        bit_depth = meta.get("bit_depth", 8)

        if output_type == "pt":
            import torch

            rgb = np.clip(rgb, 0.0, 1.0)
            if alpha is not None:
                rgb = np.concatenate([rgb, np.asarray(alpha, dtype=np.float32)[:, :, None]], axis=-1)
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, 0)))
        if output_type == "np":
            return _quantize_bands(rgb, alpha, bit_depth)
        # PIL
        if bit_depth == 16:
            if str(meta.get("original_mode", "")).startswith("I") and alpha is None:
                luma = np.clip(rgb, 0.0, 1.0) @ _ITU_R_601_LUMA
                return Image.fromarray(quantize(luma, 16))  # mode "I;16": round-trips through 16-bit PNG
            logger.warning("PIL has no 16-bit RGB/RGBA mode; returning an 8-bit PIL image (use output_type='np').")
        return Image.fromarray(_quantize_bands(rgb, alpha, 8))


#: Rows quantized at a time by `_quantize_bands`: its float temporaries stay a band, not an image.
QUANTIZE_BAND_ROWS = 256


def _quantize_bands(rgb: np.ndarray, alpha: Optional[np.ndarray], bit_depth: int) -> np.ndarray:
    """Clip (H, W, 3) floats to [0, 1], attach alpha and `quantize` them, band by band into one output array
    (the same values as quantizing the whole image at once; the peak memory is the output plus a band)."""
    height, width = rgb.shape[:2]
    channels = 3 if alpha is None else 4
    dtype = {8: np.uint8, 16: np.uint16}.get(bit_depth, np.float32)
    output = np.empty((height, width, channels), dtype=dtype)
    for top in range(0, height, QUANTIZE_BAND_ROWS):
        rows = slice(top, top + QUANTIZE_BAND_ROWS)
        output[rows, :, :3] = quantize(np.clip(rgb[rows], 0.0, 1.0), bit_depth)
        if alpha is not None:
            output[rows, :, 3] = quantize(np.asarray(alpha[rows], dtype=np.float32), bit_depth)
    return output


def quantize(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """Convert float [0, 1] to uint8 (8), uint16 (16) or float32 (32), rounding to nearest."""
    if bit_depth == 8:
        return np.round(array * 255.0).astype(np.uint8)
    if bit_depth == 16:
        return np.round(array.astype(np.float64) * 65535.0).astype(np.uint16)
    return array.astype(np.float32)


__all__ = [
    "PAD_MODES", "RestorationImageProcessor", "RestorationInputError", "UNUSED_IMAGE_SETTINGS",
    "check_processor_settings", "load_image_file", "quantize", "write_image", "write_png",
]
