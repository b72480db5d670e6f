"""Degradation synthesis: official noise formula and statistics, physics of each degradation, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from training import degradations as D


def _photo(height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 90 * np.sin(xx / (4 + c)) * np.cos(yy / (6 + c)) + 8 * rng.standard_normal((height, width))
                for c in range(3)]
    return np.clip(np.rint(np.stack(channels, -1)), 0, 255).astype(np.uint8)


ALL_NAMES = ["noise", "rain", "haze", "blur", "low-light", "snow", *D.CDD11_TYPES]


def test_label_spaces():
    assert D.TASK_NAMES == ("noise", "rain", "haze", "blur", "low-light")
    assert [D.task_label(n) for n in D.TASK_NAMES] == [0, 1, 2, 3, 4]
    assert D.task_label("low_haze_rain", D.CDD11_TYPES) == 9
    assert len(D.CDD11_TYPES) == 11
    with pytest.raises(ValueError, match="not one of"):
        D.task_label("snow")


@pytest.mark.parametrize("sigma", D.NOISE_SIGMAS)
def test_noise_std_on_flat_gray_within_2_percent(sigma):
    flat = np.full((256, 256, 3), 128, dtype=np.uint8)
    noisy, name = D.add_gaussian_noise(flat, sigma, np.random.default_rng(0))
    assert name == "noise" and noisy.dtype == np.uint8 and noisy.shape == flat.shape
    residual = noisy.astype(np.float64) - 128
    assert abs(residual.std() / sigma - 1) < 0.02
    # the uint8 cast truncates (official code), which lowers the mean by ~0.5 grey level
    assert -0.8 < residual.mean() < -0.2


def test_noise_is_exactly_the_official_formula():
    image = _photo()
    noisy = D.add_gaussian_noise(image, 25, np.random.default_rng(7)).image
    noise = np.random.default_rng(7).standard_normal(image.shape)
    np.testing.assert_array_equal(noisy, np.clip(image + noise * 25, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_degradation_shape_dtype_determinism(name):
    image = _photo()
    before = image.copy()
    first = D.synthesize(image, name, np.random.default_rng(3))
    again = D.synthesize(image, name, np.random.default_rng(3))
    other = D.synthesize(image, name, np.random.default_rng(4))
    np.testing.assert_array_equal(image, before)  # input untouched
    assert first.image.dtype == np.uint8 and first.image.shape == image.shape
    np.testing.assert_array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)
    mean_change = np.abs(first.image.astype(float) - image).mean()
    assert mean_change > 1.0, f"{name} barely changed the image ({mean_change:.2f})"
    expected_name = name if name in D.DEGRADATIONS or name in D.CDD11_TYPES else None
    assert first.task_name == expected_name


def test_haze_physics():
    image = _photo()
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(D.haze(image, rng, beta=0.0, airlight=0.9).image, image)
    opaque = D.haze(image, rng, beta=60.0, airlight=0.8, depth=np.ones(image.shape[:2])).image
    assert np.abs(opaque.astype(int) - 204).max() <= 1  # t -> 0: everything becomes the airlight
    depth = np.linspace(0, 1, image.shape[1])[None, :].repeat(image.shape[0], 0)
    hazy = D.haze(image, rng, beta=2.0, airlight=1.0, depth=depth).image.astype(float)
    # I = J t + A (1 - t) with a known depth, to rounding
    t = np.exp(-2.0 * depth)[:, :, None]
    np.testing.assert_allclose(hazy, np.rint((image / 255 * t + (1 - t)) * 255), atol=0.5)
    far, near = hazy[:, -10:], hazy[:, :10]
    assert far.mean() > near.mean() + 50 and far.std() < 0.5 * near.std()
    proxy = D.depth_proxy(image)
    assert proxy.shape == image.shape[:2] and 0 <= proxy.min() and proxy.max() <= 1
    with pytest.raises(ValueError, match="depth shape"):
        D.haze(image, rng, depth=np.ones((3, 3)))


def test_rain_and_snow_only_brighten():
    image = _photo()
    for fn in (D.rain_streaks, D.snow):
        out = fn(image, np.random.default_rng(1)).image.astype(int)
        assert (out >= image).all()
        assert (out > image + 20).mean() > 0.005  # visible streaks/flakes
    no_rain = D.rain_streaks(image, np.random.default_rng(1), density=0.0).image
    np.testing.assert_array_equal(no_rain, image)


def test_low_light_curve_and_darkening():
    image = _photo()
    out = D.low_light(image, np.random.default_rng(0), gamma=2.0, scale=0.5, noise_sigma=0.0).image
    np.testing.assert_array_equal(out, np.rint(0.5 * (image / 255.0) ** 2 * 255).astype(np.uint8))
    noisy = D.low_light(image, np.random.default_rng(0)).image
    assert noisy.mean() < 0.55 * image.mean()


def test_blur_kernels_and_smoothing():
    for length, angle in ((9, 0), (15, 37.5), (6, 90)):
        kernel = D.line_kernel(length, angle)
        assert kernel.shape[0] % 2 == 1 and abs(kernel.sum() - 1) < 1e-12
    horizontal = D.line_kernel(9, 0)
    assert np.count_nonzero(horizontal[4]) == 9 and np.count_nonzero(horizontal) == 9
    disk = D.disk_kernel(3.0)
    assert disk.shape == (7, 7) and abs(disk.sum() - 1) < 1e-12 and np.allclose(disk, disk.T)
    image = _photo()
    flat = np.full((32, 32, 3), 77, np.uint8)
    for fn in (D.motion_blur, D.defocus_blur, D.gaussian_blur):
        for seed in range(3):  # Gaussian: isotropic and anisotropic draws
            np.testing.assert_array_equal(fn(flat, np.random.default_rng(seed)).image, flat)
            blurred = fn(image, np.random.default_rng(seed)).image.astype(float)
            sharp_gradient = np.abs(np.diff(image.astype(float), axis=1)).mean()
            assert np.abs(np.diff(blurred, axis=1)).mean() < 0.7 * sharp_gradient


def test_gaussian_kernel_shape_orientation_and_normalization():
    from scipy import ndimage

    kernel = D.gaussian_kernel(2.0)
    assert kernel.shape == (17, 17) and abs(kernel.sum() - 1) < 1e-12  # +-4 std, scipy's truncation
    impulse = np.zeros(17)
    impulse[8] = 1
    scipy_1d = ndimage.gaussian_filter1d(impulse, 2.0, truncate=4.0)
    np.testing.assert_allclose(kernel, np.outer(scipy_1d, scipy_1d), atol=1e-15)
    wide = D.gaussian_kernel(3.0, 0.7, 0.0)  # elongated along x
    assert abs(wide.sum() - 1) < 1e-12
    coords = np.arange(wide.shape[0]) - wide.shape[0] // 2
    var_x, var_y = (wide.sum(0) * coords**2).sum(), (wide.sum(1) * coords**2).sum()
    assert var_x == pytest.approx(9.0, rel=0.02) and var_y == pytest.approx(0.49, rel=0.1)
    np.testing.assert_allclose(D.gaussian_kernel(3.0, 0.7, 90.0), wide.T, atol=1e-15)
    diagonal = D.gaussian_kernel(3.0, 0.7, 45.0)  # along the anti-diagonal of the array (y up)
    assert diagonal[0, -1] > diagonal[0, 0]
    np.testing.assert_allclose(diagonal, np.fliplr(D.gaussian_kernel(3.0, 0.7, 135.0)), atol=1e-15)
    with pytest.raises(ValueError, match="> 0"):
        D.gaussian_kernel(0.0)


def test_gaussian_sigma_2_matches_pillow_gaussian_blur_radius_2():
    """Pillow's GaussianBlur(radius=2) (a std-2 Gaussian approximated by box passes) is the blur users try."""
    from PIL import Image, ImageFilter

    assert D.GAUSSIAN_SIGMA_RANGE[0] < 2.0 < D.GAUSSIAN_SIGMA_RANGE[1]
    image = _photo(96, 112)
    ours = D.gaussian_blur(image, np.random.default_rng(0), sigma=2.0).image.astype(float)
    pillow = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2))).astype(float)
    inner = (slice(12, -12), slice(12, -12))
    psnr = 10 * np.log10(255**2 / np.mean((ours[inner] - pillow[inner]) ** 2))
    assert psnr > 40
    # no parameter left to draw: the generator is not used
    np.testing.assert_array_equal(D.blur(image, np.random.default_rng(5), family="gaussian", sigma=2.0).image,
                                  D.gaussian_blur(image, None, sigma=2.0).image)


def test_blur_draws_every_family(monkeypatch):
    image = _photo(24, 24)
    calls = []

    def spy(family, fn):
        def wrapped(img, rng, **params):
            calls.append(family)
            return fn(img, rng, **params)
        return wrapped

    for family, fn in list(D.BLUR_FAMILIES.items()):
        monkeypatch.setitem(D.BLUR_FAMILIES, family, spy(family, fn))
    for seed in range(60):
        assert D.blur(image, np.random.default_rng(seed)).task_name == "blur"
    counts = {family: calls.count(family) for family in ("gaussian", "defocus", "motion")}
    assert all(10 <= n <= 30 for n in counts.values()), counts
    with pytest.raises(ValueError, match="unknown blur family"):
        D.blur(image, np.random.default_rng(0), family="shake")
    with pytest.raises(ValueError, match="explicit family"):
        D.blur(image, np.random.default_rng(0), sigma=2.0)
    same = D.synthesize(image, "blur", np.random.default_rng(1), family="motion", length=9, angle=0.0)
    np.testing.assert_array_equal(same.image, D.motion_blur(image, None, length=9, angle=0.0).image)


def test_composites_use_cdd11_names():
    image = _photo()
    assert D.composite_name(["rain", "low-light", "haze"]) == "low_haze_rain"
    assert D.parse_composite("low_haze_snow") == ("low-light", "haze", "snow")
    out = D.compose(image, ["haze", "low-light"], np.random.default_rng(0))
    assert out.task_name == "low_haze"
    # same seed, same parameters: a composite is its parts applied in physical order
    fixed = {"haze": {"beta": 1.0, "airlight": 0.9}, "low-light": {"gamma": 2.0, "scale": 0.5, "noise_sigma": 0.0}}
    composite = D.compose(image, "low_haze", np.random.default_rng(0), params=fixed).image
    manual = D.low_light(D.haze(image, None, **fixed["haze"]).image, None, **fixed["low-light"]).image
    np.testing.assert_array_equal(composite, manual)
    for bad in ("fog", "rain_rain", ""):
        with pytest.raises(ValueError):
            D.parse_composite(bad)


def test_augmentation_matches_official_modes():
    image = np.arange(4 * 5 * 1, dtype=np.uint8).reshape(4, 5, 1)
    official = {
        0: image,
        1: np.flipud(image),
        2: np.rot90(image),
        3: np.flipud(np.rot90(image)),
        4: np.rot90(image, k=2),
        5: np.flipud(np.rot90(image, k=2)),
        6: np.rot90(image, k=3),
        7: np.flipud(np.rot90(image, k=3)),
    }
    outputs = []
    for mode, expected in official.items():
        out = D.augment(image, mode)
        np.testing.assert_array_equal(out, expected)
        assert out.flags.c_contiguous
        outputs.append(out.tobytes() + bytes(out.shape))
    assert len(set(outputs)) == 8  # the 8 symmetries of the square are distinct
    draws = [D.random_augment_mode(np.random.default_rng(i)) for i in range(400)]
    assert set(draws) == set(D.AUGMENT_MODES) and 0 not in draws
    with pytest.raises(ValueError):
        D.augment(image, 8)


def test_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        D.add_gaussian_noise(np.zeros((8, 8, 3), np.float32), 15, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        D.haze(np.zeros((8, 8), np.uint8), np.random.default_rng(0))


@pytest.mark.parametrize("size", [(1, 2), (2, 3), (2, 2), (5, 3)])
def test_blurs_leave_a_flat_image_flat_whatever_its_size(size):
    """Blurring a flat image changes nothing. scipy reflects the border once, so a kernel longer than a side used
    to read outside the image (a 2x3 image under a 41-px motion kernel came out black, with NaN cast warnings)."""
    flat = np.full((*size, 3), 200, np.uint8)
    rng = np.random.default_rng(0)
    for degraded in (D.motion_blur(flat, rng, length=41, angle=30.0), D.motion_blur(flat, rng, length=21),
                     D.gaussian_blur(flat, rng, sigma=3.5, sigma_y=1.0, angle=30.0),
                     D.gaussian_blur(flat, rng, sigma=3.5), D.defocus_blur(flat, rng, radius=4.0)):
        np.testing.assert_array_equal(degraded.image, flat)


def test_default_parameters_stay_in_their_documented_ranges():
    """The defaults the training data is drawn from: the top of a photo hazes most, rain falls near-vertically,
    low light is scale 0.3..0.8 times x**gamma with gamma 1.5..3 (no test fixed a parameter there otherwise)."""
    flat = np.full((48, 40, 3), 128, np.uint8)
    proxy = D.depth_proxy(flat)
    assert proxy[0].min() > proxy[-1].max()  # the top reads as far away
    rain = D.rain_streaks(np.zeros((96, 96, 3), np.uint8), np.random.default_rng(0)).image[:, :, 0].astype(float)
    along, across = np.abs(np.diff(rain, axis=0)).mean(), np.abs(np.diff(rain, axis=1)).mean()
    assert along < 0.5 * across  # streaks change little down their length
    # white (x = 1) comes out as the scale itself; mid-gray with scale 1 as 0.5**gamma
    white, half = np.full((4, 4, 3), 255, np.uint8), np.full((4, 4, 3), 255, np.uint8) // 2 + 1  # 128 = 0.502
    scales = [D.low_light(white, np.random.default_rng(seed), noise_sigma=0.0).image.mean() / 255
              for seed in range(200)]
    gammas = [np.log(D.low_light(half, np.random.default_rng(seed), scale=1.0, noise_sigma=0.0).image.mean() / 255)
              / np.log(128 / 255) for seed in range(200)]
    assert 0.3 - 0.003 <= min(scales) < 0.33 and 0.77 < max(scales) <= 0.8 + 0.003
    assert 1.5 - 0.02 <= min(gammas) < 1.6 and 2.9 < max(gammas) <= 3.0 + 0.02
