"""Seeded procedural "dead leaves" images: clean training images with natural-image statistics.

A dead-leaves image is a stack of opaque disks dropped at uniform random places, each hiding what lies below it
(Matheron 1968; Lee, Mumford & Huang 2001). With disk radii drawn from a power law ``p(r) ~ r**-alpha`` on
``[r_min, r_max]`` and ``alpha`` near 3 the image is close to scale invariant: its power spectrum falls like
``1 / f**2`` and it has occlusion edges at every scale, like natural photos. Denoisers and deblurrers trained on
such images come close to those trained on photos (Achddou, Gousseau & Ladjal, "Synthetic images as a
regularity prior for image restoration neural networks", SSVM 2021), which makes them a free, licence-clean
complement to a small photo corpus.

The disks are painted front to back: each new disk only fills pixels that are still uncovered, which is the same
image as dropping the leaves back to front but stops as soon as the canvas is full. Once fewer than
:data:`_SEED_UNCOVERED_BELOW` of the pixels remain uncovered, disk centres are drawn among the uncovered pixels so
that the last specks fill quickly (every such disk covers at least its centre pixel, so the loop always ends).

Everything is a pure function of its arguments and of a ``numpy.random.Generator``: the same seed gives the same
image, bit for bit.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


_BATCH = 256
"""Disks drawn from the generator at a time (the draw order, hence the image, does not depend on timing)."""

_SEED_UNCOVERED_BELOW = 0.02
"""Uncovered fraction below which new disks are centred on uncovered pixels."""


def sample_radii(rng: np.random.Generator, count: int, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """``count`` radii with density ``p(r) ~ r**-alpha`` on ``[r_min, r_max]`` (inverse-CDF sampling)."""
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got r_min={r_min}, r_max={r_max}")
    u = rng.random(count)
    if abs(alpha - 1.0) < 1e-9:
        return r_min * (r_max / r_min) ** u
    power = 1.0 - alpha
    low, high = r_min**power, r_max**power
    return (low + u * (high - low)) ** (1.0 / power)


def _fractal_texture(shape: tuple[int, int], rng: np.random.Generator, exponent: float = 1.5) -> np.ndarray:
    """Zero-mean, unit-std noise whose amplitude spectrum falls like ``1 / f**exponent`` (float32)."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    radius[0, 0] = 1.0
    spectrum = np.fft.rfft2(white) / radius**exponent
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=shape)
    return (field / max(field.std(), 1e-12)).astype(np.float32)


def _random_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 3)`` colours: luminance uniform in [0, 1], random hue, saturation uniform from grey to full."""
    luminance, saturation = rng.random((2, count, 1))
    chroma = rng.random((count, 3))
    return np.clip(luminance + saturation * (chroma - chroma.mean(axis=1, keepdims=True)), 0.0, 1.0)


def dead_leaves(
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    r_min: float = 2.0,
    r_max: float | None = None,
    alpha: float = 3.0,
    texture: float = 0.2,
    blur_sigma: float | tuple[float, float] = (0.5, 1.2),
) -> np.ndarray:
    """A dead-leaves image as a uint8 ``(H, W, 3)`` RGB array.

    Args:
        size: ``H`` (square) or ``(H, W)`` in pixels.
        rng: the only source of randomness.
        r_min: smallest disk radius in pixels (default 2).
        r_max: largest disk radius (default half the long side).
        alpha: power-law exponent of the radius density; 3 is the scale-invariant value of natural images.
        texture: largest amplitude (on the [0, 1] scale, per unit std) of the grey ``1/f`` texture added inside
            each disk; every disk draws its own amplitude uniformly in ``[0, texture]``. 0 gives flat disks.
        blur_sigma: std of the final Gaussian blur in pixels, or a ``(low, high)`` range drawn per image. A
            little blur (the default 0.5..1.2) anti-aliases the disk edges like a lens would; 0 keeps them hard.
    """
    height, width = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if r_max is None:
        # half the long side; on images of a few pixels, above the smallest radius all the same
        r_max = max(max(height, width) / 2.0, 2.0 * r_min)
    if not np.isscalar(blur_sigma):
        blur_sigma = float(rng.uniform(*blur_sigma))
    if texture < 0 or blur_sigma < 0:
        raise ValueError("texture and blur_sigma must be >= 0")
    field = _fractal_texture((2 * height, 2 * width), rng) if texture > 0 else None

    canvas = np.zeros((height, width, 3), dtype=np.float32)
    uncovered = np.ones((height, width), dtype=bool)
    remaining = height * width
    while remaining > 0:
        radii = sample_radii(rng, _BATCH, r_min, r_max, alpha)
        if remaining < _SEED_UNCOVERED_BELOW * height * width:
            picks = rng.choice(np.flatnonzero(uncovered), _BATCH)
            centres_y, centres_x = (picks // width).astype(np.float64), (picks % width).astype(np.float64)
        else:
            centres_y, centres_x = rng.uniform(0, height, _BATCH), rng.uniform(0, width, _BATCH)
        colours = _random_colours(rng, _BATCH)
        amplitudes = rng.uniform(0.0, texture, _BATCH) if field is not None else None
        offsets = rng.integers(0, [height, width], size=(_BATCH, 2)) if field is not None else None
        for i in range(_BATCH):
            radius, cy, cx = radii[i], centres_y[i], centres_x[i]
            y0, y1 = max(0, int(np.floor(cy - radius))), min(height, int(np.ceil(cy + radius)) + 1)
            x0, x1 = max(0, int(np.floor(cx - radius))), min(width, int(np.ceil(cx + radius)) + 1)
            window = uncovered[y0:y1, x0:x1]
            if not window.any():  # also skips empty windows (disks entirely outside the canvas)
                continue
            dy = np.arange(y0, y1) - cy
            dx = np.arange(x0, x1) - cx
            new = (dy[:, None] ** 2 + dx[None, :] ** 2 <= radius**2) & window
            painted = int(np.count_nonzero(new))
            if not painted:
                continue
            if field is None:
                canvas[y0:y1, x0:x1][new] = colours[i]
            else:
                oy, ox = offsets[i]
                patch = field[oy + y0 : oy + y1, ox + x0 : ox + x1][new]
                canvas[y0:y1, x0:x1][new] = colours[i] + amplitudes[i] * patch[:, None]
            uncovered[y0:y1, x0:x1][new] = False
            remaining -= painted
            if remaining == 0:
                break
    if blur_sigma > 0:
        canvas = ndimage.gaussian_filter(canvas, sigma=(blur_sigma, blur_sigma, 0), mode="reflect")
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
