"""Packaging trained weights as the shipped demo folder: evaluation JSON, card from it, examples, no code copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import tiny_model
from data_helpers import save, textured_image
from PIL import Image

from training.evaluate_model import restore_settings
from training.package_demo import EXAMPLES, main, package_demo


def test_package_demo_writes_a_complete_folder_from_measured_results(tmp_path):
    heldout = tmp_path / "heldout"
    for index, (_, stem, _) in enumerate(EXAMPLES):
        save(heldout / f"{stem}.png", textured_image(300 + index, 24, 40))
    trained = tmp_path / "trained"
    tiny_model("pip").save_pretrained(trained)
    output = tmp_path / "demo"
    results = package_demo(trained, heldout, output, auto_mode="hard")

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "eval_results.json",
                 "before_after.png", "heldout_table.md"):
        assert (output / name).is_file(), name
    assert not list(output.glob("*.py")) and not (output.parent / ".demo.partial").exists()
    evaluation = json.loads((output / "eval_results.json").read_text())
    assert evaluation["results"] == results and evaluation["auto_mode"] == "hard"
    # the restore settings scored with, as evaluate_model records them: whole images, fp32, restore()'s defaults
    assert {key: evaluation[key] for key in ("seed", "tile", "tile_overlap", "statistics_passes",
                                              "statistics_tolerance", "dtype")} == {
        "seed": 0, "tile": None, "tile_overlap": None, "statistics_passes": 6, "statistics_tolerance": 0.01,
        "dtype": "fp32"}
    assert set(results) == {"noise-15", "noise-25", "noise-50", "blur-gaussian", "blur-defocus", "blur-motion",
                            "low-light", "haze", "rain"}
    # The card's model-index carries exactly the evaluated numbers.
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    reported = {r["dataset"]["config"]: r["metrics"] for r in metadata["model-index"][0]["results"]}
    for row, scores in results.items():
        psnr = next(m["value"] for m in reported[row] if m["type"] == "psnr")
        assert psnr == scores["psnr"]
    # One degraded example per degradation, each with its clean crop, and a 5 x 3 before/after grid.
    assert {e["degradation"] for e in evaluation["examples"]} == {"noise", "rain", "haze", "blur", "low-light"}
    for example in evaluation["examples"]:
        degraded = np.asarray(Image.open(output / example["file"]))
        clean = np.asarray(Image.open(output / example["clean"]))
        assert degraded.shape == clean.shape == (24, 40, 3) and not np.array_equal(degraded, clean)
    grid = Image.open(output / "before_after.png")
    assert grid.size == (40 * 3, 24 * 5)
    # The card's second table has both modes, the worst image and NL-means, from the same results.
    assert f"{results['noise-25']['nlm_psnr']:.2f}" in card and "worst image gain" in card

    # Rewriting the folder from the saved evaluation reuses its numbers (no second evaluation), and refuses a
    # different label-free mode than the one scored.
    import training.evaluate_model

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated again")

    training.evaluate_model.evaluate_heldout, original = no_evaluation, training.evaluate_model.evaluate_heldout
    try:
        assert package_demo(trained, heldout, output, auto_mode="hard", reuse_evaluation=True) == results
        assert json.loads((output / "eval_results.json").read_text()) == evaluation
        assert f"- **weights**: {trained}\n" in (output / "README.md").read_text()
        # The card can name where the weights are kept instead of the (often scratch) folder packaged.
        package_demo(trained, heldout, output, auto_mode="hard", reuse_evaluation=True,
                     weights_name="training/weights/pip-restormer-stepN")
        rewritten = (output / "README.md").read_text()
        assert "- **weights**: training/weights/pip-restormer-stepN\n" in rewritten and str(trained) not in rewritten
        with pytest.raises(ValueError, match="auto_mode"):
            package_demo(trained, heldout, output, auto_mode="soft", reuse_evaluation=True)
        # Scores measured without tiles are not reused for a model that now restores on its own tiles.
        with pytest.raises(ValueError, match="inference_tile=None, but the model restores with 16"):
            package_demo(trained, heldout, output, auto_mode="hard", reuse_evaluation=True, inference_tile=16)
    finally:
        training.evaluate_model.evaluate_heldout = original
    # --inference_tile is written into the shipped config and scored with: restore() then tiles by default.
    # With two evaluation workers, which load the folder being written, the tile is scored as well (32 px: the
    # 24 x 40 photos still split into tiles, two per image; every tiled image also costs restore()'s statistics
    # passes, so larger photos or smaller tiles took this test to minutes).
    tiled = package_demo(trained, heldout, tmp_path / "demo-tiled", auto_mode="hard", inference_tile=32,
                         eval_workers=2)
    from modeling.inference import load_model

    in_process = training.evaluate_model.evaluate_heldout(
        load_model(tmp_path / "demo-tiled"), heldout, auto_mode="hard"
    )
    assert list(tiled) == list(in_process)
    for row, scores in in_process.items():  # equal to float rounding (one thread per worker, two here)
        assert tiled[row]["psnr"] == pytest.approx(scores["psnr"], abs=1e-5)
        assert tiled[row]["image_gains"] == pytest.approx(scores["image_gains"], abs=1e-5)
    assert json.loads((tmp_path / "demo-tiled" / "config.json").read_text())["inference_tile"] == 32
    assert json.loads((tmp_path / "demo-tiled" / "eval_results.json").read_text())["inference_tile"] == 32
    assert tiled != results  # the 24 x 40 photos are restored on 24 x 32 tiles, not whole


def test_the_shipped_card_names_the_document_that_holds_each_training_command():
    """The demo card sent readers to the README's "Train" section for each run's command; that section holds no
    stage commands, only a link to training/weights/README.md. The card now names that document."""
    import re
    from pathlib import Path

    from training.package_demo import STAGES_NOTE

    root = Path(__file__).resolve().parent.parent
    card = (root / "modeling" / "demo" / "README.md").read_text()
    assert f"- **stages**: {STAGES_NOTE}\n" in card
    named = re.search(r"`([^`]+\.md)`", STAGES_NOTE).group(1)
    commands = (root / named).read_text()
    assert commands.count("training/train.py") >= 5  # one per stage, from scratch on
    train_section = (root / "README.md").read_text().split("## Train\n")[1].split("\n## ")[0]
    assert named in train_section  # and the README's Train section points there too


def test_reused_scores_of_other_weights_are_refused(tmp_path, capsys):
    """`reuse_evaluation` takes the scores of the weights already in the output folder: packaging other weights with
    them used to ship a card whose numbers were measured on a different model."""
    from modeling import save_restoration_folder

    heldout = tmp_path / "heldout"
    for index, (_, stem, _) in enumerate(EXAMPLES):
        save(heldout / f"{stem}.png", textured_image(300 + index, 32, 32))
    demo = tmp_path / "demo"
    save_restoration_folder(tiny_model("pip", seed=0), demo, with_code=False)
    scores = {"psnr": 30.0, "ssim": 0.9, "input_psnr": 20.0, "psnr_gain": 10.0, "min_image_gain": 1.0, "images": 5}
    settings = restore_settings(tiny_model("pip"), auto_mode="hard")
    (demo / "eval_results.json").write_text(json.dumps({**settings, "inference_tile": None,
                                                        "results": {"noise-25": scores}}))
    before = sorted(p.name for p in demo.iterdir())
    tiny_model("pip", seed=5).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not those of"):
        package_demo(tmp_path / "other", heldout, demo, auto_mode="hard", reuse_evaluation=True)
    assert sorted(p.name for p in demo.iterdir()) == before  # nothing rewritten
    # the command says so in one line (exit 2), as for a missing eval_results.json
    for output, message in ((demo, "not those of"), (tmp_path / "new", "holds no eval_results.json")):
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(tmp_path / "other"), "--heldout", str(heldout), "--output", str(output),
                  "--auto_mode", "hard", "--reuse_evaluation"])
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in error and message in error.splitlines()[-1], error
    assert sorted(p.name for p in demo.iterdir()) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("change, message", [
    ({"dtype": "bf16"}, "scored dtype='bf16', not 'fp32'"),
    ({"tile_overlap": 8}, "scored tile_overlap=8, not None"),
    ({"statistics_passes": 0}, "scored statistics_passes=0, not 6"),
    ({"dtype": None}, "does not record the dtype it was scored with"),
])
def test_reused_scores_of_other_restore_settings_are_refused(tmp_path, capsys, change, message):
    """`reuse_evaluation` compared the label-free mode and the model's tile only: scores measured in bf16, or with
    another tile overlap or number of statistics passes, were shipped as the scores of the default evaluation.
    Every restore setting evaluate_model records is compared; a file that records none is refused as well."""
    from modeling import save_restoration_folder

    heldout = tmp_path / "heldout"
    for index, (_, stem, _) in enumerate(EXAMPLES):
        save(heldout / f"{stem}.png", textured_image(300 + index, 32, 32))
    demo = tmp_path / "demo"
    model = tiny_model("pip", seed=0)
    save_restoration_folder(model, demo, with_code=False)
    settings = {**restore_settings(model, auto_mode="hard"), **change}
    if change.get("dtype", "") is None:
        del settings["dtype"]
    scores = {"psnr": 30.0, "ssim": 0.9, "input_psnr": 20.0, "psnr_gain": 10.0, "min_image_gain": 1.0, "images": 5}
    (demo / "eval_results.json").write_text(json.dumps({**settings, "inference_tile": None,
                                                        "results": {"noise-25": scores}}))
    before = sorted(p.name for p in demo.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(demo), "--heldout", str(heldout), "--output", str(demo), "--auto_mode", "hard",
              "--reuse_evaluation"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in error and message in error.splitlines()[-1], error
    assert sorted(p.name for p in demo.iterdir()) == before


def test_a_checkpoint_saved_in_bf16_is_shipped_as_saved_and_scored_as_its_float32_copy(tmp_path):
    """package_demo loaded a bf16 checkpoint as saved and evaluated it in fp32: restore() refused fp32 over bf16
    weights and packaging died with a traceback. The weights are shipped in bf16, the scores and the grid are those
    of their float32 copy (as evaluate_model scores such a checkpoint)."""
    import torch

    from modeling.inference import load_model
    from training.evaluate_model import evaluate_heldout

    heldout = tmp_path / "heldout"
    for index, (_, stem, _) in enumerate(EXAMPLES):
        save(heldout / f"{stem}.png", textured_image(300 + index, 16, 24))
    trained = tmp_path / "trained"
    tiny_model("pip").to(torch.bfloat16).save_pretrained(trained)
    output = tmp_path / "demo"
    results = package_demo(trained, heldout, output, auto_mode="hard")
    shipped = load_model(output, device="cpu")
    assert {p.dtype for p in shipped.parameters()} == {torch.bfloat16}
    saved = load_model(trained, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), saved.state_dict().values()))
    as_fp32 = tiny_model("pip").to(torch.bfloat16).float()
    expected = evaluate_heldout(as_fp32, heldout, noise_sigmas=(25,), settings=(), baseline=False, auto_mode="hard")
    assert results["noise-25"]["psnr"] == pytest.approx(expected["noise-25"]["psnr"], abs=1e-6)
    assert results["noise-25"]["psnr_auto"] == pytest.approx(expected["noise-25"]["psnr_auto"], abs=1e-6)
    assert json.loads((output / "eval_results.json").read_text())["dtype"] == "fp32"
    # and the scores are reused for the same bf16 weights
    assert package_demo(trained, heldout, output, auto_mode="hard", reuse_evaluation=True) == results
