"""restore(), the image-restoration pipeline and the prompt-restore CLI (in-process and one subprocess run)."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import pipeline

from modeling import PIPConfig, PIPForImageRestoration, RestormerConfig, RestormerForImageRestoration
from modeling import inference
from modeling.cli import main
from modeling.image_processing_restoration import RestorationImageProcessor, RestorationInputError
from modeling.inference import (
    DEFAULT_STATISTICS_PASSES,
    DEFAULT_STATISTICS_TOLERANCE,
    NonFiniteOutputError,
    estimate_degradation_weights,
    restore,
)
from modeling.pipeline_restoration import ImageRestorationPipeline, register_pipeline
from modeling.tiling import tiled_apply

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_model(seed: int = 0) -> RestormerForImageRestoration:
    torch.manual_seed(seed)
    config = RestormerConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    return RestormerForImageRestoration(config).eval()


@pytest.fixture(scope="module")
def model() -> RestormerForImageRestoration:
    return make_model()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    return folder


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def direct(model, image_float_hwc: np.ndarray) -> np.ndarray:
    """What restore() must compute: the model on the [0, 1] image, clamped."""
    pixel_values = torch.from_numpy(image_float_hwc).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        out = model(pixel_values=pixel_values).reconstruction
    return out[0].clamp(0, 1).permute(1, 2, 0).numpy()


def recording_pip():
    """A tiny PIP whose forward records the degradation weights it is given (what restore() passes)."""
    pip = make_pip()
    pip.seen = []
    forward = pip.forward

    def record(pixel_values, degradation_labels=None, **kwargs):
        pip.seen.append(None if degradation_labels is None else degradation_labels.argmax(-1).tolist())
        return forward(pixel_values, degradation_labels=degradation_labels, **kwargs)

    pip.forward = record
    return pip


# ------------------------------------------------------------------------------------------------ restore
def test_restore_matches_the_model(model):
    image = np.random.default_rng(0).random((19, 23, 3)).astype(np.float32)
    out = restore(image, model, dtype="fp32")  # the plain float path (the default may be bf16: see below)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, direct(model, image), atol=1e-5)


def test_restore_keeps_kinds_sizes_and_depths_of_a_mixed_batch(model, tmp_path):
    import png

    path = tmp_path / "in.png"
    Image.fromarray(rgb(12, 18, 3)).save(path)
    gray_alpha16 = tmp_path / "gray_alpha16.png"  # 16-bit gray + alpha: PIL has no mode that keeps it
    with open(gray_alpha16, "wb") as handle:
        png.Writer(7, 6, greyscale=True, alpha=True, bitdepth=16).write(
            handle, np.full((6, 14), 4097, np.uint16).tolist())
    keyed16 = tmp_path / "keyed16.png"  # 16-bit gray with a transparent value: Pillow reads it as "I;16" + tRNS
    Image.fromarray(np.array([[0, 3000], [50000, 0]], np.uint16)).save(keyed16, transparency=0)
    images = [
        Image.fromarray(rgb(17, 33, 1)),
        rgb(17, 33, 2),
        np.random.default_rng(3).integers(0, 65536, (9, 11, 3), dtype=np.uint16),
        Image.fromarray(np.dstack([rgb(8, 8, 4), np.full((8, 8), 77, np.uint8)])),
        str(path),
        rgb(17, 33, 5),
        torch.rand(3, 10, 9),
        str(gray_alpha16),
        str(keyed16),
    ]
    out = restore(images, model, batch_size=2)
    assert isinstance(out, list) and len(out) == len(images)
    assert isinstance(out[0], Image.Image) and out[0].size == (33, 17) and out[0].mode == "RGB"
    assert out[1].dtype == np.uint8 and out[1].shape == (17, 33, 3)
    assert out[2].dtype == np.uint16 and out[2].shape == (9, 11, 3)
    assert out[3].mode == "RGBA" and np.all(np.asarray(out[3])[..., 3] == 77)
    assert isinstance(out[4], Image.Image) and out[4].size == (18, 12)
    # A CHW tensor comes back as a CHW float tensor in [0, 1]; 16-bit gray + alpha as uint16 RGBA, alpha intact.
    assert isinstance(out[6], torch.Tensor) and out[6].dtype == torch.float32 and out[6].shape == (3, 10, 9)
    assert 0 <= out[6].min() and out[6].max() <= 1
    assert isinstance(out[7], np.ndarray) and out[7].dtype == np.uint16 and out[7].shape == (6, 7, 4)
    assert np.all(out[7][..., 3] == 4097)
    assert isinstance(out[8], np.ndarray) and out[8].dtype == np.uint16 and out[8].shape == (2, 2, 4)
    np.testing.assert_array_equal(out[8][..., 3], [[0, 65535], [65535, 0]])
    # Batched results equal one-at-a-time results.
    np.testing.assert_array_equal(out[5], restore(images[5], model))


def test_restore_tiled_and_bf16(model):
    image = np.random.default_rng(1).random((40, 56, 3)).astype(np.float32)
    # The fp32 reference: on a CPU with native bf16 the default dtype is already bf16, so it would compare bf16 with
    # itself.
    whole = restore(image, model, dtype="fp32")
    tiled = restore(image, model, tile=32, tile_overlap=8, dtype="fp32")
    # Tiled restoration is the repository's tiling of the model's forward (2 x 2 blended tiles here), not the whole
    # image: it stays close to the whole-image result but is measurably different from it.
    pixel_values = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = tiled_apply(lambda t: model(pixel_values=t).reconstruction, pixel_values, tile=32, overlap=8,
                               statistics_passes=DEFAULT_STATISTICS_PASSES,
                               statistics_tolerance=DEFAULT_STATISTICS_TOLERANCE)
        own_statistics = tiled_apply(lambda t: model(pixel_values=t).reconstruction, pixel_values, tile=32, overlap=8)
    np.testing.assert_allclose(tiled, expected[0].clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-5)
    np.testing.assert_allclose(restore(image, model, tile=32, tile_overlap=8, dtype="fp32", statistics_passes=0),
                               own_statistics[0].clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-5)
    seam = np.abs(tiled - whole)
    assert tiled.shape == whole.shape and 1e-3 < seam.max() and seam.mean() < 0.05
    # bf16 autocast really runs: its rounding shows (2e-3 here; fp32 layout differences are ~1e-7), yet stays small.
    bf16_error = np.abs(restore(image, model, dtype="bf16") - whole).max()
    assert 1e-4 < bf16_error < 0.02


def test_restore_loads_a_folder_and_restores_training_mode(checkpoint, model):
    image = rgb(16, 16)
    from_folder = restore(image, str(checkpoint), device="cpu")
    np.testing.assert_array_equal(from_folder, restore(image, model))
    model.train()
    restore(image, model)
    assert model.training
    model.eval()


def test_degradation_only_for_models_that_take_it(model):
    with pytest.raises(ValueError, match="does not take degradation labels"):
        restore(rgb(8, 8), model, degradation="rain")
    assert restore(rgb(8, 8), model, degradation="auto").shape == (8, 8, 3)

    labelled = recording_pip()
    restore([rgb(8, 8), rgb(8, 8)], labelled, degradation="rain")
    restore([rgb(8, 8), rgb(8, 8)], labelled, degradation=["noise", 4])
    restore(rgb(8, 8), labelled, auto_mode="hard")  # auto: the estimate is passed on as weights too
    expected_auto = labelled.estimate_degradation(torch.from_numpy(rgb(8, 8)).permute(2, 0, 1)[None].float() / 255)
    assert labelled.seen == [[1, 1], [0, 4], expected_auto.argmax(-1).tolist()]
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        restore(rgb(8, 8), labelled, degradation="fog")


def make_pip(**overrides) -> PIPForImageRestoration:
    torch.manual_seed(0)
    config = PIPConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
                       prompt_dims=[12, 20, 16], prompt_sizes=[8, 4, 4], degradation_estimator_hidden_dim=16,
                       **overrides)
    return PIPForImageRestoration(config).eval()


def test_degradation_labels_reach_a_pip_model():
    pip = make_pip()
    image = np.random.default_rng(2).random((16, 24, 3)).astype(np.float32)
    pixel_values = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        rain = pip(pixel_values=pixel_values, degradation_labels="rain").reconstruction
        auto = pip(pixel_values=pixel_values).reconstruction
    expected = rain[0].clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(restore(image, pip, degradation="rain", dtype="fp32"), expected, atol=1e-5)
    np.testing.assert_allclose(restore(image, pip, degradation=1, dtype="fp32"), expected, atol=1e-5)
    # "soft" is the model's own label-free forward; "hard" is the labelled restoration with the estimator's most
    # likely degradation; the default "cautious" is the labelled restoration with the class it chooses.
    np.testing.assert_allclose(restore(image, pip, degradation="auto", auto_mode="soft", dtype="fp32"),
                               auto[0].clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-5)
    likely = int(pip.estimate_degradation(pixel_values).argmax(-1))
    np.testing.assert_array_equal(restore(image, pip, degradation="auto", auto_mode="hard"),
                                  restore(image, pip, degradation=likely))
    chosen = estimate_degradation_weights(pip, pixel_values, auto_mode="cautious")
    np.testing.assert_array_equal(restore(image, pip, degradation="auto"), restore(image, pip, degradation=chosen))
    tiled = restore([image, image], pip, degradation=["rain", "haze"], tile=16, tile_overlap=4)
    assert tiled[0].shape == image.shape and not np.allclose(tiled[0], tiled[1])
    with pytest.raises(ValueError, match="fog"):
        restore(image, pip, degradation="fog")
    with pytest.raises(ValueError, match="no degradation estimator"):
        restore(image, make_pip(use_degradation_estimator=False))


def test_bad_arguments_and_outputs(model, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        restore(rgb(8, 8), model, dtype="int8")
    for batch_size in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            restore(rgb(8, 8), model, batch_size=batch_size)
    assert restore(rgb(8, 8), model, batch_size=np.int64(2)).shape == (8, 8, 3)
    with pytest.raises(RestorationInputError, match="non-finite"):
        restore(np.full((8, 8, 3), np.nan, np.float32), model)

    class NaNModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, pixel_values, return_dict=True):
            return (pixel_values * float("nan"),)

    with pytest.raises(NonFiniteOutputError, match="NaN"):
        restore(rgb(8, 8), NaNModel())
    monkeypatch.setattr(inference, "DEMO_CHECKPOINT_DIR", tmp_path / "no-demo")
    with pytest.raises(FileNotFoundError, match="model="):
        restore(rgb(8, 8))


# ----------------------------------------------------------------------------------------------- pipeline
def test_pipeline_uses_the_same_path_as_restore(model):
    register_pipeline()
    register_pipeline()  # idempotent
    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    assert isinstance(pipe, ImageRestorationPipeline)
    image = Image.fromarray(rgb(21, 30))
    out = pipe(image)
    assert isinstance(out, Image.Image) and out.size == (30, 21)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(restore(image, model)))
    outs = pipe([image, rgb(9, 5)], tile=16, tile_overlap=4)
    assert outs[0].size == (30, 21) and outs[1].shape == (9, 5, 3)
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(restore(image, model, tile=16, tile_overlap=4)))
    with pytest.raises(ValueError, match="degradation"):
        pipe(image, degradation="rain")


def test_saved_pipeline_loads_with_remote_code_without_the_package(model, tmp_path):
    """pipeline.save_pretrained ships the pipeline, inference, tiling and processor files next to the weights, also
    when the pipeline itself was loaded from such a folder's code."""
    register_pipeline()
    RestorationImageProcessor.register_for_auto_class("AutoImageProcessor")
    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    folder = tmp_path / "shipped"
    pipe.save_pretrained(folder)
    for name in ("pipeline_restoration.py", "inference.py", "tiling.py", "image_processing_restoration.py"):
        assert (folder / name).is_file(), name
    image = rgb(9, 13)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "expected.npy", restore(image, model, tile=8, tile_overlap=2))
    script = f"""
import sys
import numpy as np
sys.modules["modeling"] = None  # even if the package is installed, nothing may import it
from transformers import pipeline
pipe = pipeline("image-restoration", model={str(folder)!r}, trust_remote_code=True, device="cpu")
out = pipe(np.load({str(tmp_path / "image.npy")!r}), tile=8, tile_overlap=2)
assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
assert np.array_equal(out, np.load({str(tmp_path / "expected.npy")!r})), "outputs differ"
# saved again where only the folder's code exists: the pipeline must travel too (it used to be dropped, and
# pipeline() then said "Unknown task image-restoration")
pipe.save_pretrained({str(tmp_path / "resaved")!r})
again = pipeline("image-restoration", model={str(tmp_path / "resaved")!r}, trust_remote_code=True, device="cpu")
assert type(again).__module__.startswith("transformers_modules"), type(again).__module__
assert np.array_equal(again(np.load({str(tmp_path / "image.npy")!r}), tile=8, tile_overlap=2), out)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb(20, 24, 1)).save(folder / "a.png")
    Image.fromarray(rgb(16, 16, 2)).save(folder / "b.jpg", quality=95)
    Image.fromarray((np.arange(12 * 10).reshape(12, 10) * 400).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(np.dstack([rgb(10, 10, 3), np.full((10, 10), 9, np.uint8)])).save(folder / "alpha.png")
    (folder / "notes.txt").write_text("not an image, not picked up from the folder")
    return folder


def test_cli_restores_folder_keeps_names_and_depths(inputs, tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    code = main([str(inputs), "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "alpha.png", "b.png", "deep.png"]
    assert Image.open(out / "deep.png").mode == "I;16"
    assert Image.open(out / "alpha.png").mode == "RGBA"
    assert np.all(np.asarray(Image.open(out / "alpha.png"))[..., 3] == 9)
    assert Image.open(out / "a.png").size == (24, 20)


def test_cli_folders_skip_hidden_files_as_globs_do(inputs, tmp_path, checkpoint, capsys):
    """A folder copied from a Mac holds a "._a.png" companion (resource fork, not an image) per photo: they were
    taken as inputs, each failed, and the run exited 1 (a glob's "*" skips them; so does batch_restore). A hidden
    file named on its own is still restored."""
    from modeling.cli import expand_inputs

    (inputs / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    shutil.copy(inputs / "a.png", inputs / ".thumbnail.png")
    files, errors = expand_inputs([str(inputs)])
    assert [f.name for f in files] == ["a.png", "alpha.png", "b.jpg", "deep.png"] and errors == []
    assert [f for f in files if f.suffix == ".png"] == expand_inputs([str(inputs / "*.png")])[0]
    assert expand_inputs([str(inputs / ".thumbnail.png")])[0] == [inputs / ".thumbnail.png"]
    out = tmp_path / "out"
    assert main([str(inputs), "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "alpha.png", "b.png", "deep.png"]


def test_cli_bad_files_are_reported_and_others_written(inputs, tmp_path, checkpoint, capsys):
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "trunc.png").write_bytes((inputs / "a.png").read_bytes()[:60])
    (inputs / "fake.jpg").write_text("hello")
    out = tmp_path / "out"
    code = main([str(inputs), str(tmp_path / "missing*.png"), "-o", str(out), "--model", str(checkpoint), "-q",
                 "--suffix", "_r", "--tile", "16", "--tile-overlap", "4"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_r.png", "alpha_r.png", "b_r.png", "deep_r.png"]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 4
    assert any("empty.png" in line and "empty" in line for line in lines)
    assert any("trunc.png" in line and "truncated" in line for line in lines)
    assert any("fake.jpg" in line and "not an image" in line for line in lines)
    assert any("missing*.png" in line for line in lines)


def test_cli_refuses_to_overwrite_inputs(inputs, checkpoint, capsys):
    before = (inputs / "a.png").read_bytes()
    code = main([str(inputs / "a.png"), str(inputs / "b.jpg"), "-o", str(inputs), "--model", str(checkpoint), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "refusing to overwrite" in err
    assert (inputs / "a.png").read_bytes() == before
    assert (inputs / "b.png").is_file()  # the JPEG's PNG result does not clash with an input
    code = main([str(inputs / "a.png"), "-o", str(inputs), "--model", str(checkpoint), "--suffix", "_x", "-q"])
    assert code == 0 and (inputs / "a_x.png").is_file()


@pytest.mark.parametrize(
    "args, word",
    [
        (["-o", "OUT"], "at least one INPUT"),
        (["IN", "-o", "OUT", "--tile", "7"], "--tile"),
        (["IN", "-o", "OUT", "--tile", "16", "--tile-overlap", "16"], "--tile-overlap"),
        (["IN", "-o", "OUT", "--dtype", "int8"], "invalid choice"),
        (["IN", "-o", "OUT", "--model", "MISSING"], "config.json"),
        (["IN", "-o", "FILE"], "not a folder"),
        (["IN", "-o", "OUT", "--degradation", "rain"], "degradation"),
        (["IN", "-o", "OUT", "--tile", "16", "--statistics-passes", "-1"], "--statistics-passes must be >= 0"),
        (["IN", "-o", "OUT", "--statistics-tolerance", "-1"], "--statistics-tolerance must be a finite number >= 0"),
        (["IN", "-o", "OUT", "--statistics-tolerance", "nan"], "--statistics-tolerance must be a finite number >= 0"),
    ],
)
def test_cli_usage_errors_exit_2(inputs, tmp_path, checkpoint, capsys, args, word):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "MISSING").mkdir()
    replace = {"IN": str(inputs / "a.png"), "OUT": str(tmp_path / "out"), "FILE": str(tmp_path / "FILE"),
               "MISSING": str(tmp_path / "MISSING")}
    argv = [replace.get(a, a) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(checkpoint)]
    assert main(argv) == 2
    assert word in capsys.readouterr().err


def test_cli_globs(inputs, tmp_path, checkpoint):
    out = tmp_path / "out"
    assert main([str(inputs / "*.png"), "-o", str(out), "--model", str(checkpoint), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "alpha.png", "deep.png"]


def test_cli_subprocess_smoke(inputs, tmp_path, checkpoint):
    """Through the console script's launcher, which loads modeling/cli.py before the modeling package."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "training.cli_launcher", str(inputs / "a.png"), "-o", str(tmp_path / "out"),
         "--model", str(checkpoint), "--dtype", "bf16"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "a.png").is_file()
    assert "restored 1 image(s)" in result.stderr


def test_cli_degradation_for_pip(inputs, tmp_path, capsys):
    folder = tmp_path / "pip"
    make_pip(use_degradation_estimator=False).save_pretrained(folder)
    out = tmp_path / "out"
    assert main([str(inputs / "a.png"), "-o", str(out), "--model", str(folder), "--degradation", "rain", "-q"]) == 0
    # The written pixels are restore()'s result for the label given, on the CLI's defaults (dtype auto, the folder's
    # model and processor), and not another label's: a CLI that dropped or replaced the label would differ.
    written = np.asarray(Image.open(out / "a.png"))
    rain = np.asarray(restore(str(inputs / "a.png"), str(folder), degradation="rain", device="cpu"))
    noise = np.asarray(restore(str(inputs / "a.png"), str(folder), degradation="noise", device="cpu"))
    np.testing.assert_array_equal(written, rain)
    assert (rain != noise).mean() > 0.25  # the labels lead to clearly different outputs (64% of values here)
    assert main([str(inputs / "a.png"), "-o", str(out), "--model", str(folder), "-q", "--overwrite"]) == 2
    assert "--degradation" in capsys.readouterr().err


def test_numpy_degradation_labels_are_read_like_tensors_and_ints():
    """numpy arrays and integers as `degradation`: float rows are weights, integer arrays indices, numpy
    integers indices, string arrays names; booleans are refused as they are in Python."""
    pip = make_pip()
    image = rgb(16, 16)
    rain = restore(image, pip, degradation="rain", dtype="fp32")
    for label in (np.array([[0.0, 1.0, 0.0, 0.0, 0.0]]), np.array([1]), np.int64(1), np.array("rain"),
                  np.array(["rain"])):
        np.testing.assert_array_equal(restore(image, pip, degradation=label, dtype="fp32"), rain)
    with pytest.raises(RestorationInputError, match="name or an index"):
        restore(image, pip, degradation=np.array([True]))


def test_meta_device_is_refused_before_the_model_moves(model):
    before = next(model.parameters()).device
    with pytest.raises(ValueError, match="holds no data"):
        restore(rgb(8, 8), model, device="meta")
    assert next(model.parameters()).device == before


def test_cli_refuses_a_bad_precision_variable_before_loading(inputs, tmp_path, capsys, monkeypatch):
    """PROMPT_RESTORE_DTYPE=fp8 was reported once per input, after the model loaded and the output folder was
    made, and ended as "restored 0 image(s)" with exit 1. It is a usage error: one line, exit 2, nothing made."""
    from modeling.cli import main

    monkeypatch.setenv("PROMPT_RESTORE_DTYPE", "fp8")
    assert main([str(inputs / "a.png"), str(inputs / "b.jpg"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "PROMPT_RESTORE_DTYPE='fp8'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "out"), "--dtype", "fp32", "-q"]) == 0  # not "auto"


@pytest.mark.parametrize("device", ["xpu", "mtia", "hpu", "xla:0"])
def test_other_unavailable_devices_are_refused_with_one_line(model, inputs, tmp_path, capsys, device):
    """Devices of backends this torch build cannot use here: xpu and mtia ended in a 30-line AssertionError
    traceback (exit 1); the others in torch's raw text. Now the same ValueError as CUDA's and exit code 2."""
    from modeling.cli import main

    with pytest.raises(ValueError, match=f"cannot use '{device.split(':')[0]}' devices here; use 'cpu'"):
        restore(rgb(8, 8), model, device=device)
    assert next(model.parameters()).device.type == "cpu"
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "out"), "--device", device, "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot use" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_model_with_an_invalid_config_fails_with_one_line(inputs, tmp_path, capsys):
    """A saved config our checks refuse (heads that do not divide the widths): exit code 2 and one line naming
    the folder and the problem, as for any model that cannot be loaded."""
    import json

    folder = tmp_path / "badcfg"
    make_model().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["heads"] = [3, 2, 4, 8]
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "out"), "--model", str(folder), "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith(f"Model '{folder}' has an invalid config.json: level 1 width 8 is not divisible by heads[0]=3")


@pytest.mark.parametrize("damage", ["truncated-weights", "config-not-an-object", "processor-config-not-an-object"])
def test_cli_model_folder_with_damaged_files_fails_with_one_line(inputs, tmp_path, capsys, damage):
    """A truncated model.safetensors, or a config file that is valid JSON but not an object: exit code 2 and one
    line naming the problem (they gave tracebacks from safetensors and from deep inside transformers)."""
    folder = tmp_path / "damaged"
    make_model().save_pretrained(folder)
    RestorationImageProcessor().save_pretrained(folder)
    if damage == "truncated-weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:300])
        expected = f"Model '{folder}' has unreadable weights"
    else:
        name = "config.json" if damage == "config-not-an-object" else "preprocessor_config.json"
        (folder / name).write_text("[1]")
        expected = f"{folder / name} must hold a JSON object, not a list"
    capsys.readouterr()
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "out"), "--model", str(folder), "-q"]) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_cli_writes_outputs_whose_names_are_near_the_file_name_limit(inputs, tmp_path, checkpoint):
    """An input named with 245 characters has a valid output name; the hidden temporary file beside it must not
    exceed the 255-byte limit either (it did: "File name too long", nothing written)."""
    long_input = tmp_path / "long" / ("x" * 245 + ".png")
    long_input.parent.mkdir()
    long_input.write_bytes((inputs / "a.png").read_bytes())
    out = tmp_path / "out"
    assert main([str(long_input), "-o", str(out), "--model", str(checkpoint), "-q"]) == 0
    assert [p.name for p in out.iterdir()] == [long_input.name]


def test_pipeline_refuses_a_device_torch_cannot_use_before_moving_the_model(model):
    """pipeline(device="cuda") on a CPU-only torch failed deep in torch (AssertionError "Torch not compiled with
    CUDA enabled"), and device="meta" moved the caller's model there, dropping its weights; both now raise
    restore()'s ValueError and leave the model where it was."""
    weight = next(model.parameters())
    before = weight.detach().clone()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pipeline("image-restoration", model=model, device="cuda")
    with pytest.raises(ValueError, match="holds no data"):
        pipeline("image-restoration", model=model, device=torch.device("meta"))
    assert next(model.parameters()).device.type == "cpu"
    torch.testing.assert_close(next(model.parameters()), before)


def test_pipeline_refuses_a_construction_dtype_it_would_drop(model):
    """transformers uses a model instance as it is and the base pipeline drops `dtype`: pipeline(model=instance,
    dtype="bf16") or dtype=torch.bfloat16 ran silently in the default precision. A dtype that is not the weights'
    own now raises, pointing at the call kwarg; "auto" and the weights' own dtype are fine."""
    image = rgb(8, 8)
    for dtype in ("bf16", "fp32", torch.bfloat16, "float16"):
        with pytest.raises(ValueError, match="pass it when calling the pipeline"):
            pipeline("image-restoration", model=model, device="cpu", dtype=dtype)
    for dtype in ("auto", torch.float32, "float32"):
        pipe = pipeline("image-restoration", model=model, device="cpu", dtype=dtype)
        np.testing.assert_array_equal(pipe(image, dtype="fp32"), restore(image, model, dtype="fp32"))
    assert next(model.parameters()).dtype == torch.float32


def test_pipeline_checks_degradation_and_dtype_before_any_image(model):
    """A wrong degradation or dtype failed only at the first image: pipeline(..., degradation="rian") was built,
    an empty input or a dataset's iterator came back without an error, and a list of one degradation per image
    failed with "Got 2 degradation labels for 1 images" for two images. Now they raise where they are given."""
    pip = make_pip()
    with pytest.raises(RestorationInputError, match="unknown degradation 'rian'"):
        pipeline("image-restoration", model=pip, device="cpu", degradation="rian")
    with pytest.raises(ValueError, match="does not take degradation labels"):
        pipeline("image-restoration", model=model, device="cpu", degradation="rain")
    pipe = pipeline("image-restoration", model=pip, device="cpu")
    with pytest.raises(RestorationInputError, match="unknown degradation 'rian'"):
        pipe([], degradation="rian")
    with pytest.raises(ValueError, match="Unknown dtype 'bf17'"):
        pipe((image for image in [rgb(8, 8)]), dtype="bf17")
    with pytest.raises(ValueError, match="one degradation for all its images.*got a list of 2"):
        pipe([rgb(8, 8), rgb(8, 8)], degradation=["rain", "haze"])
    image = rgb(8, 8)
    np.testing.assert_array_equal(pipe(image, degradation=["rain"]), restore(image, pip, degradation="rain"))
    mixed = pipeline("image-restoration", model=pip, device="cpu", degradation="rain+haze")
    np.testing.assert_array_equal(mixed(image), restore(image, pip, degradation="rain+haze"))


def test_pipeline_restores_a_model_in_training_mode_as_restore_does():
    """A model instance in training mode (as constructed, or from a training loop) ran through the pipeline in
    training mode: DPPD sampled its prompts at random, so two calls on one image differed (by up to 33 levels on
    this tiny model) and neither matched restore(), which restores in eval mode. Now the pipeline does the same,
    and leaves the model in the mode it was given in."""
    from conftest import tiny_model

    dppd = tiny_model("dppd").train()
    image = rgb(16, 16)
    pipe = pipeline("image-restoration", model=dppd, device="cpu")
    first = pipe(image, degradation="noise", dtype="fp32")
    np.testing.assert_array_equal(pipe(image, degradation="noise", dtype="fp32"), first)
    assert dppd.training
    np.testing.assert_array_equal(first, restore(image, dppd, degradation="noise", dtype="fp32"))


def test_pipeline_takes_tuples_and_empty_lists(model):
    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    image = Image.fromarray(rgb(12, 10))
    assert pipe([]) == []
    outputs = pipe((image, image))
    assert len(outputs) == 2
    np.testing.assert_array_equal(np.asarray(outputs[1]), np.asarray(pipe(image)))
    with pytest.raises(TypeError, match="did you mean 'tile'"):
        pipe([], tyle=16)


def test_pipeline_takes_datasets_and_empty_ones(model):
    """A KeyDataset streams its images through the pipeline; an empty one (a filtered dataset) gave an IndexError
    from the base class, which reads the first item to look for chat messages. It gives an empty iterator now."""
    from transformers.pipelines.pt_utils import KeyDataset

    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    rows = [{"image": rgb(8, 12)}, {"image": rgb(10, 9, 1)}]
    outputs = list(pipe(KeyDataset(rows, "image")))
    assert [out.shape for out in outputs] == [(8, 12, 3), (10, 9, 3)]
    np.testing.assert_array_equal(outputs[1], pipe(rgb(10, 9, 1)))
    assert list(pipe(KeyDataset([], "image"))) == []
    with pytest.raises(TypeError, match="did you mean 'tile'"):
        pipe(KeyDataset([], "image"), tyle=16)


def test_thin_images_get_the_fp32_estimate_under_bf16(caplog):
    """The shipped weights' pixel estimator on a 12-px-wide strip of the low-light example: PyTorch's CPU bf16
    stride-2 convolution read uninitialised memory for one-pixel-wide outputs, so the bf16 estimate was NaN most
    of the time and the default mode then restored with the "noise" prompt. The estimator runs in fp32 under CPU
    bf16 inference now: every call gives fp32's estimate (low light)."""
    from modeling.inference import DEMO_CHECKPOINT_DIR, load_model

    model = load_model(None, device="cpu")
    strip = np.asarray(Image.open(DEMO_CHECKPOINT_DIR / "examples" / "plasma-EveningGlow-low-light.png")
                       .convert("RGB"))[:200, :12]
    pixel_values = torch.from_numpy(strip.astype(np.float32) / 255).permute(2, 0, 1)[None]
    reference = estimate_degradation_weights(model, pixel_values, auto_mode="soft", dtype="fp32")
    assert int(reference.argmax()) == model.config.degradation_names.index("low-light")
    for _ in range(10):
        torch.randn(1000, 1000)  # other allocations in between, as in a real process
        weights = estimate_degradation_weights(model, pixel_values, auto_mode="soft", dtype="bf16")
        torch.testing.assert_close(weights, reference, atol=0, rtol=0)
    assert "estimating again in fp32" not in caplog.text  # right the first time, not rescued by the fallback


def test_a_non_finite_estimate_is_redone_in_fp32_or_refused(monkeypatch, caplog):
    """A NaN estimate must never choose a class (argmax takes NaN for the largest): under autocast the estimate
    is made again in fp32, with a warning; a model whose fp32 estimate is not finite either is refused."""
    pip = make_pip()
    pixel_values = torch.rand(1, 3, 16, 16)
    reference = estimate_degradation_weights(pip, pixel_values, auto_mode="soft", dtype="fp32")
    real = pip.estimate_degradation

    def nan_under_autocast(values, hard=False):
        weights = real(values, hard)
        return weights * float("nan") if torch.is_autocast_enabled("cpu") else weights

    monkeypatch.setattr(pip, "estimate_degradation", nan_under_autocast)
    weights = estimate_degradation_weights(pip, pixel_values, auto_mode="soft", dtype="bf16")
    torch.testing.assert_close(weights, reference)
    assert "estimating again in fp32" in caplog.text
    monkeypatch.setattr(pip, "estimate_degradation", lambda values, hard=False: real(values) * float("nan"))
    with pytest.raises(NonFiniteOutputError, match="degradation estimate is not finite"):
        estimate_degradation_weights(pip, pixel_values, auto_mode="hard", dtype="bf16")


def test_autocast_to_the_other_half_type_than_the_weights_is_refused():
    half = make_model().to(torch.float16)
    with pytest.raises(ValueError, match=r"asks for bf16 autocast, but the model's weights are fp16: use "
                                         r"dtype='auto' \(the weights' own precision\) or convert the model "
                                         r"\(model.to\(torch.bfloat16\)\)"):
        restore(rgb(12, 12), half, dtype="bf16")
    assert restore(rgb(12, 12), half, dtype="fp16").shape == (12, 12, 3)  # its own precision works


# ------------------------------------------------------------------- review fixes: files, folders, devices, models
def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("prompt-restore: error: "), err
    return lines[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Usage errors must be found before the model is loaded."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(inference, "load_model", fail)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_cli_outputs_respect_the_umask(inputs, tmp_path, checkpoint, umask, mode):
    old = os.umask(umask)
    try:
        code = main([str(inputs / "a.png"), str(inputs / "deep.png"), "-o", str(tmp_path / "out"),
                     "--model", str(checkpoint), "-q"])
    finally:
        os.umask(old)
    assert code == 0
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["a.png", "deep.png"]  # no temporary file left behind
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in written] == [oct(mode)] * 2


def test_cli_output_folder_under_a_file_is_a_usage_error(inputs, tmp_path, capsys, no_model_loading):
    (tmp_path / "file.txt").write_text("x")
    for out, words in [(tmp_path / "file.txt" / "sub", ["cannot create output folder", "file.txt is not a folder"]),
                       (tmp_path / "file.txt", ["exists and is not a folder"])]:
        assert main([str(inputs / "a.png"), "-o", str(out), "--model", "some/where", "-q"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert all(word in line for word in words), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "in"]


def test_cli_output_through_a_link_to_nowhere_is_a_usage_error(inputs, tmp_path, capsys, no_model_loading):
    """-o naming a dangling link (say to a disk that is not mounted), or a folder below one, passed the check and
    failed at mkdir after the model had loaded; train.py's output_dir (same check) failed so at its first
    checkpoint, with a traceback."""
    (tmp_path / "restored").symlink_to(tmp_path / "unmounted" / "restored")
    for out in (tmp_path / "restored", tmp_path / "restored" / "today"):
        assert main([str(inputs / "a.png"), "-o", str(out), "--model", "some/where", "-q"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{tmp_path / 'restored'} is a link to {tmp_path / 'unmounted' / 'restored'}" in line, line
    assert not (tmp_path / "unmounted").exists()


def test_cli_unwritable_output_folder_is_a_usage_error(inputs, tmp_path, capsys, no_model_loading, monkeypatch):
    # Root may write anywhere, so simulate the permission check answering "no" for the output side only.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: "locked" not in str(path) and real_access(path, mode))
    (tmp_path / "locked").mkdir()
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "locked"), "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"output folder {tmp_path / 'locked'} is not writable" in line
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "locked" / "new" / "deeper"), "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot create output folder" in line and "locked is not writable" in line
    assert list((tmp_path / "locked").iterdir()) == []


def test_cuda_without_cuda_is_a_clear_error(inputs, tmp_path, model, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' was requested but CUDA is not available"):
        restore(rgb(8, 8), model, device="cuda")
    with pytest.raises(ValueError, match="Unknown device 'gpu'"):
        restore(rgb(8, 8), model, device="gpu")
    with monkeypatch.context() as patched:
        patched.setattr(torch.cuda, "is_available", lambda: True)
        patched.setattr(torch.cuda, "device_count", lambda: 1)
        with pytest.raises(ValueError, match="'cuda:3' was requested but only 1 CUDA device"):
            restore(rgb(8, 8), model, device="cuda:3")
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "out"), "--device", "cuda:0", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "invalid --device 'cuda:0'" in line and "CUDA is not available" in line
    assert not (tmp_path / "out").exists()


def _png16_rgb(path: Path, array: np.ndarray) -> None:
    import png

    height, width, _ = array.shape
    with open(path, "wb") as handle:
        png.Writer(width, height, greyscale=False, bitdepth=16).write(handle, array.reshape(height, -1))


def test_cli_keeps_16_bit_rgb_png(tmp_path, model, checkpoint):
    import png

    image = np.random.default_rng(7).integers(0, 65536, (14, 19, 3), dtype=np.uint16)
    _png16_rgb(tmp_path / "deep_rgb.png", image)
    assert main([str(tmp_path / "deep_rgb.png"), "-o", str(tmp_path / "out"), "--model", str(checkpoint), "-q",
                 "--dtype", "fp32"]) == 0
    width, height, rows, info = png.Reader(filename=str(tmp_path / "out" / "deep_rgb.png")).read()
    assert (info["bitdepth"], info["planes"], info["greyscale"]) == (16, 3, False)
    written = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, 3)
    # The restored float image times 65535, rounded: exactly what restore() gives for the same uint16 pixels,
    # and within rounding of the model run by hand.
    expected = restore(image, model, dtype="fp32")
    assert expected.dtype == np.uint16
    np.testing.assert_array_equal(written, expected)
    by_hand = np.round(direct(model, image.astype(np.float32) / 65535).astype(np.float64) * 65535)
    assert np.abs(written.astype(np.float64) - by_hand).max() <= 1
    assert np.any(written % 257 != 0)  # real 16-bit values, not 8-bit ones scaled up
    # restore() on the path gives the same uint16 array (PIL cannot hold 16-bit colour).
    np.testing.assert_array_equal(restore(str(tmp_path / "deep_rgb.png"), model, dtype="fp32"), expected)


def test_cli_keeps_existing_outputs_unless_overwrite(inputs, tmp_path, checkpoint, capsys):
    mine = inputs / "b.png"  # the user's own file, where b.jpg's result would go
    mine.write_bytes(b"precious")
    code = main([str(inputs / "b.jpg"), "-o", str(inputs), "--model", str(checkpoint), "-q"])
    assert code == 1 and mine.read_bytes() == b"precious"
    line = one_error_line(capsys.readouterr().err)
    assert f"output {mine} already exists" in line and "--overwrite" in line

    code = main([str(inputs / "b.jpg"), str(inputs / "a.png"), "-o", str(inputs), "--model", str(checkpoint), "-q",
                 "--overwrite"])
    assert code == 1  # a.png would overwrite its own input: refused even with --overwrite
    assert "refusing to overwrite input file" in one_error_line(capsys.readouterr().err)
    assert Image.open(mine).size == (16, 16)  # replaced by b.jpg's result
    assert Image.open(inputs / "a.png").size == (24, 20)


def test_one_tiling_rule_for_restore_pipeline_and_cli(inputs, tmp_path, model, checkpoint, capsys):
    image = rgb(20, 24)
    for bad in (7, -1, 2.5):
        with pytest.raises(ValueError, match="at least 8 pixels"):
            restore(image, model, tile=bad)
    with pytest.raises(ValueError, match=r"between 0 and half the tile \(8 for tile 16\), got 9"):
        restore(image, model, tile=16, tile_overlap=9)
    # Overlap left unset: min(32, tile // 4), for restore() and the CLI alike.
    np.testing.assert_array_equal(restore(image, model, tile=16), restore(image, model, tile=16, tile_overlap=4))
    out = tmp_path / "out"
    assert main([str(inputs / "a.png"), "-o", str(out), "--model", str(checkpoint), "-q", "--tile", "16"]) == 0
    expected = restore(Image.open(inputs / "a.png"), model, tile=16, tile_overlap=4)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), np.asarray(expected))
    # --statistics-passes reaches restore(): 0 gives tiles that use their own statistics, unlike the default.
    out0 = tmp_path / "out0"
    argv0 = [str(inputs / "a.png"), "-o", str(out0), "--model", str(checkpoint), "-q", "--tile", "16"]
    assert main(argv0 + ["--statistics-passes", "0"]) == 0
    own = restore(Image.open(inputs / "a.png"), model, tile=16, statistics_passes=0)
    np.testing.assert_array_equal(np.asarray(Image.open(out0 / "a.png")), np.asarray(own))
    assert not np.array_equal(np.asarray(own), np.asarray(expected))
    # --statistics-tolerance reaches restore(): a huge one stops the passes after the second.
    out1 = tmp_path / "out1"
    argv1 = [str(inputs / "a.png"), "-o", str(out1), "--model", str(checkpoint), "-q", "--tile", "16"]
    assert main(argv1 + ["--statistics-passes", "3", "--statistics-tolerance", "1000"]) == 0
    two = restore(Image.open(inputs / "a.png"), model, tile=16, statistics_passes=2, statistics_tolerance=0)
    three = restore(Image.open(inputs / "a.png"), model, tile=16, statistics_passes=3, statistics_tolerance=0)
    np.testing.assert_array_equal(np.asarray(Image.open(out1 / "a.png")), np.asarray(two))
    assert not np.array_equal(np.asarray(two), np.asarray(three))

    argv = [str(inputs / "a.png"), "-o", str(tmp_path / "out2"), "--model", str(checkpoint), "-q"]
    assert main(argv + ["--tile", "7"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--tile must be an integer of at least 8 pixels, got 7" in line and "overlap" not in line
    assert main(argv + ["--tile", "16", "--tile-overlap", "9"]) == 2
    assert "--tile-overlap must be an integer between 0 and half the tile (8 for --tile 16), got 9" in \
        one_error_line(capsys.readouterr().err)
    # Without --tile the overlap is for the default tiles of large images (1024 px for this model): checked at once,
    # on small images too, which are restored whole.
    assert main(argv + ["--tile-overlap", "513"]) == 2
    assert ("--tile-overlap must be an integer between 0 and half the tile (512 for the default tile 1024), got 513"
            in one_error_line(capsys.readouterr().err))
    assert main(argv + ["--tile-overlap", "512"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out2" / "a.png")),
                                  np.asarray(restore(Image.open(inputs / "a.png"), model, tile=0)))
    assert main(argv + ["--tile", "0", "--tile-overlap", "8", "--overwrite"]) == 2
    assert "--tile 0 restores whole images, so there is no tile overlap" in one_error_line(capsys.readouterr().err)


def test_a_model_that_names_its_tile_is_restored_on_it_everywhere(inputs, tmp_path, capsys):
    """config.inference_tile is the default tiling of restore(), the pipeline and the CLI; tile=0 is whole-image."""
    torch.manual_seed(1)
    config = RestormerConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1],
                             inference_tile=16)
    tiled_model = RestormerForImageRestoration(config).eval()
    image = rgb(40, 36, seed=3)
    by_default = restore(image, tiled_model)
    np.testing.assert_array_equal(by_default, restore(image, tiled_model, tile=16))
    np.testing.assert_array_equal(restore(image, tiled_model, tile_overlap=2), restore(image, tiled_model, tile=16, tile_overlap=2))
    whole = restore(image, tiled_model, tile=0)
    np.testing.assert_array_equal(whole, restore(image, make_model(1).eval(), tile=None))  # same weights, no tile
    assert np.abs(by_default.astype(int) - whole.astype(int)).max() > 0  # the tiles really changed the result

    pipe = ImageRestorationPipeline(model=tiled_model, image_processor=RestorationImageProcessor())
    np.testing.assert_array_equal(np.asarray(pipe(image)), by_default)
    np.testing.assert_array_equal(np.asarray(pipe(image, tile=0)), whole)
    # The pipeline checks the overlap against the tile the run will use: the model's, or one given at construction.
    with pytest.raises(ValueError, match=r"half the tile \(8 for the default tile 16\), got 9"):
        pipe(image, tile_overlap=9)
    with pytest.raises(ValueError, match=r"half the tile \(8 for the default tile 16\), got 9"):
        ImageRestorationPipeline(model=tiled_model, image_processor=RestorationImageProcessor(), tile_overlap=9)
    wide = ImageRestorationPipeline(model=tiled_model, image_processor=RestorationImageProcessor(), tile=32)
    np.testing.assert_array_equal(np.asarray(wide(image, tile_overlap=12)),
                                  restore(image, tiled_model, tile=32, tile_overlap=12))
    with pytest.raises(ValueError, match=r"half the tile \(16 for tile 32\), got 17"):
        wide(image, tile_overlap=17)

    folder = tmp_path / "tiled-ckpt"
    tiled_model.save_pretrained(folder)
    Image.fromarray(image).save(inputs / "c.png")
    argv = [str(inputs / "c.png"), "-o", str(tmp_path / "out"), "--model", str(folder), "-q"]
    assert main(argv) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "c.png")), by_default)
    assert main(argv + ["--tile", "0", "--overwrite"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "c.png")), whole)
    # --tile-overlap alone applies to the model's own tile, and is checked against it.
    assert main(argv + ["--tile-overlap", "2", "--overwrite"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "c.png")),
                                  restore(image, tiled_model, tile=16, tile_overlap=2))
    assert not np.array_equal(restore(image, tiled_model, tile=16, tile_overlap=2), by_default)
    capsys.readouterr()
    assert main(argv + ["--tile-overlap", "9", "--overwrite"]) == 2
    assert "half the tile (8 for the default tile 16), got 9" in one_error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match=r"half the tile \(8 for the default tile 16\), got 9"):
        restore(image, tiled_model, tile_overlap=9)


def test_help_and_usage_errors_do_not_import_torch():
    """The console script (training.cli_launcher, see setup.cfg) parses arguments before importing `modeling`."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    assert "prompt-restore = training.cli_launcher:main" in config["options.entry_points"]["console_scripts"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for args, code, stream in [(["--help"], 0, "stdout"), (["x.png", "-o", "out", "--dtype", "int8"], 2, "stderr")]:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "training.cli_launcher", *args],
                                env=env, capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - started
        assert result.returncode == code, result.stderr[-2000:]
        assert "usage: prompt-restore" in getattr(result, stream)
        imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:") and "|" in line}
        assert "argparse" in imported  # the importtime report was read
        heavy = {name for name in imported if name.split(".")[0] in ("torch", "transformers", "numpy", "modeling")}
        assert not heavy, sorted(heavy)[:10]
        print(f"prompt-restore {' '.join(args)}: {seconds:.2f} s")


@pytest.mark.parametrize(
    "source, word",
    [("outputs/nope", "does not exist"), ("./nope", "does not exist"), ("~/no-such-model-folder", "does not exist"),
     ("a/b/c", "does not exist"), ("nobody-here/not-cached-model", "HF_HUB_OFFLINE")],
)
def test_missing_model_fails_fast_with_one_line(inputs, tmp_path, capsys, monkeypatch, source, word):
    (tmp_path / "outputs").mkdir()  # like a training output folder next to the user
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "out"), "--model", source, "-q"]) == 2
    assert time.perf_counter() - started < 10
    line = one_error_line(capsys.readouterr().err)
    assert word in line and source.lstrip("~") in line
    assert not (tmp_path / "out").exists()


def test_pipeline_rejects_unknown_and_positional_arguments(model):
    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    image = rgb(8, 8)
    with pytest.raises(TypeError, match="'degradation_label' \\(did you mean 'degradation'\\?\\)"):
        pipe(image, degradation_label="rain")
    with pytest.raises(TypeError, match="'tiles' \\(did you mean 'tile'\\?\\)"):
        pipe(image, tiles=16)
    with pytest.raises(TypeError, match="'zzz'\\. Valid arguments: tile, tile_overlap"):
        pipe(image, zzz=1)
    with pytest.raises(TypeError, match="only positional argument"):
        pipe(image, 16)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        pipe(image, tile=4)
    with pytest.raises(ValueError, match="output_type"):
        pipe(image, output_type="numpy")
    np.testing.assert_array_equal(pipe(image, tile=8), restore(image, model, tile=8))


def test_channels_last_fast_path_is_the_cpu_default_and_can_be_turned_off(model, monkeypatch, inputs, tmp_path,
                                                                          checkpoint):
    """restore(), the estimator pass, the pipeline and the CLI feed channels-last maps on CPU unless told not to;
    the outputs agree with the plain NCHW path up to float rounding."""
    from modeling.inference import resolve_channels_last

    assert resolve_channels_last(None, torch.device("cpu")) is True
    assert resolve_channels_last(None, torch.device("cuda")) is False
    with pytest.raises(TypeError, match="channels_last"):
        restore(rgb(9, 9), model, channels_last="yes")
    layouts = []
    original = type(model).forward

    def record(self, pixel_values, *args, **kwargs):
        layouts.append(pixel_values.is_contiguous(memory_format=torch.channels_last))
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", record)
    image = np.random.default_rng(1).random((21, 30, 3)).astype(np.float32)
    fast = restore(image, model, dtype="fp32")
    assert layouts == [True]
    plain = restore(image, model, channels_last=False, dtype="fp32")
    assert layouts == [True, False]
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    register_pipeline()
    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    pipe(Image.fromarray(rgb(16, 16)), channels_last=False)
    assert layouts[-1] is False
    pipe(Image.fromarray(rgb(16, 16)))
    assert layouts[-1] is True
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "plain"), "--model", str(checkpoint),
                     "--no-channels-last", "-q"]) == 0
    assert layouts[-1] is False


def test_bf16_is_the_default_on_a_cpu_with_native_bf16_and_can_be_turned_off(model, monkeypatch, inputs, tmp_path,
                                                                             checkpoint):
    """dtype=None/"auto" (restore(), the estimator pass, the pipeline, the CLI): bf16 autocast on a CPU with native
    bf16, fp32 on other CPUs, on a GPU and for weights not in fp32; "fp32", --dtype fp32 and
    PROMPT_RESTORE_DTYPE=fp32 turn it off. Native bf16 is simulated both ways (autocast runs on any CPU)."""
    from modeling.inference import DTYPE_ENV, default_autocast_dtype, native_bf16_cpu, resolve_dtype

    assert isinstance(native_bf16_cpu(), bool)
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    seen = []
    original = type(model).forward

    def record(self, pixel_values, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", record)
    image = np.random.default_rng(3).random((21, 30, 3)).astype(np.float32)
    plain = restore(image, model, dtype="fp32")
    assert seen == [torch.float32]

    monkeypatch.setattr(inference, "native_bf16_cpu", lambda: True)
    assert default_autocast_dtype("cpu") == torch.bfloat16 and default_autocast_dtype("cuda") is None
    assert resolve_dtype(None, "cpu") == resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("fp32", "cpu") is None
    fast = restore(image, model)
    assert seen[-1] == torch.bfloat16
    assert 0 < np.abs(fast - plain).max() < 0.05  # bf16 rounding, not garbage (and not silently fp32)
    np.testing.assert_array_equal(restore(image, model, dtype="auto"), fast)
    register_pipeline()
    pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device="cpu")
    pipe(Image.fromarray(rgb(16, 16)))
    assert seen[-1] == torch.bfloat16
    pipe(Image.fromarray(rgb(16, 16)), dtype="fp32")
    assert seen[-1] == torch.float32
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "auto"), "--model", str(checkpoint), "-q"]) == 0
    assert seen[-1] == torch.bfloat16
    assert main([str(inputs / "a.png"), "-o", str(tmp_path / "fp32"), "--model", str(checkpoint), "-q",
                 "--dtype", "fp32"]) == 0
    assert seen[-1] == torch.float32
    # The estimator pass of a label-free restore follows the same default.
    pip = make_pip()
    pip_seen = []
    estimate = pip.estimate_degradation

    def record_estimate(pixel_values, *args, **kwargs):
        pip_seen.append(torch.is_autocast_enabled("cpu"))
        return estimate(pixel_values, *args, **kwargs)

    monkeypatch.setattr(pip, "estimate_degradation", record_estimate)
    estimate_degradation_weights(pip, torch.rand(1, 3, 16, 16), auto_mode="hard")
    estimate_degradation_weights(pip, torch.rand(1, 3, 16, 16), auto_mode="hard", dtype="fp32")
    assert pip_seen == [True, False]
    # Weights already in half precision run in their own precision.
    restore(image, make_model().to(torch.bfloat16))
    assert seen[-1] == torch.float32

    monkeypatch.setenv(DTYPE_ENV, "fp32")
    assert default_autocast_dtype("cpu") is None
    restore(image, model)
    assert seen[-1] == torch.float32
    monkeypatch.setenv(DTYPE_ENV, "bf17")
    with pytest.raises(ValueError, match="PROMPT_RESTORE_DTYPE='bf17'"):
        restore(image, model)
    monkeypatch.delenv(DTYPE_ENV)
    monkeypatch.setattr(inference, "native_bf16_cpu", lambda: False)
    assert default_autocast_dtype("cpu") is None
    np.testing.assert_array_equal(restore(image, model), plain)
    assert seen[-1] == torch.float32


def test_bench_infer_compares_the_fast_path_with_the_reference(tmp_path):
    """benchmarks/bench_infer.py on a tiny PIP model that takes one of the shipped examples' labels: one row per
    path, ratios against the reference row, peak memory from a child process per path, and PSNR on the examples
    that differs from the reference path by float rounding only (timings are not asserted)."""
    import json

    from conftest import tiny_model

    # Only the rain example is scored ("snow" has none): every path, and the compiled path's trace per example
    # shape, runs on one example instead of five, and the other examples are left out by label, not by a crash.
    labels = dict(num_degradations=2, degradation_names=["rain", "snow"])
    folder = tmp_path / "tiny-pip"
    tiny_model("pip", **labels).save_pretrained(folder)
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_infer.py"), "--model", str(folder), "--size", "32",
         "--repeats", "1", "--threads", "1", "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    parameters = tiny_model("pip", **labels).num_parameters()
    assert (report["model"], report["size"], report["parameters"]) == ("pip", 32, parameters)
    rows = {row["path"]: row for row in report["rows"]}
    assert list(rows) == ["reference", "channels-last"]
    assert rows["reference"]["ratio"] == 1.0
    for row in rows.values():
        assert row["ms"] > 0 and row["images_per_s"] == pytest.approx(1000 / row["ms"])
        assert row["ratio"] == pytest.approx(rows["reference"]["ms"] / row["ms"])
        assert 50 < row["peak_mib"] < 4096  # an interpreter with torch and a tiny model, not 0 and not garbage
        assert 5 < row["psnr"] < 60
    assert abs(rows["channels-last"]["psnr_vs_reference"]) < 1e-3
    assert "channels-last" in result.stdout and "PSNR dB" in result.stdout

    # --paths picks the rows (the reference always runs); bf16 autocast stays within a bf16 rounding of it.
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_infer.py"), "--model", str(folder), "--size", "32",
         "--repeats", "1", "--threads", "1", "--no-memory", "--paths", "channels-last+bf16",
         "channels-last+all-bf16", "channels-last+bf16+compile-model", "--compile-backend", "eager",
         "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["path"]: row for row in json.loads(report_path.read_text())["rows"]}
    assert list(rows) == ["reference", "channels-last+bf16", "channels-last+all-bf16",
                          "channels-last+bf16+compile-model"]
    # The compiled phase times the reference again in its own rounds: each ratio names the reference ms it used.
    for row in rows.values():
        assert row["ratio"] == pytest.approx(row["reference_ms"] / row["ms"])
    assert rows["channels-last+bf16"]["reference_ms"] == pytest.approx(rows["reference"]["ms"])
    assert f"({rows['channels-last+bf16+compile-model']['reference_ms']:.1f})" in result.stdout
    assert rows["channels-last+bf16"]["peak_mib"] is None
    assert 0 < abs(rows["channels-last+bf16"]["psnr_vs_reference"]) < 0.5
    # Every layer in autocast (fp32 attention and resampling off) is another output, still a bf16 rounding away.
    assert 0 < abs(rows["channels-last+all-bf16"]["psnr_vs_reference"]) < 0.5
    assert rows["channels-last+all-bf16"]["psnr"] != rows["channels-last+bf16"]["psnr"]
    # The whole model through torch.compile (traced here with the eager backend) restores as the eager path does.
    assert rows["channels-last+bf16+compile-model"]["psnr"] == pytest.approx(rows["channels-last+bf16"]["psnr"],
                                                                             abs=1e-4)


def test_bf16_sensitivity_keeps_the_chosen_layers_in_fp32(tmp_path):
    """benchmarks/bf16_sensitivity.py on a tiny PIP and two held-out photos: keeping every layer in fp32 gives the
    fp32 output back exactly, the default bf16 path differs from it by rounding, groups join with "+", and
    `--all-bf16` (every layer in autocast) moves further from fp32. Unknown photos and groups are refused."""
    import json

    from conftest import smooth_image, tiny_model
    from PIL import Image

    folder = tmp_path / "tiny-pip"
    tiny_model("pip", seed=1).save_pretrained(folder)
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    for seed, name in enumerate(["a.png", "b.png"]):
        Image.fromarray(smooth_image(40, 48, seed=seed)).save(heldout / name)
    script = str(REPO_ROOT / "benchmarks" / "bf16_sensitivity.py")

    def run(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script, "--model", str(folder), "--heldout", str(heldout), "--row", "noise-25",
             "--threads", "1", *flags], capture_output=True, text=True, timeout=300, cwd=tmp_path)

    report = tmp_path / "report.json"
    result = run("--keep-fp32", "none", "convolutions+attention", "everything", "--json", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    photos = json.loads(report.read_text())["photos"]
    assert [photo["image"] for photo in photos] == ["a.png", "b.png"]
    for photo in photos:
        policies = photo["policies"]
        assert list(policies) == ["none", "convolutions+attention", "everything"]
        assert policies["everything"]["max_abs_difference"] == 0 and policies["everything"]["psnr_vs_fp32"] == 0
        assert policies["everything"]["correction_slope"] == pytest.approx(1, abs=1e-9)
        assert 0 < policies["none"]["max_abs_difference"] < 0.05
        assert 0 < photo["ideal_correction_slope"] < 2
    assert "fp32 kept in everything" in result.stdout

    result = run("--keep-fp32", "none", "--all-bf16", "--json", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    all_bf16 = json.loads(report.read_text())
    assert all_bf16["all_bf16"] is True
    assert sum(photo["policies"]["none"]["max_abs_difference"] for photo in all_bf16["photos"]) > sum(
        photo["policies"]["none"]["max_abs_difference"] for photo in photos)

    result = run("--images", "missing.png")
    assert result.returncode != 0 and "missing.png" in result.stderr
    result = run("--keep-fp32", "dense+softmax")
    assert result.returncode == 2 and "softmax" in result.stderr


@pytest.mark.parametrize("channels_last", [True, False])
def test_outputs_depend_on_the_values_not_on_how_the_input_tensor_was_built(channels_last):
    """A permuted HWC image (batch stride 3) and the same values copied to NCHW give bit-identical outputs and
    estimates: inputs reach the model in the memory format's canonical strides."""
    from conftest import tiny_model

    from modeling.inference import estimate_degradation_weights, in_layout, run_model

    model = tiny_model("pip", seed=3)
    image = torch.from_numpy(np.random.default_rng(0).random((40, 56, 3), dtype=np.float32))
    permuted = image.permute(2, 0, 1)[None]
    copied = permuted.contiguous()
    assert permuted.stride() != copied.stride()
    for function in (lambda x: run_model(model, x, degradation_labels=torch.eye(5)[:1], channels_last=channels_last),
                     lambda x: estimate_degradation_weights(model, x, channels_last=channels_last)):
        assert torch.equal(function(permuted), function(copied))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    canonical = in_layout(permuted, memory_format)
    assert canonical.stride() == torch.empty(1, 3, 40, 56, memory_format=memory_format).stride()
    assert torch.equal(canonical, permuted)
    assert in_layout(canonical, memory_format) is canonical  # no copy when the strides are already canonical


def test_benchmark_children_report_their_own_peak_not_the_parents(tmp_path):
    """bench_common.child_peak_mib: a small child of this (torch-loaded, hence large) process reports its own peak.
    `ru_maxrss` would report this process's peak, which Linux carries over the exec of a vfork'd child."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_common import child_peak_mib, peak_rss_kib
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    ballast = np.ones(256 * 2**20, dtype=np.uint8)  # this process's peak is at least 256 MiB above a bare python
    parent_mib = peak_rss_kib() / 1024
    script = tmp_path / "child.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'benchmarks')!r})\n"
                      "from bench_common import report_child_peak; report_child_peak()\n")
    child_mib = child_peak_mib(str(script), [], threads=1)
    assert parent_mib > 300 and ballast.sum() > 0
    assert 1 < child_mib < 100 < parent_mib  # a bare interpreter, far below the parent


FREED_MEMORY_PROBE = """
import sys
import numpy as np
from modeling.inference import keep_freed_memory_for_reuse

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

applied = keep_freed_memory_for_reuse() if sys.argv[1] == "tuned" else False
before = rss_mib()
buffer = np.ones(96 * 1024 * 1024, dtype=np.uint8)  # 96 MiB, above glibc's 32 MiB mmap ceiling
del buffer
print(applied, rss_mib() - before)
"""


def test_keep_freed_memory_for_reuse_keeps_a_large_freed_buffer_in_the_heap():
    """In a fresh process (the setting is process-wide): without it a freed 96 MiB buffer goes back to the kernel
    (its own mmap), with it the pages stay for the next allocation; a bad threshold is refused."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    kept = {}
    for mode in ("plain", "tuned"):
        result = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE, mode], capture_output=True, text=True,
                                timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert result.returncode == 0, result.stderr[-2000:]
        applied, retained = result.stdout.split()
        kept[mode] = (applied == "True", float(retained))
    assert kept["plain"][0] is False and kept["plain"][1] < 16
    assert kept["tuned"][0] is True and kept["tuned"][1] > 80
    with pytest.raises(ValueError, match="threshold_mib"):
        inference.keep_freed_memory_for_reuse(0)


def test_keep_freed_memory_for_reuse_refuses_thresholds_a_c_int_cannot_hold():
    """mallopt takes a C int of bytes: 4096 MiB wrapped round to 0, so every allocation got its own mmap (the
    opposite of the point) while the call said it was applied; 1.5 became 1 MiB. In a fresh process, since a
    threshold that is applied changes the whole process."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    probe = (
        "import sys\nfrom modeling.inference import keep_freed_memory_for_reuse\n"
        "for value in (4096, 2048, 1.5, True, '64'):\n"
        "    try:\n        print(keep_freed_memory_for_reuse(value))\n"
        "    except Exception as err:\n"
        "        print('refused' if isinstance(err, ValueError) and 'threshold_mib' in str(err) else repr(err))\n"
        "print(keep_freed_memory_for_reuse(2047))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["refused"] * 5 + ["True"]


def _bench_malloc_rows(tmp_path, *flags: str) -> dict:
    """Run benchmarks/bench_malloc.py on a tiny saved pip model at 32², one thread, one forward per child; its
    JSON rows by path."""
    import json

    from conftest import tiny_model

    folder = tmp_path / "tiny-pip"
    tiny_model("pip").save_pretrained(folder)
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_malloc.py"), "--model", str(folder), "--size", "32",
         "--forwards", "1", "--threads", "1", *flags, "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {row["path"]: row for row in json.loads(report_path.read_text())["rows"]}


def test_bench_malloc_runs_each_path_in_its_own_children(tmp_path, monkeypatch):
    """benchmarks/bench_malloc.py on a tiny saved model: every row, ratios against the plain path, the setting
    applied only in its children, bit-identical fp32 outputs across the fast paths' children, and a bf16 row (only
    with --bf16) that differs from fp32 by bf16 rounding only (timings are not asserted)."""
    import importlib.util

    rows = _bench_malloc_rows(tmp_path, "--repeats", "1", "--bf16")
    assert list(rows) == ["reference", "fast", "fast+freed-memory-reuse", "fast+bf16+freed-memory-reuse"]
    assert [row["applied"] for row in rows.values()] == [False, False, True, True]
    assert rows["fast+freed-memory-reuse"]["identical_to_fast"] and rows["fast"]["identical_to_fast"]
    assert rows["reference"]["max_abs_diff_vs_reference"] == 0
    assert 0 <= rows["fast"]["max_abs_diff_vs_reference"] < 1e-4  # channels-last: float rounding only
    reused = rows["fast+freed-memory-reuse"]
    assert reused["ratio"] == pytest.approx(rows["reference"]["ms"] / reused["ms"])
    assert reused["max_abs_diff_vs_reference"] == rows["fast"]["max_abs_diff_vs_reference"]
    assert all(50 < row["peak_mib"] < 4096 for row in rows.values())
    bf16 = rows["fast+bf16+freed-memory-reuse"]
    assert not bf16["identical_to_fast"]
    assert 0 < bf16["max_abs_diff_vs_reference"] < 0.05  # bf16 keeps 8 bits of mantissa: rounding, not garbage

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the checkout on it; undone after the test
    spec = importlib.util.spec_from_file_location("bench_malloc", REPO_ROOT / "benchmarks" / "bench_malloc.py")
    bench_malloc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_malloc)
    assert bench_malloc.paths_to_run(False) == ["reference", "fast", "fast+freed-memory-reuse"]


def test_every_benchmark_finds_the_project_from_a_bare_checkout(tmp_path):
    """On a machine where the package is not installed (a GPU box with a copied checkout), each benchmark script
    puts the checkout on sys.path itself: loading it (not running it) makes `modeling` and `training` importable.
    One interpreter without `site` (so the editable install is invisible) loads every script in turn, restoring
    sys.path and dropping the project modules between scripts so that one script cannot hide another's omission."""
    import json
    import site
    import sysconfig

    scripts = sorted(p for p in (REPO_ROOT / "benchmarks").glob("*.py") if p.name != "bench_common.py")
    assert len(scripts) >= 15
    probe = (
        "import importlib.util, json, runpy, sys\n"
        "missing = []\n"
        "for script in sys.argv[1:]:\n"
        "    saved = list(sys.path)\n"
        "    assert importlib.util.find_spec('modeling') is None, 'the project leaked onto sys.path'\n"
        "    runpy.run_path(script, run_name='benchmark_probe')\n"
        "    if importlib.util.find_spec('modeling') is None or importlib.util.find_spec('training') is None:\n"
        "        missing.append(script.rsplit('/', 1)[-1])\n"
        "    sys.path[:] = saved\n"
        "    for name in [m for m in sys.modules if m.split('.')[0] in ('modeling', 'training', 'bench_common')]:\n"
        "        del sys.modules[name]\n"
        "print(json.dumps(missing))\n"
    )
    packages = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()]))
    env = {**os.environ, "PYTHONPATH": packages, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-S", "-c", probe, *map(str, scripts)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_gpu_goals_script_names_only_existing_benchmarks_paths_and_flags(tmp_path):
    """benchmarks/gpu_goals.sh waits for a GPU session, so what can be checked without one is checked: bash accepts
    it, every benchmark it runs exists, each `--paths` name is one of that benchmark's PATHS, and each flag is one
    the benchmark defines."""
    import re
    import shlex

    script = (REPO_ROOT / "benchmarks" / "gpu_goals.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "benchmarks" / "gpu_goals.sh")]).returncode == 0
    arrays = {name: shlex.split(body) for name, body in re.findall(r"^(\w+)=\((.*?)\)$", script, re.M | re.S)}
    calls = []
    for command in re.findall(r"^run \d+ (.*?)(?<!\\)$", script.replace("\\\n", " "), re.M):
        words = shlex.split(command.replace('"$RESULTS', '"' + str(tmp_path)))
        if words[0].startswith("${"):
            words = arrays[words[0][2:].split("[")[0]] + words[1:]
        calls.append(words)
    assert len(calls) == 8  # five for the goals, three for restoring
    for words in calls:
        benchmark = REPO_ROOT / words[0]
        assert benchmark.is_file(), words[0]
        flags = {word for word in words if word.startswith("--")}
        source = benchmark.read_text()
        assert all(f'"{flag}"' in source for flag in flags), (words[0], flags)
        if "--paths" not in words:  # the restoring part's benchmarks have none to choose from
            continue
        choices = re.search(r"PATHS = \{(.*?)\n\}", benchmark.read_text(), re.S).group(1)
        names = re.findall(r'^\s+"([\w+-]+)":', choices, re.M)
        paths = words[words.index("--paths") + 1:]
        paths = paths[:next((i for i, word in enumerate(paths) if word.startswith("--")), len(paths))]
        assert paths and set(paths) <= set(names), (words[0], paths)


def test_compilation_phases_time_each_kind_of_compilation_on_its_own():
    """Eager paths first, then each kind of compilation in its own phase, so that a whole-model compilation cut
    short by a time limit does not lose the regional one's row."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_common import compilation_phases
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    kinds = {"reference": None, "a+compile": "blocks", "b": None, "c+compile-model": "model", "d+compile": "blocks"}
    assert compilation_phases(list(kinds), kinds) == [["reference", "b"], ["a+compile", "d+compile"],
                                                      ["c+compile-model"]]
    assert compilation_phases(["reference"], {"reference": None}) == [["reference"]]


def test_gpu_goals_script_logs_every_step_and_exits_with_the_failed_count(tmp_path):
    """The script's own logic without a GPU: `python3` on its PATH is a stand-in that prints its arguments and
    fails for PIP. Every step still runs, the log in the results folder holds what stdout showed, and the exit
    status is the number of failed steps, which the last line names."""
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text('#!/bin/bash\necho "ran $*"\ncase "$*" in *"--model-type pip"*) echo "pip failed" >&2; exit 3;; '
                    "esac\n")
    shim.chmod(0o755)
    results = tmp_path / "results"
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_goals.sh"), str(results)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert run.returncode == 1, run.stdout + run.stderr
    log = (results / "gpu_goals.log").read_text()
    assert log.count("=== python3 benchmarks/") == 5 and log.count("ran benchmarks/") == 5
    assert "pip failed" in log and "=== exit status 3" in log
    assert log.strip().splitlines()[-1].startswith("=== 1 step(s) failed: bench_train.py 3 (")
    assert f"--json {results}/infer_promptir_1024.json" in log and "bench_tiling" not in log
    assert run.stdout.strip().splitlines()[-1] == log.strip().splitlines()[-1]  # tee: the screen shows the same
    # The restoring part: its three steps alone, in the same log.
    restoring = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_goals.sh"), str(results), "restore"],
                               env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert restoring.returncode == 0, restoring.stdout + restoring.stderr
    assert restoring.stdout.count("ran benchmarks/bench_tiling.py") == 2 and "bench_train" not in restoring.stdout
    assert f"--size 8192 --tiled-only --json {results}/tiling_8192.json" in restoring.stdout
    assert "ran benchmarks/bench_batch_restore.py --model modeling/demo" in restoring.stdout
    assert restoring.stdout.strip().splitlines()[-1].startswith("=== 0 step(s) failed: none (")
    assert (results / "gpu_goals.log").read_text().count("=== python3 benchmarks/") == 8
    wrong = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_goals.sh"), str(results), "restor"], env=env,
                           capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert wrong.returncode == 64 and "usage: bash benchmarks/gpu_goals.sh" in wrong.stderr


@pytest.mark.parametrize("flag, expected", [((), 1), (("--no-reuse-freed-memory",), 0)])
def test_cli_reuses_freed_memory_on_cpu_unless_told_not_to(tmp_path, monkeypatch, flag, expected):
    from conftest import tiny_model

    calls = []
    monkeypatch.setattr(inference, "keep_freed_memory_for_reuse", lambda *a, **k: calls.append(a) or True)
    folder = tmp_path / "tiny"
    tiny_model("pip").save_pretrained(folder)
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(tmp_path / "in.png")
    code = main([str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", str(folder), "--device", "cpu",
                 "--degradation", "noise", "-q", *flag])
    assert code == 0 and (tmp_path / "out" / "in.png").is_file()
    assert len(calls) == expected


def test_fp32_is_never_silently_run_in_the_weights_half_precision(model, tmp_path):
    """A checkpoint saved in bf16 used to run in bf16 whatever `dtype` said. Loaded from a folder, fp32 now loads
    it as float32 (restore(), the CLI); an instance with bf16 weights is refused with the way out, as fp16 is."""
    folder = tmp_path / "bf16"
    make_model().to(torch.bfloat16).save_pretrained(folder)
    image = rgb(24, 32, seed=5)
    as_fp32 = make_model().to(torch.bfloat16).float()  # the same rounded weights, in float32
    expected = restore(image, model=as_fp32, dtype="fp32", channels_last=False)
    np.testing.assert_array_equal(restore(image, model=folder, dtype="fp32", channels_last=False), expected)
    with pytest.raises(ValueError, match=r"dtype='fp32' asks for float32, but the model's weights are bf16"):
        restore(image, model=make_model().to(torch.bfloat16), dtype="fp32")
    Image.fromarray(image).save(tmp_path / "x.png")
    assert main([str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--model", str(folder), "--dtype", "fp32",
                 "--no-channels-last", "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), expected)


def test_a_model_loaded_without_a_device_goes_to_cuda_when_available(tmp_path, monkeypatch):
    """`device=None` means "the given model's device, else CUDA if available" (restore(), resolve_device): a model
    that load_model reads from a folder (or the demo) is moved to CUDA on a GPU machine, as the CLI and the Space do;
    it used to stay on the CPU it was read onto, so `restore("photo.png")` ran on the CPU next to a free GPU. An
    instance keeps its own device. (No GPU here: CUDA is announced and the moves are recorded, not made.)"""
    folder = tmp_path / "model"
    make_model().save_pretrained(folder)
    moves = []

    def record_move(module, *args, **kwargs):
        moves.append(torch.device(args[0] if args else kwargs["device"]))
        return module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", record_move)
    inference.load_model(folder)
    assert [device.type for device in moves] == ["cuda"]
    moves.clear()
    inference.load_model(folder, device="cpu")
    inference.load_model(make_model())  # an instance on the CPU stays there
    assert moves == []


def test_the_precision_variable_turns_half_precision_weights_off_as_dtype_fp32_does(model, tmp_path, monkeypatch):
    """PROMPT_RESTORE_DTYPE=fp32, the README's off switch "for all of them at once", only changed what "auto" means
    for fp32 weights: a checkpoint saved in bf16 still ran in bf16 where --dtype fp32 loads it as float32."""
    folder = tmp_path / "bf16"
    make_model().to(torch.bfloat16).save_pretrained(folder)
    image = rgb(24, 32, seed=5)
    explicit = restore(image, model=folder, dtype="fp32", channels_last=False)
    monkeypatch.setenv(inference.DTYPE_ENV, "fp32")
    assert inference.load_model(folder).dtype == torch.float32
    np.testing.assert_array_equal(restore(image, model=folder, channels_last=False), explicit)
    with pytest.raises(ValueError, match=r"PROMPT_RESTORE_DTYPE='fp32' asks for float32, but the model's weights "
                                         r"are bf16"):
        restore(image, model=make_model().to(torch.bfloat16))
    Image.fromarray(image).save(tmp_path / "x.png")
    assert main([str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--model", str(folder),
                 "--no-channels-last", "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), explicit)
    monkeypatch.setenv(inference.DTYPE_ENV, "bf16")  # the weights' own half precision is what it asks for
    assert restore(image, model=make_model().to(torch.bfloat16)).shape == image.shape


def test_the_other_half_precision_than_a_checkpoints_is_loaded_in_float32(tmp_path):
    """--dtype fp16 over a checkpoint saved in bf16 (or bf16 over fp16) failed every image (exit 1) telling the CLI
    user to call model.to(...); a folder is now loaded as float32 and autocast to the precision asked for."""
    image = rgb(24, 32, seed=6)
    Image.fromarray(image).save(tmp_path / "x.png")
    for saved, asked in ((torch.bfloat16, "fp16"), (torch.float16, "bf16")):
        folder = tmp_path / str(saved)
        make_model().to(saved).save_pretrained(folder)
        expected = restore(image, model=make_model().to(saved).float(), dtype=asked, channels_last=False)
        assert inference.load_model(folder, dtype=asked).dtype == torch.float32
        np.testing.assert_array_equal(restore(image, model=folder, dtype=asked, channels_last=False), expected)
        out = tmp_path / f"out-{asked}"
        assert main([str(tmp_path / "x.png"), "-o", str(out), "--model", str(folder), "--dtype", asked,
                     "--no-channels-last", "-q"]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png")), expected)
        assert inference.load_model(folder, dtype="auto").dtype == saved  # the default keeps its own precision


def test_a_checkpoints_own_half_precision_asked_for_keeps_its_weights(tmp_path, monkeypatch):
    """Only another precision than the weights' loads them as float32: --dtype bf16 over a bf16 checkpoint (or
    PROMPT_RESTORE_DTYPE=bf16) keeps them in bf16, half the memory, as load_model's docstring says."""
    monkeypatch.delenv(inference.DTYPE_ENV, raising=False)
    for saved, own in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        folder = tmp_path / own
        make_model().to(saved).save_pretrained(folder)
        assert inference.load_model(folder, dtype=own).dtype == saved
        assert inference.load_model(folder, dtype=saved).dtype == saved
        monkeypatch.setenv(inference.DTYPE_ENV, own)
        assert inference.load_model(folder).dtype == saved
        monkeypatch.delenv(inference.DTYPE_ENV)


def test_a_config_that_does_not_describe_its_weights_is_refused(tmp_path):
    """A config.json swapped or edited (another model type, a deeper body) used to load with transformers' report
    only, the missing weights random: restore() would then return garbage."""
    import json

    folder = tmp_path / "pip"
    torch.manual_seed(0)
    PIPForImageRestoration(PIPConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
                                     prompt_dims=[12, 20, 16], prompt_sizes=[8, 4, 4],
                                     degradation_estimator_hidden_dim=16)).save_pretrained(folder)
    inference.load_model(folder)  # consistent: loads
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_blocks": [1, 1, 1, 2]}))  # one more latent block
    with pytest.raises(ValueError, match=r"config\.json does not describe its weights: \d+ missing from the weights"):
        inference.load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "dim": 16}))  # every weight of another width
    # Named with both shapes in the message itself: transformers' load report is logged, and absent where its logging
    # is off (the Space shows the message alone).
    with pytest.raises(ValueError, match=r"config\.json does not describe its weights: .*\d+ of another shape \(e\.g\. "
                       r"\S+ \(\[\d+(, \d+)*\] in the weights, \[\d+(, \d+)*\] in the model\)"):
        inference.load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "restormer",
                                                    "architectures": ["RestormerForImageRestoration"]}))
    with pytest.raises(ValueError, match=r"config\.json does not describe its weights"):
        restore(rgb(16, 16), model=folder)


def test_pipeline_checks_auto_mode_for_every_model(model):
    """restore() refuses an unknown auto_mode for any model; the pipeline used to accept it for models without
    degradation labels (and fail at the first image for the others)."""
    register_pipeline()
    restorer = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(),
                        pipeline_class=ImageRestorationPipeline)
    with pytest.raises(ValueError, match=r"auto_mode must be one of \('soft', 'hard', 'cautious'\), got 'sofft'"):
        restorer(rgb(16, 16), auto_mode="sofft")
    assert restorer(rgb(16, 16), auto_mode="soft").shape == (16, 16, 3)


@pytest.mark.parametrize("field, value", [("num_blocks", None), ("num_blocks", 4), ("heads", 2)])
def test_config_lists_of_the_wrong_type_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field} must list 4 integers .*got {value!r}"):
        RestormerConfig(**{field: value})


def test_pipeline_takes_the_default_processor_where_the_model_has_none(model, checkpoint):
    """`restore()` and the CLI restore a plain `model.save_pretrained` folder (no preprocessor_config.json) with
    the default processor; the pipeline used to stop there, and at a model instance given without a processor."""
    register_pipeline()
    assert not (checkpoint / "preprocessor_config.json").exists()
    image = rgb(16, 24, seed=3)
    expected = restore(image, model=model)
    for source in (str(checkpoint), model):
        restorer = pipeline("image-restoration", model=source, pipeline_class=ImageRestorationPipeline)
        assert isinstance(restorer.image_processor, RestorationImageProcessor)
        np.testing.assert_array_equal(restorer(image), expected)
