"""Held-out evaluation: synthesized settings, input baseline, label-free and NL-means columns, CLI output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import tiny_model
from data_helpers import save, textured_image

from training.evaluate_model import evaluate_heldout, main, markdown_table


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    for i in range(2):
        save(root / f"photo{i}.png", textured_image(200 + i, 40, 48))
    return root


def test_scores_per_setting_with_baselines(heldout):
    results = evaluate_heldout(tiny_model("pip"), heldout, noise_sigmas=(25,), settings=("rain",))
    assert list(results) == ["noise-25", "rain"]
    noise = results["noise-25"]
    # Clipped sigma-25 noise on mid-range content: input PSNR close to 20*log10(255/25) = 20.17 dB.
    assert noise["input_psnr"] == pytest.approx(20 * math.log10(255 / 25), abs=0.3)
    # NL-means with the true sigma removes a good part of that noise on smooth images.
    assert noise["nlm_psnr"] > noise["input_psnr"] + 2
    assert {"psnr", "ssim", "psnr_auto", "ssim_auto", "psnr_gain", "images"} <= set(noise)
    assert noise["psnr_gain"] == pytest.approx(noise["psnr"] - noise["input_psnr"])
    assert "nlm_psnr" not in results["rain"] and results["rain"]["images"] == 2


def test_models_without_labels_have_no_label_free_column(heldout):
    results = evaluate_heldout(tiny_model("restormer"), heldout, noise_sigmas=(15,), settings=(), baseline=False)
    assert "psnr_auto" not in results["noise-15"] and "nlm_psnr" not in results["noise-15"]


def test_cli_writes_json_and_table(heldout, tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_model("pip").save_pretrained(folder)
    output = tmp_path / "eval.json"
    results = main(["--model", str(folder), "--heldout", str(heldout), "--settings", "haze", "--output", str(output)])
    assert json.loads(output.read_text()) == results
    table = capsys.readouterr().out
    assert table == markdown_table(results) + "\n"
    assert "| noise-25 |" in table and "| haze |" in table
    assert np.isfinite(results["haze"]["psnr"])
