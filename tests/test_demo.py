"""The demo weights shipped in the package (``modeling/demo/``): they load every way a user loads a model,
they really restore, and a non-editable install carries them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import modeling
from modeling import PIPForImageRestoration, restore
from modeling.inference import DEMO_CHECKPOINT_DIR

REPO = Path(__file__).resolve().parents[1]
DEMO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "eval_results.json",
              "before_after.png")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def demo_model():
    from transformers import AutoModel

    return AutoModel.from_pretrained(DEMO_CHECKPOINT_DIR).eval()


def test_demo_folder_is_complete_and_small():
    for name in DEMO_FILES:
        assert (DEMO_CHECKPOINT_DIR / name).is_file(), name
    assert (DEMO_CHECKPOINT_DIR / "model.safetensors").stat().st_size <= 10 * 2**20
    assert not list(DEMO_CHECKPOINT_DIR.glob("*.py")), "code comes from the package, not from copies"
    evaluation = json.loads((DEMO_CHECKPOINT_DIR / "eval_results.json").read_text())
    card = (DEMO_CHECKPOINT_DIR / "README.md").read_text()
    # The card's numbers are the evaluation's, copied (model-index values are written unrounded).
    assert f"{evaluation['results']['noise-25']['psnr']}" in card


def test_the_demo_runs_the_ways_its_card_says_without_asking_to_run_code(demo_model, monkeypatch):
    """Without code files the demo's configs name none (a dangling auto_map / custom_pipelines made transformers ask
    for trust_remote_code and then fail): the card's snippets run with the installed package, no prompt."""
    from transformers import AutoConfig, AutoImageProcessor, pipeline

    from training.model_card import packaged_usage_section

    def no_prompt(*args, **kwargs):
        raise AssertionError("transformers asked whether to run the folder's code")

    monkeypatch.setattr("builtins.input", no_prompt)
    for name in ("config.json", "preprocessor_config.json"):
        saved = json.loads((DEMO_CHECKPOINT_DIR / name).read_text())
        assert not {"auto_map", "custom_pipelines"} & set(saved), name
    assert packaged_usage_section() in (DEMO_CHECKPOINT_DIR / "README.md").read_text()
    assert type(AutoConfig.from_pretrained(DEMO_CHECKPOINT_DIR)).__module__ == "modeling.configuration_pip"
    assert type(AutoImageProcessor.from_pretrained(DEMO_CHECKPOINT_DIR)) is modeling.RestorationImageProcessor
    image = Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8))
    restorer = pipeline("image-restoration", model=str(DEMO_CHECKPOINT_DIR))
    assert isinstance(restorer, modeling.ImageRestorationPipeline)
    np.testing.assert_array_equal(np.asarray(restorer(image, degradation="noise")),
                                  np.asarray(restore(image, demo_model, degradation="noise")))


def test_a_model_saved_after_a_pipeline_save_names_no_pipeline_code_it_lacks(tmp_path, monkeypatch):
    """A pipeline save leaves `custom_pipelines` on the model's config (and loading such a folder restores it): a
    later plain `save_pretrained` wrote it without the pipeline's file, so `pipeline()` asked for remote code and
    then failed to find the file. Only a folder holding the file names it."""
    from transformers import AutoModelForImageToImage, pipeline

    from conftest import tiny_model

    monkeypatch.setattr("builtins.input", lambda *a, **k: pytest.fail("transformers asked to run the folder's code"))
    model = tiny_model("pip")
    modeling.save_restoration_folder(model, tmp_path / "with-pipeline")
    saved = json.loads((tmp_path / "with-pipeline" / "config.json").read_text())
    assert "pipeline_restoration.py" in {p.name for p in (tmp_path / "with-pipeline").iterdir()}
    assert saved["custom_pipelines"]["image-restoration"]["impl"] == "pipeline_restoration.ImageRestorationPipeline"
    reloaded = AutoModelForImageToImage.from_pretrained(tmp_path / "with-pipeline")
    image = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    for source, folder in ((model, "model-again"), (reloaded, "reloaded")):
        source.save_pretrained(tmp_path / folder)
        assert "custom_pipelines" not in json.loads((tmp_path / folder / "config.json").read_text()), folder
        assert source.config.custom_pipelines  # the instance keeps it: the next pipeline save still has it
        restorer = pipeline("image-restoration", model=str(tmp_path / folder))
        assert isinstance(restorer, modeling.ImageRestorationPipeline)
        np.testing.assert_array_equal(restorer(image, degradation="rain", output_type="np", dtype="fp32"),
                                      restore(image, model, degradation="rain", dtype="fp32"))
    modeling.save_restoration_folder(reloaded, tmp_path / "again-with-pipeline")
    assert json.loads((tmp_path / "again-with-pipeline" / "config.json").read_text())["custom_pipelines"]


def test_demo_loads_with_automodel(demo_model):
    assert isinstance(demo_model, PIPForImageRestoration)
    assert demo_model.can_estimate_degradation


#: Degradations the shipped weights restore by a wide margin (their card: the worst single-image gain is +3.97 dB or
#: more for noise σ 25/50, and low light gains +10.5 dB or more on every everyday photo, +0.27 on the Hubble deep
#: field; every row gains on every photo).
RESTORED_BY_THE_DEMO = ("noise", "low-light")


def test_shipped_examples_restore_with_a_real_gain(demo_model):
    """The shipped noisy and dark examples get clearly better, with their label and without (label-free).

    Measured with the shipped weights, 0.7 of step 56,341 and 0.3 of step 52,091 (2026-12-05, fp32): noise +10.81 dB,
    low light +18.72 dB, in both modes."""
    evaluation = json.loads((DEMO_CHECKPOINT_DIR / "eval_results.json").read_text())
    checked = 0
    for example in evaluation["examples"]:
        if example["degradation"] not in RESTORED_BY_THE_DEMO:
            continue
        degraded = np.asarray(Image.open(DEMO_CHECKPOINT_DIR / example["file"]).convert("RGB"))
        clean = np.asarray(Image.open(DEMO_CHECKPOINT_DIR / example["clean"]).convert("RGB"))
        before = psnr(degraded, clean)
        labelled = np.asarray(restore(Image.fromarray(degraded), demo_model, degradation=example["degradation"]))
        automatic = np.asarray(restore(Image.fromarray(degraded), demo_model))
        assert psnr(labelled, clean) > before + 4.0, example
        assert psnr(automatic, clean) > before + 4.0, example
        checked += 1
    assert checked == len(RESTORED_BY_THE_DEMO)


@pytest.mark.parametrize("shape", [(2, 600), (600, 2), (1, 1), (4, 256)])
def test_thin_flat_images_get_the_prompt_a_large_flat_image_gets(demo_model, shape):
    """Thinner than the pixel estimator's 1/16 level, an image used to be judged from its convolutions' zero
    padding: flat mid-grey 2 x 600 strips went to the low-light prompt and came back almost white (a mean change of
    118 of 255, where a 64 x 64 flat grey changes by under 1)."""
    gray = np.full((*shape, 3), 128, np.uint8)
    large = torch.full((1, 3, 64, 64), 128 / 255)
    thin = torch.from_numpy(gray).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert int(demo_model.estimate_degradation(thin).argmax()) == int(demo_model.estimate_degradation(large).argmax())
    restored = np.asarray(restore(gray, demo_model))
    assert np.abs(restored.astype(int) - gray).mean() < 6, shape


def test_restore_default_model_is_the_demo(demo_model):
    image = np.asarray(Image.open(DEMO_CHECKPOINT_DIR / "examples" / "lomiri-friends-noise.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(restore(Image.fromarray(image))), np.asarray(restore(Image.fromarray(image), demo_model)))


def test_a_copy_of_the_demo_loads_with_remote_code_only(demo_model, tmp_path):
    from transformers import pipeline

    copy = tmp_path / "demo-copy"
    pipeline("image-restoration", model=demo_model, image_processor=modeling.RestorationImageProcessor()).save_pretrained(copy)
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = demo_model(x).reconstruction
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling"] = None
        import torch
        from transformers import AutoModel
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        model = AutoModel.from_pretrained({str(copy)!r}, trust_remote_code=True).eval()
        assert model.__class__.__module__.startswith("transformers_modules")
        with torch.no_grad():
            assert torch.equal(model(io["x"]).reconstruction, io["y"])
        print("REMOTE_OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    # The same number of threads as here: oneDNN's convolutions sum in a thread-count-dependent order.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert "REMOTE_OK" in result.stdout, result.stderr[-3000:]


def test_non_editable_install_carries_the_demo_and_the_cli_uses_it(tmp_path):
    """Build a wheel of the repository, install it (no deps) outside the checkout and restore with no --model."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in DEMO_FILES:
        assert f"modeling/demo/{name}" in names, name
    assert any(n.startswith("modeling/demo/examples/") and n.endswith(".png") for n in names)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    example = site / "modeling" / "demo" / "examples" / "lomiri-friends-noise.png"
    out = tmp_path / "restored"
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same sums
    script = "import sys; sys.argv[0] = 'prompt-restore'; from training.cli_launcher import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", script, str(example), "-o", str(out), "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    restored = np.asarray(Image.open(out / "lomiri-friends-noise.png").convert("RGB"))
    expected = np.asarray(restore(Image.open(example)))
    np.testing.assert_array_equal(restored, expected)
    # It ran the installed copy, not the checkout.
    probe = subprocess.run([sys.executable, "-c", "import modeling; print(modeling.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().startswith(str(site)), probe.stdout + probe.stderr
    # The card templates travel too: a training run from the wheel renders its model card at the end (it used to
    # die there, without writing its model folder, since the templates stayed in the checkout).
    templates = sorted(p.name for p in (REPO / "model_cards").glob("*.md"))
    assert templates and all(f"model_cards/{name}" in names for name in templates)
    script = ("from training.model_card import build_model_card, MODEL_CARDS_DIR; "
              "card = build_model_card('me/x', 'pip', [], {}); print(MODEL_CARDS_DIR); "
              "assert 'Prompt-In-Prompt' in card.text, card.text[:300]; print('CARD_OK')")
    card = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "CARD_OK" in card.stdout and card.stdout.startswith(str(site)), card.stdout + card.stderr[-3000:]


def test_cli_examples_flag_restores_the_shipped_examples_with_the_demo(tmp_path, demo_model):
    """`prompt-restore --examples -o OUT` (the README's first command) restores every shipped example."""
    from modeling.cli import main

    out = tmp_path / "restored"
    assert main(["--examples", "-o", str(out), "-q"]) == 0
    shipped = sorted(p.name for p in (DEMO_CHECKPOINT_DIR / "examples").glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == shipped and len(shipped) == 5
    first = DEMO_CHECKPOINT_DIR / "examples" / shipped[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out / shipped[0])),
                                  np.asarray(restore(Image.open(first), demo_model)))
