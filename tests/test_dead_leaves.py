"""Dead-leaves generator: power-law radii, determinism per seed, full coverage, natural-image statistics."""

from __future__ import annotations

import numpy as np
import pytest

from training.dead_leaves import dead_leaves, sample_radii


def test_radii_follow_the_power_law():
    rng = np.random.default_rng(0)
    r_min, r_max, alpha = 2.0, 100.0, 3.0
    radii = np.sort(sample_radii(rng, 200_000, r_min, r_max, alpha))
    assert radii.min() >= r_min and radii.max() <= r_max
    # Kolmogorov-Smirnov distance to the analytic CDF of p(r) ~ r**-3 on [r_min, r_max]
    cdf = (r_min**-2 - radii**-2) / (r_min**-2 - r_max**-2)
    empirical = np.arange(1, len(radii) + 1) / len(radii)
    assert np.abs(cdf - empirical).max() < 0.005
    # scale invariance of alpha=3: P(r > 2 r_min) is about (1/2)**2
    assert np.mean(radii > 2 * r_min) == pytest.approx(0.25, abs=0.01)
    log_uniform = sample_radii(rng, 50_000, 1.0, 100.0, 1.0)  # alpha = 1: uniform in log r
    assert np.mean(log_uniform < 10.0) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="r_min"):
        sample_radii(rng, 3, 5.0, 2.0, 3.0)


def test_dead_leaves_is_deterministic_per_seed():
    first = dead_leaves((48, 64), np.random.default_rng(3))
    assert first.dtype == np.uint8 and first.shape == (48, 64, 3)
    np.testing.assert_array_equal(first, dead_leaves((48, 64), np.random.default_rng(3)))
    assert not np.array_equal(first, dead_leaves((48, 64), np.random.default_rng(4)))
    assert dead_leaves(32, np.random.default_rng(0)).shape == (32, 32, 3)


def test_flat_dead_leaves_are_opaque_disks_covering_everything():
    rng = np.random.default_rng(1)
    image = dead_leaves(64, rng, texture=0.0, blur_sigma=0.0, r_min=3.0)
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    # piecewise constant: a few dozen to a few hundred disk colours, not one colour per pixel
    assert 10 < len(colours) < 64 * 64 / 8
    # front-to-back painting leaves no hole: the canvas starts black, and no large black area remains
    black = np.all(image == 0, axis=-1).mean()
    assert black < 0.05


def _spectrum_slope(gray: np.ndarray, low: int, high: int) -> float:
    """Log-log slope of the radially averaged power spectrum between ``low`` and ``high`` cycles per image."""
    size = gray.shape[0]
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))) ** 2
    yy, xx = np.indices(power.shape) - size // 2
    radius = np.hypot(yy, xx).astype(int)
    radial = np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())
    freqs = np.arange(low, high)
    return float(np.polyfit(np.log(freqs), np.log(radial[freqs]), 1)[0])


def test_dead_leaves_statistics_are_natural():
    images = [dead_leaves(128, np.random.default_rng(seed)).astype(np.float64) for seed in range(4)]
    for image in images:
        gray = image.mean(axis=-1)
        # uses the whole range with plenty of contrast, like a photo
        assert 60 < image.mean() < 200 and image.std() > 40
        assert np.percentile(gray, 5) < 80 and np.percentile(gray, 95) > 170
        # power falls like 1/f**2 at low and mid frequencies (photos of the corpus: -1.4 .. -3.1)
        assert -3.2 < _spectrum_slope(gray, 2, 16) < -1.2
        # colourful but not every pixel saturated
        saturation = image.max(axis=-1) - image.min(axis=-1)
        assert 10 < saturation.mean() < 150
    assert np.std([image.mean() for image in images]) > 1  # seeds give different images
    # without the anti-aliasing blur the 1/f**2 law holds up to high frequencies (theory: slope -2 for alpha 3)
    for seed in range(3):
        sharp = dead_leaves(128, np.random.default_rng(seed), blur_sigma=0.0).astype(np.float64).mean(axis=-1)
        assert -2.8 < _spectrum_slope(sharp, 4, 32) < -1.6


@pytest.mark.parametrize("size", [1, 3, 4, (2, 3), np.int64(6)])
def test_images_of_a_few_pixels_are_made(size):
    """The default smallest radius (2 px) no longer meets the default largest (half the long side) below 5 px."""
    image = dead_leaves(size, np.random.default_rng(0), blur_sigma=[0.5, 1.0])
    height, width = (int(size), int(size)) if np.ndim(size) == 0 else size
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
