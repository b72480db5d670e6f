"""PIP's pixel degradation estimator, and the estimator-only training stage (`training.train_estimator`)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from data_helpers import save, textured_image
from safetensors.torch import load_file

from modeling import PIPForImageRestoration, restore
from modeling.degradation_labels import hard_weights
from modeling.modeling_pip import PixelDegradationEstimator
from training.train_estimator import main


def test_pixel_estimator_drives_the_label_free_forward():
    model = tiny_model("pip", degradation_estimator_input="pixels")
    assert isinstance(model.degradation_estimator, PixelDegradationEstimator)
    x = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(x)
        expected = model.degradation_estimator(model.pad_to_multiple(x)).softmax(-1)
        labelled = model(x, degradation_labels=expected)
    torch.testing.assert_close(output.degradation_weights.float(), expected)
    torch.testing.assert_close(model.estimate_degradation(x), expected)
    # The label-free forward is the labelled forward with the estimator's weights.
    torch.testing.assert_close(output.reconstruction, labelled.reconstruction)
    assert torch.equal(model.estimate_degradation(x, hard=True).sum(1), torch.ones(2))


def test_pixel_estimator_statistics_pool_what_the_config_names():
    """`degradation_estimator_statistics`: mean/std (default, the shipped layout) or with max, whose pooled
    features are the per-channel maxima of each level; a bad list is refused."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    default = tiny_model("pip", degradation_estimator_input="pixels")
    with_max = tiny_model("pip", degradation_estimator_input="pixels",
                          degradation_estimator_statistics=["mean", "std", "max"])
    widths = sum(level[0].out_channels for level in default.degradation_estimator.levels)
    assert default.degradation_estimator.norm.normalized_shape == (2 * widths,)
    assert with_max.degradation_estimator.norm.normalized_shape == (3 * widths,)
    captured = {}
    with_max.degradation_estimator.norm.register_forward_hook(lambda module, args, out: captured.update(x=args[0]))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_max.degradation_estimator(x)
        first = with_max.degradation_estimator.levels[0](x).flatten(2)
    width = first.shape[1]
    torch.testing.assert_close(captured["x"][:, :width], first.mean(-1))
    torch.testing.assert_close(captured["x"][:, width:2 * width], first.std(-1, unbiased=False))
    torch.testing.assert_close(captured["x"][:, 2 * width:3 * width], first.amax(-1))
    for bad in (["median"], ["mean", "mean"], []):
        with pytest.raises(StrictDataclassClassValidationError, match="degradation_estimator_statistics"):
            tiny_model("pip", degradation_estimator_input="pixels", degradation_estimator_statistics=bad)


def test_dark_scene_augmentation_darkens_only_allowed_images_and_keeps_highlights():
    from training.train_estimator import darken_scenes

    images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[:, :, 0, 0] = 1.0  # a white highlight in every image
    allowed = torch.arange(64) % 2 == 0
    out = darken_scenes(images, allowed, 0.5, torch.Generator().manual_seed(1))
    changed = (out != images).flatten(1).any(1)
    assert not changed[~allowed].any()  # never a class that darkening would change
    assert 8 < int(changed.sum()) < 32  # about half of the allowed ones
    assert (out[changed] <= images[changed]).all() and (out[:, :, 0, 0] == 1.0).all()
    assert out[changed].mean() < 0.7 * images[changed].mean()  # uniform x: E[x ** 2.25] = 0.31 against 0.5
    assert torch.equal(darken_scenes(images, allowed, 0.0, torch.Generator()), images)


def test_wrong_estimator_input_is_refused():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match="degradation_estimator_input"):
        tiny_model("pip", degradation_estimator_input="pixel")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimator")
    for i in range(6):
        save(root / "clean" / f"photo{i}.png", textured_image(i, 48, 48))
    for i in range(2):
        save(root / "heldout" / f"photo{i}.png", textured_image(100 + i, 40, 40))
    source = root / "model"
    tiny_model("pip").save_pretrained(source)
    output = root / "out"
    record = main(["--model", str(source), "--output", str(output), "--data_roots", f"clean={root / 'clean'}",
                   "--heldout", str(root / "heldout"), "--max_train_steps", "40", "--patch_size", "32",
                   "--train_batch_size", "10", "--dataloader_num_workers", "0", "--logging_steps", "10",
                   "--learning_rate", "3e-3", "--warmup_steps", "5"])
    return source, output, record


def test_estimator_stage_changes_only_the_estimator(trained):
    source, output, record = trained
    before, after = load_file(source / "model.safetensors"), load_file(output / "model.safetensors")
    body = [name for name in before if not name.startswith("degradation_estimator.")]
    assert body and all(torch.equal(before[name], after[name]) for name in body)
    assert any(name.startswith("degradation_estimator.levels.") for name in after)
    assert not any(name.startswith("degradation_estimator.levels.") for name in before)
    assert json.loads((output / "config.json").read_text())["degradation_estimator_input"] == "pixels"
    saved = json.loads((output / "estimator_training.json").read_text())
    assert saved["history"] == record["history"] and len(saved["history"]) == 4
    # Cross-entropy falls on these easy, very different synthetic degradations.
    assert saved["history"][-1]["loss"] < saved["history"][0]["loss"]
    for key in ("heldout_before", "heldout_after"):
        confusion = saved[key]["confusion"]
        assert sum(map(sum, confusion)) == saved[key]["images"] == 2 * 5
        assert saved[key]["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(5)) / 10)
    assert (output / "modeling_pip.py").is_file(), "code files for trust_remote_code"


def test_estimator_stage_output_loads_and_restores_label_free(trained):
    from transformers import AutoModel

    _, output, _ = trained
    model = AutoModel.from_pretrained(output).eval()
    assert isinstance(model, PIPForImageRestoration)
    assert isinstance(model.degradation_estimator, PixelDegradationEstimator)
    image = (torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1)))
    weights = hard_weights(model.estimate_degradation(image[None]))
    restored = restore(image, model, auto_mode="hard", dtype="fp32")
    with torch.no_grad():
        expected = model(image[None], degradation_labels=weights).reconstruction[0].clamp(0, 1)
    torch.testing.assert_close(restored, expected, atol=1e-6, rtol=0)


def test_estimator_with_max_statistics_and_windows_is_saved_and_can_be_grafted(trained, tmp_path):
    """The shipped estimator's recipe: mean/std/max statistics, judged on windows of the trained crop, dark-scene
    augmentation; then grafted onto other restoration weights with --init_estimator_from and 0 steps."""
    source, _, _ = trained
    clean = source.parent / "clean"
    common = ["--data_roots", f"clean={clean}", "--patch_size", "32", "--train_batch_size", "6",
              "--dataloader_num_workers", "0", "--estimator_statistics", "mean", "std", "max", "--judge_on_windows"]
    first = tmp_path / "estimator"
    main(["--model", str(source), "--output", str(first), "--max_train_steps", "4", "--logging_steps", "2",
          "--dark_scene_probability", "0.5", *common])
    config = json.loads((first / "config.json").read_text())
    assert config["degradation_estimator_statistics"] == ["mean", "std", "max"]
    assert config["degradation_estimator_window"] == 32
    grafted = tmp_path / "grafted"
    main(["--model", str(source), "--output", str(grafted), "--max_train_steps", "0",
          "--init_estimator_from", str(first), *common])
    donor, result = load_file(first / "model.safetensors"), load_file(grafted / "model.safetensors")
    original = load_file(source / "model.safetensors")
    for name, tensor in result.items():
        expected = donor[name] if name.startswith("degradation_estimator.") else original[name]
        assert torch.equal(tensor, expected), name
    with pytest.raises(SystemExit, match="keep"):
        main(["--model", str(source), "--output", str(tmp_path / "x"), "--estimator_input", "keep",
              "--estimator_statistics", "max", "--data_roots", f"clean={clean}"])
    # Without the statistics and windows given again, the donor's come with its weights (they used to be the
    # model's own, with the donor's weights reading other statistics); other statistics than the donor's are refused.
    plain = [arg for arg in common if arg not in ("--estimator_statistics", "mean", "std", "max", "--judge_on_windows")]
    bare = tmp_path / "bare"
    main(["--model", str(source), "--output", str(bare), "--max_train_steps", "0", "--init_estimator_from", str(first),
          *plain])
    config = json.loads((bare / "config.json").read_text())
    assert (config["degradation_estimator_statistics"], config["degradation_estimator_window"]) == (
        ["mean", "std", "max"], 32)
    with pytest.raises(SystemExit, match=r"trained on the statistics \['mean', 'std', 'max'\], not \['mean'\]"):
        main(["--model", str(source), "--output", str(tmp_path / "y"), "--max_train_steps", "0",
              "--init_estimator_from", str(first), *plain, "--estimator_statistics", "mean"])


def test_an_output_below_a_file_is_refused_before_the_training(tmp_path, capsys):
    """--output below a file passed the check (it does not exist) and failed at mkdir once the estimator was
    trained, with a traceback that lost the training: one line and exit code 2 now, as for the other tools that
    replace their --output (checkpointing.check_output_folder)."""
    from training.checkpointing import check_output_folder

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "model"), "--output", str(a_file / "estimator"),
              "--data_roots", f"clean={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and f"{a_file} is not a folder" in err
    with pytest.raises(ValueError, match="is not a folder"):
        check_output_folder(a_file / "deeper" / "demo")
    check_output_folder(tmp_path / "new" / "demo")  # a missing folder is fine, and nothing is created
    assert not (tmp_path / "new").exists()


def test_a_hub_model_keeps_its_processor(tmp_path):
    """A Hub id as --model: the processor saved with that model is the one written beside the new estimator. It
    used to be looked for only in a local folder of that name, so a Hub model's processor was replaced by defaults.
    The model is read from a Hub cache (offline), as `from_pretrained` reads a downloaded model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from modeling import RestorationImageProcessor

    snapshot = tmp_path / "hub" / "models--someone--tiny-pip" / "snapshots" / ("0" * 40)
    tiny_model("pip").save_pretrained(snapshot)
    RestorationImageProcessor(do_pad=True).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    for i in range(2):
        save(tmp_path / "clean" / f"photo{i}.png", textured_image(i, 32, 32))
    output = tmp_path / "out"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "training.train_estimator", "--model", "someone/tiny-pip", "--output", str(output),
         "--data_roots", f"clean={tmp_path / 'clean'}", "--max_train_steps", "1", "--patch_size", "32",
         "--train_batch_size", "2", "--dataloader_num_workers", "0", "--warmup_steps", "0"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((output / "preprocessor_config.json").read_text())
    assert saved["do_pad"] is True and saved["size_divisor"] == 8
