"""Degradation corpora streaming: layouts, labels, plans, ranks x workers, bad data, exact resume, Hub path."""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from data_helpers import (
    coded_image,
    make_bad_folder,
    make_cdd11,
    make_clean_folder,
    make_layouts,
    png_bytes,
    save,
    save_pair,
    textured_image,
)
from training import data as D
from training.data.stream import _ExampleLoader

# torchdata's StatefulDataLoader calls a deprecated torch API on every loader; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")

SMALL_REPEATS = {"noise": 1, "rain": 2, "haze": 1, "blur": 1, "low-light": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    layouts = make_layouts(root)
    roots = {task: layout[0] for task, layout in layouts.items()}
    roots["clean"] = make_clean_folder(root / "photos")
    return {"root": root, "layouts": layouts, "roots": roots, "cdd11": make_cdd11(root / "CDD-11")}


def five_task_stream(corpus, **kwargs) -> D.RestorationStream:
    kwargs.setdefault("patch_size", 24)
    kwargs.setdefault("shards_per_rank", 4)
    return D.build_stream("5-task", corpus["roots"], repeats=SMALL_REPEATS, **kwargs)


def red_code(chw: np.ndarray) -> int:
    return int(np.asarray(chw)[0].flat[0] * 255 + 0.5) if np.asarray(chw).dtype != np.uint8 else int(chw[0].flat[0])


# ---------------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("task", ["rain", "haze", "blur", "low-light"])
def test_official_layouts_pair_correctly(corpus, task):
    root, expected_pairs, expected_unpaired = corpus["layouts"][task]
    pairs, unpaired = D.pair_files(D.list_image_files(root), task)
    assert pairs == sorted(expected_pairs)
    assert unpaired == sorted(expected_unpaired)
    source = D.paired_source(root, task)
    assert source.repeat == D.OFFICIAL_REPEATS[task]
    assert source.missing_pairs == len(expected_unpaired)


def test_layout_rules_details(corpus):
    rain_pairs = dict(D.pair_files(D.list_image_files(corpus["roots"]["rain"]), "rain")[0])
    assert any(k.endswith("rainy/rain-12.png") and v.endswith("gt/norain-12.png") for k, v in rain_pairs.items())
    haze_pairs = D.pair_files(D.list_image_files(corpus["roots"]["haze"]), "haze")[0]
    # two hazy versions (A, beta) of one clear id share the clean image; SOTS targets are .png
    assert sum(clean.endswith("original/0025.jpg") for _, clean in haze_pairs) == 2
    assert ("SOTS/input/0001_0.8_0.2.jpg", "SOTS/target/0001.png") in {
        (h.split("dehaze_data/")[1], c.split("dehaze_data/")[1]) for h, c in haze_pairs
    }
    # GoPro pairs stay inside their sequence although frame names repeat
    for blur, sharp in D.pair_files(D.list_image_files(corpus["roots"]["blur"]), "blur")[0]:
        assert blur.replace("/blur/", "/sharp/") == sharp


def test_lol_v2_real_captured_pairs_low_k_with_normal_k(tmp_path):
    """LOL-v2 names its Real_captured pairs Low/low<k>.png and Normal/normal<k>.png (Synthetic: the same name in
    both); the Real pairs used to go unpaired, so a LOL-v2 root trained on its synthetic half only."""
    root = tmp_path / "LOL-v2"
    expected = [save_pair(root / f"Real_captured/{split}/Low/low{k}.png",
                          root / f"Real_captured/{split}/Normal/normal{k}.png", i)
                for i, (split, k) in enumerate((("Train", "00001"), ("Test", "00690")))]
    expected.append(save_pair(root / "Synthetic/Train/Low/r000da4f0t.png",
                              root / "Synthetic/Train/Normal/r000da4f0t.png", 3))
    pairs, unpaired = D.pair_files(D.list_image_files(root), "low-light")
    assert pairs == sorted(expected) and unpaired == []


def test_gopro_gamma_renderings_pair_only_where_the_linear_blur_is_absent():
    # The original GoPro tree has each frame in blur/ and blur_gamma/: the benchmark's input is blur/, so each
    # sharp frame is paired (scored, trained on) once; a tree holding only blur_gamma/ still pairs.
    files = [f"test/{seq}/{kind}/000001.png" for seq in ("GOPR0384_11_00", "GOPR0385_11_01")
             for kind in ("blur", "blur_gamma", "sharp")]
    files += ["gamma_only/blur_gamma/000002.png", "gamma_only/sharp/000002.png"]
    pairs, unpaired = D.pair_files(files, "blur")
    assert pairs == [
        ("gamma_only/blur_gamma/000002.png", "gamma_only/sharp/000002.png"),
        ("test/GOPR0384_11_00/blur/000001.png", "test/GOPR0384_11_00/sharp/000001.png"),
        ("test/GOPR0385_11_01/blur/000001.png", "test/GOPR0385_11_01/sharp/000001.png"),
    ]
    assert unpaired == []


def test_cdd11_layout_from_folder_and_from_dataset_repo(corpus):
    cdd_root = corpus["root"] / "CDD-11"
    for split in ("train", "test"):
        sources = D.cdd11_sources(cdd_root, split=split)
        assert [s.task_name for s in sources] == list(D.CDD11_TYPES)
        for source in sources:
            assert list(source.pairs) == sorted(corpus["cdd11"][split][source.task_name])
    # the same folder seen as a dataset repo through datasets.load_dataset_builder (the Hub-id code path)
    repo_files = D.dataset_image_files(str(cdd_root))
    assert len(repo_files) == 2 * (11 + 1) * 2
    from_repo = D.cdd11_sources(repo_files, split="test")
    assert [s.pairs for s in from_repo] == [s.pairs for s in D.cdd11_sources(cdd_root, split="test")]


def test_preset_errors_are_clear(corpus):
    with pytest.raises(ValueError, match="roots\\['blur'\\]"):
        D.preset_sources("5-task", {k: v for k, v in corpus["roots"].items() if k != "blur"})
    with pytest.raises(ValueError, match="unknown preset"):
        D.preset_sources("4-task", {})
    with pytest.raises(ValueError, match="unknown roots"):
        D.preset_sources("3-task", {"dehaze": "x"})


# ---------------------------------------------------------------------------------------------------- plans


def test_epoch_plan_repeats_determinism_and_padding(corpus):
    stream = five_task_stream(corpus)
    sources = stream.sources
    assert [s.name for s in sources][:3] == ["noise-s15", "noise-s25", "noise-s50"]
    plan = stream.plan(0)
    expected = sum(len(s) * s.repeat for s in sources)
    assert len(plan) == expected + (-expected) % stream.num_shards
    counts = np.bincount(plan.source[:expected], minlength=len(sources))
    # before padding every (source, pair) appears exactly `repeat` times
    pairs_seen = {}
    for s, p in zip(plan.source[:expected], plan.pair[:expected]):
        pairs_seen[(s, p)] = pairs_seen.get((s, p), 0) + 1
    assert all(pairs_seen[(i, p)] == src.repeat for i, src in enumerate(sources) for p in range(len(src)))
    assert counts.tolist() == [len(s) * s.repeat for s in sources]
    np.testing.assert_array_equal(stream.plan(0).source, plan.source)
    assert not np.array_equal(stream.plan(1).source, plan.source)


def test_probability_mixture_frequencies(corpus):
    sources = D.preset_sources("5-task", corpus["roots"], repeats=SMALL_REPEATS)
    probabilities = {"noise": 0.5, "rain": 0.2, "haze": 0.1, "blur": 0.1, "low-light": 0.1}
    stream = D.RestorationStream(sources, probabilities=probabilities, epoch_length=20000, shards_per_rank=4)
    plan = stream.plan()
    tasks = np.array([sources[s].task_name for s in plan.source])
    for task, p in probabilities.items():
        assert abs((tasks == task).mean() - p) < 0.015
    # the noise share is split evenly between the three sigma sources
    noise_counts = np.bincount(plan.source, minlength=len(sources))[:3] / len(plan)
    np.testing.assert_allclose(noise_counts, 0.5 / 3, atol=0.015)
    with pytest.raises(ValueError, match="unknown tasks/sources"):
        D.RestorationStream(sources, probabilities={"snow": 1.0})


def test_synthesized_blur_is_one_source_per_kernel_family(corpus):
    """Synthesized blur splits into gaussian/defocus/motion sources (the task keeps its repeat), so a recipe can
    weight one family; each source synthesizes its own family."""
    from training.degradations import BLUR_FAMILIES, blur, synthesize

    roots = {"clean": corpus["roots"]["clean"]}
    sources = D.preset_sources("5-task", roots, synthesize_missing=True)
    blur_sources = [s for s in sources if s.task_name == "blur"]
    assert [s.name for s in blur_sources] == [f"blur-synthetic:{f}" for f in BLUR_FAMILIES]
    assert [dict(s.synthesis_kwargs) for s in blur_sources] == [{"family": f} for f in BLUR_FAMILIES]
    rain = next(s for s in sources if s.task_name == "rain")
    assert sum(s.repeat for s in blur_sources) == rain.repeat == 9  # same total weight as every synthesized task
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    for source, family in zip(blur_sources, BLUR_FAMILIES):
        made = synthesize(image, source.synthesis, np.random.default_rng(3), **source.synthesis_kwargs).image
        np.testing.assert_array_equal(made, blur(image, np.random.default_rng(3), family=family).image)
    # a family's own probability, the rest of the task split evenly
    probabilities = {"blur-synthetic:motion": 0.4, "blur": 0.2, "noise": 0.4}
    stream = D.RestorationStream(sources, probabilities=probabilities, epoch_length=20000, shards_per_rank=4)
    names = np.array([sources[i].name for i in stream.plan().source])
    assert abs((names == "blur-synthetic:motion").mean() - 0.4) < 0.015
    for family in ("gaussian", "defocus"):
        assert abs((names == f"blur-synthetic:{family}").mean() - 0.1) < 0.015


# ---------------------------------------------------------------------------------------------------- examples


def test_five_task_stream_examples_labels_and_pairing(corpus):
    stream = five_task_stream(corpus)
    examples = list(stream)
    plan = stream.plan()
    assert [e["index"] for e in examples] == list(range(len(plan)))  # nothing lost, plan order
    by_name = {s.name: s for s in stream.sources}
    for example in examples:
        source = by_name[example["source"]]
        assert example["source"] == stream.sources[plan.source[example["index"]]].name
        assert example["task_name"] == source.task_name
        assert example["task"] == D.TASK_NAMES.index(source.task_name)
        for key in ("degraded", "clean"):
            assert example[key].shape == (3, 24, 24) and example[key].dtype == np.float32
            assert 0.0 <= example[key].min() and example[key].max() <= 1.0
        if source.synthesis is None:  # paired: red channel codes the pair id in both images
            assert abs(red_code(example["degraded"]) - red_code(example["clean"])) <= 2  # JPEG: +-2
            assert abs(example["degraded"][1].mean() - 200 / 255) < 0.02  # and the degraded one is green
            assert abs(example["clean"][1].mean() - 40 / 255) < 0.02
        else:
            assert not np.array_equal(example["degraded"], example["clean"])
    assert {e["task"] for e in examples} == {0, 1, 2, 3, 4}
    assert stream.bad_data_counts() == {"rain:derain_data": {"missing_pair": 1}}


def test_presets_label_spaces_and_uint8_output(corpus):
    three = D.build_stream("3-task", corpus["roots"], repeats=SMALL_REPEATS, patch_size=16, shards_per_rank=2,
                           output_dtype="uint8")
    examples = list(three)
    assert {e["task"] for e in examples} == {0, 1, 2}
    assert examples[0]["degraded"].dtype == np.uint8 and examples[0]["degraded"].shape == (3, 16, 16)
    cdd = D.build_stream("cdd11", {"clean": corpus["roots"]["clean"]}, synthesize_missing=True, patch_size=16,
                         shards_per_rank=2)
    cdd_examples = list(cdd)
    assert len(cdd_examples) == 11 * 6 + (-66) % 2
    assert {e["task_name"] for e in cdd_examples} == set(D.CDD11_TYPES)
    assert all(e["task"] == D.CDD11_TYPES.index(e["task_name"]) for e in cdd_examples)
    real_cdd = D.build_stream("cdd11", {"cdd11": corpus["root"] / "CDD-11"}, patch_size=16, shards_per_rank=2)
    for example in real_cdd:
        assert red_code(example["degraded"]) == red_code(example["clean"])


def test_same_example_whatever_the_worker(corpus):
    """Crops, flips and noise depend on (seed, epoch, index) only."""
    a = {e["index"]: e for e in five_task_stream(corpus, seed=5)}
    loader = D.build_dataloader(five_task_stream(corpus, seed=5), batch_size=1, num_workers=2, drop_last=False)
    for batch in itertools.islice(loader, 12):
        reference = a[int(batch["index"][0])]
        np.testing.assert_array_equal(batch["degraded"][0].numpy(), reference["degraded"])
    b = {e["index"]: e for e in five_task_stream(corpus, seed=6)}
    assert any(not np.array_equal(a[i]["degraded"], b[i]["degraded"]) for i in a)


# ---------------------------------------------------------------------------------------------------- ranks x workers


def test_two_ranks_two_workers_disjoint_and_complete(corpus):
    seen: dict[int, list[int]] = {}
    plans = []
    for rank in (0, 1):
        stream = five_task_stream(corpus, rank=rank, world_size=2, seed=3)
        plans.append(stream.plan())
        loader = D.build_dataloader(stream, batch_size=3, num_workers=2, drop_last=False)
        seen[rank] = []
        for batch in loader:
            seen[rank].extend(batch["index"].tolist())
            for index, source in zip(batch["index"].tolist(), batch["source"]):
                assert source == stream.sources[plans[-1].source[index]].name
    np.testing.assert_array_equal(plans[0].source, plans[1].source)  # every rank derives the same plan
    assert len(seen[0]) == len(set(seen[0])) and len(seen[1]) == len(set(seen[1]))
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(len(plans[0])))
    assert len(seen[0]) == len(seen[1])  # equal shards: ranks stay in step


# ---------------------------------------------------------------------------------------------------- bad data


def test_decode_image_conversions(tmp_path):
    expected = make_bad_folder(tmp_path)
    deep, converted = D.decode_image(tmp_path / "input/deep.png")
    assert converted and deep.shape == (40, 48, 3) and (deep == 128).all()
    gray, converted = D.decode_image(str(tmp_path / "input/gray.png"))
    assert converted and (gray[..., 0] == gray[..., 2]).all()
    upright, converted = D.decode_image((tmp_path / "target/exif.png").read_bytes())
    rotated, _ = D.decode_image(tmp_path / "input/exif.jpg")
    assert not converted and rotated.shape == upright.shape == (40, 48, 3)
    assert np.abs(rotated.astype(int) - upright).mean() < 4  # EXIF orientation applied (JPEG loss only)
    for name in ("corrupt.png", "truncated.png"):
        with pytest.raises(ValueError, match="corrupt|not an image"):  # RestorationInputError, as at inference
            D.decode_image(tmp_path / "input" / name)
    assert expected["kept"] == 7


def _odd_files(folder: Path) -> list[Path]:
    """One file per decoding rule: 8-bit RGB (all 256 values), 16-bit RGB/RGBA/gray, palette with transparency,
    gray + alpha, 1-bit, CMYK JPEG and an EXIF-rotated JPEG."""
    from PIL import Image

    from modeling.image_processing_restoration import write_png

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    every_value = np.arange(256 * 3, dtype=np.uint16).reshape(16, 16, 3) % 256
    Image.fromarray(every_value.astype(np.uint8)).save(folder / "rgb.png")
    deep = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    deep[0, 0] = 257 * 100 + 129  # v / 257 = 100.50: rounds to 101, where Pillow's own 8-bit reduction keeps 100
    write_png(deep, folder / "rgb16.png")
    write_png(np.concatenate([deep, deep[..., :1]], axis=-1), folder / "rgba16.png")
    Image.fromarray(rng.integers(0, 65536, (9, 11), dtype=np.uint16)).save(folder / "gray16.png")
    palette = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 3
    palette.save(folder / "palette.png", transparency=3)
    Image.fromarray(rng.integers(0, 256, (9, 11, 2), dtype=np.uint8), mode="LA").save(folder / "gray_alpha.png")
    Image.fromarray(rng.integers(0, 2, (9, 11), dtype=bool)).save(folder / "bilevel.png")
    Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), mode="CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise
    Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    return sorted(folder.iterdir())


def test_training_decodes_what_inference_sees_rounded_to_8_bits(tmp_path):
    """One decoder: training's uint8 image is the processor's float input of the same file, quantized to 8 bits
    (for paths and for encoded bytes, as Hub rows arrive)."""
    from modeling.image_processing_restoration import RestorationImageProcessor, quantize

    processor = RestorationImageProcessor()
    for path in _odd_files(tmp_path):
        inference, meta = processor.to_rgb_float(path)
        expected = quantize(inference, 8).transpose(1, 2, 0)
        for source in (path, path.read_bytes()):
            image, converted = D.decode_image(source)
            assert image.dtype == np.uint8 and image.shape == expected.shape, path.name
            np.testing.assert_array_equal(image, expected, err_msg=path.name)
            assert converted == (path.name not in ("rgb.png", "rotated.jpg")), path.name
        if path.name == "rgb16.png":
            assert meta["bit_depth"] == 16 and image[0, 0, 0] == 101
        if path.name == "rotated.jpg":
            assert image.shape[:2] == (11, 9)  # EXIF orientation applied


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_files_are_converted_or_skipped_and_counted(tmp_path, num_workers):
    expected = make_bad_folder(tmp_path / "bad_rain")
    source = D.paired_source(tmp_path / "bad_rain", "rain", name="bad", repeat=1)
    stream = D.RestorationStream([source], patch_size=16, shards_per_rank=2)
    loader = D.build_dataloader(stream, batch_size=1, num_workers=num_workers, drop_last=False)
    kept = [batch["index"].item() for batch in loader]
    assert len(kept) == expected["kept"]  # the stream went on after each bad file
    counts = stream.bad_data_counts()["bad"]
    assert counts == {k: expected[k] for k in ("missing_pair", "corrupt", "size_mismatch", "converted")}
    if num_workers == 0:  # the owning process's slot; workers save their own slots in the loader's state
        assert stream.state_dict()["bad_data_slot"][0][D.BAD_DATA_KINDS.index("corrupt")] == 2
        # A checkpoint from before per-slot counts holds the totals: a fresh stream (its build-time missing_pair
        # count already in place) resumes with exactly those, not those plus its own.
        legacy = {"epoch": 0, "dataset": stream.state_dict()["dataset"], "bad_data": stream._totals().tolist()}
        resumed = D.RestorationStream([source], patch_size=16, shards_per_rank=2)
        resumed.load_state_dict(legacy)
        assert resumed.bad_data_counts()["bad"] == counts
    stream.set_epoch(stream.epoch)  # what a resume calls with the saved epoch: nothing changes, nothing is reset
    assert stream.bad_data_counts()["bad"] == counts
    stream.set_epoch(1)  # per-epoch counts reset; build-time ones stay
    assert stream.bad_data_counts() == {"bad": {"missing_pair": 1}}


def test_small_images_are_padded_and_counted(tmp_path):
    for i, (height, width) in enumerate([(10, 12), (10, 12), (30, 12), (12, 30)]):  # short or narrow, or both
        save(tmp_path / "tiny" / f"{i}.png", textured_image(i, height, width))
    stream = D.RestorationStream([D.clean_source(tmp_path / "tiny", "noise", name="tiny")], patch_size=16,
                                 shards_per_rank=1)
    examples = list(stream)
    assert len(examples) == 4 and all(example["clean"].shape == (3, 16, 16) for example in examples)
    assert stream.bad_data_counts() == {"tiny": {"padded": 4}}


def test_synthesis_crop_keeps_reflected_borders_out_of_the_patch(tmp_path):
    """Blur leaves a linear ramp unchanged except where its kernel reads reflected pixels: synthesized on the
    patch itself the border columns change, synthesized on a larger crop the patch keeps the ramp everywhere."""
    ramp = np.tile(np.linspace(20, 235, 96).round().astype(np.uint8)[None, :, None], (96, 1, 3))
    save(tmp_path / "ramp" / "0.png", ramp)
    source = D.clean_source(tmp_path / "ramp", "blur", synthesis_kwargs={"family": "motion", "length": 15, "angle": 0.0},
                            name="ramp")

    def max_border_error(**kwargs) -> int:
        stream = D.RestorationStream([source], patch_size=32, shards_per_rank=1, augment=False,
                                     output_dtype="uint8", **kwargs)
        worst = 0
        for epoch in range(4):  # several random crops
            stream.set_epoch(epoch)
            for example in stream:
                degraded, clean = (np.asarray(example[k]).astype(int) for k in ("degraded", "clean"))
                assert degraded.shape == clean.shape == (3, 32, 32)
                worst = max(worst, int(np.abs(degraded - clean).max()))
        return worst

    assert max_border_error() >= 5  # a 15-px kernel over the reflected border bends the ramp (7 levels here)
    assert max_border_error(synthesis_crop_size=48) <= 1  # 8 px of real context on each side: rounding only
    with pytest.raises(ValueError, match="synthesis_crop_size"):
        D.RestorationStream([source], patch_size=32, synthesis_crop_size=24)


# ---------------------------------------------------------------------------------------------------- resume


def _batches(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["index"].tolist() == y["index"].tolist()
        assert torch.equal(x["degraded"], y["degraded"]) and torch.equal(x["clean"], y["clean"])
        assert x["task_name"] == y["task_name"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_exact_with_stateful_dataloader(corpus, num_workers):
    stream = five_task_stream(corpus, seed=1)
    stream.set_epoch(2)
    loader = D.build_dataloader(stream, batch_size=4, num_workers=num_workers)
    iterator = iter(loader)
    _batches(iterator, 3)
    state = loader.state_dict()
    reference = _batches(iterator, 4)
    del iterator

    resumed_stream = five_task_stream(corpus, seed=1)
    resumed_stream.set_epoch(2)
    resumed = D.build_dataloader(resumed_stream, batch_size=4, num_workers=num_workers)
    resumed.load_state_dict(state)
    _assert_same_batches(_batches(iter(resumed), 4), reference)


def test_starting_an_epoch_leaves_torchs_global_rng_alone(corpus):
    """The training step draws from torch's global RNG (DPPD's prompt samples, CPL's random negatives), which a
    checkpoint saves. A loader that took its workers' base seed from that RNG at each `iter()` shifted every later
    draw of a resumed run (its iterator starts after the restore, the uninterrupted run's before step 1): DPPD and
    CPL resumed with other samples, loss by loss."""
    stream = five_task_stream(corpus, seed=1)
    loader = D.build_dataloader(stream, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    assert torch.equal(torch.rand(4), expected)

    resumed = D.build_dataloader(five_task_stream(corpus, seed=1), batch_size=4, num_workers=0)
    resumed.load_state_dict(state)
    torch.manual_seed(0)
    next(iter(resumed))
    assert torch.equal(torch.rand(4), expected)


def test_resume_exact_with_stream_state_dict(corpus):
    stream = five_task_stream(corpus, seed=1, epoch=1)
    iterator = iter(stream)
    first = _batches(iterator, 7)
    state = stream.state_dict()
    assert state["epoch"] == 1
    reference = _batches(iterator, 10)

    resumed = five_task_stream(corpus, seed=1)  # epoch 0 until the state says otherwise
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    again = _batches(iter(resumed), 10)
    assert [e["index"] for e in again] == [e["index"] for e in reference]
    assert all(np.array_equal(x["degraded"], y["degraded"]) for x, y in zip(again, reference))
    assert not {e["index"] for e in first} & {e["index"] for e in again}


def test_epochs_reshuffle_deterministically(corpus):
    stream = five_task_stream(corpus, seed=9)
    unpadded = sum(len(s) * s.repeat for s in stream.sources)
    epoch0 = [(e["source"], e["index"]) for e in stream]
    stream.set_epoch(1)
    epoch1 = [(e["source"], e["index"]) for e in stream]
    assert [s for s, _ in epoch1] != [s for s, _ in epoch0]
    # same multiset of sources per epoch (padding entries, which repeat the first ones, aside)
    assert sorted(s for s, i in epoch1 if i < unpadded) == sorted(s for s, i in epoch0 if i < unpadded)
    assert [(e["source"], e["index"]) for e in five_task_stream(corpus, seed=9)] == epoch0
    # through a 2-worker loader, set_epoch reaches the (re-created) workers
    stream = five_task_stream(corpus, seed=9)
    loader = D.build_dataloader(stream, batch_size=1, num_workers=2, drop_last=False)
    per_epoch = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        per_epoch.append(sorted((b["source"][0], b["index"].item()) for b in loader))
    assert per_epoch[0] == sorted(epoch0)
    assert per_epoch[1] == sorted(epoch1)


# ---------------------------------------------------------------------------------------------------- Hub path


def _write_paired_parquet(path: Path, class_label: bool = False) -> None:
    rows = {"degraded": [], "clean": [], "task": []}
    for i, task in enumerate(["rain", "haze", "rain", "low-light"]):
        rows["degraded"].append({"bytes": png_bytes(coded_image(i, True)), "path": None})
        rows["clean"].append({"bytes": png_bytes(coded_image(i, False)), "path": None})
        rows["task"].append(task)
    rows["degraded"].append({"bytes": b"not an image", "path": None})  # corrupt row
    rows["clean"].append({"bytes": png_bytes(coded_image(9, False)), "path": None})
    rows["task"].append("rain")
    task_feature = (datasets.ClassLabel(names=list(D.TASK_NAMES)) if class_label else datasets.Value("string"))
    if class_label:
        rows["task"] = [D.TASK_NAMES.index(t) for t in rows["task"]]
    features = datasets.Features({"degraded": datasets.Image(), "clean": datasets.Image(), "task": task_feature})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.mark.parametrize("form", ["parquet_files", "local_repo_classlabel"])
def test_hub_paired_source_streams_through_load_dataset(tmp_path, form):
    if form == "parquet_files":
        _write_paired_parquet(tmp_path / "pairs.parquet")
        hub = D.HubPairedSource("parquet", data_files=str(tmp_path / "pairs.parquet"), task_column="task", name="hub")
    else:
        _write_paired_parquet(tmp_path / "repo/data/train-00000-of-00001.parquet", class_label=True)
        hub = D.HubPairedSource(str(tmp_path / "repo"), task_column="task", name="hub")
    stream = D.RestorationStream(hub_sources=[hub], patch_size=16)
    examples = list(stream)
    assert [e["task_name"] for e in examples] == ["rain", "haze", "rain", "low-light"]
    assert [e["task"] for e in examples] == [1, 2, 1, 4]
    for example in examples:
        assert example["source"] == "hub" and example["index"] == -1
        assert red_code(example["degraded"]) == red_code(example["clean"])
    assert stream.bad_data_counts() == {"hub": {"corrupt": 1}}


@pytest.mark.parametrize("saved", ["dataset", "dataset_dict"])
def test_hub_paired_source_reads_a_folder_written_by_save_to_disk(tmp_path, saved):
    """A paired dataset kept with save_to_disk streams like a repo (load_dataset refused the Dataset folder:
    "use load_from_disk", which a HubPairedSource cannot), split between ranks without loss or repetition."""
    rows = {"degraded": [], "clean": [], "task": []}
    for i in range(6):
        rows["degraded"].append({"bytes": png_bytes(coded_image(i, True)), "path": None})
        rows["clean"].append({"bytes": png_bytes(coded_image(i, False)), "path": None})
        rows["task"].append(["rain", "haze"][i % 2])
    features = datasets.Features({"degraded": datasets.Image(), "clean": datasets.Image(),
                                  "task": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    if saved == "dataset":
        dataset.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    else:
        datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"), num_shards={"train": 2})
    hub = D.HubPairedSource(str(tmp_path / "saved"), task_column="task", name="hub")
    codes = []
    for rank in (0, 1):
        stream = D.RestorationStream(hub_sources=[hub], patch_size=16, rank=rank, world_size=2)
        for example in stream:
            assert example["task_name"] == ["rain", "haze"][(red_code(example["clean"]) // 8 - 1) % 2]
            assert red_code(example["degraded"]) == red_code(example["clean"])
            codes.append(red_code(example["clean"]))
    assert sorted(codes) == [i * 8 + 8 for i in range(6)]
    with pytest.raises(ValueError, match="split 'test' not in") if saved == "dataset_dict" else nullcontext():
        D.RestorationStream(hub_sources=[D.HubPairedSource(str(tmp_path / "saved"), task_column="task",
                                                           split="test", name="hub")], patch_size=16)


def test_hub_rows_with_empty_cells_or_no_label_are_skipped_and_counted(tmp_path):
    """Rows missing the clean or the degraded image (None cells), and a ClassLabel -1 (no label), used to end the
    stream with an AttributeError / TypeError or label the row as the last class: now they are skipped and
    counted, and every good row still streams."""
    rows = {"degraded": [], "clean": [], "task": []}
    good = {"bytes": None, "path": None}
    for i in range(2):
        good = {"bytes": png_bytes(coded_image(i, True)), "path": None}
        rows["degraded"].append(good)
        rows["clean"].append({"bytes": png_bytes(coded_image(i, False)), "path": None})
        rows["task"].append(D.TASK_NAMES.index("rain"))
    for degraded, clean, task in ((good, None, 1), (None, good, 1), (good, good, -1)):
        rows["degraded"].append(degraded)
        rows["clean"].append(clean)
        rows["task"].append(task)
    features = datasets.Features({"degraded": datasets.Image(), "clean": datasets.Image(),
                                  "task": datasets.ClassLabel(names=list(D.TASK_NAMES))})
    path = tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    stream = D.RestorationStream(hub_sources=[D.HubPairedSource(str(tmp_path / "repo"), task_column="task",
                                                                name="hub")], patch_size=16)
    examples = list(stream)
    assert [e["task_name"] for e in examples] == ["rain", "rain"]
    assert stream.bad_data_counts() == {"hub": {"corrupt": 2, "unknown_task": 1}}


def test_hub_rows_sharing_a_clean_image_get_their_own_crops(tmp_path):
    """CDD-11 or OTS as rows: several degraded versions of one scene share its clean image. The rows' random draws
    were keyed by the clean image alone, so all 8 rows below were cut at one window with one flip in an epoch."""
    yy, xx = np.mgrid[0:40, 0:48]
    clean = np.stack([yy * 6, xx * 5, np.full_like(yy, 100)], -1).astype(np.uint8)  # each (red, green) is unique
    rows = {"degraded": [], "clean": []}
    for i in range(8):
        degraded = clean.copy()
        degraded[..., 2] = 10 + i
        rows["degraded"].append({"bytes": png_bytes(degraded), "path": None})
        rows["clean"].append({"bytes": png_bytes(clean), "path": None})
    path = tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    features = datasets.Features({"degraded": datasets.Image(), "clean": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    hub = D.HubPairedSource(str(tmp_path / "repo"), task_name="haze", name="hub")
    first = [e for e in D.RestorationStream(hub_sources=[hub], patch_size=16, output_dtype="uint8", seed=2)]
    again = [e for e in D.RestorationStream(hub_sources=[hub], patch_size=16, output_dtype="uint8", seed=2)]
    assert len(first) == 8
    for a, b in zip(first, again):  # still deterministic
        np.testing.assert_array_equal(a["degraded"], b["degraded"])
    for example in first:  # each crop still cuts the pair at one window
        np.testing.assert_array_equal(np.asarray(example["degraded"])[:2], np.asarray(example["clean"])[:2])
    windows = {np.asarray(e["clean"])[:2].tobytes() for e in first}
    assert len(windows) >= 6


def test_hub_source_mixed_with_file_sources_and_synthesis(tmp_path, corpus):
    _write_paired_parquet(tmp_path / "pairs.parquet")
    clean_only = D.HubPairedSource("parquet", data_files=str(tmp_path / "pairs.parquet"), degraded_column=None,
                                   synthesis="noise", synthesis_kwargs={"sigma": 50}, task_name="noise",
                                   name="hub-noise")
    local = D.paired_source(corpus["roots"]["rain"], "rain", repeat=4)
    stream = D.RestorationStream([local], hub_sources=[clean_only], patch_size=16, shards_per_rank=1,
                                 stopping_strategy="all_exhausted")
    examples = list(stream)
    sources = {e["source"] for e in examples}
    assert sources == {local.name, "hub-noise"}
    noisy = [e for e in examples if e["source"] == "hub-noise"]
    assert len(noisy) >= 5 and all(e["task"] == 0 for e in noisy)
    residual = np.concatenate([(e["degraded"] - e["clean"]).ravel() for e in noisy]) * 255
    assert 35 < residual.std() < 55  # sigma 50 (clipped at the bright/dark ends)


# ---------------------------------------------------------------------------------------------------- validation


def test_validation_pairs_deterministic_full_images(corpus):
    sources = D.preset_sources("3-task", corpus["roots"], sigmas=(25,))
    first = list(D.validation_pairs(sources, seed=0, multiple_of=16))
    second = list(D.validation_pairs(sources, seed=0, multiple_of=16))
    assert len(first) == 6 + 5 + 4  # clean photos, rain pairs, haze pairs
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["degraded"], b["degraded"])
        assert a["degraded"].shape == a["clean"].shape == (32, 48, 3)  # 40x48 centre-cropped to /16
    noise = [p for p in first if p["task_name"] == "noise"]
    residual = np.concatenate([(p["degraded"].astype(float) - p["clean"]).ravel() for p in noise])
    assert abs(residual.std() / 25 - 1) < 0.05
    subset = list(D.validation_pairs(sources, seed=0, max_per_source=2))
    assert [p["source"] for p in subset].count("noise-s25") == 2
    other_seed = list(D.validation_pairs(sources[:1], seed=1))
    assert not np.array_equal(other_seed[0]["degraded"], first[0]["degraded"])


def test_validation_skips_images_smaller_than_the_crop_multiple_with_a_clear_warning(tmp_path, caplog):
    """A held-out photo 12 px high cropped to a multiple of 16 used to come out as a (0, 32, 3) pair: left out as
    "unchanged" by the validation set, or skipped with numpy's zero-size error. Now it is skipped as too small."""
    save(tmp_path / "held" / "big.png", textured_image(0, 40, 48))
    save(tmp_path / "held" / "tiny.png", textured_image(1, 12, 40))
    save(tmp_path / "rain" / "input" / "tiny.png", coded_image(1, True, 10, 20))
    save(tmp_path / "rain" / "target" / "tiny.png", coded_image(1, False, 10, 20))
    sources = [D.clean_source(tmp_path / "held", "haze", name="held"), D.paired_source(tmp_path / "rain", "rain")]
    pairs = list(D.validation_pairs(sources, multiple_of=16))
    assert [(p["name"], p["clean"].shape, p["degraded"].shape) for p in pairs] == [
        ("big", (32, 48, 3), (32, 48, 3))]
    assert caplog.text.count("too small: 40x12 px, less than the multiple of 16") == 1
    assert caplog.text.count("too small: 20x10 px") == 1
    assert len(list(D.validation_pairs(sources, multiple_of=1))) == 3  # no crop: every image is kept


def test_data_package_exports_and_layers():
    """`training.data` is a package along the data flow; its public names resolve, and each layer imports only
    the layers before it (files <- sources <- plan <- stream; validation reads files and sources)."""
    import ast
    import importlib

    for name in D.__all__:
        assert getattr(D, name) is not None, name
    order = ["files", "sources", "plan", "stream"]
    allowed = {"files": set(), "sources": {"files"}, "plan": {"files", "sources"},
               "stream": {"files", "sources", "plan"}, "validation": {"files", "sources"}}
    for module_name, may_import in allowed.items():
        module = importlib.import_module(f"training.data.{module_name}")
        tree = ast.parse(Path(module.__file__).read_text())
        siblings = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert siblings <= may_import, (module_name, siblings)
    assert D.decode_image.__module__ == "training.data.files" and D.RestorationStream.__module__.endswith(order[-1])


class _CountingDataset(torch.utils.data.Dataset):
    """Each item makes the stream's example loader count ``per_item`` corrupt files, as a worker would."""

    def __init__(self, example_loader, items: int, per_item: int) -> None:
        self.example_loader, self.items, self.per_item = example_loader, items, per_item

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, index: int) -> int:
        for _ in range(self.per_item):
            self.example_loader._count(0, "corrupt")
        return index


def test_bad_data_counts_from_concurrent_workers_are_not_lost(tmp_path):
    # Two workers counting into one shared cell at once lose increments (read-modify-write); per-worker slots don't.
    save(tmp_path / "clean" / "0.png", textured_image(0, 16, 16))
    stream = D.RestorationStream([D.clean_source(tmp_path / "clean", "noise", name="c")], patch_size=16)
    example_loader = _ExampleLoader(stream.sources, {}, stream._counts, patch_size=16, augment=False,
                                    output_dtype="uint8", seed=0, epoch=0)
    items, per_item = 8, 50_000  # the shared cell lost 100-1,200 of these 400,000 in 3 runs
    loader = torch.utils.data.DataLoader(_CountingDataset(example_loader, items, per_item), batch_size=1,
                                         num_workers=2)
    assert sorted(int(i) for i in loader) == list(range(items))
    assert stream.bad_data_counts() == {"c": {"corrupt": items * per_item}}


def test_crop_to_multiple_keeps_promptirs_margin_out_of_the_training_crops(tmp_path):
    # PromptIR's loaders centre-crop each image to a multiple of 16 before the random crop: a 40 x 37 photo loses
    # rows 0-3 and 36-39 and columns 0-1 and 34-36, which no crop may then contain (without it, some do).
    image = np.full((40, 37, 3), 60, np.uint8)
    image[:4], image[36:], image[:, :2], image[:, 34:] = 250, 250, 250, 250
    save(tmp_path / "photos" / "margin.png", image)
    source = D.clean_source(tmp_path / "photos", "noise", name="margin", repeat=40)
    touched = {}
    for multiple in (16, 0):
        stream = D.RestorationStream([source], patch_size=24, augment=False, shards_per_rank=1, output_dtype="uint8",
                                     crop_to_multiple=multiple)
        crops = [example["clean"] for example in stream]
        assert len(crops) == 40 and crops[0].shape == (3, 24, 24)
        touched[multiple] = sum(bool((crop == 250).any()) for crop in crops)
    assert touched[16] == 0 and touched[0] > 10
    with pytest.raises(ValueError, match="crop_to_multiple"):
        D.RestorationStream([source], crop_to_multiple=-16)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_data_counts_resume_where_the_loader_resumes(tmp_path, num_workers):
    """Workers read ahead of the batches handed over: the counts a checkpoint keeps are each worker's as of its last
    batch handed over, so a resumed run ends an epoch with the same counts as an uninterrupted one (the totals
    saved before counted the read-ahead files twice)."""
    for copy_index in range(3):
        make_bad_folder(tmp_path / f"bad{copy_index}")
    sources = [D.paired_source(tmp_path / f"bad{i}", "rain", name=f"bad{i}", repeat=1) for i in range(3)]

    def loader_of(stream):
        return D.build_dataloader(stream, batch_size=1, num_workers=num_workers, drop_last=False)

    for cut in range(1, 12):  # where a worker has read bad files ahead of the cut differs from cut to cut
        stream = D.RestorationStream(sources, patch_size=16, shards_per_rank=2)
        loader = loader_of(stream)
        iterator = iter(loader)
        for _ in range(cut):
            next(iterator)
        state = loader.state_dict()
        rest = sum(1 for _ in iterator)
        del iterator
        straight = stream.bad_data_counts()
        assert sum(counts.get("corrupt", 0) for counts in straight.values()) == 6

        resumed_stream = D.RestorationStream(sources, patch_size=16, shards_per_rank=2)
        resumed = loader_of(resumed_stream)
        resumed.load_state_dict(state)
        assert sum(1 for _ in resumed) == rest
        assert resumed_stream.bad_data_counts() == straight, cut


def test_linked_folders_are_followed_once(tmp_path):
    """Datasets are often linked into one training root: a linked folder's images are listed (they used to be
    skipped without a word), and a link back up the tree is read once, not forever."""
    for i in range(3):
        save(tmp_path / "elsewhere" / "WED" / f"{i}.png", textured_image(i, 8, 8))
    save(tmp_path / "train" / "BSD" / "a.png", textured_image(5, 8, 8))
    (tmp_path / "train" / "WED").symlink_to(tmp_path / "elsewhere" / "WED", target_is_directory=True)
    (tmp_path / "train" / "BSD" / "loop").symlink_to(tmp_path / "train", target_is_directory=True)
    files = D.list_image_files(tmp_path / "train")
    assert [Path(f).relative_to(tmp_path / "train").as_posix() for f in files] == [
        "BSD/a.png", "WED/0.png", "WED/1.png", "WED/2.png"]


def test_a_synthesis_crop_larger_than_the_image_keeps_random_patches_of_the_image(tmp_path):
    """A 40-px photo with patch 32 and synthesis crop 48 (a 180-px BSD400 photo with the README's 192): the
    synthesis crop is the largest the photo holds, so patches stay random windows of real pixels, not one fixed
    centre padded with mirrored rows and counted as padded."""
    image = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for i in range(8):
        save(tmp_path / "small" / f"{i}.png", image)
    source = D.clean_source(tmp_path / "small", "noise", synthesis_kwargs={"sigma": 15.0}, name="small")
    stream = D.RestorationStream([source], patch_size=32, shards_per_rank=1, augment=False, output_dtype="uint8",
                                 synthesis_crop_size=48)
    windows = set()
    for example in stream:
        clean = np.asarray(example["clean"]).transpose(1, 2, 0)
        found = [(y, x) for y in range(9) for x in range(9) if np.array_equal(image[y:y + 32, x:x + 32], clean)]
        assert len(found) == 1
        windows.add(found[0])
    assert len(windows) > 1 and stream.bad_data_counts() == {}


def test_a_photo_shorter_than_the_synthesis_crop_is_sampled_across_its_width(tmp_path):
    """A 40 x 160 photo with synthesis crop 48: the 40 x 48 window the degradation is synthesized on lies anywhere
    along the photo, so patches come from all of it, not only from its first 48 columns."""
    image = np.random.default_rng(4).integers(0, 256, (40, 160, 3), dtype=np.uint8)
    save(tmp_path / "wide" / "a.png", image)
    source = D.clean_source(tmp_path / "wide", "noise", synthesis_kwargs={"sigma": 15.0}, name="wide", repeat=12)
    stream = D.RestorationStream([source], patch_size=32, shards_per_rank=1, augment=False, output_dtype="uint8",
                                 synthesis_crop_size=48)
    lefts = []
    for example in stream:
        clean = np.asarray(example["clean"]).transpose(1, 2, 0)
        (found,) = [x for y in range(9) for x in range(129) if np.array_equal(image[y:y + 32, x:x + 32], clean)]
        lefts.append(found)
    assert len(lefts) == 12 and max(lefts) > 64


def test_roots_the_preset_does_not_read_are_refused_or_named(tmp_path, caplog):
    """roots['noise'] used to be accepted and ignored (noise is synthesized on roots['clean']); a task root the
    preset has no task for is named in a warning."""
    for i in range(2):
        save(tmp_path / "clean" / f"{i}.png", textured_image(i, 32, 32))
    with pytest.raises(ValueError, match=r"unknown roots \['noise'\]; use 'clean' \(the photos noise is synthesized"):
        D.preset_sources("3-task", {"clean": str(tmp_path / "clean"), "noise": "/nonexistent/SIDD"})
    D.preset_sources("3-task", {"clean": str(tmp_path / "clean"), "blur": "/nonexistent/GoPro"},
                     synthesize_missing=True)
    assert "preset '3-task' has no task for roots ['blur']: they are not read" in caplog.text


def test_cdd11_type_folders_pair_in_any_case(tmp_path):
    for folder in ("Low", "Haze", "Clear"):
        save(tmp_path / "Train" / folder / "1.png", textured_image(1, 16, 16))
    sources = D.cdd11_sources(str(tmp_path), types=("low", "haze"), split="train")
    assert [len(source.pairs) for source in sources] == [1, 1]


def test_validation_refuses_a_size_mismatch_that_the_crop_to_a_multiple_would_hide(tmp_path, caplog):
    """36x44 and 40x40 both centre-crop to 32x32: the pair used to pass and score a misaligned image (the stream
    and the protocol compare sizes before the crop)."""
    save(tmp_path / "rain" / "input" / "1.png", coded_image(1, True, 36, 44))
    save(tmp_path / "rain" / "target" / "1.png", coded_image(1, False, 40, 40))
    save(tmp_path / "rain" / "input" / "2.png", coded_image(2, True, 40, 40))
    save(tmp_path / "rain" / "target" / "2.png", coded_image(2, False, 40, 40))
    sources = [D.paired_source(tmp_path / "rain", "rain")]
    pairs = list(D.validation_pairs(sources, multiple_of=16))
    assert [(p["name"], p["degraded"].shape) for p in pairs] == [("2", (32, 32, 3))]
    assert "size (36, 44, 3) vs (40, 40, 3)" in caplog.text


def test_stems_pair_in_any_case_where_one_clean_stem_fits_and_unpaired_files_are_counted(tmp_path, caplog):
    """A degraded file pairs with the clean file whose name differs only in case, extension (IMG_1.JPG ->
    IMG_1.png) or stem (Frame_2.PNG -> frame_2.png, Rain-7 -> NoRain-7); these stems used to stay unpaired. The
    exact spelling still wins, two clean stems that differ only in case are refused by name, and a degraded file
    with no counterpart is counted and reported."""
    files = ["d/blur/IMG_1.JPG", "d/sharp/IMG_1.png", "d/blur/Frame_2.PNG", "d/sharp/frame_2.png",
             "d/blur/exact.png", "d/sharp/exact.png", "d/sharp/EXACT.png", "d/blur/lonely.png"]
    pairs, unpaired = D.pair_files(files, "blur")
    assert pairs == [("d/blur/Frame_2.PNG", "d/sharp/frame_2.png"), ("d/blur/IMG_1.JPG", "d/sharp/IMG_1.png"),
                     ("d/blur/exact.png", "d/sharp/exact.png")]
    assert unpaired == ["d/blur/lonely.png"]
    pairs, unpaired = D.pair_files(["r/rainy/Rain-7.png", "r/gt/NoRain-7.png", "r/input/RAIN-1.png",
                                    "r/target/rain-1.png", "r/target/norain-1.png"], "rain")
    # input/ pairs same-name first (PromptIR), in any case, before renaming rain -> norain.
    assert pairs == [("r/input/RAIN-1.png", "r/target/rain-1.png"), ("r/rainy/Rain-7.png", "r/gt/NoRain-7.png")]
    assert unpaired == []
    with pytest.raises(ValueError, match=r"d/blur/Exact.png: its clean counterpart is ambiguous, 2 clean files "
                                         r"differ from its name only in case \(d/sharp/EXACT.png, d/sharp/exact.png\)"):
        D.pair_files(["d/blur/Exact.png", "d/sharp/exact.png", "d/sharp/EXACT.png"], "blur")

    for index, (degraded, clean) in enumerate([("IMG_1.JPG", "img_1.png"), ("lonely.png", None)]):
        save(tmp_path / "blur" / degraded, textured_image(index, 16, 16))
        if clean:
            save(tmp_path / "sharp" / clean, textured_image(index, 16, 16))
    source = D.paired_source(tmp_path, "blur")
    assert [(Path(d).name, Path(c).name) for d, c in source.pairs] == [("IMG_1.JPG", "img_1.png")]
    assert source.missing_pairs == 1 and "1 degraded files without a clean counterpart" in caplog.text


def test_rain_test_layout_of_pip_pairs_rain_k_with_norain_k(tmp_path):
    """PIP's test loader pairs Rain100L input/rain-<k>.png with target/norain-<k>.png (it renames rain -> norain);
    these files used to stay unpaired ("no rain pairs found"). PromptIR's same-name pairs still win."""
    files = [f"{tmp_path}/Rain100L/input/rain-{k:03d}.png" for k in (1, 2)]
    files += [f"{tmp_path}/Rain100L/target/norain-{k:03d}.png" for k in (1, 2)]
    files += [f"{tmp_path}/Same/input/rain-001.png", f"{tmp_path}/Same/target/rain-001.png",
              f"{tmp_path}/Same/target/norain-001.png"]
    pairs, unpaired = D.pair_files(files, "rain")
    assert pairs == [
        (f"{tmp_path}/Rain100L/input/rain-001.png", f"{tmp_path}/Rain100L/target/norain-001.png"),
        (f"{tmp_path}/Rain100L/input/rain-002.png", f"{tmp_path}/Rain100L/target/norain-002.png"),
        (f"{tmp_path}/Same/input/rain-001.png", f"{tmp_path}/Same/target/rain-001.png"),
    ]
    assert unpaired == []


def test_repeated_copies_of_a_pair_get_their_own_crops(tmp_path):
    """A repeat factor (rain x120 officially) puts each pair in the epoch several times: every copy draws its own
    crop and flip (keyed by its place in the plan, not by the pair), or repeating would add no new patches."""
    yy, xx = np.mgrid[0:40, 0:48]
    clean = np.stack([yy * 6, xx * 5, np.full_like(yy, 100)], -1).astype(np.uint8)  # each (red, green) is unique
    save(tmp_path / "pairs" / "degraded.png", clean // 2)
    save(tmp_path / "pairs" / "clean.png", clean)
    source = D.PairSource(name="pairs", task_name="rain", repeat=8,
                          pairs=((str(tmp_path / "pairs" / "degraded.png"), str(tmp_path / "pairs" / "clean.png")),))
    stream = D.RestorationStream([source], patch_size=16, shards_per_rank=1, output_dtype="uint8")
    crops = [np.asarray(example["clean"]).tobytes() for example in stream]
    assert len(crops) == 8 and len(set(crops)) >= 7


def test_hub_rows_get_new_crops_every_epoch(tmp_path):
    """Hub rows have no plan index, so their draws are keyed by the row's images and the epoch: a new epoch cuts
    each row at a new window (keyed by the images alone, every epoch would repeat the first one's patches)."""
    yy, xx = np.mgrid[0:40, 0:48]
    clean = np.stack([yy * 6, xx * 5, np.full_like(yy, 100)], -1).astype(np.uint8)  # each (red, green) is unique
    rows = {"degraded": [], "clean": []}
    for i in range(8):
        degraded = clean.copy()
        degraded[..., 2] = 10 + i  # blue names the row, whatever the crop and flip
        rows["degraded"].append({"bytes": png_bytes(degraded), "path": None})
        rows["clean"].append({"bytes": png_bytes(np.roll(clean, 3 * i, axis=1)), "path": None})
    path = tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    features = datasets.Features({"degraded": datasets.Image(), "clean": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    hub = D.HubPairedSource(str(tmp_path / "repo"), task_name="haze", name="hub")
    stream = D.RestorationStream(hub_sources=[hub], patch_size=16, output_dtype="uint8", seed=2)

    def windows() -> dict[int, bytes]:
        return {int(np.asarray(e["degraded"])[2, 0, 0]): np.asarray(e["clean"]).tobytes() for e in stream}

    epoch0 = windows()
    stream.set_epoch(1)
    epoch1 = windows()
    assert sorted(epoch0) == sorted(epoch1) == list(range(10, 18))
    assert sum(epoch0[row] != epoch1[row] for row in epoch0) >= 6


def test_paired_images_stay_aligned_when_cropped_to_a_multiple(tmp_path):
    """crop_to_multiple centre-crops the degraded image and the clean one alike before their common random crop:
    every training pair shows the same pixels (cropping one of them only would shift it against the other)."""
    yy, xx = np.mgrid[0:40, 0:37]
    clean = np.stack([yy * 6, xx * 6, np.full_like(yy, 100)], -1).astype(np.uint8)  # each (red, green) is unique
    degraded = clean.copy()
    degraded[..., 2] = 200
    save(tmp_path / "pairs" / "degraded.png", degraded)
    save(tmp_path / "pairs" / "clean.png", clean)
    source = D.PairSource(name="pairs", task_name="rain", repeat=12,
                          pairs=((str(tmp_path / "pairs" / "degraded.png"), str(tmp_path / "pairs" / "clean.png")),))
    stream = D.RestorationStream([source], patch_size=16, shards_per_rank=1, output_dtype="uint8",
                                 crop_to_multiple=16)
    examples = list(stream)
    assert len(examples) == 12
    for example in examples:
        np.testing.assert_array_equal(example["degraded"][:2], example["clean"][:2])
        assert (example["degraded"][2] == 200).all() and (example["clean"][2] == 100).all()


def test_without_augment_examples_are_neither_flipped_nor_rotated(tmp_path):
    image = textured_image(3, 20, 28)
    save(tmp_path / "photos" / "a.png", image)
    stream = D.RestorationStream([D.clean_source(tmp_path / "photos", "noise", name="photos")], patch_size=None,
                                 augment=False, shards_per_rank=1, output_dtype="uint8")
    (example,) = list(stream)
    np.testing.assert_array_equal(example["clean"], image.transpose(2, 0, 1))


def test_a_row_label_wins_over_the_sources_task_name(tmp_path):
    """HubPairedSource.task_name is ignored for rows whose task_column is set."""
    _write_paired_parquet(tmp_path / "pairs.parquet")
    hub = D.HubPairedSource("parquet", data_files=str(tmp_path / "pairs.parquet"), task_column="task",
                            task_name="haze", name="hub")
    examples = list(D.RestorationStream(hub_sources=[hub], patch_size=16))
    assert [e["task_name"] for e in examples] == ["rain", "haze", "rain", "low-light"]


def test_stream_arguments_that_cannot_work_are_refused(corpus):
    """A rank outside the world, two sources of one name (their bad-data counts would merge), a synthesis crop
    smaller than the patch, a bool crop multiple: refused when the stream is built, naming the argument."""
    sources = D.preset_sources("3-task", corpus["roots"], repeats=SMALL_REPEATS)
    for kwargs, message in ((dict(rank=2, world_size=2), "rank"),
                            (dict(synthesis_crop_size=23, patch_size=24), "synthesis_crop_size"),
                            (dict(crop_to_multiple=True), "crop_to_multiple")):
        with pytest.raises(ValueError, match=message):
            D.RestorationStream(sources, **kwargs)
    with pytest.raises(ValueError, match="unique"):
        D.RestorationStream([sources[0], sources[0]])
    with pytest.raises(ValueError, match="persistent_workers"):
        D.build_dataloader(D.RestorationStream(sources), 1, num_workers=1, persistent_workers=True)
    D.RestorationStream(sources, rank=1, world_size=2, synthesis_crop_size=24, patch_size=24, crop_to_multiple=16)


def test_random_crops_reach_every_offset_including_the_last():
    """The official ``_crop_patch`` draws offsets with Python's inclusive ``randint(0, H - patch)``: a crop flush with
    the bottom/right edge must be drawn too (an exclusive bound never shows the image's last rows and columns)."""
    from training.data.stream import _crop_and_augment, _synthesis_region_patch

    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    offsets = set()
    for seed in range(64):
        (patch,), _ = _crop_and_augment([image], 4, np.random.default_rng(seed), augment_flag=False)
        top, left = np.argwhere(image[..., 0] == patch[0, 0, 0])[0]
        offsets.add((int(top), int(left)))
    assert offsets == {(top, left) for top in range(2) for left in range(3)}
    places = {_synthesis_region_patch(image, 4, 8, np.random.default_rng(seed), False)[1] for seed in range(64)}
    assert places == {(top, left) for top in range(2) for left in range(3)}


def test_the_degraded_files_extension_wins_in_any_case():
    """Extensions compare in any case: IMG_1.JPG pairs with IMG_1.jpg, not with the IMG_1.png beside it."""
    pairs, _ = D.pair_files(["d/blur/IMG_1.JPG", "d/sharp/IMG_1.png", "d/sharp/IMG_1.jpg"], "blur")
    assert pairs == [("d/blur/IMG_1.JPG", "d/sharp/IMG_1.jpg")]
    pairs, _ = D.pair_files(["d/blur/img_2.JPG", "d/sharp/IMG_2.png", "d/sharp/IMG_2.jpg"], "blur")
    assert pairs == [("d/blur/img_2.JPG", "d/sharp/IMG_2.jpg")]
