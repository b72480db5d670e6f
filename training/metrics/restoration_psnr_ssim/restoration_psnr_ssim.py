"""PSNR and SSIM for image restoration, computed the way the PromptIR-family papers compute them.

Defaults follow PromptIR / PIP ``utils/val_utils.py::compute_psnr_ssim``: RGB images as float in [0, 1],
``data_range=1``, predictions (and references) clipped to [0, 1], no Y channel, no border shave, skimage's
uniform 7x7 SSIM window, one score per image, then the mean over images. Every departure from that protocol is an
explicit argument of ``compute``: ``crop_border``, ``test_y_channel``, ``ssim_gaussian_weights`` (MoCE-IR),
``ssim_sample_covariance``, ``data_range``. BasicSR's ``calculate_psnr`` / ``calculate_ssim`` are
``crop_border=N, test_y_channel=True, ssim_gaussian_weights=True, ssim_sample_covariance=False``.

Load it offline from its folder (hub metrics cannot be fetched here)::

    metric = evaluate.load("training/metrics/restoration_psnr_ssim")
    metric.compute(predictions=[restored], references=[clean])  # {"psnr": ..., "ssim": ..., "num_images": 1}
"""

from __future__ import annotations

from typing import Any, Dict, List

import datasets
import evaluate
import numpy as np
from skimage.metrics import peak_signal_noise_ratio
from skimage.metrics import structural_similarity


_DESCRIPTION = """\
PSNR (dB) and SSIM between restored and clean images, per image then averaged, following the all-in-one
restoration papers (PromptIR, PIP, AdaIR, MoCE-IR): RGB, float in [0, 1], data_range 1, predictions clipped to
[0, 1], no Y channel and no border shave unless asked for.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: restored images. Each item is one image or a batch of images:
        * numpy array (H, W, C) or (H, W), or a batch (N, H, W, C): channels LAST;
        * torch tensor (C, H, W), or a batch (N, C, H, W): channels FIRST (the model's layout);
        * uint8 values are divided by 255, uint16 by 65535; float values must be in [0, 1] (they are clipped;
          predictions beyond [-1, 2] x data_range, such as a [0, 255] float image, are refused).
    references: clean images, same layouts and shapes as `predictions`.
    crop_border (int, default 0): pixels shaved from every side before scoring (BasicSR `crop_border`).
    test_y_channel (bool, default False): score the BT.601 luma (Y of YCbCr, as in BasicSR) instead of RGB.
    ssim_gaussian_weights (bool, default False): False = skimage's uniform 7x7 window (PromptIR, PIP, AdaIR);
        True = Gaussian window, sigma 1.5 (MoCE-IR's `gaussian_weights=True`).
    ssim_sample_covariance (bool, default True): skimage's default, variances scaled by N / (N - 1) over the
        window (what PromptIR's and MoCE-IR's skimage calls compute); False = population variances, as BasicSR's
        `calculate_ssim`, MATLAB's `ssim` and pytorch_msssim (with the Gaussian window: their numbers).
    data_range (float, default 1.0): peak value of the images (uint8/uint16 inputs are scaled to [0, 1] first,
        so keep 1.0 for them); values are clipped to [0, data_range].
    return_per_image (bool, default False): also return the lists `psnr_per_image` and `ssim_per_image`.
Returns:
    psnr (float): mean PSNR in dB over the images, one PSNR per image as BasicSR and the papers' test scripts
        average them (inf if any image is identical to its reference: `psnr_per_image` says which),
    ssim (float): mean SSIM over the images,
    num_images (int): number of scored image pairs.
Examples:
    >>> metric = evaluate.load("training/metrics/restoration_psnr_ssim")
    >>> clean = np.full((16, 16, 3), 0.5, dtype=np.float32)
    >>> metric.compute(predictions=[clean + 0.1], references=[clean])["psnr"]  # MSE 0.01 -> 20 dB
    20.0
"""

_CITATION = """\
Vaishnav Potlapalli, Syed Waqas Zamir, Salman Khan, Fahad Shahbaz Khan (2023). PromptIR: Prompting for All-in-One
Image Restoration. NeurIPS 2023 (the protocol these defaults follow).
Zhou Wang, Alan C. Bovik, Hamid R. Sheikh, Eero P. Simoncelli (2004). Image quality assessment: from error
visibility to structural similarity. IEEE Transactions on Image Processing 13(4), 600-612 (SSIM).
"""

#: BT.601 RGB -> Y weights on [0, 1] inputs, as BasicSR's `rgb2ycbcr(y_only=True)` (Y in [16, 235] / 255).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0 / 255.0


def _is_torch(array: Any) -> bool:
    # Checked by type name so this module does not import torch.
    return type(array).__module__.split(".")[0] == "torch"


def _to_numpy(array: Any) -> np.ndarray:
    if _is_torch(array):
        tensor = array.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype.itemsize < 4:
            tensor = tensor.float()  # numpy has no bfloat16
        # torch images are channels-first; everything below is channels-last
        return np.moveaxis(tensor.numpy(), -3, -1) if tensor.ndim >= 3 else tensor.numpy()
    return np.asarray(array)


def to_float_images(images: Any) -> List[np.ndarray]:
    """Split `images` (one image, a batch, or a list of either) into float64 (H, W, C) arrays in [0, 1]."""
    items = images if isinstance(images, (list, tuple)) else [images]
    result: List[np.ndarray] = []
    for item in items:
        array = _to_numpy(item)
        if array.dtype == np.uint8:
            array = array.astype(np.float64) / 255.0
        elif array.dtype == np.uint16:
            array = array.astype(np.float64) / 65535.0
        elif array.dtype.kind in "iub":
            raise ValueError(f"integer images must be uint8 or uint16, got {array.dtype}")
        else:
            array = array.astype(np.float64)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim == 4:
            result.extend(list(array))
        elif array.ndim == 3:
            result.append(array)
        else:
            raise ValueError(f"expected an image (H, W[, C]) or a batch of images, got shape {array.shape}")
    return result


def _encode(image: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(image.shape, dtype=np.float64), image.ravel()])


def _decode(row: Any) -> np.ndarray:
    if hasattr(row, "values"):  # a pyarrow ListScalar
        row = row.values.to_numpy(zero_copy_only=False)
    row = np.asarray(row, dtype=np.float64)
    height, width, channels = (int(v) for v in row[:3])
    return row[3:].reshape(height, width, channels)


def _prepare(image: np.ndarray, crop_border: int, test_y_channel: bool, data_range: float) -> np.ndarray:
    # PromptIR clips both the restored and the clean image to the valid range before scoring
    image = np.clip(image, 0.0, data_range)
    if crop_border > 0:
        inside = slice(crop_border, -crop_border)
        image = image[inside, inside]
    if test_y_channel and image.shape[-1] == 3:
        image = ((image / data_range) @ _Y_WEIGHTS + _Y_OFFSET)[:, :, None] * data_range
    return image


#: How far (as a fraction of `data_range`) a prediction may overshoot [0, data_range] and still be clipped.
PREDICTION_OVERSHOOT = 1.0


def _check_pair(prediction: np.ndarray, reference: np.ndarray, crop_border: int, data_range: float) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    if crop_border < 0 or 2 * crop_border >= min(prediction.shape[:2]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {prediction.shape[:2]} image")
    # A reference far outside the range means the caller passed [0, 255] floats, which clipping would silently
    # turn into garbage. Predictions may overshoot (they are clipped), but not by the factor of a [0, 255] image:
    # a perfect restoration passed as `output * 255` scored 4.8 dB.
    low, high = float(reference.min()), float(reference.max())
    if low < -1e-3 * data_range or high > (1 + 1e-3) * data_range:
        raise ValueError(
            f"reference values span [{low:.3g}, {high:.3g}], outside [0, {data_range:g}]; "
            "pass uint8 arrays or floats scaled to [0, 1]"
        )
    low, high = float(prediction.min()), float(prediction.max())
    if low < -PREDICTION_OVERSHOOT * data_range or high > (1 + PREDICTION_OVERSHOOT) * data_range:
        raise ValueError(
            f"prediction values span [{low:.3g}, {high:.3g}], far outside [0, {data_range:g}] (overshoot up to "
            f"{PREDICTION_OVERSHOOT:g} x the range is clipped); pass uint8 arrays or floats scaled to [0, 1]"
        )


def psnr_pair(
    prediction: np.ndarray,
    reference: np.ndarray,
    crop_border: int = 0,
    test_y_channel: bool = False,
    data_range: float = 1.0,
) -> float:
    """PSNR (dB) of one (H, W, C) pair from `to_float_images`; inf for identical images (as skimage)."""
    _check_pair(prediction, reference, crop_border, data_range)
    prediction = _prepare(prediction, crop_border, test_y_channel, data_range)
    reference = _prepare(reference, crop_border, test_y_channel, data_range)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(reference, prediction, data_range=data_range))


def ssim_pair(
    prediction: np.ndarray,
    reference: np.ndarray,
    crop_border: int = 0,
    test_y_channel: bool = False,
    ssim_gaussian_weights: bool = False,
    data_range: float = 1.0,
    ssim_sample_covariance: bool = True,
) -> float:
    """SSIM of one (H, W, C) pair from `to_float_images` (mean over channels, as skimage with channel_axis)."""
    _check_pair(prediction, reference, crop_border, data_range)
    prediction = _prepare(prediction, crop_border, test_y_channel, data_range)
    reference = _prepare(reference, crop_border, test_y_channel, data_range)
    # skimage's default is a uniform 7x7 window (PromptIR/PIP); gaussian_weights=True is sigma 1.5 (MoCE-IR)
    return float(
        structural_similarity(
            reference, prediction, data_range=data_range, channel_axis=-1, gaussian_weights=ssim_gaussian_weights,
            use_sample_covariance=ssim_sample_covariance,
        )
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RestorationPsnrSsim(evaluate.Metric):
    """PSNR / SSIM of restored images against clean ones (see the module docstring for the protocol)."""

    def _info(self) -> evaluate.MetricInfo:
        # Arrow cannot hold images of varying (H, W) as fixed-shape arrays, and nested lists cost ~1 s per
        # 256x256 image to encode and decode. So `add`/`add_batch` store each image as one flat float64 row,
        # `[H, W, C, *pixels]` (lossless for uint8, uint16, float32 and float64 inputs), and `_compute` reshapes it.
        flat_image = datasets.Sequence(datasets.Value("float64"))
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": flat_image, "references": flat_image}),
            reference_urls=["https://github.com/va1shn9v/PromptIR/blob/main/utils/val_utils.py"],
        )
        # Read rows back as Arrow arrays (zero-copy to numpy) instead of Python lists; the "numpy" format would
        # downcast to float32. (MetricInfo validates `format` for scalar features only, at construction.)
        info.format = "arrow"
        return info

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Add images (see `inputs_description` for the accepted layouts)."""
        if predictions is not None:
            predictions = [_encode(image) for image in to_float_images(predictions)]
        if references is not None:
            references = [_encode(image) for image in to_float_images(references)]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Add one image pair (or one batch of them)."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(
        self,
        predictions: Any,
        references: Any,
        crop_border: int = 0,
        test_y_channel: bool = False,
        ssim_gaussian_weights: bool = False,
        data_range: float = 1.0,
        return_per_image: bool = False,
        ssim_sample_covariance: bool = True,
    ) -> Dict[str, Any]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        if len(predictions) == 0:
            raise ValueError("no images to score")
        crop_border, test_y_channel, data_range = int(crop_border), bool(test_y_channel), float(data_range)
        psnrs, ssims = [], []
        for prediction, reference in zip(predictions, references):
            prediction, reference = _decode(prediction), _decode(reference)
            psnrs.append(psnr_pair(prediction, reference, crop_border, test_y_channel, data_range))
            ssims.append(
                ssim_pair(prediction, reference, crop_border, test_y_channel, ssim_gaussian_weights, data_range,
                          bool(ssim_sample_covariance))
            )
        result: Dict[str, Any] = {
            "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)),
            "num_images": len(psnrs),
        }
        if return_per_image:
            result["psnr_per_image"] = psnrs
            result["ssim_per_image"] = ssims
        return result
