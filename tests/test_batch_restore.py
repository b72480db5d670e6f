"""`training.batch_restore` launched as users launch it: 2 CPU processes under `accelerate launch`, kill -9 and
resume with another number of processes, bad files, 16-bit PNGs, dataset output (save_to_disk and a fake Hub)."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import save, textured_image
from fake_hub import FakeHub
from launch_helpers import accelerate_launch, kill_tree, run_to_end
from PIL import Image

import modeling
from modeling import RestorationImageProcessor
from modeling.image_processing_restoration import load_image_file, write_image, write_png
from modeling.inference import load_model
from training.batch_restore import MANIFEST_PREFIX, TEST_SLEEP_ENV, WINDOW_BATCHES, output_format_of, read_manifests

REPO = Path(__file__).resolve().parents[1]
PIP_TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
                prompt_dims=[12, 20, 16], prompt_sizes=[8, 4, 4], degradation_estimator_hidden_dim=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny PIP (degradation estimated per image: the "auto" path) saved as a model folder."""
    import torch

    folder = tmp_path_factory.mktemp("model")
    config_class, model_class = modeling.MODEL_CLASSES["pip"]
    torch.manual_seed(0)
    model_class(config_class(**PIP_TINY)).save_pretrained(folder)
    RestorationImageProcessor().save_pretrained(folder)
    return folder


def sixteen_bit(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (height, width, 3)).astype(np.uint16)


def script_env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", **extra)
    return env


def launcher(processes: int) -> list[str]:
    return [sys.executable] if processes == 1 else accelerate_launch(processes)


def start(argv: list[str], processes: int, env=None) -> subprocess.Popen:
    command = [*launcher(processes), "-m", "training.batch_restore", *argv]
    return subprocess.Popen(command, env=env or script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, start_new_session=True)


def run(argv: list[str], processes: int = 1, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the script to the end (see `launch_helpers.run_to_end`) and require success."""
    command = [*launcher(processes), "-m", "training.batch_restore", *argv]
    result = run_to_end(command, env=env or script_env(), cwd=REPO, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def manifest_lines(output_dir: Path) -> list[dict]:
    lines = []
    for manifest in sorted(output_dir.glob(f"{MANIFEST_PREFIX}*.jsonl")):
        lines += [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return lines


def expected(model_dir: Path, input_dir: Path, names: list[str], scratch: Path) -> dict[str, np.ndarray]:
    """`modeling.restore()` of each file with the same model, written in the output's format and decoded (a JPEG
    in comes back as JPEG, so compare after the same encoding)."""
    model = load_model(model_dir)
    results = {}
    for name in names:
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image(modeling.restore(str(input_dir / name), model), target, output_format_of(name))
        results[name] = np.asarray(load_image_file(target))
    return results


def recorded(output_dir: Path) -> int:
    return len(manifest_lines(output_dir)) if output_dir.is_dir() else 0


def outputs(output_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    return {name: np.asarray(load_image_file(output_dir / name)) for name in names}


def test_two_processes_restore_each_file_once_like_restore(model_dir, tmp_path):
    archive = tmp_path / "archive"
    good = []
    for i in range(6):  # two sizes in two sub-folders: same-size batches, mirrored tree
        name = f"{'day' if i % 2 else 'night'}/photo{i}.png"
        save(archive / name, textured_image(i, 24 if i < 3 else 16, 32))
        good.append(name)
    save(archive / "day" / "shot.jpg", textured_image(7, 16, 24), quality=90)
    write_png(sixteen_bit(8, 16, 24), archive / "deep16.png")
    good += ["day/shot.jpg", "deep16.png"]
    (archive / "corrupt.png").write_bytes((archive / "night" / "photo0.png").read_bytes()[:120])
    (archive / "notes.jpg").write_text("not an image")
    (archive / "readme.txt").write_text("ignored: no image extension")
    out = tmp_path / "out"

    run(["--input", str(archive), "--output", str(out), "--model", str(model_dir), "--batch_size", "2"], processes=2)

    lines = manifest_lines(out)
    done = [line["file"] for line in lines if line["status"] == "ok"]
    assert sorted(done) == sorted(good), "every readable input restored exactly once"
    assert {line["rank"] for line in lines if line["status"] == "ok"} == {0, 1}, "both processes worked"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["restored"], summary["skipped"], summary["failed"]) == (len(good), 0, 2)
    assert summary["failed_files"] == ["corrupt.png", "notes.jpg"]
    assert summary["num_processes"] == 2 and all(n > 0 for n in summary["restored_per_process"])
    assert summary["images_per_second"] > 0
    assert summary["freed_memory_reused"] is True  # the CPU default (glibc here)
    assert not (out / "readme.txt").exists() and summary["ignored_non_image_files"] == 1

    # Pixel-equal to restore() called as each process called it: one window per process here, so its readable
    # files in manifest order, batched by size, with the processes' one thread (OMP_NUM_THREADS=1). (A batch of 2
    # and a batch of 1, or 1 and 2 threads, may differ by 1e-7 in float, which can flip a rounding: the batching
    # and the threads must be the same for bit equality.)
    got = outputs(out, good)
    model = load_model(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        references = {
            rank: modeling.restore([load_image_file(archive / line["file"]) for line in lines
                                    if line["rank"] == rank and line["status"] == "ok"], model, batch_size=2)
            for rank in (0, 1)
        }
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):
        mine = [line["file"] for line in lines if line["rank"] == rank]
        assert len(mine) <= 2 * WINDOW_BATCHES, "one window per process"
        readable = [line["file"] for line in lines if line["rank"] == rank and line["status"] == "ok"]
        for name, image in zip(readable, references[rank]):
            target = tmp_path / "reference" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_image(image, target, output_format_of(name))  # JPEG in -> JPEG out: compare after one encode
            assert np.array_equal(got[name], np.asarray(load_image_file(target))), name
    assert Image.open(out / "day" / "shot.jpg").format == "JPEG"
    assert got["deep16.png"].dtype == np.uint16 and got["deep16.png"].shape == (16, 24, 3)


def test_sigkill_then_resume_with_one_process_finishes_the_archive_once(model_dir, tmp_path):
    archive = tmp_path / "archive"
    names = [f"part{i % 3}/img{i:02d}.png" for i in range(24)]
    for i, name in enumerate(names):
        save(archive / name, textured_image(i, 16, 16))
    out = tmp_path / "out"
    # One image per forward pass: the outputs are then bit-equal to restore() of each file whatever the split.
    argv = ["--input", str(archive), "--output", str(out), "--model", str(model_dir), "--batch_size", "1"]

    # Slow each image down (tests only) so the kill lands half-way; kill -9 every process of the launch.
    process = start(argv, processes=2, env=script_env(**{TEST_SLEEP_ENV: "0.4"}))
    try:
        deadline = time.monotonic() + 240
        while recorded(out) < 4:
            assert process.poll() is None, process.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "no manifest lines appeared"
            time.sleep(0.2)
    finally:
        kill_tree(process.pid)
        process.communicate()
    before = [line["file"] for line in manifest_lines(out)]
    assert 4 <= len(before) < len(names), "killed half-way"

    # Resume with another number of processes (1): the recorded images are skipped, the rest restored.
    run(argv, processes=1)
    lines = manifest_lines(out)
    done = [line["file"] for line in lines if line["status"] == "ok"]
    assert sorted(done) == sorted(names), "nothing restored twice, nothing lost"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == len(before) and summary["restored"] == len(names) - len(before)
    assert summary["failed"] == 0
    assert not list(out.rglob("*.tmp")), "no half-written file left behind"
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert produced == sorted(names)
    got, want = outputs(out, names), expected(model_dir, archive, names, tmp_path / "reference")
    for name in names:
        assert np.array_equal(got[name], want[name]), name


def test_dataset_output_save_to_disk_round_trip_push_and_dataset_input(model_dir, tmp_path):
    import datasets

    archive = tmp_path / "archive"
    save(archive / "a.png", textured_image(1, 16, 16))
    save(archive / "sub" / "b.png", textured_image(2, 16, 24))
    write_png(sixteen_bit(3, 16, 16), archive / "c16.png")
    names = ["a.png", "c16.png", "sub/b.png"]
    out = tmp_path / "out"
    argv = ["--input", str(archive), "--output", str(out), "--model", str(model_dir),
            "--output_format", "dataset", "--push_to_hub", "me/restored", "--batch_size", "1"]
    with FakeHub() as hub:
        # HF_HUB_OFFLINE unset and HF_ENDPOINT on the fake server, for this subprocess only.
        run(argv, env=hub.client_env(script_env()))
        received = hub.files("me/restored")
    shards = sorted(path for path in received if path.endswith(".parquet"))
    assert shards and "README.md" in received, sorted(received)
    for number, shard in enumerate(shards):  # what `load_dataset("me/restored")` would read
        (tmp_path / f"shard{number}.parquet").write_bytes(received[shard])
    pushed = datasets.Dataset.from_parquet([str(tmp_path / f"shard{n}.parquet") for n in range(len(shards))])
    assert pushed["file_name"] == names
    assert pushed.cast_column("restored", datasets.Image(decode=False))[1]["restored"]["bytes"] == (
        out / "images" / "c16.png"
    ).read_bytes()

    dataset = datasets.load_from_disk(str(out / "dataset"))
    assert dataset.column_names == ["file_name", "input", "restored"]
    assert dataset["file_name"] == names
    want = expected(model_dir, archive, names, tmp_path / "reference")
    for row in dataset.cast_column("restored", datasets.Image(decode=False)).cast_column(
        "input", datasets.Image(decode=False)
    ):
        name = row["file_name"]
        assert row["input"]["bytes"] == (archive / name).read_bytes()
        assert row["restored"]["bytes"] == (out / "images" / name).read_bytes()
        assert np.array_equal(np.asarray(load_image_file(out / "images" / name)), want[name]), name
    assert np.asarray(load_image_file(out / "images" / "c16.png")).dtype == np.uint16

    # The saved dataset is itself an input: rows named by file_name, images from the "input" column.
    again = tmp_path / "again"
    run(["--input", str(out / "dataset"), "--output", str(again), "--model", str(model_dir),
         "--image_column", "input", "--batch_size", "1", "--no_reuse_freed_memory"])
    for name in ["a.png", "sub/b.png"]:  # 8-bit rows: the dataset's PIL images restore like the files
        assert np.array_equal(np.asarray(load_image_file(again / name)), want[name]), name
    summary = json.loads((again / "summary.json").read_text())
    assert summary["restored"] == 3 and summary["freed_memory_reused"] is False
    assert sorted(read_manifests(again)) == names


def test_manifest_line_cut_by_a_kill_is_ignored_and_closed(tmp_path):
    from training.batch_restore import Manifest

    (tmp_path / f"{MANIFEST_PREFIX}0.jsonl").write_text('{"file": "a.png", "status": "ok", "output": "a.png"}\n{"fi')
    (tmp_path / f"{MANIFEST_PREFIX}3.jsonl").write_text('{"file": "c.png", "status": "failed", "error": "x"}\n')
    manifest = Manifest(tmp_path, 0)  # a resumed rank 0 appends after the cut line, not onto it
    manifest.append({"file": "b.png", "status": "ok", "output": "b.png"})
    manifest.close()
    records = read_manifests(tmp_path)
    assert sorted(records) == ["a.png", "b.png", "c.png"] and records["c.png"]["status"] == "failed"


def test_output_inside_the_input_is_refused(tmp_path):
    from training.batch_restore import main, parse_args

    save(tmp_path / "in" / "a.png", textured_image(0, 16, 16))
    for output in (tmp_path / "in", tmp_path / "in" / "restored"):
        with pytest.raises(ValueError, match="would write into --input"):
            main(parse_args(["--input", str(tmp_path / "in"), "--output", str(output), "--model", "unused"]))
    # Dataset output writes its images to OUT/images: that folder as the input is refused too.
    save(tmp_path / "out" / "images" / "a.png", textured_image(0, 16, 16))
    with pytest.raises(ValueError, match="would write into --input"):
        main(parse_args(["--input", str(tmp_path / "out" / "images"), "--output", str(tmp_path / "out"),
                         "--output_format", "dataset", "--model", "unused"]))
    with pytest.raises(SystemExit):  # pushing needs the dataset output
        parse_args(["--input", "x", "--output", "y", "--push_to_hub", "me/x"])


def test_bad_tile_options_stop_the_run_before_any_image(model_dir, tmp_path, capsys):
    """A tile or overlap that no image could use is a usage error, not one failure per file: argparse refuses what
    it can check alone, and an overlap too large for the default tiles stops main() before the plan is made."""
    from training.batch_restore import main, parse_args

    save(tmp_path / "in" / "a.png", textured_image(0, 16, 16))
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(model_dir),
            "--no_reuse_freed_memory"]
    for options, message in ((["--tile", "7"], "--tile must be an integer of at least 8 pixels, got 7"),
                             (["--tile", "16", "--tile_overlap", "9"], "half the tile (8 for --tile 16), got 9"),
                             (["--tile", "0", "--tile_overlap", "4"], "--tile 0 restores whole images")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv + options)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"half the tile \(512 for the default tile 1024\), got 600"):
        main(parse_args(argv + ["--tile_overlap", "600"]))
    assert not (tmp_path / "out").exists()
    summary = main(parse_args(argv + ["--tile_overlap", "512"]))  # fits the default tiles; this image is whole
    assert summary["restored"] == 1 and summary["failed"] == 0


@pytest.mark.parametrize("names, message", [
    (["../../escape", "b"], "not plain relative paths"),
    (["/tmp/absolute", "b"], "not plain relative paths"),
    (["sub/./x", "b"], "not plain relative paths"),
    (["x", "x.png"], "rows 'x' and 'x.png' would both be written to 'x.png'"),
    (["sub/x.png", "sub/x.png"], "duplicate names"),
])
def test_dataset_row_names_that_would_escape_or_collide_are_refused(names, message):
    """Rows of a dataset input are written to OUT/<file_name>: a name that is absolute or climbs out with ".."
    would write outside the output folder, and two names with one output file would lose a restoration."""
    import datasets

    from training.batch_restore import DatasetSource

    image = Image.fromarray(textured_image(0, 8, 8))
    dataset = datasets.Dataset.from_dict({"file_name": names, "image": [image] * len(names)},
                                         features=datasets.Features({"file_name": datasets.Value("string"),
                                                                     "image": datasets.Image()}))
    with pytest.raises(ValueError, match=re.escape(message) if "'" in message else message):
        DatasetSource(dataset, "image", "file_name")
    fine = DatasetSource(dataset.select([1]).map(lambda row: {"file_name": "sub/ok"}), "image", "file_name")
    assert fine.names() == ["sub/ok"] and fine.output_name("sub/ok") == "sub/ok.png"


def test_an_output_folder_above_the_input_never_writes_over_an_input(model_dir, tmp_path):
    """--input T/in --output T: the input in/a.png would be restored to T/in/a.png, over another input. Refused
    before anything is written; an output folder above an input whose names cannot reach it works as usual."""
    from training.batch_restore import main, parse_args

    save(tmp_path / "in" / "a.png", textured_image(0, 16, 16))
    save(tmp_path / "in" / "in" / "a.png", textured_image(1, 16, 16))
    before = (tmp_path / "in" / "a.png").read_bytes()
    with pytest.raises(ValueError, match="would write 'in/a.png' into --input"):
        main(parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path), "--model", str(model_dir),
                         "--no_reuse_freed_memory"]))
    assert (tmp_path / "in" / "a.png").read_bytes() == before and not list(tmp_path.glob("manifest-*"))
    save(tmp_path / "other" / "raw" / "b.png", textured_image(2, 16, 16))
    summary = main(parse_args(["--input", str(tmp_path / "other" / "raw"), "--output", str(tmp_path / "other"),
                               "--model", str(model_dir), "--no_reuse_freed_memory"]))
    assert summary["restored"] == 1 and (tmp_path / "other" / "b.png").is_file()


def test_dataset_resume_leaves_out_restorations_whose_input_is_gone(model_dir, tmp_path):
    """Dataset output rebuilt on a rerun from every restoration in the manifests: one whose input was deleted in
    between used to stop the run (DatasetGenerationError) with the old summary left in place."""
    import datasets

    from training.batch_restore import main, parse_args

    for name, seed in (("a.png", 0), ("b.png", 1)):
        save(tmp_path / "in" / name, textured_image(seed, 16, 16))
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(model_dir),
            "--output_format", "dataset", "--no_reuse_freed_memory"]
    assert main(parse_args(argv))["restored"] == 2
    (tmp_path / "in" / "b.png").unlink()
    summary = main(parse_args(argv))
    assert summary["skipped"] == 1 and summary["restored"] == 0
    assert datasets.load_from_disk(str(tmp_path / "out" / "dataset"))["file_name"] == ["a.png"]


def test_throughput_benchmark_runs_the_real_script_and_writes_its_table(tmp_path):
    """benchmarks/bench_batch_restore.py on one process (the GPU call runs it so): every generated image restored
    by `training.batch_restore`, and the JSON table holds the script's own figures (no timing is asserted)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_batch_restore.py"
    spec = importlib.util.spec_from_file_location("bench_batch_restore", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--images", "4", "--size", "32", "--processes", "1", "--threads", "1",
                         "--json", str(tmp_path / "table.json")])
    assert json.loads((tmp_path / "table.json").read_text()) == report
    (row,) = report["rows"]
    assert (row["processes"], row["threads_each"], row["restored"], row["failed"], row["ratio"]) == (1, 1, 4, 0, 1.0)
    assert row["images_per_second"] == pytest.approx(4 / row["restore_seconds"], rel=1e-3)
    assert report["images"] == 4 and report["size"] == 32 and report["cuda"] is None
    # Ratios are to one process whatever the order asked (with fake runs: 2 processes at 1.5x the rate of one).
    rates = {1: 10.0, 2: 15.0}
    fake = lambda processes, argv, threads, timeout: {"restored": 4, "failed": 0, "restore_seconds": 1.0,  # noqa: E731
                                                      "images_per_second": rates[processes]}
    bench.run = fake
    report = bench.main(["--images", "4", "--size", "32", "--processes", "2", "1", "--threads", "1"])
    assert [(row["processes"], row["ratio"]) for row in report["rows"]] == [(2, 1.5), (1, 1.0)]


def test_throughput_benchmark_keeps_the_callers_python_path_for_the_script(tmp_path, monkeypatch):
    """The GPU call installs its packages with `pip install --target DIR` and finds them through PYTHONPATH: the
    benchmark's `training.batch_restore` process gets the checkout first and every entry of the caller's
    PYTHONPATH after it (it used to get the checkout alone, and stopped at `import PIL` there)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_batch_restore.py"
    spec = importlib.util.spec_from_file_location("bench_batch_restore", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = {}

    def fake_run(command, env, **kwargs):
        seen["env"] = env
        (tmp_path / "out" / "summary.json").write_text("{}")
        return subprocess.CompletedProcess(command, 0, "", "")

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", "/opt/extra"]))
    bench.run(1, ["--output", str(tmp_path / "out")], threads=1, timeout=10)
    assert seen["env"]["PYTHONPATH"].split(os.pathsep) == [str(bench.REPO), "/tmp/site", "/opt/extra"]
    monkeypatch.delenv("PYTHONPATH")
    bench.run(1, ["--output", str(tmp_path / "out")], threads=1, timeout=10)
    assert seen["env"]["PYTHONPATH"] == str(bench.REPO)


def test_a_restoration_recorded_by_any_rank_outranks_an_earlier_failure(tmp_path):
    """A file that failed on rank 1 and was restored by rank 0 in a later run is restored, whatever the order of the
    manifest files (rank10 sorts before rank2 by name); among failures the later one stays."""
    (tmp_path / f"{MANIFEST_PREFIX}0.jsonl").write_text('{"file": "d.png", "status": "ok", "output": "d.png"}\n')
    (tmp_path / f"{MANIFEST_PREFIX}1.jsonl").write_text('{"file": "d.png", "status": "failed", "error": "x"}\n')
    (tmp_path / f"{MANIFEST_PREFIX}2.jsonl").write_text('{"file": "e.png", "status": "failed", "error": "first"}\n')
    (tmp_path / f"{MANIFEST_PREFIX}10.jsonl").write_text('{"file": "e.png", "status": "failed", "error": "later"}\n')
    records = read_manifests(tmp_path)
    assert records["d.png"]["status"] == "ok"
    assert records["e.png"]["error"] == "later"


def test_a_file_name_that_is_not_utf8_is_restored_and_recorded(model_dir, tmp_path):
    """A Latin-1 file name (held by Python as surrogate escapes) used to stop the whole run when its manifest line
    was written; it is restored, recorded, and skipped by the next run."""
    from training.batch_restore import main, parse_args

    odd = os.fsdecode(b"caf\xe9.png")
    save(tmp_path / "in" / odd, textured_image(0, 16, 16))
    save(tmp_path / "in" / "z.png", textured_image(1, 16, 16))
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(model_dir),
            "--no_reuse_freed_memory"]
    summary = main(parse_args(argv))
    assert summary["restored"] == 2 and summary["failed"] == 0
    assert (tmp_path / "out" / odd).is_file() and sorted(read_manifests(tmp_path / "out")) == sorted([odd, "z.png"])
    assert main(parse_args(argv))["skipped"] == 2


def test_a_resume_under_other_settings_is_refused_and_removed_or_changed_files_are_redone(model_dir, tmp_path):
    """OUT/run_settings.json: another model or degradation would mix two restorations in one archive (exit 2 from
    the command line); tiles may change. A recorded output removed since, or an input file changed since, is
    restored again instead of being skipped for good."""
    from training.batch_restore import SETTINGS_NAME, cli, main, parse_args

    for name, seed in (("a.png", 0), ("b.png", 1), ("c.png", 2)):
        save(tmp_path / "in" / name, textured_image(seed, 16, 16))
    common = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--no_reuse_freed_memory"]
    argv = common + ["--model", str(model_dir)]
    assert main(parse_args(argv))["restored"] == 3
    settings = json.loads((tmp_path / "out" / SETTINGS_NAME).read_text())
    assert settings["degradation"] == "auto" and len(settings["model_fingerprint"]) == 16
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("a.png", "b.png", "c.png")}

    other_model = tmp_path / "other-model"
    config_class, model_class = modeling.MODEL_CLASSES["pip"]
    torch.manual_seed(1)
    model_class(config_class(**PIP_TINY)).save_pretrained(other_model)
    for changed, message in ((argv + ["--degradation", "rain"], "degradation: 'auto' -> 'rain'"),
                             (common + ["--model", str(other_model)], "model_fingerprint"),
                             (argv + ["--output_format", "dataset"], "output_format: 'folder' -> 'dataset'")):
        with pytest.raises(ValueError, match="other settings") as error:
            main(parse_args(changed))
        assert message in str(error.value)
    assert cli(argv + ["--degradation", "rain"]) == 2
    assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before

    (tmp_path / "out" / "b.png").unlink()
    save(tmp_path / "in" / "c.png", textured_image(3, 16, 16))  # edited after its restoration
    summary = main(parse_args(argv + ["--tile", "16"]))  # another tile is fine
    assert (summary["restored"], summary["skipped"]) == (2, 1)
    assert (tmp_path / "out" / "b.png").read_bytes() == before["b.png"]  # the same image, the same restoration
    assert (tmp_path / "out" / "c.png").read_bytes() != before["c.png"]
    assert main(parse_args(argv))["skipped"] == 3


def test_an_input_edited_to_the_same_size_is_restored_again(model_dir, tmp_path):
    """A recorded input is restored again when its size or its modification time changed: an edit that keeps the
    file's size (an uncompressed BMP) is caught by the time alone."""
    from training.batch_restore import main, parse_args

    source = save(tmp_path / "in" / "a.bmp", textured_image(0, 16, 16))
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(model_dir),
            "--no_reuse_freed_memory"]
    assert main(parse_args(argv))["restored"] == 1
    before, size, stamp = (tmp_path / "out" / "a.bmp").read_bytes(), source.stat().st_size, source.stat().st_mtime_ns
    save(source, textured_image(1, 16, 16))
    os.utime(source, ns=(stamp + 10**9, stamp + 10**9))  # a later time even where the clock is coarse
    assert source.stat().st_size == size
    summary = main(parse_args(argv))
    assert (summary["restored"], summary["skipped"]) == (1, 0)
    assert (tmp_path / "out" / "a.bmp").read_bytes() != before


def test_a_dataset_dict_saved_to_disk_restores_the_split_asked_for(model_dir, tmp_path):
    """A DatasetDict kept with save_to_disk (dataset_dict.json, one folder per split) is a dataset input: --split
    picks the rows, and a split it lacks is refused naming the ones it has."""
    import datasets

    from training.batch_restore import main, parse_args

    def rows(names: list[str], seed: int) -> datasets.Dataset:
        images = [Image.fromarray(textured_image(seed + i, 16, 16)) for i in range(len(names))]
        return datasets.Dataset.from_dict({"file_name": names, "image": images},
                                          features=datasets.Features({"file_name": datasets.Value("string"),
                                                                      "image": datasets.Image()}))

    datasets.DatasetDict({"train": rows(["a.png", "b.png"], 0), "test": rows(["t.png"], 5)}).save_to_disk(
        str(tmp_path / "saved"))
    argv = ["--input", str(tmp_path / "saved"), "--output", str(tmp_path / "out"), "--model", str(model_dir),
            "--no_reuse_freed_memory"]
    summary = main(parse_args(argv + ["--split", "test"]))
    assert (summary["total"], summary["restored"], summary["failed"]) == (1, 1, 0)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["t.png"]
    with pytest.raises(ValueError, match=r"no split 'validation' \(splits: \['test', 'train'\]\)"):
        main(parse_args(argv + ["--split", "validation"]))
    # Another split, or another image column, into the same output would mix two archives: refused.
    changed_settings = ((["--split", "train"], "split: 'test' -> 'train'"),
                        (["--split", "test", "--image_column", "file_name"], "image_column: 'image' -> 'file_name'"))
    for options, change in changed_settings:
        with pytest.raises(ValueError, match="other settings") as error:
            main(parse_args(argv + options))
        assert change in str(error.value)


def test_an_archive_of_several_windows_is_restored_whole_in_one_process(model_dir, tmp_path):
    """Inputs are decoded and restored a window (batch_size x WINDOW_BATCHES) at a time: an archive of more than
    one window, ending in a partial one, comes out whole."""
    from training.batch_restore import main, parse_args

    names = [f"img{i:02d}.png" for i in range(WINDOW_BATCHES + 2)]
    for i, name in enumerate(names):
        save(tmp_path / "in" / name, textured_image(i, 16, 16))
    summary = main(parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model",
                               str(model_dir), "--batch_size", "1", "--no_reuse_freed_memory"]))
    assert (summary["restored"], summary["failed"]) == (len(names), 0)
    assert sorted(read_manifests(tmp_path / "out")) == names


def test_options_no_image_could_use_stop_the_command_with_exit_code_2(model_dir, tmp_path, capsys):
    """A degradation the model does not know, or an input that is neither a folder nor a loadable dataset, used to
    fail every image (exit 0) or end in a traceback; now nothing is written and the command exits 2."""
    from training.batch_restore import cli

    save(tmp_path / "in" / "a.png", textured_image(0, 16, 16))
    argv = ["--output", str(tmp_path / "out"), "--model", str(model_dir), "--no_reuse_freed_memory"]
    assert cli(["--input", str(tmp_path / "in"), "--degradation", "bogus", *argv]) == 2
    assert "--degradation bogus" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli(["--input", str(tmp_path / "no-such-folder"), *argv]) == 2
    err = capsys.readouterr().err
    assert "is not a folder, a dataset saved with save_to_disk" in err and "Traceback" not in err


def test_an_output_that_cannot_be_a_folder_exits_2_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--output naming a file, or a path below one, used to load the model and then end in mkdir's traceback
    (FileExistsError / NotADirectoryError, which the command did not report): one line and exit code 2 now."""
    import training.batch_restore as batch_restore

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(batch_restore, "load_model", no_loading)
    save(tmp_path / "in" / "a.png", textured_image(0, 16, 16))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for output, message in ((a_file, "exists and is not a folder"), (a_file / "out", "is not a folder")):
        assert batch_restore.cli(["--input", str(tmp_path / "in"), "--output", str(output), "--cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("batch_restore: error: --output:") and message in err and len(err.splitlines()) == 1
    assert a_file.read_text() == "not a folder"


def test_dataset_rows_keep_16_bit_colour_and_pgm_outputs_stay_gray(model_dir, tmp_path):
    """Rows of an image column are decoded from their stored bytes (16-bit colour survives, where the PIL image
    `datasets` decodes is 8-bit) and the dataset output keeps the input bytes as they were; a .pgm input comes
    back as a gray PGM (P5), not a colour pixmap under a .pgm name."""
    import datasets

    from training.batch_restore import main, parse_args

    write_png(sixteen_bit(0, 16, 24), tmp_path / "rgb16.png")
    stored = (tmp_path / "rgb16.png").read_bytes()
    features = datasets.Features({"file_name": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_dict({"file_name": ["rgb16.png"], "image": [{"bytes": stored, "path": None}]},
                               features=features).save_to_disk(str(tmp_path / "ds"))
    summary = main(parse_args(["--input", str(tmp_path / "ds"), "--output", str(tmp_path / "out"),
                               "--model", str(model_dir), "--output_format", "dataset", "--no_reuse_freed_memory"]))
    assert summary["restored"] == 1
    restored = load_image_file(tmp_path / "out" / "images" / "rgb16.png")
    assert isinstance(restored, np.ndarray) and restored.dtype == np.uint16
    row = datasets.load_from_disk(str(tmp_path / "out" / "dataset")).cast_column(
        "input", datasets.Image(decode=False))[0]
    assert row["input"]["bytes"] == stored

    (tmp_path / "gray").mkdir()
    Image.fromarray(textured_image(0, 16, 16)[..., 0]).save(tmp_path / "gray" / "g.pgm")
    main(parse_args(["--input", str(tmp_path / "gray"), "--output", str(tmp_path / "gray-out"),
                     "--model", str(model_dir), "--no_reuse_freed_memory"]))
    assert (tmp_path / "gray-out" / "g.pgm").read_bytes()[:2] == b"P5"
    assert Image.open(tmp_path / "gray-out" / "g.pgm").mode == "L"


def test_help_states_the_defaults_the_options_have(capsys):
    """--help said rows are named by index by default, while --file_column defaults to file_name (the index is the
    fallback for datasets without that column); the other dataset defaults were not stated at all."""
    import argparse

    from training.batch_restore import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the row index)" not in text
    assert "(default: file_name; where the dataset has no such column, rows are named by their index)" in text
    assert "(default: image)" in text and "(default: train)" in text and "'auto' (default)" in text
    args = parse_args(["--input", "in", "--output", "out"])
    assert isinstance(args, argparse.Namespace)
    assert (args.file_column, args.image_column, args.split, args.degradation, args.batch_size) == (
        "file_name", "image", "train", "auto", 4)


def test_a_streamed_dataset_is_read_from_its_stored_bytes(tmp_path, monkeypatch):
    """--streaming materialises the stream once; the rows must keep their stored bytes, as a downloaded dataset's
    do: decoded by `datasets` on the way, a corrupt row ended the whole run (UnidentifiedImageError) instead of
    failing alone, and a 16-bit colour PNG was restored (and kept in the dataset output) at 8 bits."""
    import datasets

    from modeling import RestorationInputError
    from training.batch_restore import open_source, parse_args

    write_png(sixteen_bit(1, 8, 12), tmp_path / "rgb16.png")
    stored = (tmp_path / "rgb16.png").read_bytes()
    features = datasets.Features({"file_name": datasets.Value("string"), "image": datasets.Image()})
    rows = datasets.Dataset.from_dict(
        {"file_name": ["rgb16.png", "broken.png"],
         "image": [{"bytes": stored, "path": None}, {"bytes": b"not an image", "path": None}]}, features=features)
    # What load_dataset(..., streaming=True) gives for a Hub dataset (no network in the tests).
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, streaming=False, **kwargs: rows.to_iterable_dataset() if streaming else rows)
    source = open_source(parse_args(["--input", "me/archive", "--output", str(tmp_path / "out"), "--streaming"]))
    assert source.names() == ["broken.png", "rgb16.png"]
    restored_input = source.read("rgb16.png")
    assert isinstance(restored_input, np.ndarray) and restored_input.dtype == np.uint16
    np.testing.assert_array_equal(restored_input, sixteen_bit(1, 8, 12))
    assert source.input_bytes("rgb16.png")["bytes"] == stored
    with pytest.raises(RestorationInputError, match="not an image"):
        source.read("broken.png")


def test_a_streamed_dataset_of_image_files_named_by_url_is_fetched(tmp_path, monkeypatch):
    """A streamed Hub image folder names its files by URL (hf://datasets/...), with no bytes: read from their stored
    bytes, the rows must be fetched as `datasets` would fetch them (memory:// stands in for hf:// here)."""
    import datasets
    import fsspec

    from training.batch_restore import open_source, parse_args

    with fsspec.open("memory://streamed-archive/rgb16.png", "wb") as handle:
        write_png(sixteen_bit(2, 8, 12), handle)
    rows = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": "memory://streamed-archive/rgb16.png"}]},
                                      features=datasets.Features({"image": datasets.Image()}))
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: rows.to_iterable_dataset())
    source = open_source(parse_args(["--input", "me/archive", "--output", str(tmp_path / "out"), "--streaming"]))
    np.testing.assert_array_equal(source.read("000000"), sixteen_bit(2, 8, 12))
    assert source.input_bytes("000000")["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
