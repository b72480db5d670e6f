"""RestorationImageProcessor: exact round trips, modes, EXIF, 16-bit, alpha, padding, save/load, bad inputs."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling.image_processing_restoration import RestorationImageProcessor, RestorationInputError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def processor() -> RestorationImageProcessor:
    return RestorationImageProcessor()


def identity_round_trip(processor, image, output_type="np"):
    """Preprocess, pass pixel_values through unchanged (an identity 'model'), postprocess."""
    features = processor(image, return_tensors="pt")
    pixel_values = features["pixel_values"]
    assert pixel_values.dtype == torch.float32 and pixel_values.ndim == 4 and pixel_values.shape[1] == 3
    assert 0.0 <= pixel_values.min() and pixel_values.max() <= 1.0
    return processor.postprocess(pixel_values, features["metadata"], output_type=output_type)[0], features


def test_uint8_rgb_round_trip_is_exact(processor):
    image = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    out, features = identity_round_trip(processor, image)
    assert features["metadata"][0]["bit_depth"] == 8
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image)
    pil_out, _ = identity_round_trip(processor, Image.fromarray(image), output_type="pil")
    assert pil_out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil_out), image)


def test_uint16_rgb_round_trip_is_exact(processor):
    image = np.random.default_rng(1).integers(0, 65536, (9, 14, 3), dtype=np.uint16)
    out, features = identity_round_trip(processor, image)
    assert features["metadata"][0]["bit_depth"] == 16
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)


def test_uint16_rgba_keeps_16_bit_alpha(processor):
    image = np.random.default_rng(2).integers(0, 65536, (6, 7, 4), dtype=np.uint16)
    out, _ = identity_round_trip(processor, image)
    assert out.dtype == np.uint16 and out.shape == (6, 7, 4)
    np.testing.assert_array_equal(out, image)


def test_float_input_gives_float_output(processor):
    image = np.random.default_rng(3).random((8, 5, 3)).astype(np.float64)
    out, features = identity_round_trip(processor, image)
    assert out.dtype == np.float32 and features["metadata"][0]["bit_depth"] == 32
    np.testing.assert_allclose(out, image, atol=1e-7)


def test_rgba_alpha_is_kept_aside_and_reattached(processor):
    rng = np.random.default_rng(4)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    image = Image.fromarray(rgba)
    features = processor(image, return_tensors="pt")
    np.testing.assert_array_equal(features["metadata"][0]["alpha"] * 255, rgba[..., 3].astype(np.float32))
    # A "model" that inverts the colours must not touch alpha.
    out = processor.postprocess(1.0 - features["pixel_values"], features["metadata"])[0]
    assert out.mode == "RGBA"
    result = np.asarray(out)
    np.testing.assert_array_equal(result[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(result[..., :3], 255 - rgba[..., :3])


def test_gray_and_gray_alpha_come_back_as_rgb(processor):
    gray = np.random.default_rng(5).integers(0, 256, (7, 9), dtype=np.uint8)
    out, features = identity_round_trip(processor, Image.fromarray(gray), output_type="pil")
    assert features["metadata"][0]["original_mode"] == "L"
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.repeat(gray[..., None], 3, axis=-1))

    alpha = np.random.default_rng(6).integers(0, 256, (7, 9), dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    out, _ = identity_round_trip(processor, la, output_type="pil")
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3], alpha)
    np.testing.assert_array_equal(np.asarray(out)[..., 0], gray)

    out, _ = identity_round_trip(processor, gray)  # numpy HW
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8


def test_palette_images(processor):
    rgb = np.random.default_rng(7).integers(0, 256, (11, 13, 3), dtype=np.uint8)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    assert palette_image.mode == "P"
    out, _ = identity_round_trip(processor, palette_image, output_type="pil")
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(palette_image.convert("RGB")))

    palette_image.info["transparency"] = 0  # palette entry 0 transparent -> RGBA
    out, _ = identity_round_trip(processor, palette_image, output_type="pil")
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(palette_image.convert("RGBA")))


def test_16_bit_png_file_round_trips_through_png(processor, tmp_path):
    gray16 = (np.arange(15 * 17, dtype=np.uint32).reshape(15, 17) * 251 % 65536).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(path)
    out, features = identity_round_trip(processor, str(path), output_type="pil")
    meta = features["metadata"][0]
    assert meta["bit_depth"] == 16 and meta["input_type"] == "path" and meta["source"] == str(path)
    assert out.mode == "I;16"
    saved = tmp_path / "out16.png"
    out.save(saved)
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), gray16)
    # As numpy, 16-bit gray comes back as uint16 RGB.
    as_np, _ = identity_round_trip(processor, path, output_type="np")
    assert as_np.dtype == np.uint16 and as_np.shape == (15, 17, 3)
    np.testing.assert_array_equal(as_np[..., 1], gray16)


def _orientation_test_image() -> Image.Image:
    """20 wide x 10 high: left half red, right half blue (big blocks survive JPEG)."""
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :10] = (255, 0, 0)
    array[:, 10:] = (0, 0, 255)
    return Image.fromarray(array)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(processor, tmp_path, suffix):
    image = _orientation_test_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the displayed image is 10 wide x 20 high
    path = tmp_path / f"rotated{suffix}"
    image.save(path, exif=exif.tobytes())
    out, features = identity_round_trip(processor, path, output_type="np")
    assert features["metadata"][0]["original_size"] == (20, 10)
    assert out.shape == (20, 10, 3)
    # After a clockwise rotation the left (red) half is on top, the blue half at the bottom.
    top, bottom = out[:8].astype(int).mean((0, 1)), out[12:].astype(int).mean((0, 1))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_torch_tensor_input(processor):
    tensor = torch.rand(3, 6, 5)
    features = processor(tensor, return_tensors="pt")
    torch.testing.assert_close(features["pixel_values"][0], tensor)
    out = processor.postprocess(features["pixel_values"], features["metadata"], output_type="pt")[0]
    torch.testing.assert_close(out, tensor)


def test_mixed_sizes_without_tensors(processor):
    images = [np.zeros((5, 6, 3), np.uint8), np.zeros((7, 3, 3), np.uint8)]
    features = processor(images)
    assert [a.shape for a in features["pixel_values"]] == [(3, 5, 6), (3, 7, 3)]
    assert [m["original_size"] for m in features["metadata"]] == [(5, 6), (7, 3)]


def test_padding_is_optional_and_cropped_back(processor):
    image = np.random.default_rng(8).integers(0, 256, (17, 33, 3), dtype=np.uint8)
    assert processor(image)["pixel_values"][0].shape == (3, 17, 33)  # no padding by default
    features = processor(image, do_pad=True, size_divisor=8, return_tensors="pt")
    padded = features["pixel_values"]
    assert padded.shape == (1, 3, 24, 40)
    # Reflect padding: row 17 mirrors row 15.
    torch.testing.assert_close(padded[0, :, 17], padded[0, :, 15])
    out = processor.postprocess(padded, features["metadata"], output_type="np")[0]
    np.testing.assert_array_equal(out, image)
    # Already divisible: unchanged; 1x1 still pads (replicate fallback, as the models).
    assert processor(np.zeros((16, 8, 3), np.uint8), do_pad=True)["pixel_values"][0].shape == (3, 16, 8)
    assert processor(np.zeros((1, 1, 3), np.uint8), do_pad=True)["pixel_values"][0].shape == (3, 8, 8)


def test_pre_padded_tiny_image_restores_as_restore_does(processor):
    """A side not longer than its pad cannot be reflected: the processor falls back to the models' own replicate
    padding, so processor(do_pad=True) + model gives restore()'s output (symmetric padding moved it by 0.03)."""
    from conftest import tiny_model

    from modeling.inference import restore

    model = tiny_model("restormer")
    image = np.random.default_rng(3).random((4, 5, 3), dtype=np.float32)
    features = processor(image, do_pad=True, return_tensors="pt")
    np.testing.assert_array_equal(features["pixel_values"][0, :, 4:, :5].numpy(),
                                  np.broadcast_to(features["pixel_values"][0, :, 3:4, :5].numpy(), (3, 4, 5)))
    with torch.no_grad():
        restored = model(pixel_values=features["pixel_values"]).reconstruction
    pre_padded = processor.postprocess(restored, features["metadata"], output_type="np")[0]
    np.testing.assert_allclose(pre_padded, restore(image, model, tile=0, dtype="fp32"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "constant"])
def test_the_processor_saved_with_a_model_pads_as_the_model(tmp_path, pad_mode):
    """do_pad always reflect-padded, so for a model configured to replicate- or zero-pad, an image pre-padded by the
    processor saved with it restored 0.16-0.18 away from restore(). The saved processor now carries the model's
    pad_mode (and multiple), and its padding through the model, cropped back, is restore()'s output."""
    from conftest import tiny_model

    from modeling import ImageRestorationPipeline, save_restoration_folder
    from modeling.inference import load_processor, restore

    model = tiny_model("restormer", pad_mode=pad_mode)
    save_restoration_folder(model, tmp_path, with_code=False)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["pad_mode"] == pad_mode
    saved = RestorationImageProcessor.from_pretrained(tmp_path)
    assert (saved.pad_mode, saved.size_divisor) == (pad_mode, model.config.size_multiple)
    # The processors built for a model without a saved one pad as it too: the pipeline's and restore()'s.
    assert ImageRestorationPipeline(model=model).image_processor.pad_mode == pad_mode
    assert load_processor(None, model=model).pad_mode == pad_mode
    rng = np.random.default_rng(5)
    for size in ((13, 21), (4, 5)):  # 4 x 5: too small to reflect, the fallback (replicate) as the model's
        image = rng.random((*size, 3), dtype=np.float32)
        features = saved(image, do_pad=True, return_tensors="pt")
        assert features["pixel_values"].shape[-2:] == ((16, 24) if size == (13, 21) else (8, 8))
        with torch.no_grad():
            restored = model(pixel_values=features["pixel_values"]).reconstruction
        pre_padded = saved.postprocess(restored, features["metadata"], output_type="np")[0]
        np.testing.assert_allclose(pre_padded, restore(image, model, tile=0, dtype="fp32"), atol=1e-6, rtol=0)


def test_pad_modes_pad_as_named_and_others_are_refused(processor):
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    padded = {mode: processor(image, do_pad=True, size_divisor=4, pad_mode=mode)["pixel_values"][0]
              for mode in ("reflect", "replicate", "constant")}
    np.testing.assert_array_equal(padded["constant"][:, 2:], 0)
    np.testing.assert_array_equal(padded["constant"][:, :, 3], 0)
    np.testing.assert_array_equal(padded["replicate"][:, 3], padded["replicate"][:, 1])  # the last row, repeated
    np.testing.assert_array_equal(padded["replicate"][:, :2, 3], padded["replicate"][:, :2, 2])
    # 2 rows padded by 2 cannot be reflected: replicate, as the models fall back.
    np.testing.assert_array_equal(padded["reflect"], padded["replicate"])
    assert RestorationImageProcessor(pad_mode="constant").pad_mode == "constant"
    with pytest.raises(ValueError, match="pad_mode must be 'reflect', 'replicate' or 'constant', got 'symmetric'"):
        RestorationImageProcessor(pad_mode="symmetric")
    with pytest.raises(ValueError, match="pad_mode must be 'reflect', 'replicate' or 'constant', got 'zeros'"):
        processor(image, do_pad=True, pad_mode="zeros")
    with pytest.raises(TypeError, match="did you mean 'pad_mode'"):
        RestorationImageProcessor(padmode="constant")


def test_postprocess_clamps(processor):
    features = processor(np.zeros((2, 2, 3), np.uint8), return_tensors="pt")
    out = processor.postprocess(torch.full((1, 3, 2, 2), 1.7), features["metadata"])[0]
    assert np.asarray(out).max() == 255


def test_tensor_output_is_clamped_and_keeps_alpha(processor):
    """output_type="pt" promises a CHW float32 tensor in [0, 1], with an RGBA input's alpha as its 4th channel."""
    alpha = np.array([[0, 85], [170, 255]], np.uint8)
    features = processor(np.dstack([np.zeros((2, 2, 3), np.uint8), alpha]), return_tensors="pt")
    overshoot = torch.tensor([-0.5, 0.25, 1.7]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = processor.postprocess(overshoot, features["metadata"], output_type="pt")[0]
    assert out.dtype == torch.float32 and out.shape == (4, 2, 2)
    torch.testing.assert_close(out[:3], torch.tensor([0.0, 0.25, 1.0]).view(3, 1, 1).expand(3, 2, 2))
    torch.testing.assert_close(out[3], torch.from_numpy(alpha / np.float32(255)))


def test_save_and_load_round_trip(tmp_path):
    processor = RestorationImageProcessor(do_pad=True, size_divisor=16)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "RestorationImageProcessor"
    assert saved["do_pad"] is True and saved["size_divisor"] == 16
    loaded = RestorationImageProcessor.from_pretrained(tmp_path)
    assert loaded.do_pad is True and loaded.size_divisor == 16
    assert loaded(np.zeros((17, 20, 3), np.uint8))["pixel_values"][0].shape == (3, 32, 32)


def test_settings_it_would_not_apply_are_refused(tmp_path, caplog):
    """transformers keeps any constructor kwarg as an attribute: RestorationImageProcessor(size_divsor=16) padded to
    8, do_pad="no" padded, do_resize/do_normalize were saved and never applied, and a call's do_normalize=True or
    size_divisor=0 (taken as the default) was ignored. Each raises now; a saved file's unknown key (a newer
    version's) is kept with a warning, as the model configs do."""
    image = np.zeros((13, 21, 3), np.uint8)
    with pytest.raises(TypeError, match="'size_divsor' \\(did you mean 'size_divisor'\\?\\)"):
        RestorationImageProcessor(do_pad=True, size_divsor=16)
    with pytest.raises(ValueError, match="do_pad must be True or False"):
        RestorationImageProcessor(do_pad="no")
    with pytest.raises(ValueError, match="size_divisor must be an integer >= 1, got 0"):
        RestorationImageProcessor(do_pad=True, size_divisor=0)
    with pytest.raises(ValueError, match="do_resize=True"):
        RestorationImageProcessor(do_resize=True, size={"height": 8, "width": 8})
    processor = RestorationImageProcessor()
    with pytest.raises(ValueError, match="do_normalize=True"):
        processor(image, do_normalize=True, image_mean=0.5, image_std=0.5)
    with pytest.raises(ValueError, match="size_divisor must be an integer >= 1, got 0"):
        processor(image, do_pad=True, size_divisor=0)
    # What does nothing is still accepted: False / None for the generic settings, the processor's own settings.
    assert processor(image, do_resize=False, do_normalize=None)["pixel_values"][0].shape == (3, 13, 21)
    assert processor(image, do_pad=True, size_divisor=16)["pixel_values"][0].shape == (3, 16, 32)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "RestorationImageProcessor", "do_pad": True, "size_divisor": 16, "newer_key": 1}))
    loaded = RestorationImageProcessor.from_pretrained(tmp_path)
    assert loaded.size_divisor == 16 and "newer_key" in caplog.text


@pytest.mark.parametrize("setting, value", [
    ("do_resize", True), ("size", {"height": 8, "width": 8}), ("resample", 2), ("do_center_crop", True),
    ("crop_size", {"height": 8, "width": 8}), ("do_rescale", True), ("rescale_factor", 1 / 255),
    ("do_normalize", True), ("image_mean", [0.5, 0.5, 0.5]), ("image_std", [0.5, 0.5, 0.5]),
    ("pad_size", {"height": 16, "width": 16}), ("data_format", "channels_last"),
    ("input_data_format", "channels_first"),
])
def test_each_generic_setting_it_does_not_apply_is_refused(setting, value):
    """Each of transformers' resize / crop / rescale / normalize / layout settings is one this processor would keep
    and silently not apply (every key is a known ImagesKwargs field, so the unknown-key check does not see it): each
    is refused at construction and per call, naming it."""
    image = np.zeros((13, 21, 3), np.uint8)
    with pytest.raises(ValueError, match=f"{setting}=.*would be ignored"):
        RestorationImageProcessor(**{setting: value})
    # A call's do_* switch comes with the values transformers' own argument check asks for beside it.
    companions = {"do_resize": {"size": {"height": 8, "width": 8}, "resample": 2},
                  "do_center_crop": {"crop_size": {"height": 8, "width": 8}}, "do_rescale": {"rescale_factor": 0.5},
                  "do_normalize": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}}.get(setting, {})
    with pytest.raises(ValueError, match=f"{setting}=.*would be ignored"):
        RestorationImageProcessor()(image, **{setting: value}, **companions)


@pytest.mark.parametrize("size_divisor", [16.0, True], ids=["float", "bool"])
def test_a_size_divisor_that_is_no_integer_is_refused(size_divisor):
    """A float divisor (16.0, e.g. from a hand-edited JSON) reached numpy's pad and failed there with "`pad_width`
    must be of integral type"; True would pad to a multiple of 1 (no padding). Both are refused by name."""
    image = np.zeros((13, 21, 3), np.uint8)
    with pytest.raises(ValueError, match=f"size_divisor must be an integer >= 1, got {size_divisor!r}"):
        RestorationImageProcessor(do_pad=True, size_divisor=size_divisor)
    with pytest.raises(ValueError, match=f"size_divisor must be an integer >= 1, got {size_divisor!r}"):
        RestorationImageProcessor()(image, do_pad=True, size_divisor=size_divisor)


def test_a_saved_processor_loads_without_an_unknown_settings_warning(tmp_path, caplog):
    """The keys transformers itself writes into preprocessor_config.json (image_processor_type, auto_map) are no
    settings: reading back a folder this version saved warns about nothing."""
    import logging

    RestorationImageProcessor.register_for_auto_class("AutoImageProcessor")  # so auto_map is written too
    RestorationImageProcessor(do_pad=True, size_divisor=16).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert {"image_processor_type", "auto_map"} <= set(saved)
    with caplog.at_level(logging.WARNING):
        loaded = RestorationImageProcessor.from_pretrained(tmp_path)
    assert (loaded.do_pad, loaded.size_divisor) == (True, 16)
    assert "unknown to this version" not in caplog.text, caplog.text


def test_auto_image_processor_from_bare_folder_with_remote_code(tmp_path):
    """A folder written with register_for_auto_class loads where the package is not importable."""
    folder = tmp_path / "bare"
    RestorationImageProcessor.register_for_auto_class("AutoImageProcessor")
    RestorationImageProcessor(do_pad=True, size_divisor=16).save_pretrained(folder)
    assert (folder / "image_processing_restoration.py").is_file()
    config = json.loads((folder / "preprocessor_config.json").read_text())
    assert config["auto_map"]["AutoImageProcessor"].endswith("RestorationImageProcessor")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.modules["modeling"] = None  # even if the package is installed, nothing may import it
        from transformers import AutoImageProcessor
        p = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        out = p(np.zeros((21, 30, 3), np.uint8))
        print(type(p).__module__, type(p).__name__, out["pixel_values"][0].shape)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "transformers_modules" in result.stdout and "RestorationImageProcessor (3, 32, 32)" in result.stdout


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: np.zeros((4, 4, 2), np.uint8), "channels"),
        (lambda: np.zeros((4, 4, 5), np.uint8), "channels"),
        (lambda: np.zeros((3, 8, 8), np.uint8), "channels-first"),
        (lambda: np.zeros((0, 5, 3), np.uint8), "empty"),
        (lambda: np.zeros((5, 0), np.float32), "empty"),
        (lambda: np.full((4, 4, 3), np.nan, np.float32), "non-finite"),
        (lambda: np.array([[[0.0, np.inf, 0.5]]], np.float32), "non-finite"),
        (lambda: torch.tensor([[[float("nan")]]]).expand(3, 2, 2), "non-finite"),
        (lambda: np.full((4, 4, 3), 200.0, np.float32), "[0, 1]"),
        (lambda: np.zeros((4, 4, 3), np.int64), "dtype"),
        (lambda: np.zeros((2, 4, 4, 3), np.uint8), "dimensions"),
        (lambda: {"not": "an image"}, "Unsupported input type"),
        (lambda: [], "No images"),
    ],
)
def test_bad_arrays_raise_clear_errors(processor, make, word):
    with pytest.raises(ValueError) as info:
        processor(make())
    assert isinstance(info.value, RestorationInputError)
    assert word in str(info.value)


def _write_bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif kind == "truncated":
        buffer = tmp_path / "full.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer)
        path = tmp_path / "truncated.png"
        path.write_bytes(buffer.read_bytes()[: buffer.stat().st_size // 2])
    elif kind == "not-image":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
    elif kind == "missing":
        path = tmp_path / "missing.png"
    else:  # directory
        path = tmp_path / "folder.png"
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, word",
    [("empty", "empty"), ("truncated", "truncated"), ("not-image", "not an image"), ("missing", "not found"),
     ("directory", "directory")],
)
def test_bad_files_raise_clear_errors_naming_the_file(processor, tmp_path, kind, word):
    path = _write_bad_file(tmp_path, kind)
    with pytest.raises(RestorationInputError) as info:
        processor([str(path)])
    assert word in str(info.value)
    assert path.name in str(info.value)


# ------------------------------------------------------------------------------------- 16-bit colour PNG files
def _write_png16(path: Path, array: np.ndarray, exif_orientation: int = 0) -> None:
    """Write uint16 (H, W, C) with pypng (Pillow cannot), optionally with an eXIf chunk before the image data."""
    import io

    import png

    height, width, channels = array.shape
    writer = png.Writer(width, height, greyscale=channels in (1, 2), alpha=channels in (2, 4), bitdepth=16)
    buffer = io.BytesIO()
    writer.write(buffer, array.reshape(height, -1))
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        tiff = exif.tobytes()
        tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
        chunks.insert(1, (b"eXIf", tiff))
    with open(path, "wb") as handle:
        png.write_chunks(handle, chunks)


def _read_png16(path: Path) -> tuple[np.ndarray, dict]:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).read()
    return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, -1), info


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_png_files_are_read_and_written_at_16_bits(processor, tmp_path, channels):
    """Pillow would decode these to 8 bits; the loader keeps all 16 and write_png writes them back losslessly."""
    from modeling.image_processing_restoration import load_image_file, write_png
    from modeling.inference import default_output_type

    image = np.random.default_rng(9).integers(0, 65536, (11, 13, channels), dtype=np.uint16)
    path = tmp_path / "colour16.png"
    _write_png16(path, image)
    assert np.asarray(Image.open(path).convert("RGB")).dtype == np.uint8  # what Pillow alone gives
    loaded = load_image_file(path)
    assert loaded.dtype == np.uint16 and loaded.shape == image.shape
    np.testing.assert_array_equal(loaded, image)

    out, features = identity_round_trip(processor, str(path))
    meta = features["metadata"][0]
    assert meta["bit_depth"] == 16 and meta["input_type"] == "path"
    assert meta["original_mode"] == ("PNG-RGBA;16" if channels == 4 else "PNG-RGB;16")
    assert default_output_type(meta) == "np"  # PIL has no 16-bit colour mode
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)

    saved = tmp_path / "saved.png"
    write_png(out, saved)
    written, info = _read_png16(saved)
    assert info["bitdepth"] == 16 and info["planes"] == channels and not info["greyscale"]
    np.testing.assert_array_equal(written, image)


def test_16_bit_gray_alpha_png_becomes_16_bit_rgba(processor, tmp_path):
    gray_alpha = np.random.default_rng(10).integers(0, 65536, (5, 6, 2), dtype=np.uint16)
    path = tmp_path / "la16.png"
    _write_png16(path, gray_alpha)
    out, _ = identity_round_trip(processor, path)
    assert out.dtype == np.uint16 and out.shape == (5, 6, 4)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray_alpha[..., 0])
    np.testing.assert_array_equal(out[..., 3], gray_alpha[..., 1])


def test_exif_orientation_of_16_bit_png_matches_pillow(tmp_path):
    """The array transforms for all 8 EXIF orientations agree with ImageOps.exif_transpose, and a 16-bit PNG's
    eXIf chunk is applied."""
    from PIL import ImageOps

    from modeling.image_processing_restoration import _apply_exif_orientation, load_image_file

    rgb = np.random.default_rng(11).integers(0, 256, (4, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        image = Image.fromarray(rgb)
        exif = image.getexif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.png"
        image.save(path, exif=exif.tobytes())
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
        np.testing.assert_array_equal(_apply_exif_orientation(rgb, orientation), expected, err_msg=str(orientation))

    image16 = np.random.default_rng(12).integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    path = tmp_path / "rotated16.png"
    _write_png16(path, image16, exif_orientation=6)
    np.testing.assert_array_equal(load_image_file(path), np.rot90(image16, -1))  # 90 degrees clockwise


def test_16_bit_colour_png_without_pypng_falls_back_to_8_bits(processor, tmp_path, monkeypatch):
    image = np.random.default_rng(13).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    path = tmp_path / "colour16.png"
    _write_png16(path, image)
    monkeypatch.setitem(sys.modules, "png", None)  # "import png" raises ImportError
    out, features = identity_round_trip(processor, path)
    assert features["metadata"][0]["bit_depth"] == 8 and out.dtype == np.uint8
    np.testing.assert_array_equal(out, (image >> 8).astype(np.uint8))  # Pillow keeps the high bytes


def test_write_png_rejects_what_it_cannot_write_losslessly(tmp_path):
    from modeling.image_processing_restoration import write_png

    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint16), np.zeros((2, 4, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="write_png takes"):
            write_png(bad, tmp_path / "bad.png")


@pytest.mark.parametrize("size", [(20, 20), (12, 10)])
def test_decompression_bombs_raise_a_clear_input_error(processor, tmp_path, monkeypatch, size):
    """Above twice the limit Pillow raises DecompressionBombError, between the limit and twice it only warns:
    both become a RestorationInputError naming the file and the limit."""
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros(size + (3,), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(RestorationInputError) as info:
        processor([str(path)])
    message = str(info.value)
    assert "bomb.png" in message and f"has {size[0] * size[1]} pixels" in message
    assert "limit of 100 pixels" in message and "MAX_IMAGE_PIXELS" in message
    assert "\n" not in message


@pytest.mark.parametrize("bit_depth", [8, 16, 32])
def test_band_quantization_equals_whole_image_quantization(bit_depth):
    """Postprocessing quantizes a band of rows at a time (bounded temporaries on huge images): same values."""
    from modeling.image_processing_restoration import QUANTIZE_BAND_ROWS, _quantize_bands, quantize

    rng = np.random.default_rng(bit_depth)
    height = 2 * QUANTIZE_BAND_ROWS + 37  # bands that do not divide the height
    rgb = rng.uniform(-0.2, 1.2, (height, 19, 3)).astype(np.float32)  # out of range: clipped
    alpha = rng.uniform(0, 1, (height, 19)).astype(np.float32)
    whole = quantize(np.concatenate([np.clip(rgb, 0, 1), alpha[:, :, None]], axis=-1), bit_depth)
    banded = _quantize_bands(rgb, alpha, bit_depth)
    assert banded.dtype == whole.dtype and banded.shape == (height, 19, 4)
    np.testing.assert_array_equal(banded, whole)
    np.testing.assert_array_equal(_quantize_bands(rgb, None, bit_depth), whole[:, :, :3])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_transparency_colour_becomes_alpha(processor, tmp_path, mode):
    """A tRNS chunk (one transparent colour) on an 8-bit gray or RGB PNG: those pixels come back with alpha 0,
    every other pixel opaque, the colours unchanged."""
    rgb = np.random.default_rng(20).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    pixels = np.asarray(image)
    key = int(pixels[0, 0]) if mode == "L" else tuple(int(v) for v in pixels[0, 0])
    image.save(tmp_path / "keyed.png", transparency=key)
    out, features = identity_round_trip(processor, tmp_path / "keyed.png", output_type="pil")
    assert out.mode == "RGBA" and features["metadata"][0]["original_mode"] == mode
    matches = (pixels == key) if mode == "L" else (pixels == np.array(key)).all(axis=-1)
    np.testing.assert_array_equal(np.asarray(out)[..., 3], np.where(matches, 0, 255))
    gray_or_rgb = np.asarray(out.convert("RGB"))
    np.testing.assert_array_equal(gray_or_rgb, np.asarray(image.convert("RGB")))


def test_16_bit_gray_png_transparency_keeps_16_bits_and_gains_alpha(processor, tmp_path):
    gray = np.random.default_rng(21).integers(0, 65536, (5, 6), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "keyed16.png", transparency=int(gray[0, 0]))
    out, features = identity_round_trip(processor, tmp_path / "keyed16.png")
    assert features["metadata"][0]["bit_depth"] == 16 and out.dtype == np.uint16 and out.shape == (5, 6, 4)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 3], np.where(gray == gray[0, 0], 0, 65535))


def test_premultiplied_gray_alpha_is_divided_out(processor):
    """Mode "La" (gray premultiplied by alpha), which Pillow converts to no other mode: the gray is divided by
    alpha, as for "RGBa", and the image comes back RGBA."""
    gray = np.array([[200, 100, 50, 0]], dtype=np.uint8)
    alpha = np.array([[255, 128, 0, 64]], dtype=np.uint8)
    premultiplied = np.stack([(gray.astype(np.float64) * alpha / 255).round().astype(np.uint8), alpha], axis=-1)
    out, _ = identity_round_trip(processor, Image.fromarray(premultiplied, "La"), output_type="pil")
    assert out.mode == "RGBA"
    restored = np.asarray(out)
    np.testing.assert_array_equal(restored[..., 3], alpha)
    assert restored[0, 0, 0] == 200 and abs(int(restored[0, 1, 0]) - 100) <= 1
    assert restored[0, 2, 0] == 0  # alpha 0: no colour to recover


def test_bfloat16_tensor_is_read_as_float32(processor):
    tensor = torch.rand(3, 6, 5).bfloat16()
    features = processor(tensor, return_tensors="pt")
    torch.testing.assert_close(features["pixel_values"][0], tensor.float(), atol=0, rtol=0)


def _write_ppm16(path: Path, image: np.ndarray) -> None:
    height, width, _ = image.shape
    path.write_bytes(f"P6\n{width} {height}\n65535\n".encode() + image.astype(">u2").tobytes())


def test_16_bit_colour_tiff_and_ppm_warn_that_they_are_read_at_8_bits(processor, tmp_path, caplog):
    """Pillow decodes 16-bit colour TIFF and PPM files to 8 bits (it has no 16-bit colour mode): the loss is
    announced once per file, naming it; 8-bit files and 16-bit gray files (read at 16 bits) say nothing."""
    from modeling.image_processing_restoration import colour_bits_decoded_to_8

    image = np.random.default_rng(22).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    _write_ppm16(tmp_path / "colour16.ppm", image)
    Image.fromarray(image.astype(np.uint8)).save(tmp_path / "colour8.ppm")
    Image.fromarray(image[..., 0]).save(tmp_path / "gray16.tif")
    for name, bits in (("colour16.ppm", 16), ("colour8.ppm", None), ("gray16.tif", None)):
        with Image.open(tmp_path / name) as opened:
            assert colour_bits_decoded_to_8(opened) == bits, name
        caplog.clear()
        out, features = identity_round_trip(processor, tmp_path / name)
        warned = [r.getMessage() for r in caplog.records if "decodes to 8 bits" in r.getMessage()]
        assert warned == ([f"Input file '{tmp_path / name}' has 16-bit colour samples, which Pillow decodes to 8 "
                           "bits: it is restored and written at 8 bits (save it as a 16-bit PNG to keep the depth)."]
                          if bits else []), name
    assert features["metadata"][0]["bit_depth"] == 16  # the gray TIFF, at 16 bits


def test_one_bit_png_with_a_transparent_value_gets_alpha(processor, tmp_path):
    """A 1-bit gray PNG's tRNS value becomes an alpha channel, as it does at 2, 4 and 8 bits (the 1-bit branch used
    to convert to gray before the transparency was looked at)."""
    bits = np.random.default_rng(30).random((12, 20)) > 0.5
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png", transparency=0)
    with Image.open(tmp_path / "bits.png") as opened:
        assert opened.mode == "1" and opened.info["transparency"] == 0
    out, features = identity_round_trip(processor, tmp_path / "bits.png")
    assert features["metadata"][0]["alpha"] is not None and out.shape == (12, 20, 4)
    np.testing.assert_array_equal(out[..., 3] == 0, ~bits)
    np.testing.assert_array_equal(out[..., 0][bits], 255)


def test_big_endian_uint16_arrays_are_uint16(processor):
    """'>u2' arrays (a big-endian TIFF read through numpy) hold the same values as native uint16 ones."""
    image = np.random.default_rng(31).integers(0, 65536, (6, 9, 3)).astype(np.uint16)
    native, _ = identity_round_trip(processor, image)
    swapped, features = identity_round_trip(processor, image.astype(">u2"))
    assert features["metadata"][0]["bit_depth"] == 16
    np.testing.assert_array_equal(swapped, native)
    np.testing.assert_array_equal(native, image)


@pytest.mark.parametrize("header", [b"P6\n2x 3\n255\n", b"P5\n40"])
def test_a_broken_netpbm_header_is_refused_naming_the_file(processor, tmp_path, header):
    """Pillow raises ValueError for these headers, not OSError: they get the same clear error as other bad files."""
    path = tmp_path / "broken.ppm"
    path.write_bytes(header + bytes(18))
    with pytest.raises(RestorationInputError, match=r"Input file '.*broken\.ppm' could not be read"):
        processor(str(path))


def test_multi_frame_and_float_files_say_what_is_restored(tmp_path, caplog, recwarn):
    """Animated GIFs and multi-page TIFFs: the first frame is restored, with a warning naming the file, and the file
    is closed; 32-bit float TIFFs are restored and written at 8 bits, with a warning."""
    from modeling.image_processing_restoration import load_image_file

    rng = np.random.default_rng(32)
    frames = [Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    Image.fromarray(rng.random((10, 14)).astype(np.float32), "F").save(tmp_path / "float.tif")
    for name in ("anim.gif", "pages.tif"):
        caplog.clear()
        image = load_image_file(tmp_path / name)
        assert image.size == (14, 10) and getattr(image, "n_frames", 1) == 1
        assert [r.getMessage() for r in caplog.records] == [
            f"Input file '{tmp_path / name}' has 3 frames (pages); only the first one is restored."]
    np.testing.assert_array_equal(np.asarray(load_image_file(tmp_path / "pages.tif")), np.asarray(frames[0]))
    caplog.clear()
    assert load_image_file(tmp_path / "float.tif").mode == "F"
    assert "32-bit float samples: it is restored and written at 8 bits" in caplog.text
    import gc

    gc.collect()  # an unclosed file would warn now (other tests' leftovers may too: only ours count)
    ours = ("anim.gif", "pages.tif", "float.tif")
    assert not [w for w in recwarn
                if issubclass(w.category, ResourceWarning) and any(name in str(w.message) for name in ours)]
    if Path("/proc/self/fd").is_dir():  # and no descriptor of this process points at them
        open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
        assert not {str((tmp_path / name).resolve()) for name in ours} & open_files


def damaged_multi_frame_files(folder: Path) -> dict[str, Path]:
    """Two-frame GIF and TIFF files whose first frame is intact and whose second is damaged: the GIF ends right
    after the second frame's extension introducer ("!"), the second TIFF page has no ImageWidth tag."""
    import struct

    rng = np.random.default_rng(40)
    frames = [Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)) for _ in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    gif = buffer.getvalue()
    second_extension = gif.index(b"!\xf9", gif.index(b"!\xf9") + 1)  # each frame's graphic control extension
    buffer = io.BytesIO()
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:])
    tiff = bytearray(buffer.getvalue())
    first_ifd = struct.unpack_from("<I", tiff, 4)[0]
    second_ifd = struct.unpack_from("<I", tiff, first_ifd + 2 + 12 * struct.unpack_from("<H", tiff, first_ifd)[0])[0]
    for entry in range(struct.unpack_from("<H", tiff, second_ifd)[0]):
        if struct.unpack_from("<H", tiff, second_ifd + 2 + 12 * entry)[0] == 256:  # ImageWidth -> a private tag
            struct.pack_into("<H", tiff, second_ifd + 2 + 12 * entry, 0xC000)
    paths = {"gif": folder / "damaged.gif", "tiff": folder / "damaged.tif"}
    paths["gif"].write_bytes(gif[: second_extension + 1])
    paths["tiff"].write_bytes(bytes(tiff))
    return paths


@pytest.mark.parametrize("kind", ["gif", "tiff"])
def test_damaged_later_frames_raise_a_clear_input_error(tmp_path, kind):
    """Counting the frames of a GIF or TIFF parses every later frame's header, where Pillow fails on damage with
    IndexError or TypeError: that must be the usual RestorationInputError naming the file, which the training
    stream, batch restoration and the CLI report as a corrupt file."""
    from modeling.image_processing_restoration import load_image_file

    path = damaged_multi_frame_files(tmp_path)[kind]
    with pytest.raises(RestorationInputError, match=rf"Input file '.*{path.name}' is truncated or corrupt after its "
                                                    "first frame"):
        load_image_file(path)
    with pytest.raises(RestorationInputError, match=re.escape(path.name)):
        RestorationImageProcessor()(str(path))


def test_decoder_errors_of_any_type_raise_a_clear_input_error(tmp_path):
    """Pillow's decoders fail on damaged data with more than OSError / ValueError: a QOI file cut inside its last
    pixels raises IndexError from the decoder."""
    from modeling.image_processing_restoration import load_image_file

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(41).integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(buffer, "QOI")
    path = tmp_path / "cut.qoi"
    path.write_bytes(buffer.getvalue()[:-20])  # 8 bytes of end marker, then 12 bytes of pixel chunks gone
    with pytest.raises(RestorationInputError, match=r"Input file '.*cut\.qoi' is truncated or corrupt"):
        load_image_file(path)


def test_running_out_of_memory_while_decoding_is_no_corrupt_file(tmp_path, monkeypatch):
    """Decoder errors of any type name the file as corrupt, but a MemoryError (decoding, or counting the frames of
    a large file) is the machine's limit, not damage: it propagates as itself."""
    from PIL import GifImagePlugin, ImageFile

    from modeling.image_processing_restoration import load_image_file

    path = tmp_path / "fine.gif"
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(path)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate")

    with monkeypatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", out_of_memory)
        with pytest.raises(MemoryError):
            load_image_file(path)
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(out_of_memory))
    with pytest.raises(MemoryError):
        load_image_file(path)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_multi_frame_files_with_unreadable_exif_restore_as_single_frames_do(tmp_path, caplog, fmt):
    """A broken EXIF block is ignored with a warning for a one-frame file; an animated WebP or PNG with the same
    block took another path (the first frame is turned while detached) and failed with Pillow's SyntaxError."""
    from modeling.image_processing_restoration import load_image_file

    rng = np.random.default_rng(42)
    frames = [Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)) for _ in range(2)]
    broken_exif = b"Exif\x00\x00MW\x00*\x00\x00\x00\x08"  # "MW" is no TIFF byte order
    for count in (1, 2):
        path = tmp_path / f"frames{count}.{fmt.lower()}"
        frames[0].save(path, fmt, save_all=True, append_images=frames[1:count], exif=broken_exif, lossless=True)
        caplog.clear()
        rgb, _ = RestorationImageProcessor().to_rgb_float(load_image_file(path))
        np.testing.assert_array_equal((rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8), np.asarray(frames[0]))
        assert caplog.text.count("Ignoring unreadable EXIF orientation") == 1


def test_postscript_files_are_refused_without_running_ghostscript(tmp_path, monkeypatch):
    """Pillow recognises EPS by content (here under a .png name, as an upload may be) and decodes it by running
    Ghostscript, an external interpreter: it must never be started on an input; the refusal says why."""
    from PIL import EpsImagePlugin

    from modeling.image_processing_restoration import load_image_file

    started = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: started.append(args) or None)
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(path, "EPS")
    for source in (path, path.read_bytes()):
        with pytest.raises(RestorationInputError, match=r"is a PostScript \(EPS\) file, which is not decoded"):
            load_image_file(source)
    with pytest.raises(RestorationInputError, match="photo.png"):
        RestorationImageProcessor()(str(path))
    assert not started


def test_padding_like_returns_an_adapted_copy_and_warns_only_about_settings_the_caller_chose(caplog):
    """`padding_like` leaves the processor it is called on alone (save_restoration_folder gets the caller's
    processor), and says so only when it overrides a setting that was asked for, not the defaults it adapts."""
    import logging

    from conftest import tiny_model

    model = tiny_model("cpl", pad_mode="replicate")
    default = RestorationImageProcessor()
    with caplog.at_level(logging.WARNING):
        adapted = default.padding_like(model)
    assert (adapted.pad_mode, adapted.size_divisor) == ("replicate", 16)
    assert (default.pad_mode, default.size_divisor) == ("reflect", 8)
    assert "padding as the model pads" not in caplog.text
    chosen = RestorationImageProcessor(size_divisor=32)
    with caplog.at_level(logging.WARNING):
        assert chosen.padding_like(model).size_divisor == 16
    assert "padding as the model pads: pad_mode" not in caplog.text
    assert "padding as the model pads: size_divisor 32 -> 16" in caplog.text
    assert chosen.size_divisor == 32
