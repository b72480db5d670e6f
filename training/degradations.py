"""Degradation synthesis: pure, seeded functions on uint8 ``(H, W, 3)`` RGB arrays.

Every function takes the clean image and a ``numpy.random.Generator`` (parameters left as ``None`` are drawn
from it) and returns a :class:`Degraded` ``(image, task_name)`` pair; the input is never modified. The 5-class
integer label used by the models is ``TASK_NAMES.index(task_name)`` (noise 0, rain 1, haze 2, blur 3,
low-light 4); composites are named like the CDD-11 folders (``"low_haze_rain"``) and are labelled by their
position in :data:`CDD11_TYPES`.

Only numpy and scipy are used (no torchvision, no OpenCV) so that the same code runs in the data workers, the
tests and the evaluation scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage


TASK_NAMES: tuple[str, ...] = ("noise", "rain", "haze", "blur", "low-light")
"""The 5 degradation classes of the PIP / 5-task models, in label order."""

CDD11_TYPES: tuple[str, ...] = (
    "low",
    "haze",
    "rain",
    "snow",
    "low_haze",
    "low_rain",
    "low_snow",
    "haze_rain",
    "haze_snow",
    "low_haze_rain",
    "low_haze_snow",
)
"""The 11 CDD-11 degradation folders (OneRestore, ECCV'24), in label order."""

NOISE_SIGMAS: tuple[int, ...] = (15, 25, 50)
"""Noise levels of the official PromptIR-family training recipe."""

AUGMENT_MODES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
"""Official PromptIR ``random_augmentation`` modes; mode 0 (identity) is never drawn."""

# CDD-11 folder token of each base degradation, in the order the tokens appear in a CDD-11 name.
_COMPOSITE_TOKENS: dict[str, str] = {
    "low-light": "low",
    "haze": "haze",
    "rain": "rain",
    "snow": "snow",
    "blur": "blur",
    "noise": "noise",
}
# Order in which a composite is synthesized: scene (haze) first, then what sits in front of the camera
# (rain, snow), then exposure (low-light), then the camera itself (blur, sensor noise).
_SYNTHESIS_ORDER: tuple[str, ...] = ("haze", "rain", "snow", "low-light", "blur", "noise")


class Degraded(NamedTuple):
    """A degraded uint8 ``(H, W, 3)`` image and the name of the degradation that produced it."""

    image: np.ndarray
    task_name: str


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "expected a uint8 numpy array of shape (H, W, 3), got "
            f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        )


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> rounded, clipped uint8."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _on_reflected(image: np.ndarray, pad_h: int, pad_w: int, filter_fn) -> np.ndarray:
    """`filter_fn` of an (H, W, 3) image extended by mirror reflection (scipy's "reflect", numpy's "symmetric") by
    `pad_h` / `pad_w` pixels, cropped back. scipy reflects only once, which goes wrong where a filter reaches
    further than the image is long (a 2-px side under a 21-px motion kernel came out black); numpy's padding
    reflects as often as needed. Where the image is long enough the result is scipy's own."""
    padded = np.pad(image, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="symmetric")
    height, width = image.shape[:2]
    return filter_fn(padded)[pad_h : pad_h + height, pad_w : pad_w + width]


def _convolve_rgb(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of a float (H, W, 3) image with a 2-D kernel (reflect borders)."""
    return _on_reflected(image, kernel.shape[0], kernel.shape[1],
                         lambda padded: ndimage.convolve(padded, kernel[:, :, None], mode="reflect"))


# ----------------------------------------------------------------------------------------------------------------
# Augmentation (official PromptIR utils/image_utils.py `data_augmentation`)
# ----------------------------------------------------------------------------------------------------------------


def augment(image: np.ndarray, mode: int) -> np.ndarray:
    """Flip/rotate an ``(H, W, C)`` array like the official ``data_augmentation(image, mode)``, modes 0..7."""
    if mode == 0:
        out = image
    elif mode == 1:
        out = np.flipud(image)
    elif mode in (2, 4, 6):
        out = np.rot90(image, k=mode // 2)
    elif mode in (3, 5, 7):
        out = np.flipud(np.rot90(image, k=mode // 2))
    else:
        raise ValueError(f"augmentation mode must be in 0..7, got {mode}")
    return np.ascontiguousarray(out)


def random_augment_mode(rng: np.random.Generator) -> int:
    """One of the 7 non-identity modes, uniformly (official ``random.randint(1, 7)``)."""
    return int(rng.integers(1, 8))


# ----------------------------------------------------------------------------------------------------------------
# Single degradations
# ----------------------------------------------------------------------------------------------------------------


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> Degraded:
    """i.i.d. Gaussian noise of std ``sigma`` (0-255 scale), with the numerics of the official PromptIR loaders:
    one standard normal draw per pixel and channel, scaled by ``sigma`` and added to the uint8 crop, the sum kept
    within [0, 255] and cast back to uint8 by truncation (not rounding)."""
    _check_image(image)
    noise = rng.standard_normal(image.shape)
    noisy = (image + sigma * noise).clip(0, 255).astype(np.uint8)  # truncated, as the official test code does
    return Degraded(noisy, "noise")


def line_kernel(length: int, angle_degrees: float) -> np.ndarray:
    """Anti-aliased straight-line kernel (sums to 1) of odd size ``length`` at ``angle_degrees`` from the x axis."""
    length = max(int(length), 1)
    size = length if length % 2 == 1 else length + 1
    kernel = np.zeros((size, size), dtype=np.float64)
    centre = (size - 1) / 2.0
    theta = np.deg2rad(angle_degrees)
    # Bilinear splatting of densely sampled points gives a smooth line at any angle.
    for t in np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 4 * length + 1):
        x = centre + t * np.cos(theta)
        y = centre - t * np.sin(theta)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                yy, xx = y0 + dy, x0 + dx
                if 0 <= yy < size and 0 <= xx < size:
                    kernel[yy, xx] += wy * wx
    return kernel / kernel.sum()


def disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased uniform disk (sums to 1): the point-spread function of an out-of-focus lens."""
    half = int(np.ceil(radius))
    supersample = 8
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    coords = np.arange(-half, half + 1, dtype=np.float64)
    ys = (coords[:, None] + offsets[None, :]).reshape(-1)
    inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= radius**2
    size = 2 * half + 1
    coverage = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return coverage / coverage.sum()


def gaussian_kernel(sigma: float, sigma_y: float | None = None, angle_degrees: float = 0.0,
                    truncate: float = 4.0) -> np.ndarray:
    """Sampled Gaussian (sums to 1): std ``sigma`` along ``angle_degrees`` and ``sigma_y`` (default ``sigma``) across.

    The support is ``truncate`` standard deviations each side (scipy's convention), so an isotropic kernel is
    exactly the outer product of ``scipy.ndimage.gaussian_filter``'s 1-D kernel with itself.
    """
    sigma_y = sigma if sigma_y is None else sigma_y
    if sigma <= 0 or sigma_y <= 0:
        raise ValueError(f"Gaussian stds must be > 0, got {sigma}, {sigma_y}")
    half = int(truncate * max(sigma, sigma_y) + 0.5)
    coords = np.arange(-half, half + 1, dtype=np.float64)
    theta = np.deg2rad(angle_degrees)
    x, y = coords[None, :], -coords[:, None]  # y up, like line_kernel's angle
    along = x * np.cos(theta) + y * np.sin(theta)
    across = -x * np.sin(theta) + y * np.cos(theta)
    kernel = np.exp(-0.5 * ((along / sigma) ** 2 + (across / sigma_y) ** 2))
    return kernel / kernel.sum()


def motion_blur(
    image: np.ndarray,
    rng: np.random.Generator,
    length: int | None = None,
    angle: float | None = None,
) -> Degraded:
    """Linear camera-shake blur: ``length`` pixels (default 5..21) at ``angle`` degrees (default 0..180)."""
    _check_image(image)
    if length is None:
        length = int(rng.integers(5, 22))
    if angle is None:
        angle = float(rng.uniform(0.0, 180.0))
    blurred = _convolve_rgb(image / 255.0, line_kernel(length, angle))
    return Degraded(_to_uint8(blurred), "blur")


def defocus_blur(image: np.ndarray, rng: np.random.Generator, radius: float | None = None) -> Degraded:
    """Out-of-focus blur with a disk kernel of ``radius`` pixels (default 1.5..4)."""
    _check_image(image)
    if radius is None:
        radius = float(rng.uniform(1.5, 4.0))
    blurred = _convolve_rgb(image / 255.0, disk_kernel(radius))
    return Degraded(_to_uint8(blurred), "blur")


GAUSSIAN_SIGMA_RANGE: tuple[float, float] = (0.5, 3.5)
"""Std range (pixels) of :func:`gaussian_blur`; it contains 2.0, Pillow's ``GaussianBlur(radius=2)``."""


def gaussian_blur(
    image: np.ndarray,
    rng: np.random.Generator,
    sigma: float | None = None,
    sigma_y: float | None = None,
    angle: float | None = None,
) -> Degraded:
    """Gaussian blur (soft optics, slight focus miss, resampling): std ``sigma`` px, optionally anisotropic.

    With every parameter left ``None``, ``sigma`` is drawn uniformly in :data:`GAUSSIAN_SIGMA_RANGE`; half of the
    draws are isotropic, the other half anisotropic with ``sigma_y`` drawn from the same range and ``angle``
    (degrees) in 0..180. A given ``sigma`` without ``sigma_y`` is isotropic. Isotropic blur runs separably
    (``scipy.ndimage.gaussian_filter``, reflect borders, truncated at 4 std); ``sigma=2`` matches Pillow's
    ``ImageFilter.GaussianBlur(radius=2)`` (whose "radius" is the std) to about 50 dB PSNR.
    """
    _check_image(image)
    if sigma is None:
        sigma = float(rng.uniform(*GAUSSIAN_SIGMA_RANGE))
        if sigma_y is None and rng.random() < 0.5:
            sigma_y = float(rng.uniform(*GAUSSIAN_SIGMA_RANGE))
    if sigma_y is not None and angle is None:
        angle = float(rng.uniform(0.0, 180.0))
    if sigma_y is None or sigma_y == sigma:
        radius = int(4.0 * sigma + 0.5) + 1  # the filter's reach at truncate=4
        blurred = _on_reflected(image / 255.0, radius, radius, lambda padded: ndimage.gaussian_filter(
            padded, sigma=(sigma, sigma, 0), mode="reflect", truncate=4.0))
    else:
        blurred = _convolve_rgb(image / 255.0, gaussian_kernel(sigma, sigma_y, angle))
    return Degraded(_to_uint8(blurred), "blur")


def low_light(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma: float | None = None,
    scale: float | None = None,
    noise_sigma: float | None = None,
) -> Degraded:
    """Under-exposure: ``scale * x**gamma`` plus Gaussian sensor noise (``noise_sigma`` on the 0-255 scale).

    Defaults: gamma 1.5..3, scale 0.3..0.8, noise_sigma 1..6 (LOL-like mean brightness of a few percent).
    """
    _check_image(image)
    if gamma is None:
        gamma = float(rng.uniform(1.5, 3.0))
    if scale is None:
        scale = float(rng.uniform(0.3, 0.8))
    if noise_sigma is None:
        noise_sigma = float(rng.uniform(1.0, 6.0))
    dark = scale * (image / 255.0) ** gamma
    if noise_sigma > 0:
        dark = dark + rng.standard_normal(image.shape) * (noise_sigma / 255.0)
    return Degraded(_to_uint8(dark), "low-light")


def depth_proxy(image: np.ndarray) -> np.ndarray:
    """A smooth pseudo-depth in [0, 1] (1 = far) for haze synthesis when no depth map is available.

    Half a vertical ramp (outdoor photos: the top is usually farther away) and half heavily blurred luminance
    (sky and distant bright regions read as far), so the haze follows the scene rather than a plain gradient.
    """
    height, width = image.shape[:2]
    ramp = np.linspace(1.0, 0.0, height)[:, None] * np.ones((1, width))
    luminance = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    smooth = ndimage.gaussian_filter(luminance, sigma=max(height, width) / 8.0, mode="reflect")
    span = smooth.max() - smooth.min()
    smooth = (smooth - smooth.min()) / span if span > 1e-6 else np.zeros_like(smooth)
    return 0.5 * ramp + 0.5 * smooth


def haze(
    image: np.ndarray,
    rng: np.random.Generator,
    beta: float | None = None,
    airlight: float | None = None,
    depth: np.ndarray | None = None,
) -> Degraded:
    """Atmospheric scattering ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``depth`` is an ``(H, W)`` map in [0, 1] (default :func:`depth_proxy`), ``beta`` the scattering
    coefficient (default 0.6..2.0, i.e. transmission down to ~0.14 at the far end) and ``airlight`` the grey
    atmospheric light in [0, 1] (default 0.7..1.0, like RESIDE's A in 0.8..1.0).
    """
    _check_image(image)
    if beta is None:
        beta = float(rng.uniform(0.6, 2.0))
    if airlight is None:
        airlight = float(rng.uniform(0.7, 1.0))
    if depth is None:
        depth = depth_proxy(image)
    if depth.shape != image.shape[:2]:
        raise ValueError(f"depth shape {depth.shape} does not match image shape {image.shape[:2]}")
    transmission = np.exp(-beta * depth)[:, :, None]
    hazy = (image / 255.0) * transmission + airlight * (1.0 - transmission)
    return Degraded(_to_uint8(hazy), "haze")


def _streak_layer(
    shape: tuple[int, int],
    rng: np.random.Generator,
    density: float,
    length: int,
    angle: float,
    width_sigma: float,
) -> np.ndarray:
    """Random seeds smeared along a line: a [0, 1] layer of rain streaks or falling snow."""
    seeds = (rng.random(shape) < density) * rng.uniform(0.5, 1.0, size=shape)
    kernel = line_kernel(length, angle)
    kernel = kernel / kernel.max()  # a streak keeps its seed's brightness along its length
    layer = ndimage.convolve(seeds, kernel, mode="wrap")
    if width_sigma > 0:
        layer = ndimage.gaussian_filter(layer, width_sigma, mode="wrap")
        layer = layer / max(layer.max(), 1e-6) * min(seeds.max(initial=0.0), 1.0)
    return np.clip(layer, 0.0, 1.0)


def rain_streaks(
    image: np.ndarray,
    rng: np.random.Generator,
    density: float | None = None,
    length: int | None = None,
    angle: float | None = None,
    intensity: float | None = None,
) -> Degraded:
    """Near-vertical rain streaks blended with a screen blend ``1 - (1 - J)(1 - S)`` (never darkens a pixel).

    Defaults: seed density 0.002..0.01 per pixel, length 10..30 px, angle 70..110 degrees, intensity 0.6..1.
    """
    _check_image(image)
    if density is None:
        density = float(rng.uniform(0.002, 0.01))
    if length is None:
        length = int(rng.integers(10, 31))
    if angle is None:
        angle = float(rng.uniform(70.0, 110.0))
    if intensity is None:
        intensity = float(rng.uniform(0.6, 1.0))
    streaks = intensity * _streak_layer(image.shape[:2], rng, density, length, angle, width_sigma=0.6)
    clean = image / 255.0
    rainy = 1.0 - (1.0 - clean) * (1.0 - streaks[:, :, None])
    return Degraded(_to_uint8(rainy), "rain")


def snow(
    image: np.ndarray,
    rng: np.random.Generator,
    density: float | None = None,
    flake_size: float | None = None,
    intensity: float | None = None,
) -> Degraded:
    """Soft round snowflakes drifting slightly, blended towards white (the CDD-11 ``snow`` component).

    Defaults: density 0.001..0.005 per pixel, flake size (Gaussian sigma) 0.8..2 px, intensity 0.7..1.
    """
    _check_image(image)
    if density is None:
        density = float(rng.uniform(0.001, 0.005))
    if flake_size is None:
        flake_size = float(rng.uniform(0.8, 2.0))
    if intensity is None:
        intensity = float(rng.uniform(0.7, 1.0))
    drift = float(rng.uniform(60.0, 120.0))
    flakes = intensity * _streak_layer(image.shape[:2], rng, density, 3, drift, width_sigma=flake_size)
    clean = image / 255.0
    snowy = clean * (1.0 - flakes[:, :, None]) + flakes[:, :, None]
    return Degraded(_to_uint8(snowy), "snow")


BLUR_FAMILIES: dict[str, Callable[..., Degraded]] = {
    "gaussian": gaussian_blur,
    "defocus": defocus_blur,
    "motion": motion_blur,
}
"""Blur kernels by family: ``fn(image, rng, **params) -> Degraded``, each with its own parameter ranges."""


def blur(image: np.ndarray, rng: np.random.Generator, family: str | None = None, **params) -> Degraded:
    """Blur of one :data:`BLUR_FAMILIES` kernel family (drawn uniformly when ``family`` is None).

    Default parameter ranges: Gaussian std 0.5..3.5 px (half isotropic, half anisotropic at a random angle),
    defocus disk radius 1.5..4 px, straight motion 5..21 px at 0..180 degrees. ``params`` fix the family's own
    parameters, e.g. ``blur(image, rng, family="gaussian", sigma=2.0)``.
    """
    if family is None:
        if params:
            raise ValueError("blur parameters need an explicit family (they differ between families)")
        family = tuple(BLUR_FAMILIES)[int(rng.integers(len(BLUR_FAMILIES)))]
    if family not in BLUR_FAMILIES:
        raise ValueError(f"unknown blur family {family!r}; known: {tuple(BLUR_FAMILIES)}")
    return BLUR_FAMILIES[family](image, rng, **params)


def noise(image: np.ndarray, rng: np.random.Generator, sigma: float | None = None) -> Degraded:
    """Gaussian noise with ``sigma`` drawn from :data:`NOISE_SIGMAS` when not given."""
    if sigma is None:
        sigma = float(NOISE_SIGMAS[int(rng.integers(len(NOISE_SIGMAS)))])
    return add_gaussian_noise(image, sigma, rng)


DEGRADATIONS: dict[str, Callable[..., Degraded]] = {
    "noise": noise,
    "rain": rain_streaks,
    "haze": haze,
    "blur": blur,
    "low-light": low_light,
    "snow": snow,
}
"""Base degradations by name: ``fn(image, rng, **params) -> Degraded``."""


# ----------------------------------------------------------------------------------------------------------------
# Composites (CDD-11 style)
# ----------------------------------------------------------------------------------------------------------------


def parse_composite(name: str | Sequence[str]) -> tuple[str, ...]:
    """``"low_haze_rain"`` or ``["haze", "low-light"]`` -> base degradation names, e.g. ``("low-light", "haze")``."""
    tokens = name.split("_") if isinstance(name, str) else list(name)
    from_token = {token: base for base, token in _COMPOSITE_TOKENS.items()}
    bases = []
    for token in tokens:
        base = from_token.get(token, token)
        if base not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {token!r}; known: {sorted(DEGRADATIONS)} (or CDD-11 'low')")
        if base in bases:
            raise ValueError(f"degradation {base!r} repeated in {name!r}")
        bases.append(base)
    if not bases:
        raise ValueError("a composite needs at least one degradation")
    return tuple(bases)


def composite_name(names: Sequence[str]) -> str:
    """CDD-11 style name of a set of base degradations: ``{"haze", "low-light"}`` -> ``"low_haze"``."""
    bases = parse_composite(list(names))
    return "_".join(_COMPOSITE_TOKENS[base] for base in _COMPOSITE_TOKENS if base in bases)


def compose(
    image: np.ndarray,
    names: str | Sequence[str],
    rng: np.random.Generator,
    params: dict[str, dict] | None = None,
) -> Degraded:
    """Apply several degradations (e.g. ``"low_haze_rain"``) in physical order; returns the CDD-11 style name.

    ``params`` optionally fixes parameters per base degradation, e.g. ``{"haze": {"beta": 1.0}}``.
    """
    _check_image(image)
    bases = parse_composite(names)
    params = params or {}
    out = image
    for base in _SYNTHESIS_ORDER:
        if base in bases:
            out = DEGRADATIONS[base](out, rng, **params.get(base, {})).image
    return Degraded(out, composite_name(bases))


def synthesize(image: np.ndarray, name: str, rng: np.random.Generator, **params) -> Degraded:
    """Dispatch by name: a base degradation (``"noise"``, ``"rain"``, ...) or a composite (``"low_haze"``)."""
    if name in DEGRADATIONS:
        return DEGRADATIONS[name](image, rng, **params)
    return compose(image, name, rng, params=params or None)


def task_label(task_name: str, label_names: Sequence[str] = TASK_NAMES) -> int:
    """Integer label of ``task_name`` in ``label_names`` (default the 5-class order), with a clear error."""
    try:
        return list(label_names).index(task_name)
    except ValueError:
        raise ValueError(f"task {task_name!r} is not one of {tuple(label_names)}") from None
