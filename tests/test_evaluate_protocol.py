"""Evaluation in the papers' protocols: official test layouts, PromptIR's seeded noise, conventions, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import smooth_image, tiny_model
from training import evaluate_protocol as ep
from training.data import CDD11_TYPES, center_crop_to_multiple, decode_image
from training.published_results import PUBLISHED, row_as_dict

H, W = 35, 41  # not multiples of 16: the PromptIR crop keeps the centre 32x32


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _degrade(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clean.astype(np.float64) * 0.8 + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)


def make_test_root(root: Path, protocol: str) -> Path:
    """A tiny test root in the official layouts (PromptIR test/, AdaIR deblur, PIP enhance, CDD-11)."""
    test = root / "test"
    if protocol == "cdd11":
        for index in range(2):
            clean = smooth_image(H, W, seed=index)
            _save(test / "clear" / f"00000{index}.png", clean)
            for t, cdd_type in enumerate(CDD11_TYPES):
                _save(test / cdd_type / f"00000{index}.png", _degrade(clean, 100 * t + index))
        return root
    bsd = test / "denoise" / "bsd68"
    for index in range(2):
        _save(bsd / f"{index}.png", smooth_image(H, W, seed=10 + index))
    deep = (smooth_image(H, W, seed=12)[:, :, 0].astype(np.uint16) * 257)
    Image.fromarray(deep).save(bsd / "deep16.png")  # 16-bit gray: converted to 8-bit RGB
    colour = smooth_image(H, W, seed=13).astype(np.uint16) * 257
    png.from_array(colour.reshape(H, -1), "RGB;16").save(str(bsd / "deep16rgb.png"))  # 16-bit colour, too
    _save(bsd / "dot.png", np.zeros((1, 1, 3), np.uint8))  # 1x1: nothing left to score after the crop
    (bsd / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt
    clean = smooth_image(H, W, seed=20)
    _save(test / "derain" / "Rain100L" / "target" / "1.png", clean)
    _save(test / "derain" / "Rain100L" / "input" / "1.png", _degrade(clean, 1))
    clean = smooth_image(H, W, seed=21)
    _save(test / "dehaze" / "target" / "0001.png", clean)
    _save(test / "dehaze" / "input" / "0001_0.8_0.2.png", _degrade(clean, 2))
    if protocol == "5-task":
        clean = smooth_image(H, W, seed=22)
        _save(test / "deblur" / "gopro" / "target" / "GOPR0384_11_00_000001.png", clean)
        _save(test / "deblur" / "gopro" / "input" / "GOPR0384_11_00_000001.png", _degrade(clean, 3))
        clean = smooth_image(H, W, seed=23)
        _save(test / "enhance" / "high" / "1.png", clean)
        _save(test / "enhance" / "low" / "1.png", _degrade(clean, 4))
    return root


def identity_model(model_type: str = "restormer"):
    """A tiny model whose output convolution is zero: with the global residual it returns its input exactly."""
    model = tiny_model(model_type)
    with torch.no_grad():
        model.unet.output.weight.zero_()
        if model.unet.output.bias is not None:
            model.unet.output.bias.zero_()
    return model


def _crop_read(path: Path) -> np.ndarray:
    return center_crop_to_multiple(decode_image(path)[0], 16)


def test_conventions_registry_and_metric_parity_with_skimage():
    """Each named convention scores exactly as scikit-image does under the same settings (random images)."""
    rng = np.random.default_rng(0)
    clean = rng.random((40, 44, 3))
    restored = np.clip(clean + 0.05 * rng.standard_normal(clean.shape), 0, 1)

    def luma(image):
        return image @ (np.array([65.481, 128.553, 24.966]) / 255) + 16 / 255

    for name, convention in ep.CONVENTIONS.items():
        assert convention.used_by, name
        a, b = restored, clean
        if convention.border_shave:
            s = convention.border_shave
            a, b = a[s:-s, s:-s], b[s:-s, s:-s]
        if convention.channel == "y":
            a, b = luma(a), luma(b)
        channel_axis = -1 if a.ndim == 3 else None
        expected_psnr = peak_signal_noise_ratio(b, a, data_range=1)
        expected_ssim = structural_similarity(b, a, data_range=1, channel_axis=channel_axis,
                                              gaussian_weights=convention.ssim_window == "gaussian11",
                                              use_sample_covariance=convention.ssim_sample_covariance)
        assert ep.psnr(restored, clean, **convention.psnr_kwargs()) == pytest.approx(expected_psnr, abs=1e-6), name
        assert ep.ssim(restored, clean, **convention.ssim_kwargs()) == pytest.approx(expected_ssim, abs=1e-6), name
    assert ep.CONVENTIONS["promptir"].crop_multiple == 16 and ep.CONVENTIONS["onerestore"].crop_multiple == 0
    with pytest.raises(ValueError, match="ssim_window"):
        ep.MetricConvention("x", ssim_window="gaussian7")


def test_published_rows_cover_the_protocol_columns():
    for protocol, rows in PUBLISHED.items():
        columns = {c.name for c in ep.PROTOCOLS[protocol].columns}
        for row in rows:
            assert set(row.scores) <= columns, (protocol, row.method)
            assert row.source and row.average is not None
    cpl = next(r for r in PUBLISHED["3-task"] if r.method == "PromptIR + CPL")
    assert cpl.scores["rain"] == (38.77, 0.985) and cpl.scores["noise-15"] == (34.15, 0.933)


def test_published_averages_are_their_columns_mean_or_say_why_not():
    """A transcription slip shows as an average far from the mean of the row's own columns; where the source
    itself prints such an average (CPL Table V's OneRestore row), the row's note says so and reports show it."""
    checked = 0
    for protocol, rows in PUBLISHED.items():
        columns = [c.name for c in ep.PROTOCOLS[protocol].columns]
        for row in rows:
            if set(row.scores) != set(columns):
                continue
            checked += 1
            mean = sum(row.scores[c][0] for c in columns) / len(columns)
            if "not the mean" in row.note:
                assert abs(mean - row.average[0]) > 0.05 and f"({mean:.2f})" in row.note, (protocol, row.method)
            else:
                assert abs(mean - row.average[0]) <= 0.05, (protocol, row.method, mean, row.average)
    assert checked >= 15
    scores = {"psnr": 20.0, "ssim": 0.5, "input_psnr": 10.0, "input_ssim": 0.2}
    results = {"protocol": "cdd11", "protocol_description": "d", "convention_description": "c",
               "tasks": {c.name: dict(scores) for c in ep.PROTOCOLS["cdd11"].columns}, "average": scores,
               "skipped": {"count": 0, "files": []}, "published": [row_as_dict(r) for r in PUBLISHED["cdd11"]]}
    report = ep.markdown_report(results)
    assert "- OneRestore: as printed: the average (OneRestore's README figure) is not the mean" in report


@pytest.fixture(scope="module")
def root3(tmp_path_factory) -> Path:
    return make_test_root(tmp_path_factory.mktemp("three"), "3-task")


def test_three_task_identity_model_scores_the_inputs(root3, monkeypatch):
    roots = ep.find_test_roots("3-task", root3)
    assert roots["noise"].endswith("test/denoise/bsd68") and roots["haze"].endswith("test/dehaze")
    test_sets = ep.ProtocolTestSets("3-task", roots, convention=ep.CONVENTIONS["promptir"])
    calls = []
    real_psnr = ep.psnr
    monkeypatch.setattr(ep, "psnr", lambda *a, **k: calls.append(1) or real_psnr(*a, **k))  # a counting spy
    results = ep.evaluate_protocol(identity_model(), test_sets)
    tasks = results["tasks"]
    assert list(tasks) == ["haze", "rain", "noise-15", "noise-25", "noise-50"]
    for name, t in tasks.items():  # identity model: restoration scores == degraded-input scores
        assert t["psnr"] == pytest.approx(t["input_psnr"], abs=1e-6), name
        assert t["ssim"] == pytest.approx(t["input_ssim"], abs=1e-6), name
    # the input baseline, recomputed here with scikit-image on the PromptIR crop
    rain = root3 / "test" / "derain" / "Rain100L"
    degraded, clean = _crop_read(rain / "input" / "1.png"), _crop_read(rain / "target" / "1.png")
    assert degraded.shape == (32, 32, 3)
    assert tasks["rain"]["input_psnr"] == pytest.approx(
        peak_signal_noise_ratio(clean / 255, degraded / 255, data_range=1), abs=1e-9)
    assert tasks["rain"]["input_ssim"] == pytest.approx(
        structural_similarity(clean / 255, degraded / 255, data_range=1, channel_axis=-1), abs=1e-9)
    # PromptIR's test.py: np.random.seed(0) once, then sigma 15, 25, 50 over the (sorted) clean images
    bsd = root3 / "test" / "denoise" / "bsd68"
    cleans = [_crop_read(bsd / name) for name in ("0.png", "1.png", "deep16.png", "deep16rgb.png")]
    np.random.seed(0)
    for sigma in (15, 25, 50):
        noisy = [np.clip(c + np.random.randn(*c.shape) * sigma, 0, 255).astype(np.uint8) for c in cleans]
        expected = np.mean([peak_signal_noise_ratio(c / 255, n / 255, data_range=1) for c, n in zip(cleans, noisy)])
        assert tasks[f"noise-{sigma}"]["input_psnr"] == pytest.approx(expected, abs=1e-9)
        assert tasks[f"noise-{sigma}"]["num_images"] == 4
    assert tasks["noise-15"]["input_psnr"] > tasks["noise-50"]["input_psnr"] + 8
    # bad files: counted, never fatal
    skipped = {Path(s["file"]).name: s["reason"] for s in results["skipped"]["files"]}
    assert results["skipped"]["count"] == 2
    assert [tasks[f"noise-{s}"]["skipped"] for s in (15, 25, 50)] == [2, 2, 2] and tasks["rain"]["skipped"] == 0
    assert skipped["broken.png"].startswith("corrupt") and skipped["dot.png"].startswith("too small")
    assert [Path(c["file"]).name for c in results["converted"]["files"]] == ["deep16.png", "deep16rgb.png"]
    assert results["average"]["psnr"] == pytest.approx(np.mean([t["psnr"] for t in tasks.values()]), abs=1e-12)
    # a second model on the same test sets, restoring in tiles, scores the inputs from the cache: only its
    # restorations (24-px tiles split the 32x32 crops 2 x 2, each tiled image costing the statistics passes too)
    first_calls = len(calls)
    assert first_calls == 2 * (1 + 1 + 3 * 4)  # restored + input per image
    again = ep.evaluate_protocol(tiny_model("promptir"), test_sets, tile=24, tile_overlap=4)
    assert len(calls) - first_calls == 1 + 1 + 3 * 4
    assert {n: t["input_psnr"] for n, t in again["tasks"].items()} == {n: t["input_psnr"] for n, t in tasks.items()}
    # report: ours, the input row and the published rows of the protocol, side by side
    report = ep.markdown_report(results, model_name="identity")
    assert "| Method | haze | rain | noise-15 | noise-25 | noise-50 | Average | Source |" in report
    assert f"| **identity** | {tasks['haze']['psnr']:.2f}/{tasks['haze']['ssim']:.3f} |" in report
    assert "| PromptIR + CPL | 31.27/0.980 | 38.77/0.985 | 34.15/0.933 | 31.50/0.889 | 28.23/0.800 | 32.78/0.917 |" \
        in report
    assert "| MoCE-IR (Gaussian SSIM) |" in report and "| InstructIR-3D (Gaussian SSIM) |" in report and "`broken.png`" not in report.split("Skipped")[0]


def test_tiling_scores_what_tiled_restore_gives(root3):
    """`tile` reaches restore(): each column scores the images as restore(..., tile=16) restores them, which for a
    model that is not the identity differs from whole-image restoration (an identity model would hide the tiling)."""
    from modeling import restore

    test_sets = ep.ProtocolTestSets("3-task", ep.find_test_roots("3-task", root3), convention=ep.CONVENTIONS["promptir"])
    model = tiny_model("restormer")  # random weights: the tile borders change its output
    whole = ep.evaluate_protocol(model, test_sets)
    tiled = ep.evaluate_protocol(model, test_sets, tile=16, tile_overlap=4)
    psnr_kwargs, ssim_kwargs = test_sets.convention.psnr_kwargs(), test_sets.convention.ssim_kwargs()
    for name, scores in tiled["tasks"].items():
        pairs = [(restore(degraded.astype(np.float32) / 255.0, model, tile=16, tile_overlap=4, dtype="fp32"), clean)
                 for _, degraded, clean in test_sets.items(name)]
        assert scores["psnr"] == pytest.approx(np.mean([ep.psnr(r, c, **psnr_kwargs) for r, c in pairs]), abs=1e-9)
        assert scores["ssim"] == pytest.approx(np.mean([ep.ssim(r, c, **ssim_kwargs) for r, c in pairs]), abs=1e-12)
        # 0.01 to 0.14 dB apart here: the 32x32 crops are restored as 3 x 3 tiles of 16.
        assert abs(scores["psnr"] - whole["tasks"][name]["psnr"]) > 1e-3


def test_five_task_cli_with_labels_writes_json_and_markdown(tmp_path):
    root = make_test_root(tmp_path / "data", "5-task")
    model_dir = tmp_path / "pip"
    model = tiny_model("pip")
    model.save_pretrained(model_dir)
    output = tmp_path / "results.json"
    returned = ep.main(["--model", str(model_dir), "--protocol", "5-task", "--data_root", str(root),
                        "--output", str(output), "--device", "cpu"])
    results = json.loads(output.read_text())
    assert results["tasks"] == json.loads(json.dumps(returned["tasks"]))
    assert list(results["tasks"]) == ["haze", "rain", "noise-25", "blur", "low-light"]
    assert results["tasks"]["blur"]["label"] == "blur" and results["tasks"]["noise-25"]["sigma"] == 25
    assert results["model_type"] == "pip" and results["convention"]["name"] == "promptir"
    assert results["degradation"] == "label" and {r["method"] for r in results["published"]} >= {"IDR", "AdaIR"}
    assert results["environment"]["scikit-image"]
    markdown = output.with_suffix(".md").read_text()
    assert "| low-light | LOL-v1 | 1 | 0 |" in markdown
    assert "| noise-25 | BSD68 | 4 | 2 |" in markdown  # the corrupt and the 1x1 file, skipped and counted
    # AdaIR's five-task test.py: np.random.seed(0), then σ 15, 25, 50 in turn; σ 25 is the second realisation
    bsd = root / "test" / "denoise" / "bsd68"
    cleans = [_crop_read(bsd / name) for name in ("0.png", "1.png", "deep16.png", "deep16rgb.png")]
    np.random.seed(0)
    noisy = {sigma: [np.clip(c + np.random.randn(*c.shape) * sigma, 0, 255).astype(np.uint8) for c in cleans]
             for sigma in (15, 25)}
    expected = np.mean([peak_signal_noise_ratio(c / 255, n / 255, data_range=1) for c, n in zip(cleans, noisy[25])])
    assert results["tasks"]["noise-25"]["input_psnr"] == pytest.approx(expected, abs=1e-9)
    # the same labels and images through the model directly give the same score (tiling off, fp32)
    from modeling import restore

    test = root / "test" / "enhance"
    degraded, clean = _crop_read(test / "low" / "1.png"), _crop_read(test / "high" / "1.png")
    restored = restore(degraded.astype(np.float32) / 255, model, degradation="low-light", dtype="fp32")
    assert results["tasks"]["low-light"]["psnr"] == pytest.approx(ep.psnr(restored, clean), abs=1e-6)


def test_cdd11_from_test_roots_full_images(tmp_path):
    root = make_test_root(tmp_path / "cdd", "cdd11")
    clean = smooth_image(H, W, seed=9)  # a training pair next to the test split: never scored
    _save(root / "train" / "clear" / "000009.png", clean)
    _save(root / "train" / "low" / "000009.png", _degrade(clean, 9))
    test_sets = ep.ProtocolTestSets("cdd11", ep.parse_test_roots([f"cdd11={root}"]),
                                    convention=ep.CONVENTIONS["onerestore"])
    results = ep.evaluate_protocol(identity_model("promptir"), test_sets)
    assert list(results["tasks"]) == list(CDD11_TYPES)
    low = results["tasks"]["low"]
    assert low["num_images"] == 2 and low["dataset"] == "CDD-11"
    degraded = [decode_image(root / "test" / "low" / f"00000{i}.png")[0] for i in range(2)]
    clean = [decode_image(root / "test" / "clear" / f"00000{i}.png")[0] for i in range(2)]
    assert degraded[0].shape == (H, W, 3)  # OneRestore scores full images (no crop)
    expected = np.mean([peak_signal_noise_ratio(c, d) for c, d in zip(clean, degraded)])
    assert low["input_psnr"] == pytest.approx(expected, abs=1e-9)
    assert low["psnr"] == pytest.approx(low["input_psnr"], abs=1e-6)
    report = ep.markdown_report(results)
    assert "| PromptIR + CPL | 27.35 | 32.79 |" in report


def test_usage_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ValueError, match="TASK=DIR"):
        ep.parse_test_roots(["rain"])
    with pytest.raises(ValueError, match="unknown task"):
        ep.parse_test_roots(["snow=x"])
    with pytest.raises(FileNotFoundError, match="no test folder for haze.*noise \\(tried denoise/bsd68"):
        ep.find_test_roots("3-task", tmp_path)
    with pytest.raises(ValueError, match=r"needs test roots for \['haze', 'noise'\]"):
        ep.ProtocolTestSets("3-task", {"rain": str(tmp_path)}, convention=ep.CONVENTIONS["promptir"])
    with pytest.raises(SystemExit):  # the report goes to OUTPUT.md: an .md output would be overwritten by it
        ep.parse_args(["--model", "m", "--protocol", "3-task", "--data_root", str(tmp_path), "--output", "r.md"])
    assert "names the JSON file" in capsys.readouterr().err


def test_row_paired_parquet_datasets_read_through_hub_paired_source(root3, tmp_path):
    """``ROOT@DEGRADED,CLEAN``: one pair per row (as Hub parquet datasets); same scores as the folder layout."""
    import datasets

    rain = root3 / "test" / "derain" / "Rain100L"
    rows = {"input": [(rain / "input" / "1.png").read_bytes(), b"not an image"],
            "target": [(rain / "target" / "1.png").read_bytes()] * 2}
    features = datasets.Features({"input": datasets.Image(), "target": datasets.Image()})
    table = datasets.Dataset.from_dict(
        {k: [{"bytes": b, "path": None} for b in v] for k, v in rows.items()}, features=features)
    table.to_parquet(str(tmp_path / "rain.parquet"))
    bsd = root3 / "test" / "denoise" / "bsd68"
    clean = datasets.Dataset.from_dict(
        {"image": [{"bytes": (bsd / n).read_bytes(), "path": None} for n in ("0.png", "1.png")]},
        features=datasets.Features({"image": datasets.Image()}))
    clean.to_parquet(str(tmp_path / "bsd.parquet"))
    roots = {**ep.find_test_roots("3-task", root3), "rain": f"{tmp_path / 'rain.parquet'}@input,target",
             "noise": f"{tmp_path / 'bsd.parquet'}@image"}
    test_sets = ep.ProtocolTestSets("3-task", roots, convention=ep.CONVENTIONS["promptir"])
    results = ep.evaluate_protocol(identity_model(), test_sets)
    folder = ep.evaluate_protocol(identity_model(), ep.ProtocolTestSets(
        "3-task", ep.find_test_roots("3-task", root3), convention=ep.CONVENTIONS["promptir"]))
    assert results["tasks"]["rain"]["num_images"] == 1 and results["tasks"]["rain"]["skipped"] == 1
    assert results["tasks"]["rain"]["input_psnr"] == folder["tasks"]["rain"]["input_psnr"]
    assert results["tasks"]["noise-15"]["num_images"] == 2
    assert [s["reason"].split(":")[0] for s in results["skipped"]["files"]] == ["corrupt"]
    with pytest.raises(ValueError, match="ROOT@DEGRADED_COLUMN,CLEAN_COLUMN"):
        ep.ProtocolTestSets("3-task", {**roots, "rain": f"{tmp_path / 'rain.parquet'}@input"},
                            convention=ep.CONVENTIONS["promptir"])


def test_inputs_with_the_same_file_name_in_different_sequences_are_scored_apart(tmp_path):
    """GoPro's test set names its frames per sequence (GOPR0384_11_00/blur/000001.png, GOPR0385_11_01/blur/
    000001.png, ...): each input's baseline score is its own, not the first same-named file's; the original tree's
    blur_gamma/ renderings of the same frames are not scored a second time."""
    root = make_test_root(tmp_path / "five", "5-task")
    gopro = tmp_path / "gopro"
    expected = []
    for sequence, seed in (("GOPR0384_11_00", 30), ("GOPR0385_11_01", 31)):
        clean = smooth_image(H, W, seed=seed)
        degraded = _degrade(clean, seed) if seed == 30 else np.clip(clean.astype(int) + 60, 0, 255).astype(np.uint8)
        _save(gopro / sequence / "sharp" / "000001.png", clean)
        _save(gopro / sequence / "blur" / "000001.png", degraded)
        _save(gopro / sequence / "blur_gamma" / "000001.png", _degrade(clean, seed + 10))  # the same frame again
        expected.append(peak_signal_noise_ratio(center_crop_to_multiple(clean, 16),
                                                center_crop_to_multiple(degraded, 16)))
    roots = {**ep.find_test_roots("5-task", root), "blur": str(gopro)}
    test_sets = ep.ProtocolTestSets("5-task", roots, convention=ep.CONVENTIONS["promptir"])
    blur = ep.evaluate_protocol(identity_model(), test_sets)["tasks"]["blur"]
    assert blur["num_images"] == 2 and abs(expected[0] - expected[1]) > 3
    assert blur["input_psnr"] == pytest.approx(np.mean(expected), abs=1e-6)


def test_a_noise_test_set_spread_over_folders_is_refused(root3, tmp_path):
    """CBSD68's release keeps noisyN/ folders beside original_png/: taking the whole tree would score noisy images
    as clean ones, so a noise root with images in several folders is refused, naming them; its clean folder works."""
    cbsd = tmp_path / "CBSD68"
    for folder in ("original_png", "noisy25"):
        _save(cbsd / folder / "0000.png", smooth_image(H, W, seed=40))
    roots = {**ep.find_test_roots("3-task", root3), "noise": str(cbsd)}
    with pytest.raises(ValueError, match=r"2 folders \(noisy25, original_png\).*original_png"):
        ep.ProtocolTestSets("3-task", roots, convention=ep.CONVENTIONS["promptir"])
    roots["noise"] = str(cbsd / "original_png")
    test_sets = ep.ProtocolTestSets("3-task", roots, convention=ep.CONVENTIONS["promptir"])
    assert [len(test_sets.columns[f"noise-{s}"].noisy) for s in (15, 25, 50)] == [1, 1, 1]


def test_results_record_the_tiling_and_precision_restore_used(root3, tmp_path):
    """A model whose config names an inference_tile is restored in tiles even without `tile`: the JSON says so
    (it used to say "tile": null beside tiled scores), with the overlap and the precision. One noise image (each
    tiled image costs restore()'s statistics passes too) and 24-px tiles: the 32x32 crops are still split, 2 x 2."""
    import shutil

    (tmp_path / "bsd").mkdir()
    shutil.copy(root3 / "test" / "denoise" / "bsd68" / "0.png", tmp_path / "bsd" / "0.png")
    test_sets = ep.ProtocolTestSets("3-task", {**ep.find_test_roots("3-task", root3), "noise": str(tmp_path / "bsd")},
                                    convention=ep.CONVENTIONS["promptir"])
    tiled_by_config = tiny_model("restormer", inference_tile=24)
    results = ep.evaluate_protocol(tiled_by_config, test_sets, dtype="fp32")
    # The overlap restore() used: its default for 24-px tiles, min(32, 24 // 4); the JSON said null.
    assert (results["tile"], results["tile_overlap"], results["dtype"]) == (24, 6, "fp32")
    explicit = ep.evaluate_protocol(tiny_model("restormer"), test_sets, tile=24)
    assert results["tasks"] == explicit["tasks"] and explicit["tile_overlap"] == 6
    given = ep.evaluate_protocol(tiny_model("restormer"), test_sets, tile=24, tile_overlap=4)
    assert given["tile_overlap"] == 4 and given["tasks"] != explicit["tasks"]


def test_a_checkpoint_saved_in_half_precision_is_scored_in_fp32(root3, tmp_path):
    """The CLI loaded the folder in its saved bf16, then restore(dtype="fp32") refused the bf16 weights: the
    default fp32 evaluation of a bf16 checkpoint died with a traceback. It is scored as its float32 copy."""
    folder = tmp_path / "bf16"
    tiny_model("restormer").to(torch.bfloat16).save_pretrained(folder)
    results = ep.main(["--model", str(folder), "--protocol", "3-task", "--data_root", str(root3), "--device", "cpu"])
    test_sets = ep.ProtocolTestSets("3-task", ep.find_test_roots("3-task", root3),
                                    convention=ep.CONVENTIONS["promptir"])
    expected = ep.evaluate_protocol(tiny_model("restormer").to(torch.bfloat16).float(), test_sets)
    assert results["tasks"] == expected["tasks"]
    assert ep.evaluate_protocol(str(folder), test_sets)["tasks"] == expected["tasks"]


def test_test_roots_fill_in_what_the_data_root_lacks_and_a_size_mismatch_hidden_by_the_crop_is_skipped(
        root3, tmp_path):
    """--test_roots names folders one by one: a task missing under --data_root used to stop the run before they
    were read. A 40x40 input against a 47x47 target, both cropped to 32x32, used to be scored."""
    import shutil

    data_root = tmp_path / "data"
    shutil.copytree(root3, data_root)
    shutil.rmtree(data_root / "test" / "dehaze")
    clean = smooth_image(47, 47, seed=30)
    _save(tmp_path / "haze" / "target" / "1.png", clean)
    _save(tmp_path / "haze" / "input" / "1.png", _degrade(clean, 5)[:40, :40])
    _save(tmp_path / "haze" / "target" / "2.png", clean)
    _save(tmp_path / "haze" / "input" / "2.png", _degrade(clean, 6))
    model_dir = tmp_path / "model"
    identity_model().save_pretrained(model_dir)
    results = ep.main(["--model", str(model_dir), "--protocol", "3-task", "--data_root", str(data_root),
                       "--test_roots", f"haze={tmp_path / 'haze'}"])
    assert results["tasks"]["haze"]["num_images"] == 1 and results["tasks"]["haze"]["skipped"] == 1
    skipped = {entry["file"]: entry["reason"] for entry in results["skipped"]["files"]}
    assert skipped[str(tmp_path / "haze" / "input" / "1.png")] == "size mismatch: (40, 40) vs clean (47, 47)"


def test_command_line_mistakes_are_one_line_with_exit_code_2_not_a_traceback(root3, tmp_path, capsys):
    """A misspelt --test_roots, a --data_root without the protocol's folders, a folder whose files do not pair and a
    missing model folder: each used to end in a Python traceback. Each is now one 'error:' line and exit code 2,
    before any image is restored."""
    import shutil

    unpaired = tmp_path / "unpaired"
    shutil.copytree(root3, unpaired)
    rain = unpaired / "test" / "derain" / "Rain100L"
    (rain / "target" / "1.png").rename(rain / "target" / "norain-1.png")  # no clean file of the input's name
    cases = {
        "--test_roots takes TASK=DIR_OR_HUB_ID": ["--test_roots", "rain"],
        "unknown task 'snow'": ["--test_roots", f"snow={root3}"],
        "no test folder for": ["--data_root", str(tmp_path / "nowhere")],
        "no rain pairs found": ["--data_root", str(unpaired)],
        "does not exist": ["--data_root", str(root3), "--model", str(tmp_path / "no-model")],
        # written after every image is scored: it used to end in a traceback then, losing the scores
        f"--output {tmp_path} is a folder": ["--data_root", str(root3), "--output", str(tmp_path)],
        "exists and is not a folder": ["--data_root", str(root3), "--output", str(rain / "input" / "1.png" / "r.json")],
        # the Markdown report beside the JSON is written last too
        f"--output's report {tmp_path / 'taken.md'} is a folder": ["--data_root", str(root3), "--output",
                                                                   str(tmp_path / "taken.json")],
    }
    (tmp_path / "taken.md").mkdir()
    for message, argv in cases.items():
        if "--model" not in argv:
            argv = ["--model", str(tmp_path / "no-model"), *argv]
        with pytest.raises(SystemExit) as exit_:
            ep.main(["--protocol", "3-task", *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (message, err)
        assert "Traceback" not in err and message in err, (message, err)
        assert err.strip().splitlines()[-1].startswith("python -m training.evaluate_protocol: error: "), err


def test_model_card_rows_copy_each_score_from_its_own_field():
    """The card's rows come from the evaluation JSON; each of the four scores is a different number here, so a
    card showing the restored PSNR as the input's (or SSIM as PSNR) fails."""
    results = {"tasks": {
        "haze": {"task": "haze", "dataset": "SOTS-outdoor", "dataset_id": "me/sots", "psnr": 30.5, "ssim": 0.95,
                 "input_psnr": 15.25, "input_ssim": 0.625, "num_images": 3},
        "rain": {"task": "rain", "dataset": "Rain100L", "dataset_id": None, "psnr": 35.0, "ssim": 0.97,
                 "input_psnr": 25.75, "input_ssim": 0.8125, "num_images": 2},
    }}
    assert ep.model_card_results(results) == [
        {"task": "haze", "dataset": "SOTS-outdoor", "dataset_id": "me/sots", "split": "test", "psnr": 30.5,
         "ssim": 0.95, "input_psnr": 15.25, "input_ssim": 0.625, "num_images": 3},
        {"task": "rain", "dataset": "Rain100L", "dataset_id": "Rain100L", "split": "test", "psnr": 35.0,
         "ssim": 0.97, "input_psnr": 25.75, "input_ssim": 0.8125, "num_images": 2},
    ]
