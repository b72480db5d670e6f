"""PSNR/SSIM metric module, model cards with measured results, and pushing a model folder to a fake Hub."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fake_hub import FakeHub
from modeling import RestormerConfig, RestormerForImageRestoration
from modeling.image_processing_restoration import RestorationImageProcessor
from training import evaluation
from training.model_card import (
    DEFAULT_METRIC_PROTOCOL,
    HubPushError,
    build_model_card,
    plot_training_curves,
    push_folder_to_hub,
    recipe_config,
    results_table,
    save_model_card,
    save_model_folder,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

RESULTS = [
    {"task": "noise-25", "dataset": "CBSD68", "split": "heldout", "psnr": 30.1234, "ssim": 0.9123, "input_psnr": 20.17},
    {"task": "derain", "dataset": "Rain100L", "dataset_id": "org/rain100l", "psnr": 36.5, "ssim": 0.975,
     "input_psnr": 25.5, "num_images": 100},
]
SUMMARY = {
    "steps": 1200,
    "hardware": "4x A100 80GB",
    "config": {"learning_rate": 2e-4, "adam_betas": [0.9, 0.999], "patch_size": 128},
    "command": "accelerate launch training/train.py --config training/configs/pip_restormer_5task.yaml",
}


@pytest.fixture(scope="module")
def metric():
    return evaluation.load_restoration_metric()


def _pair(height: int, width: int, seed: int, noise: float = 0.05) -> tuple:
    rng = np.random.default_rng(seed)
    reference = rng.random((height, width, 3))
    prediction = np.clip(reference + noise * rng.standard_normal(reference.shape), 0, 1)
    return prediction, reference


# --- metric module ---------------------------------------------------------------------------------------------


def test_metric_matches_skimage_per_image_then_mean(metric):
    # Three images of very different quality: their mean is neither their median nor the score of the pooled MSE.
    pairs = [_pair(32, 40, 0), _pair(48, 48, 1, noise=0.1), _pair(32, 32, 2, noise=0.005)]
    result = metric.compute(
        predictions=[p for p, _ in pairs], references=[r for _, r in pairs], return_per_image=True
    )
    expected_psnr = [peak_signal_noise_ratio(r, p, data_range=1) for p, r in pairs]
    expected_ssim = [structural_similarity(r, p, data_range=1, channel_axis=-1) for p, r in pairs]
    assert result["num_images"] == 3
    assert abs(np.mean(expected_psnr) - np.median(expected_psnr)) > 1 and abs(np.mean(expected_ssim) - np.median(expected_ssim)) > 1e-3
    assert result["psnr_per_image"] == expected_psnr  # bit-exact: float64 survives the Arrow round trip
    assert result["ssim_per_image"] == expected_ssim
    assert result["psnr"] == pytest.approx(np.mean(expected_psnr), abs=1e-12)
    assert result["ssim"] == pytest.approx(np.mean(expected_ssim), abs=1e-12)
    # the thin wrappers use the same code, without the Arrow buffer
    assert evaluation.psnr(pairs[0][0], pairs[0][1]) == expected_psnr[0]
    assert evaluation.ssim(pairs[1][0], pairs[1][1]) == expected_ssim[1]


@pytest.mark.parametrize("crop_border", [0, 3])
@pytest.mark.parametrize("test_y_channel", [False, True])
@pytest.mark.parametrize("gaussian", [False, True])
def test_metric_matches_skimage_under_every_setting(metric, crop_border, test_y_channel, gaussian):
    """Random images, every combination of the protocol options: equal to scikit-image to 1e-6."""
    pairs = [_pair(29, 37, 10), _pair(40, 33, 11, noise=0.2)]

    def prepare(image):
        inside = slice(crop_border, -crop_border) if crop_border else slice(None)
        image = image[inside, inside]
        return image @ (np.array([65.481, 128.553, 24.966]) / 255) + 16 / 255 if test_y_channel else image

    expected_psnr = [peak_signal_noise_ratio(prepare(r), prepare(p), data_range=1) for p, r in pairs]
    expected_ssim = [
        structural_similarity(prepare(r), prepare(p), data_range=1, gaussian_weights=gaussian,
                              channel_axis=None if test_y_channel else -1)
        for p, r in pairs
    ]
    result = metric.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs],
                            crop_border=crop_border, ssim_gaussian_weights=gaussian, test_y_channel=test_y_channel,
                            return_per_image=True)
    np.testing.assert_allclose(result["psnr_per_image"], expected_psnr, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["ssim_per_image"], expected_ssim, rtol=0, atol=1e-6)
    assert result["psnr"] == pytest.approx(np.mean(expected_psnr), abs=1e-6)


def test_psnr_of_known_mse(metric):
    reference = np.linspace(0.0, 0.875, 16 * 16 * 3).reshape(16, 16, 3)
    # constant offset 0.1 -> MSE 0.01 -> 20 dB; 0.125 (exact in binary) -> 10*log10(64)
    result = metric.compute(predictions=[reference + 0.1], references=[reference])
    assert result["psnr"] == pytest.approx(20.0, abs=1e-9)
    assert evaluation.psnr(reference + 0.125, reference) == pytest.approx(10 * math.log10(64), abs=1e-12)
    # predictions are clipped to [0, 1] before scoring (PromptIR): overshoot beyond 1 costs nothing extra
    ones = np.ones((8, 8, 3))
    assert evaluation.psnr(ones + 0.5, ones) == math.inf
    assert evaluation.ssim(ones + 0.5, ones) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_inputs_are_scaled_by_their_full_range(metric, dtype):
    """8- and 16-bit images (PNGs) score as their [0, 1] floats, value / 255 or value / 65535, as skimage scores
    them; integer white is 1.0 exactly."""
    peak = np.iinfo(dtype).max
    prediction, reference = (((image * peak).round()).astype(dtype) for image in _pair(24, 24, 2))
    result = metric.compute(predictions=[prediction], references=[reference])
    assert result == metric.compute(predictions=[prediction / peak], references=[reference / peak])
    assert result["psnr"] == pytest.approx(peak_signal_noise_ratio(reference, prediction), abs=1e-9)
    assert evaluation.psnr(np.full((8, 8, 3), peak, dtype), np.ones((8, 8, 3))) == math.inf
    with pytest.raises(ValueError, match="outside"):  # [0, peak] floats are an error, not silently clipped
        evaluation.psnr(prediction.astype(np.float32), reference.astype(np.float32))



def test_a_prediction_on_the_0_255_scale_is_refused_not_clipped(metric):
    """A perfect restoration passed as float `output * 255` used to be clipped to 1 and scored 4.8 dB without a
    word (the same mistake on the reference was refused); ordinary overshoot is still clipped."""
    clean = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for score in (evaluation.psnr, evaluation.ssim):
        with pytest.raises(ValueError, match="prediction values span"):
            score(clean.astype(np.float32), clean)
    with pytest.raises(ValueError, match="prediction values span"):
        metric.compute(predictions=[clean.astype(np.float64)], references=[clean])
    assert evaluation.psnr(clean / 255 * 1.5 - 0.2, clean) < 20  # overshoot: clipped and scored


def test_the_prediction_range_check_follows_data_range_and_its_documented_bounds(metric):
    """Overshoot up to [-1, 2] x data_range is clipped and scored; beyond is refused. The bound scales with
    data_range: floats on [0, 255] with data_range=255 score as the same images on [0, 1] with data_range=1."""
    prediction, reference = _pair(16, 16, 7)
    expected = metric.compute(predictions=[prediction], references=[reference])
    assert metric.compute(predictions=[prediction * 255], references=[reference * 255], data_range=255) == (
        pytest.approx(expected))
    for inside in (1.99, -0.99):  # clipped to [0, 1]: the pixel scores as 1 or 0
        overshoot = prediction.copy()
        overshoot[0, 0, 0] = inside
        clipped = overshoot.clip(0, 1)
        assert metric.compute(predictions=[overshoot], references=[reference]) == pytest.approx(
            metric.compute(predictions=[clipped], references=[reference]))
    for outside in (2.01, -1.01):
        overshoot = prediction.copy()
        overshoot[0, 0, 0] = outside
        with pytest.raises(ValueError, match="prediction values span"):
            metric.compute(predictions=[overshoot], references=[reference])


def test_torch_channels_first_batches_and_accumulation(metric):
    pairs = [_pair(16, 24, 3), _pair(16, 24, 4)]
    predictions = torch.from_numpy(np.stack([p for p, _ in pairs])).permute(0, 3, 1, 2)  # (N, C, H, W)
    references = torch.from_numpy(np.stack([r for _, r in pairs])).permute(0, 3, 1, 2)
    expected = metric.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    assert metric.compute(predictions=predictions, references=references) == expected
    for p, r in zip(predictions, references):  # one (C, H, W) tensor at a time, as a validation loop does
        metric.add_batch(predictions=p[None], references=r[None])
    assert metric.compute() == expected


def test_crop_border_and_y_channel_options(metric):
    rng = np.random.default_rng(5)
    reference = 0.2 + 0.6 * rng.random((32, 32, 3))
    prediction = reference.copy()
    prediction[:2] += 0.1  # error only in the top 2 rows
    assert math.isfinite(metric.compute(predictions=[prediction], references=[reference])["psnr"])
    cropped = metric.compute(predictions=[prediction], references=[reference], crop_border=2)
    assert cropped["psnr"] == math.inf and cropped["ssim"] == pytest.approx(1.0)

    prediction, reference = _pair(40, 40, 6)
    result = metric.compute(predictions=[prediction], references=[reference], crop_border=4)
    assert result["psnr"] == peak_signal_noise_ratio(reference[4:-4, 4:-4], prediction[4:-4, 4:-4], data_range=1)

    # Y channel = BasicSR's BT.601 luma; a change orthogonal to the luma weights is invisible to it
    def luma(image: np.ndarray) -> np.ndarray:
        return image @ (np.array([65.481, 128.553, 24.966]) / 255) + 16 / 255

    y = metric.compute(predictions=[prediction], references=[reference], test_y_channel=True)
    expected_y = peak_signal_noise_ratio(luma(reference), luma(prediction), data_range=1)
    assert y["psnr"] == pytest.approx(expected_y, abs=1e-9)
    assert y["psnr"] != pytest.approx(metric.compute(predictions=[prediction], references=[reference])["psnr"])
    chroma_only = np.array([128.553, -65.481, 0.0]) / 2000  # dot with the luma weights is 0
    shifted = reference.copy()
    shifted[8:24, 8:24] = np.clip(0.5 + chroma_only, 0, 1)
    base = reference.copy()
    base[8:24, 8:24] = 0.5
    assert metric.compute(predictions=[shifted], references=[base], test_y_channel=True)["psnr"] > 100
    assert metric.compute(predictions=[shifted], references=[base])["psnr"] < 60


def _basicsr_ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """BasicSR's `calculate_ssim` written out for a (H, W) or (H, W, C) float pair in [0, 1]: images scaled to
    [0, 255], an 11x11 Gaussian window (sigma 1.5) over the valid region, population (co)variances, the mean of
    the SSIM map per channel, then over channels."""
    from scipy.signal import correlate2d

    axis = np.arange(11) - 5
    kernel = np.exp(-axis**2 / (2 * 1.5**2))
    window = np.outer(kernel, kernel) / np.outer(kernel, kernel).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    channels = zip(np.atleast_3d(image * 255.0).transpose(2, 0, 1), np.atleast_3d(reference * 255.0).transpose(2, 0, 1))
    for a, b in channels:
        mu1, mu2 = correlate2d(a, window, "valid"), correlate2d(b, window, "valid")
        var1 = correlate2d(a * a, window, "valid") - mu1**2
        var2 = correlate2d(b * b, window, "valid") - mu2**2
        cov = correlate2d(a * b, window, "valid") - mu1 * mu2
        scores.append(np.mean((2 * mu1 * mu2 + c1) * (2 * cov + c2) / ((mu1**2 + mu2**2 + c1) * (var1 + var2 + c2))))
    return float(np.mean(scores))


def test_basicsr_ssim_is_the_gaussian_window_with_population_variances(metric):
    """skimage's Gaussian SSIM scales the window's variances by N / (N - 1); BasicSR's `calculate_ssim` (and
    MATLAB's ssim, pytorch_msssim) do not, which moved the fourth decimal. `ssim_sample_covariance=False` gives
    BasicSR's number, in RGB and on the Y channel with a border shave; the y-channel protocol uses it."""
    prediction, reference = _pair(40, 36, 12, noise=0.1)
    basicsr = metric.compute(predictions=[prediction], references=[reference], ssim_gaussian_weights=True,
                             ssim_sample_covariance=False)["ssim"]
    assert basicsr == pytest.approx(_basicsr_ssim(prediction, reference), abs=1e-9)
    skimage_default = metric.compute(predictions=[prediction], references=[reference], ssim_gaussian_weights=True)
    assert abs(skimage_default["ssim"] - basicsr) > 1e-6  # far above float rounding (1e-9 above)

    def luma(image, border=0):
        inside = slice(border, -border) if border else slice(None)
        return image[inside, inside] @ (np.array([65.481, 128.553, 24.966]) / 255) + 16 / 255

    y = metric.compute(predictions=[prediction], references=[reference], ssim_gaussian_weights=True,
                       ssim_sample_covariance=False, test_y_channel=True, crop_border=4)["ssim"]
    assert y == pytest.approx(_basicsr_ssim(luma(prediction, 4), luma(reference, 4)), abs=1e-9)
    from training import evaluate_protocol as ep

    convention = ep.CONVENTIONS["y-channel"]
    assert ep.ssim(prediction, reference, **convention.ssim_kwargs()) == pytest.approx(
        _basicsr_ssim(luma(prediction), luma(reference)), abs=1e-9)
    assert "population-variance" in convention.describe()


def test_gaussian_ssim_option_matches_moce_ir_setting(metric):
    prediction, reference = _pair(32, 32, 7, noise=0.1)
    result = metric.compute(predictions=[prediction], references=[reference], ssim_gaussian_weights=True)
    expected = structural_similarity(reference, prediction, data_range=1, channel_axis=-1, gaussian_weights=True)
    assert result["ssim"] == expected
    assert result["ssim"] != metric.compute(predictions=[prediction], references=[reference])["ssim"]
    assert evaluation.ssim(prediction, reference, gaussian_weights=True) == expected


def test_metric_input_errors(metric):
    with pytest.raises(ValueError, match="shape"):
        evaluation.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="crop_border"):
        evaluation.psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), crop_border=4)


# --- model card ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, paper",
    # DPPD's paper has no arXiv id: its card gives the DOI (the generic card cites Restormer's arXiv id as well, so
    # only the DOI shows that the DPPD card was used).
    [("pip", "2312.05038"), ("promptir", "2306.13090"), ("restormer", "2111.09881"),
     ("dppd", "10.1109/tip.2025.3567205")],
)
def test_model_card_round_trip(tmp_path, model_type, paper):
    from huggingface_hub import ModelCard

    card = build_model_card(
        f"org/{model_type}-tiny", model_type, RESULTS, SUMMARY, figures=["validation_grid.png"], base_model="org/base"
    )
    loaded = ModelCard.load(save_model_card(card, tmp_path))
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-to-image"
    assert data.license == "apache-2.0" and data.base_model == "org/base"
    assert {"image-restoration", "all-in-one", "prompt-learning", model_type} <= set(data.tags)
    measured = {(e.dataset_config, e.metric_type): e.metric_value for e in data.eval_results}
    assert measured == {
        ("noise-25", "psnr"): 30.1234, ("noise-25", "ssim"): 0.9123,
        ("derain", "psnr"): 36.5, ("derain", "ssim"): 0.975,
    }
    assert {e.dataset_type for e in data.eval_results} == {"CBSD68", "org/rain100l"}
    # The Hub shows these names beside the numbers: each metric under its own name, each dataset under its name.
    assert {(e.metric_type, e.metric_name) for e in data.eval_results} == {("psnr", "PSNR"), ("ssim", "SSIM")}
    assert {(e.dataset_type, e.dataset_name) for e in data.eval_results} == {("CBSD68", "CBSD68"),
                                                                             ("org/rain100l", "Rain100L")}
    assert {e.dataset_split for e in data.eval_results} == {"heldout", "validation"}
    text = loaded.text
    assert "| Task | Dataset | Split | Images | PSNR (dB) | SSIM | Input PSNR (dB) |" in text
    assert "| noise-25 | CBSD68 | heldout | – | 30.12 | 0.9123 | 20.17 |" in text
    assert "| derain | Rain100L | validation | 100 | 36.50 | 0.9750 | 25.50 |" in text
    assert f"| **Average** |  |  |  | 33.31 | {(0.9123 + 0.975) / 2:.4f} | 22.84 |" in text  # means of the rows
    assert "![validation grid](validation_grid.png)" in text
    assert "| `adam_betas` | `[0.9, 0.999]` |" in text and "- **steps**: 1200" in text
    assert SUMMARY["command"] in text and DEFAULT_METRIC_PROTOCOL in text
    assert f'AutoModel.from_pretrained("org/{model_type}-tiny", trust_remote_code=True)' in text
    assert 'pipeline("image-restoration"' in text and "prompt-restore degraded.png" in text
    assert f"arXiv:{paper}" in text or f"arxiv.org/abs/{paper}" in text or f"(DOI {paper})" in text


def test_model_card_takes_numbers_only_from_results(tmp_path):
    from huggingface_hub import ModelCard

    card = build_model_card("org/untrained", "restormer", [], {})
    loaded = ModelCard.load(save_model_card(card, tmp_path))
    assert not loaded.data.eval_results
    assert "No evaluation results" in loaded.text and "Training details were not recorded" in loaded.text
    with pytest.raises(ValueError, match="finite"):
        build_model_card("org/x", "pip", [{"task": "noise-25", "dataset": "CBSD68", "psnr": float("nan")}], {})
    with pytest.raises(ValueError, match="lacks psnr"):
        build_model_card("org/x", "pip", [{"task": "noise-25", "dataset": "CBSD68"}], {})
    card = build_model_card("org/x", "pip", [{"task": "noise-25", "dataset": "CBSD68", "psnr": np.float32(30.5)}],
                            {"datasets": ("org/rain100l", "org/bsd400")})
    assert card.data.eval_results[0].metric_value == 30.5  # numpy scalars from validation become plain floats
    # The training summary's Hub dataset ids reach the card metadata (the Hub links them) as well as its text.
    loaded = ModelCard.load(save_model_card(card, tmp_path))
    assert loaded.data.datasets == ["org/rain100l", "org/bsd400"]
    assert "- **datasets**: `org/rain100l`, `org/bsd400`" in loaded.text
    assert results_table([RESULTS[0]]).count("\n") == 2  # header, rule, one row; no average of a single row
    # "other" needs the name and link the Hub shows in place of a licence it does not know
    with pytest.raises(ValueError, match="needs license_name and license_link"):
        build_model_card("org/x", "pip", [], {}, license="other", license_name="pip-official-weights")
    with pytest.raises(ValueError, match="describe license 'other'"):
        build_model_card("org/x", "pip", [], {}, license_link="LICENSE")
    card = build_model_card("org/x", "pip", [], {}, license="other", license_name="mine", license_link="LICENSE")
    loaded = ModelCard.load(save_model_card(card, tmp_path))
    assert (loaded.data.license, loaded.data.license_name, loaded.data.license_link) == ("other", "mine", "LICENSE")
    assert "`other`, [mine](LICENSE)" in loaded.text


def test_pip_card_names_the_recipe_its_command_used():
    """A run of the small CPU recipe says so first; a run of the paper's recipe says that; a card that records no
    training command (converted official weights, a folder trained before commands were kept) claims no recipe
    for the weights and only names the paper's (it used to say "Recipe: pip_restormer_5task.yaml" for any)."""
    cpu = build_model_card("org/pip-cpu", "pip", [], {"command": "accelerate launch training/train.py --config "
                                                                "training/configs/pip_restormer_cpu.yaml"})
    recipe_line = next(line for line in cpu.text.splitlines() if line.startswith("Recipe:"))
    assert recipe_line.startswith("Recipe: `training/configs/pip_restormer_cpu.yaml`, run as the command below")
    assert "The paper's recipe is `training/configs/pip_restormer_5task.yaml`" in recipe_line
    five_task = "accelerate launch training/train.py --config=training/configs/pip_restormer_5task.yaml"
    card = build_model_card("org/pip", "pip", [], {"command": five_task})
    recipe_line = next(line for line in card.text.splitlines() if line.startswith("Recipe:"))
    assert recipe_line.startswith("Recipe: `training/configs/pip_restormer_5task.yaml` (AdamW 3.6e-4")
    assert recipe_line.endswith("the paper's, run as the command below says.")
    unrecorded = build_model_card("org/pip", "pip", [], {"weights": "trained with this repository (`model`)"})
    assert not any(line.startswith("Recipe:") for line in unrecorded.text.splitlines())
    assert "\nThe paper's recipe is `training/configs/pip_restormer_5task.yaml` (AdamW 3.6e-4" in unrecorded.text
    assert recipe_config({"command": "train.py --config recipe.yaml --seed 1"}) == "recipe.yaml"
    assert recipe_config({"command": "train.py --seed 1"}) == "" and recipe_config({}) == ""


# --- validation, grids, training curves, the final folder -------------------------------------------------------


def _validation_set():
    rng = np.random.default_rng(0)
    pairs = []
    for task, count in (("noise", 2), ("rain", 1)):
        for _ in range(count):
            clean = rng.integers(40, 200, (16, 24, 3), dtype=np.uint8)
            degraded = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
            pairs.append({"degraded": degraded, "clean": clean, "task_name": task})
    return evaluation.ValidationSet(pairs)


def test_validation_scores_the_inputs_once(monkeypatch, metric):
    validation_set = _validation_set()
    torch.manual_seed(0)
    model = RestormerForImageRestoration(
        RestormerConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
    )
    calls = []
    compute = metric.compute
    monkeypatch.setattr(metric, "compute", lambda **kw: calls.append(kw) or compute(**kw))
    first = evaluation.evaluate_model(model, validation_set)
    assert len(calls) == 4  # 2 tasks x (restored, inputs)
    second = evaluation.evaluate_model(model, validation_set)
    assert len(calls) == 6  # the inputs were scored once: only the restorations again
    assert first["tasks"] == second["tasks"] and set(first["tasks"]) == {"noise", "rain"}
    noise = [p for p in validation_set if p["task_name"] == "noise"]
    expected = np.mean([evaluation.psnr(p["degraded"], p["clean"]) for p in noise])
    assert first["tasks"]["noise"]["input_psnr"] == pytest.approx(expected, abs=1e-9)
    assert first["tasks"]["noise"]["images"] == 2
    grid = evaluation.sample_grid(first["samples"], height=32)
    assert grid.size == (3 * 48, 2 * 32)  # rows: tasks; columns: degraded | restored | clean (aspect kept)


def test_training_curves_average_per_window_and_validation_per_task(tmp_path):
    history = [{"step": s, "loss": 0.1 / s, "lr": 1e-4} for s in (10, 20, 30)]
    validation = [{"step": 10, "psnr": {"noise": 25.0, "rain": 28.0}},
                  {"step": 30, "psnr": {"noise": 26.5, "rain": 29.0}}]
    assert plot_training_curves(history, tmp_path / "curves.png", validation)
    with Image.open(tmp_path / "curves.png") as image:
        width, _ = image.size
        assert width == 3 * 560  # loss, validation PSNR per task, learning rate
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 16)}
    assert (40, 110, 200) in colours  # the second task's curve
    assert plot_training_curves(history, tmp_path / "no_val.png")
    with Image.open(tmp_path / "no_val.png") as image:
        assert image.size[0] == 2 * 560
    assert not plot_training_curves([], tmp_path / "nothing.png") and not (tmp_path / "nothing.png").exists()


def test_save_model_folder_is_complete_and_atomic(tmp_path):
    torch.manual_seed(0)
    model = RestormerForImageRestoration(
        RestormerConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
    )
    results = {"noise": {"psnr": 30.25, "ssim": 0.9, "input_psnr": 20.5, "input_ssim": 0.5, "images": 2}}
    folder = save_model_folder(
        model, tmp_path / "model", model_id="me/tiny", model_type="restormer", results=results, dataset="5-task",
        training_summary={"steps": 3},
        history=[{"step": 1, "loss": 0.2, "lr": 1e-3}, {"step": 2, "loss": 0.1, "lr": 1e-3}],
    )
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "training_curves.png",
            "eval_results.json", "training_summary.json"} <= names
    assert json.loads((folder / "training_summary.json").read_text()) == {"steps": 3}  # what publish carries over
    assert not list(tmp_path.glob(".*partial"))
    card = (folder / "README.md").read_text()
    assert "30.25" in card and "| 2 |" in card  # measured PSNR and the number of images


def test_the_pip_card_describes_the_trained_config_not_the_default_one(tmp_path):
    """A PIP trained as CPL's plug-in (PromptIR's decoder prompts, top-1 routing, CPR) on the 3-task classes was
    published with the default model's description: "on a Restormer backbone" and "the 5-task" classes."""
    from conftest import tiny_model

    plug_in = tiny_model("pip", decoder_prompts=True, decoder_prompt_dims=[4, 8, 16], decoder_prompt_sizes=[8, 4, 2],
                         decoder_prompt_top_k=1, training_loss="contrastive_prompt_regularization",
                         num_degradations=3, degradation_names=["noise", "rain", "haze"])
    folder = save_model_folder(plug_in, tmp_path / "plug-in", model_id="me/plug-in", model_type="pip", results={},
                               dataset="3-task", training_summary={"steps": 3})
    card = (folder / "README.md").read_text()
    assert "Restormer backbone" not in card and "plugged into PromptIR's backbone" in card
    assert "top-1 prompt component)" in card and "contrastive prompt regularisation" in card
    assert "Degradation classes: noise, rain, haze;" in card and "5-task ones" not in card

    # PIP on PromptIR's backbone alone (dense decoder prompts, no CPR) claims neither of CPL's parts; top-2 is plural
    for extra, claims in (({}, []), ({"decoder_prompt_top_k": 2}, ["top-2 prompt components)"])):
        plain = tiny_model("pip", decoder_prompts=True, decoder_prompt_dims=[4, 8, 16], decoder_prompt_sizes=[8, 4, 2],
                           **extra)
        folder = save_model_folder(plain, tmp_path / f"plain{len(extra)}", model_id="me/plain", model_type="pip",
                                   results={}, dataset="5-task", training_summary={"steps": 3})
        text = " ".join((folder / "README.md").read_text().split())
        assert "plugged into PromptIR's backbone" in text and "contrastive prompt regularisation" not in text
        assert ("sparse prompt module" in text) == bool(extra) and all(claim in text for claim in claims)

    default = save_model_folder(tiny_model("pip"), tmp_path / "default", model_id="me/default", model_type="pip",
                                results={}, dataset="5-task", training_summary={"steps": 3})
    card = (default / "README.md").read_text()
    assert "**PIP (Prompt-In-Prompt learning)** on a Restormer backbone. One network\n" in card
    assert "- Degradation classes are the 5-task ones (noise, rain, haze, blur, low-light);" in card
    assert "PromptIR's backbone" not in card and "\n\n\n" not in card.split("## How to use")[0]


def test_the_dppd_card_states_the_trained_loss_weights(tmp_path):
    """The card's loss line was fixed text: a model trained with other weights was published with the defaults."""
    from conftest import tiny_model

    def loss_line(model) -> str:
        folder = save_model_folder(model, tmp_path / str(id(model)), model_id="me/dppd", model_type="dppd",
                                   results={}, dataset="3-task", training_summary={"steps": 3})
        card = " ".join((folder / "README.md").read_text().split())  # the sentence wraps
        return card[card.index("Loss: L1"):card.index("prototype prior.")]

    assert loss_line(tiny_model("dppd")) == ("Loss: L1 + 0.1 × prototype cross-entropy (with degradation labels) + "
                                             "0.1 × prototype separation + 0.01 × KL towards the ")
    changed = tiny_model("dppd", prototype_loss_weight=0.5, prototype_separation_weight=0.0, kl_loss_weight=0.02)
    assert loss_line(changed) == ("Loss: L1 + 0.5 × prototype cross-entropy (with degradation labels) + "
                                  "0.0 × prototype separation + 0.02 × KL towards the ")


# --- push ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A saved tiny model with processor, our card, a figure, and a checkpoint that must not be uploaded."""
    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = RestormerConfig(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
    RestormerForImageRestoration(config).save_pretrained(folder)
    RestorationImageProcessor().save_pretrained(folder)
    Image.fromarray(np.full((8, 24, 3), 128, np.uint8)).save(folder / "validation_grid.png")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.bin").write_bytes(b"not for the hub")
    save_model_card(build_model_card("me/tiny", "restormer", RESULTS, SUMMARY, figures=["validation_grid.png"]), folder)
    return folder


def _snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _push_cli(folder: Path, env: dict, *flags: str, repo_id: str = "me/tiny") -> subprocess.CompletedProcess:
    # A fresh interpreter: huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_TOKEN once, at import.
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "training.model_card", "push", str(folder), repo_id, *flags],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_push_folder_to_fake_hub(model_folder):
    from huggingface_hub import ModelCard

    before = _snapshot(model_folder)
    with FakeHub() as hub:
        result = _push_cli(model_folder, hub.client_env())
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{hub.endpoint}/me/tiny/commit/")
        received = hub.files("me/tiny")
    # everything but the training checkpoint: weights, config, processor, card, figure and the remote code
    assert set(received) == {name for name in before if not name.startswith("checkpoint-")}
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "validation_grid.png"} <= set(
        received
    )
    assert any(name.endswith(".py") for name in received)
    for name in received:
        assert received[name] == (model_folder / name).read_bytes(), name
    assert hub.commits[0]["summary"] == "Upload model trained with prompt-restoration"
    card = ModelCard(received["README.md"].decode())
    measured = {(e.dataset_config, e.metric_type): e.metric_value for e in card.data.eval_results}
    assert measured[("derain", "psnr")] == 36.5 and measured[("noise-25", "ssim")] == 0.9123
    assert "![validation grid](validation_grid.png)" in card.text
    assert _snapshot(model_folder) == before


@pytest.mark.parametrize(
    "case, reason",
    [
        ("offline", "offline mode is on (HF_HUB_OFFLINE=1)"),
        ("no-token", "no Hugging Face token"),
        ("bad-token", "401 Unauthorized"),
        ("commit-refused", "403 Forbidden"),
        # the Hub's reason is below huggingface_hub's first line ("Invalid metadata in README.md."): it used to be cut
        ("metadata-refused", 'Invalid metadata in README.md. - "license" must be one of [apache-2.0, mit, other]'),
    ],
)
def test_push_failure_is_one_clear_line_and_keeps_the_folder(model_folder, tmp_path, case, reason):
    before = _snapshot(model_folder)
    yaml_errors = ('"license" must be one of [apache-2.0, mit, other]',) if case == "metadata-refused" else ()
    with FakeHub(fail={"commit": 403} if case == "commit-refused" else None, yaml_errors=yaml_errors) as hub:
        # an empty HF_HOME: no stored login to fall back on
        env = hub.client_env(token={"no-token": None, "bad-token": "hf_wrong"}.get(case, "hf_fake"))
        env["HF_HOME"] = str(tmp_path / "hf_home")
        if case == "offline":
            env["HF_HUB_OFFLINE"] = "1"
        result = _push_cli(model_folder, env)
        offline_requests = list(hub.requests)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("push to the Hub failed: ") and reason in lines[0]
    assert f"the model is saved locally in {model_folder}" in lines[0]
    if case in ("offline", "no-token"):
        assert offline_requests == []  # refused before any network traffic
    assert _snapshot(model_folder) == before


def test_push_error_in_process_when_offline(model_folder):
    # conftest.py sets HF_HUB_OFFLINE=1 for the test process itself
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(model_folder, "me/tiny", token="hf_fake")
    assert isinstance(caught.value, RuntimeError) and "\n" not in str(caught.value)
    with pytest.raises(HubPushError, match="is not a folder"):
        push_folder_to_hub(model_folder / "missing", "me/tiny", token="hf_fake")


def test_a_second_push_leaves_no_file_of_the_first_and_never_uploads_pickles_or_hidden_files(model_folder, tmp_path):
    """The repo holds what the folder holds: a file the folder no longer has is deleted by the next push (in the
    same commit), pickled files (weights go out as safetensors only; any case, any compound suffix) and hidden
    files at any depth stay out."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / "old_figure.png").write_bytes((folder / "validation_grid.png").read_bytes())
    pickles = {"notes.pt", "EMA.PT", "optimizer.pth.tar", "sub/rng.pkl.gz", "[odd].Pickle"}
    (folder / "sub").mkdir()
    for name in pickles:
        (folder / name).write_bytes(b"pickled")
    (folder / "sub" / ".secret_env").write_text("HF_TOKEN=hf_secret")
    (folder / "sub" / "extra.json").write_text("{}")
    with FakeHub() as hub:
        first = _push_cli(folder, hub.client_env())
        assert first.returncode == 0, first.stderr
        assert {"old_figure.png", "sub/extra.json", "model.safetensors"} <= set(hub.files("me/tiny"))
        assert not pickles & set(hub.files("me/tiny"))
        (folder / "old_figure.png").unlink()
        shutil.rmtree(folder / "sub")
        second = _push_cli(folder, hub.client_env())
        assert second.returncode == 0, second.stderr
        received = hub.files("me/tiny")
    assert len(hub.commits) == 2
    assert set(received) == {name for name in _snapshot(folder)
                             if not name.startswith("checkpoint-") and name not in pickles}
    assert not {"old_figure.png", "sub/.secret_env", "sub/extra.json", *pickles} & set(received)


def test_a_private_push_creates_a_private_repo_and_never_uploads_into_a_public_one(model_folder):
    with FakeHub() as hub:
        assert _push_cli(model_folder, hub.client_env(), "--private", repo_id="me/secret").returncode == 0
        assert _push_cli(model_folder, hub.client_env(), "--private", repo_id="me/secret").returncode == 0
        assert _push_cli(model_folder, hub.client_env(), repo_id="me/open").returncode == 0
        refused = _push_cli(model_folder, hub.client_env(), "--private", repo_id="me/open")
        commits = [commit["repo_id"] for commit in hub.commits]
    assert [r["visibility"] for r in hub.created_repos if r["repo_id"] == "me/secret"][0] == "private"
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "me/open exists and is public" in refused.stderr and refused.stderr.startswith("push to the Hub failed")
    assert commits == ["me/secret", "me/secret", "me/open"]  # nothing uploaded by the refused push
