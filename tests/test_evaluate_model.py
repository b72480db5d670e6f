"""Held-out evaluation: synthesized settings, input baseline, label-free and NL-means columns, CLI output."""

from __future__ import annotations

import json
import math
import os

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
    results = main(["--model", str(folder), "--heldout", str(heldout), "--noise_sigmas", "25", "--settings", "haze",
                    "--output", str(output)])
    assert json.loads(output.read_text())["results"] == results
    table = capsys.readouterr().out
    assert table == markdown_table(results) + "\n"
    assert "| noise-25 |" in table and "| haze |" in table
    assert np.isfinite(results["haze"]["psnr"])


def test_cli_scores_the_tiles_and_overlap_it_is_given(heldout, tmp_path):
    """--tile and --tile_overlap reach restore(): the scores are those of evaluate_heldout with the same tiling,
    and another overlap scores differently (a tiny random model's tiles disagree near their borders).
    Without statistics passes (each costs one more tiled restore): `--statistics_passes 0` must reach restore()
    as well, or the CLI's default passes would score differently."""
    folder = tmp_path / "model"
    model = tiny_model("pip")
    model.save_pretrained(folder)
    rows = ["--noise_sigmas", "25", "--settings", "--no_baseline", "--statistics_passes", "0"]
    results = main(["--model", str(folder), "--heldout", str(heldout), "--tile", "16", "--tile_overlap", "2", *rows])
    options = dict(noise_sigmas=(25,), settings=(), baseline=False, statistics_passes=0)
    assert results == evaluate_heldout(model, heldout, tile=16, tile_overlap=2, **options)
    for other in (evaluate_heldout(model, heldout, tile=16, tile_overlap=4, **options),
                  evaluate_heldout(model, heldout, tile=0, **options)):
        assert other["noise-25"]["psnr"] != results["noise-25"]["psnr"]


def test_the_json_records_the_restore_settings_it_was_scored_with(heldout, tmp_path):
    """The JSON held the rows alone: scores measured in tiles, with another overlap or precision, could not be told
    from whole-image fp32 ones. It records them, with evaluate_protocol's key names and restore()'s defaults
    resolved (the overlap of a 16 px tile is 4: 32 capped at tile // 4; 6 statistics passes, tolerance 0.01)."""
    import torch

    folder = tmp_path / "model"
    tiny_model("pip").to(torch.bfloat16).save_pretrained(folder)
    rows = ["--noise_sigmas", "25", "--settings", "--no_baseline", "--statistics_passes", "0"]
    output = tmp_path / "eval.json"
    results = main(["--model", str(folder), "--heldout", str(heldout), "--tile", "16", "--dtype", "bf16",
                    "--auto_mode", "hard", "--seed", "3", *rows, "--output", str(output)])
    evaluation = json.loads(output.read_text())
    assert evaluation == {"heldout": ["photo0.png", "photo1.png"], "seed": 3, "tile": 16, "tile_overlap": 4,
                          "statistics_passes": 0, "statistics_tolerance": 0.01, "dtype": "bf16", "auto_mode": "hard",
                          "results": results}
    main(["--model", str(folder), "--heldout", str(heldout), "--tile_overlap", "2", "--statistics_tolerance", "0",
          *rows[:-2], "--output", str(output)])
    evaluation = json.loads(output.read_text())
    # no tile given and no inference_tile: whole images (None), the overlap given for restore()'s automatic tiles
    assert {key: evaluation[key] for key in ("seed", "tile", "tile_overlap", "statistics_passes",
                                              "statistics_tolerance", "dtype", "auto_mode")} == {
        "seed": 0, "tile": None, "tile_overlap": 2, "statistics_passes": 6, "statistics_tolerance": 0.0,
        "dtype": "fp32", "auto_mode": "cautious"}


def test_a_misspelled_row_fails_before_any_row_runs(heldout, tmp_path, monkeypatch):
    """`--settings blur-gausian` used to pass the row lookup and fail in the synthesis, after the rows before it
    had run (minutes on real photos), saving nothing: every row is now synthesized once on a probe first."""
    import training.evaluate_model as evaluate_model

    restored = []
    monkeypatch.setattr(evaluate_model, "load_restoration_metric", lambda: restored.append("metric") or None)
    with pytest.raises(ValueError, match="row 'blur-gausian' cannot be synthesized .*blur-gaussian"):
        evaluate_heldout(tiny_model("pip"), heldout, noise_sigmas=(25,), settings=("haze", "blur-gausian"))
    assert restored == []  # refused before the evaluation began
    with pytest.raises(ValueError, match="row 'noise-x'"):
        evaluate_model.check_rows(["noise-x"])
    evaluate_model.check_rows(["noise-15", *evaluate_model.SETTINGS])  # every named row synthesizes


def test_an_output_that_cannot_take_the_json_is_refused_before_any_row_runs(heldout, tmp_path, monkeypatch, capsys):
    """--output naming a folder, or a file below a file, used to fail when the JSON was written, after every row had
    run, with a traceback (the table was never printed: the results were lost) and a hidden ``.NAME.tmp`` left
    behind; it is now one line and exit code 2 before the model loads. A missing folder is created."""
    import training.evaluate_model as evaluate_model

    def no_evaluation(*args, **kwargs):
        raise AssertionError("rows ran before --output was checked")

    folder = tmp_path / "model"
    tiny_model("pip").save_pretrained(folder)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    (tmp_path / "results").mkdir()
    argv = ["--model", str(folder), "--heldout", str(heldout), "--noise_sigmas", "25", "--settings", "--no_baseline"]
    with monkeypatch.context() as patch:
        patch.setattr(evaluate_model, "evaluate_heldout", no_evaluation)
        for output, message in ((tmp_path / "results", "is a folder"), (a_file / "eval.json", "is not a folder")):
            with pytest.raises(SystemExit) as exit_:
                main([*argv, "--output", str(output)])
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert exit_.value.code == 2 and f"error: --output {output}" in err and message in err
    results = main([*argv, "--output", str(tmp_path / "new" / "eval.json")])
    assert json.loads((tmp_path / "new" / "eval.json").read_text())["results"] == results


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    from training.checkpointing import write_text_atomic

    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "taken", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_worker_processes_give_the_single_process_numbers(heldout, tmp_path):
    """`--workers 2`: two spawned one-thread processes share the rows, and the merged results (in the usual row
    order) equal a single-process run's, since every row seeds its own syntheses (to float rounding: one thread
    sums in another order than two)."""
    folder = tmp_path / "model"
    tiny_model("pip", seed=5).save_pretrained(folder)
    argv = ["--model", str(folder), "--heldout", str(heldout), "--noise_sigmas", "15", "50", "--settings", "haze",
            "blur-defocus"]
    single = main(argv)
    shared = main([*argv, "--workers", "2", "--output", str(tmp_path / "shared.json")])
    assert list(shared) == ["noise-15", "noise-50", "haze", "blur-defocus"]
    for label, row in single.items():
        assert set(shared[label]) == set(row)
        for key, value in row.items():
            assert shared[label][key] == pytest.approx(value, abs=1e-5), (label, key)  # dicts of gains too
    written = json.loads((tmp_path / "shared.json").read_text())
    assert written["results"] == shared and (written["dtype"], written["tile"]) == ("fp32", None)


def test_rows_are_shared_by_estimated_cost():
    from training.evaluate_model import split_rows

    rows = ["noise-15", "noise-25", "noise-50", "blur-gaussian", "blur-defocus", "blur-motion", "low-light", "haze",
            "rain"]
    shares = split_rows(rows, 2, baseline=True)
    # Noise rows (with non-local means) cost 4/3 of another row: 3 of them + 1 other against 5 others.
    assert sorted(len(share) for share in shares) == [4, 5]
    assert sorted(rows) == sorted(label for share in shares for label in share)
    assert sorted(len(share) for share in split_rows(rows, 2, baseline=False)) == [4, 5]
    assert split_rows(["rain"], 4, baseline=True) == [["rain"]]  # never more workers than rows


def test_default_rows_cover_noise_levels_blur_families_and_other_tasks():
    from training.evaluate_model import DEFAULT_NOISE_SIGMAS, DEFAULT_SETTINGS, SETTINGS

    assert DEFAULT_NOISE_SIGMAS == (15, 25, 50)
    assert DEFAULT_SETTINGS == ("blur-gaussian", "blur-defocus", "blur-motion", "low-light", "haze", "rain")
    assert SETTINGS["blur-gaussian"] == ("blur", {"family": "gaussian", "sigma": 2.0})
    assert all(SETTINGS[name][0] == "blur" for name in ("blur", "blur-defocus", "blur-motion"))


def test_named_blur_rows_synthesize_their_kernel_and_rows_are_seeded_by_name(heldout):
    from training.data import decode_image, list_image_files
    from training.degradations import gaussian_blur
    from training.evaluation import load_restoration_metric

    model = tiny_model("restormer")
    alone = evaluate_heldout(model, heldout, noise_sigmas=(), settings=("blur-gaussian",), baseline=False)
    both = evaluate_heldout(model, heldout, noise_sigmas=(), settings=("rain", "blur-gaussian"), baseline=False)
    assert list(both) == ["rain", "blur-gaussian"]
    assert both["blur-gaussian"] == alone["blur-gaussian"]  # same images whatever other rows are asked for
    # the row's input is exactly a std-2 Gaussian blur (Pillow's GaussianBlur(radius=2)) of each clean image
    cleans = [decode_image(path)[0] for path in list_image_files(heldout)]
    blurred = [gaussian_blur(clean, None, sigma=2.0).image.astype(np.float32) / 255 for clean in cleans]
    expected = load_restoration_metric().compute(
        predictions=blurred, references=[clean.astype(np.float32) / 255 for clean in cleans]
    )
    assert alone["blur-gaussian"]["input_psnr"] == pytest.approx(float(expected["psnr"]), abs=1e-9)
    motion = evaluate_heldout(model, heldout, noise_sigmas=(), settings=("blur-defocus", "blur-motion"),
                              baseline=False)
    assert all(np.isfinite(r["input_psnr"]) and r["input_psnr"] < 60 for r in motion.values())


def test_evaluation_runs_fp32_unless_asked_for_restores_default(heldout, monkeypatch):
    """Scores do not depend on the CPU: fp32 by default, even where restore() would default to bf16 (simulated
    here); `dtype="auto"` (`--dtype auto`) scores what restore() does by default."""
    from modeling import inference

    model = tiny_model("pip")
    options = dict(noise_sigmas=(), settings=("haze",), baseline=False, auto_mode="hard")
    monkeypatch.setattr(inference, "native_bf16_cpu", lambda: False)
    plain = evaluate_heldout(model, heldout, **options)["haze"]["psnr"]
    monkeypatch.setattr(inference, "native_bf16_cpu", lambda: True)
    assert evaluate_heldout(model, heldout, **options)["haze"]["psnr"] == plain
    bf16 = evaluate_heldout(model, heldout, dtype="auto", **options)["haze"]["psnr"]
    assert bf16 != plain and abs(bf16 - plain) < 0.5


def test_worst_image_gain_is_the_minimum_over_images(heldout):
    """A mean can hide one image made worse; the worst single-image gain cannot."""
    from modeling import restore
    from training.data import decode_image, list_image_files
    from training.degradations import synthesize
    from training.evaluation import load_restoration_metric

    model = tiny_model("pip")
    results = evaluate_heldout(model, heldout, noise_sigmas=(), settings=("haze",), baseline=False, auto_mode="hard")
    metric = load_restoration_metric()
    gains = []
    for index, path in enumerate(list_image_files(heldout)):
        import zlib

        clean = decode_image(path)[0]
        degraded = synthesize(clean, "haze", np.random.default_rng([0, zlib.crc32(b"haze"), index])).image
        degraded = degraded.astype(np.float32) / 255
        reference = clean.astype(np.float32) / 255
        before = metric.compute(predictions=[degraded], references=[reference])["psnr"]
        restored = restore(degraded, model, degradation="haze", dtype="fp32")  # the evaluation runs fp32
        after = metric.compute(predictions=[restored], references=[reference])["psnr"]
        gains.append(after - before)
    assert results["haze"]["min_image_gain"] == pytest.approx(min(gains), abs=1e-6)
    names = [os.path.relpath(path, heldout) for path in list_image_files(heldout)]
    assert results["haze"]["image_gains"] == pytest.approx(dict(zip(names, gains)), abs=1e-6)
    assert set(results["haze"]["image_gains_auto"]) == set(names)
    assert results["haze"]["min_image_gain_auto"] == pytest.approx(min(results["haze"]["image_gains_auto"].values()))
    assert results["haze"]["min_image_gain"] <= results["haze"]["psnr_gain"] + 1e-6 or len(gains) == 1


def test_auto_mode_per_photo_reports_each_mode_on_the_evaluation_inputs(heldout, tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "auto_mode_per_photo.py"
    spec = importlib.util.spec_from_file_location("auto_mode_per_photo", script)
    auto_mode_per_photo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auto_mode_per_photo)

    from modeling import restore
    from training.data import decode_image, list_image_files
    from training.evaluate_model import synthesize_row_image

    folder = tmp_path / "pip"
    model = tiny_model("pip")
    model.save_pretrained(folder)
    report = auto_mode_per_photo.main(["--model", str(folder), "--heldout", str(heldout), "--rows", "noise-25",
                                       "haze", "--json", str(tmp_path / "auto.json")])
    assert json.loads((tmp_path / "auto.json").read_text()) == report
    assert [(r["row"], r["photo"]) for r in report["rows"]] == [
        (row, f"photo{i}") for row in ("noise-25", "haze") for i in range(2)]
    names = list(model.config.degradation_names)
    for row in report["rows"]:
        assert sum(row["weights"].values()) == pytest.approx(1, abs=1e-5) and set(row["weights"]) == set(names)
        assert row["top"] == max(row["weights"], key=row["weights"].get)
        # hard = the labelled restoration with the likeliest class, recomputed here from the same input
        index = int(row["photo"].removeprefix("photo"))
        clean = decode_image(list_image_files(heldout)[index])[0]
        degraded = synthesize_row_image(clean, row["row"], index)
        reference = clean.astype(np.float64) / 255
        before = auto_mode_per_photo.psnr(degraded, reference)
        restored = restore(degraded, model, degradation=row["top"], dtype="fp32")  # the benchmark runs fp32
        with_top = auto_mode_per_photo.psnr(restored, reference) - before
        assert row["gain_hard"] == pytest.approx(with_top, abs=1e-6)
    haze = report["summary"]["haze"]
    assert haze["worst_soft"] <= haze["mean_soft"] and haze["mean_hard"] == pytest.approx(
        np.mean([r["gain_hard"] for r in report["rows"] if r["row"] == "haze"]))


def test_cli_mistakes_are_one_line_with_exit_code_2_not_a_traceback(heldout, tmp_path, capsys):
    """A misspelt row, a missing or empty held-out folder and a missing model folder used to end in a Python
    traceback (the row check even after the model had loaded). Each is now argparse's one 'error:' line, exit 2."""
    folder = tmp_path / "model"
    tiny_model("pip").save_pretrained(folder)
    (tmp_path / "empty").mkdir()
    cases = {
        "row 'hazy' cannot be synthesized": ["--model", str(folder), "--heldout", str(heldout), "--settings", "hazy"],
        "not a directory": ["--model", str(folder), "--heldout", str(tmp_path / "nowhere")],
        "no images in": ["--model", str(folder), "--heldout", str(tmp_path / "empty")],
        "does not exist": ["--model", str(tmp_path / "no-model"), "--heldout", str(heldout)],
    }
    for message, argv in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err and message in err, (message, err)
        assert ": error: " in err.strip().splitlines()[-1], err


def test_a_checkpoint_saved_in_half_precision_is_scored_in_fp32(heldout, tmp_path):
    """The CLI loaded the folder in its saved bf16, then restore(dtype="fp32") refused the bf16 weights: the
    default fp32 evaluation of a bf16 checkpoint died with a traceback. It is scored as its float32 copy."""
    import torch

    folder = tmp_path / "bf16"
    tiny_model("restormer").to(torch.bfloat16).save_pretrained(folder)
    rows = ["--noise_sigmas", "25", "--settings", "--no_baseline"]
    results = main(["--model", str(folder), "--heldout", str(heldout), *rows])
    as_fp32 = tiny_model("restormer").to(torch.bfloat16).float()
    expected = evaluate_heldout(as_fp32, heldout, noise_sigmas=(25,), settings=(), baseline=False)
    assert results["noise-25"]["psnr"] == pytest.approx(expected["noise-25"]["psnr"], abs=1e-6)
    # What each --workers process runs (in this process: spawning workers takes seconds).
    from training.evaluate_model import _evaluate_share

    threads = torch.get_num_threads()
    try:
        shared = _evaluate_share(str(folder), str(heldout), ["noise-25"], dict(baseline=False, dtype="fp32"))
    finally:
        torch.set_num_threads(threads)
    assert shared["noise-25"]["psnr"] == pytest.approx(expected["noise-25"]["psnr"], abs=1e-4)


def test_restore_settings_resolve_the_models_own_tile_and_its_overlap():
    """A model with an `inference_tile` is restored in those tiles when no tile is given: the record says so, with
    the overlap restore() picks for them (16 px: 4), not whole images; a tile given wins, and 0 is whole images."""
    from training.evaluate_model import restore_settings

    model = tiny_model("pip", inference_tile=16)
    assert restore_settings(model) == {"seed": 0, "tile": 16, "tile_overlap": 4, "statistics_passes": 6,
                                       "statistics_tolerance": 0.01, "dtype": "fp32", "auto_mode": "cautious"}
    assert (restore_settings(model, tile=32, tile_overlap=2)["tile"], restore_settings(model, tile=32)["tile_overlap"],
            restore_settings(model, tile=0)["tile_overlap"]) == (32, 8, None)
