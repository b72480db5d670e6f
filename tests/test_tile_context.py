"""Whole-image statistics for tiled inference (`modeling.tile_context`): the sites, the tile grid, the passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import smooth_image, tiny_model

from modeling.inference import degradation_label_ids, run_model
from modeling.tile_context import (
    GRID,
    TilePlacement,
    TileStatistics,
    aligned_starts,
    gathering_statistics,
    interpolation_matrix,
    owned_spans,
)
from modeling.tiling import tiled_apply


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a.double() - b.double()).pow(2).mean()))


@pytest.mark.parametrize("out_size, in_size", [(8, 100), (4, 13), (16, 64), (100, 8), (57, 4), (6, 6), (1, 5)])
def test_interpolation_matrix_is_pytorchs_bilinear_resize(out_size, in_size):
    """Rows of the matrix times a signal equal F.interpolate(bilinear, align_corners=False) along that axis, for
    downsizing (a weighted sum of pixels, no antialiasing) and upsizing, whole and for a slice of output rows."""
    signal = torch.randn(3, in_size, 5, dtype=torch.float64)
    expected = F.interpolate(signal.float()[None], size=(out_size, 5), mode="bilinear", align_corners=False)[0]
    matrix = interpolation_matrix(out_size, in_size)
    assert matrix.shape == (out_size, in_size)
    torch.testing.assert_close((matrix.double() @ signal).float(), expected, atol=1e-5, rtol=1e-5)
    rows = slice(out_size // 3, out_size)
    torch.testing.assert_close(interpolation_matrix(out_size, in_size, rows), matrix[rows])


@pytest.mark.parametrize("size, tile, overlap", [(64, 32, 8), (200, 64, 16), (96, 96, 32), (136, 48, 32), (24, 16, 0)])
def test_tiles_start_on_the_grid_and_every_pixel_is_owned_once(size, tile, overlap):
    starts = aligned_starts(size, tile, overlap)
    assert all(start % GRID == 0 for start in starts) and starts[0] == 0 and starts[-1] + tile == size
    assert all(later - earlier <= tile - overlap for earlier, later in zip(starts, starts[1:]))
    spans = owned_spans(starts, tile, size)
    covered = np.zeros(size, int)
    for start, (begin, end) in spans.items():
        assert begin % GRID == 0 and start <= begin <= end <= start + tile  # a tile owns only its own pixels
        covered[begin:end] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("height", [64, 96])
@pytest.mark.parametrize("factor", [1, 2, 8])
def test_each_site_rebuilds_the_whole_maps_statistic_from_its_tiles(factor, height):
    """Overlapping tiles of a map at 1/factor of the image, in one row (height 64) or a 2 x 2 grid (height 96, so
    that tiles share rows too and each site must count only its owned rows): after one gathering pass, every site
    gives each tile the statistic of the whole map (mean, channel-attention logits, resize to a prompt), and a
    prompt resized for a tile is that tile's crop of the prompt resized to the whole map."""
    from modeling.restormer_blocks import split_heads
    from modeling.tile_context import (
        channel_attention_logits,
        resize_from_prompt,
        resize_to_prompt,
        spatial_mean,
    )

    width, tile = 96, 64  # pixels; tiles at 0 and 32 along a side of 96, owning [0, 48) and [48, 96)
    starts, starts_y = aligned_starts(width, tile, 16), aligned_starts(height, tile, 16)
    assert starts == [0, 32] and starts_y == ([0] if height == tile else [0, 32])
    spans, spans_y = owned_spans(starts, tile, width), owned_spans(starts_y, tile, height)
    torch.manual_seed(0)
    whole_map = torch.randn(1, 6, height // factor, width // factor)
    temperature = torch.rand(2, 1, 1) + 0.5
    grid = [(y, x) for y in starts_y for x in starts]
    crops = torch.cat([whole_map[..., y // factor : (y + tile) // factor, x // factor : (x + tile) // factor]
                       for y, x in grid])
    statistics = TileStatistics(1, (height, width), (tile, tile))
    placements = [TilePlacement(0, y, x, spans_y[y], spans[x]) for y, x in grid]

    def sites():
        return (spatial_mean(crops),
                channel_attention_logits(split_heads(crops, 2), split_heads(crops.flip(1), 2), temperature),
                resize_to_prompt(crops, (5, 7)))

    with gathering_statistics(statistics):
        statistics.start_pass()
        statistics.start_batch(placements)
        own = sites()
        statistics.start_pass()
        statistics.start_batch(placements)
        gathered = sites()
        prompt = torch.randn(len(grid), 6, 5, 7)
        placed = resize_from_prompt(prompt, (tile // factor, tile // factor))
    query, key = F.normalize(split_heads(whole_map, 2), dim=-1), F.normalize(split_heads(whole_map.flip(1), 2), dim=-1)
    expected = (whole_map.mean(dim=(-2, -1)), (query @ key.transpose(-2, -1)) * temperature,
                F.interpolate(whole_map, size=(5, 7), mode="bilinear", align_corners=False))
    for name, value, target, tile_own in zip(("mean", "logits", "resize"), gathered, expected, own):
        torch.testing.assert_close(value, target.expand_as(value), atol=1e-5, rtol=1e-4, msg=name)
        assert not torch.allclose(tile_own, target.expand_as(tile_own), atol=1e-3), name  # tiles alone differ
    resized = F.interpolate(prompt, size=(height // factor, width // factor), mode="bilinear", align_corners=False)
    for index, (y, x) in enumerate(grid):
        torch.testing.assert_close(
            placed[index], resized[index, :, y // factor : (y + tile) // factor, x // factor : (x + tile) // factor])


def gathered_from_whole_image(model, pixel_values: torch.Tensor, labels) -> TileStatistics:
    """Statistics gathered by one 'tile' holding the whole (grid-sized) image: the whole image's own."""
    height, width = pixel_values.shape[-2:]
    statistics = TileStatistics(len(pixel_values), (height, width), (height, width))
    statistics.start_pass()
    statistics.start_batch([TilePlacement(i, 0, 0, (0, height), (0, width)) for i in range(len(pixel_values))])
    with torch.no_grad(), gathering_statistics(statistics):
        model(pixel_values=pixel_values, **labels)
    return statistics


def model_labels(model, count: int) -> dict:
    labels = degradation_label_ids(model, "low-light", count) if getattr(model.config, "num_degradations", 0) else None
    return {} if labels is None else {"degradation_labels": labels}


def test_one_tile_holding_the_image_reproduces_the_plain_forward(model_type):
    """A pass that uses the gathered statistics of a single tile covering the image is the plain forward (every
    model, every site: means, channel attention, prompt resizing); this checks that a site's sums rebuild the
    statistic exactly, and that sites are met in the same order in every pass. The image is on every model's
    multiple (CPL's 16), so no model pads it."""
    model = tiny_model(model_type)
    torch.manual_seed(1)
    pixel_values = torch.rand(2, 3, 32, 48)
    labels = model_labels(model, 2)
    with torch.no_grad():
        plain = model(pixel_values=pixel_values, **labels).reconstruction
    statistics = gathered_from_whole_image(model, pixel_values, labels)
    assert statistics.gathering  # the model has global sites
    statistics.start_pass()
    statistics.start_batch([TilePlacement(i, 0, 0, (0, 32), (0, 48)) for i in range(2)])
    with torch.no_grad(), gathering_statistics(statistics):
        from_sums = model(pixel_values=pixel_values, **labels).reconstruction
    torch.testing.assert_close(from_sums, plain, atol=2e-5, rtol=1e-4)


def test_tiles_with_the_whole_images_statistics_match_the_whole_image(model_type):
    """Given the whole image's statistics (gathered from a whole-image pass), tiles that overlap by more than the
    tiny model's receptive field reproduce whole-image inference far more closely than tiles that use their own
    statistics: most of the tiles' difference is the global sites. Three passes gathering the statistics over the
    tiles themselves come within 1 dB of that."""
    import modeling.tiling as tiling

    model = tiny_model(model_type)
    image = torch.from_numpy(smooth_image(64, 96)).permute(2, 0, 1)[None].float() / 255
    image = image * torch.linspace(0.3, 1.0, 96)  # brightness varies across the image, so tiles differ from it
    labels = model_labels(model, 1)
    with torch.no_grad():
        whole = model(pixel_values=image, **labels).reconstruction

    def forward(batch):
        kwargs = {key: value.repeat(len(batch), 1) for key, value in labels.items()}
        return model(pixel_values=batch, **kwargs).reconstruction

    oracle = gathered_from_whole_image(model, image, labels).gathering

    class WholeImageStatistics(TileStatistics):
        def start_pass(self, collect=True):
            self.gathered, self.gathering, self.collecting = oracle, {}, collect

    own = tiled_apply(forward, image, 48, 24)
    gathered = tiled_apply(forward, image, 48, 24, statistics_passes=3)
    original = tiling.TileStatistics
    tiling.TileStatistics = WholeImageStatistics
    try:
        given = tiled_apply(forward, image, 48, 24, statistics_passes=1)
    finally:
        tiling.TileStatistics = original
    assert psnr(given, whole) > psnr(own, whole) + 7
    assert psnr(given, whole) > 50
    assert psnr(gathered, whole) > psnr(given, whole) - 1


def test_statistics_passes_converge_to_the_whole_image():
    """Gathered over the tiles themselves, the statistics approach the whole image's pass by pass: the tiled
    result gets closer to whole-image inference with every pass (a random PIP on an unevenly lit image)."""
    model = tiny_model("pip")
    image = torch.from_numpy(smooth_image(64, 96, seed=3)).permute(2, 0, 1)[None].float() / 255
    image = image * torch.linspace(0.2, 1.0, 96)
    labels = degradation_label_ids(model, "low-light", 1)
    whole = run_model(model, image, degradation_labels=labels, tile=0, dtype="fp32")
    agreement = [
        psnr(run_model(model, image, degradation_labels=labels, tile=32, tile_overlap=16, dtype="fp32",
                       statistics_passes=passes), whole)
        for passes in range(4)
    ]
    assert agreement == sorted(agreement), agreement
    assert agreement[3] > agreement[0] + 10, agreement


def test_statistics_passes_change_nothing_when_one_tile_holds_the_image():
    model = tiny_model("pip")
    image = torch.from_numpy(smooth_image(40, 48)).permute(2, 0, 1)[None].float() / 255
    labels = degradation_label_ids(model, "haze", 1)
    whole = run_model(model, image, degradation_labels=labels, tile=0, dtype="fp32")
    one_tile = run_model(model, image, degradation_labels=labels, tile=48, dtype="fp32", statistics_passes=2)
    torch.testing.assert_close(one_tile, whole, atol=2e-5, rtol=1e-4)


def test_odd_sizes_and_tiles_off_the_grid_are_padded_and_rounded():
    """run_model restores an image whose sides are off the grid, with a tile off the grid, in the right shape and
    close to the whole image; the model sees every tile already on the grid."""
    model = tiny_model("restormer")
    image = torch.rand(1, 3, 37, 51)
    whole = run_model(model, image, tile=0, dtype="fp32")
    tiled = run_model(model, image, tile=30, tile_overlap=12, dtype="fp32", statistics_passes=2)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert psnr(tiled, whole) > 35
    shapes = []
    tiled_apply(lambda batch: shapes.append(tuple(batch.shape[-2:])) or batch, image, 30, 12, statistics_passes=1)
    assert set(shapes) == {(24, 24)}


def test_tiles_of_a_model_that_pads_to_16_are_on_its_multiple():
    """CPL pads its input to a multiple of 16 (the official test script's padding): with statistics passes the
    frame is the image padded to 16 and the tiles are rounded to 16, so the model pads no tile itself (a 40-px tile
    padded to 48 inside the model gave its global sites maps of no level of the tile, a ValueError)."""
    model = tiny_model("cpl")
    image = torch.from_numpy(smooth_image(37, 51, seed=2)).permute(2, 0, 1)[None].float() / 255
    whole = run_model(model, image, tile=0, dtype="fp32")
    tiled = run_model(model, image, tile=40, tile_overlap=12, dtype="fp32", statistics_passes=2)
    assert tiled.shape == whole.shape and psnr(tiled, whole) > 35
    shapes = []
    tiled_apply(lambda batch: shapes.append(tuple(batch.shape[-2:])) or batch, image, 40, 12, statistics_passes=1,
                size_multiple=model.config.size_multiple)
    assert set(shapes) == {(32, 32)}  # 40 rounded down to 16's multiple, in a 48 x 64 frame
    with pytest.raises(ValueError, match="size_multiple must be a positive multiple of 8, got 12"):
        tiled_apply(lambda batch: batch, image, 30, 12, statistics_passes=1, size_multiple=12)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("height, width", [(37, 51), (5, 3), (16, 9), (4, 12)])
def test_tiles_are_crops_of_the_image_padded_as_the_model_pads(mode, height, width):
    """Each tile equals the same crop of the whole image padded to the grid with F.pad (reflect falls back to
    replicate for a side not longer than its pad, as pad_to_multiple), and an identity function comes back as
    the input: the padding is cropped off and no copy of the padded image is made."""
    image = torch.rand(2, 3, height, width)
    pad_h, pad_w = (-height) % GRID, (-width) % GRID
    padded_mode = "replicate" if mode == "reflect" and (pad_h >= height or pad_w >= width) else mode
    padded = F.pad(image, (0, pad_w, 0, pad_h), mode=padded_mode)
    seen = []

    def identity(batch):
        seen.append(batch.clone())
        return batch

    result = tiled_apply(identity, image, 16, 4, tile_batch_size=1, statistics_passes=1, pad_mode=mode)
    torch.testing.assert_close(result, image)
    frame_h, frame_w = padded.shape[-2:]
    tile_h, tile_w = min(16, frame_h), min(16, frame_w)
    starts = [(y, x) for y in aligned_starts(frame_h, tile_h, 4) for x in aligned_starts(frame_w, tile_w, 4)]
    final_pass = seen[len(starts):]
    assert len(final_pass) == len(starts) and (len(starts) > 1 or max(frame_h, frame_w) <= 16)
    for (y, x), tile in zip(starts, final_pass):
        torch.testing.assert_close(tile, padded[:, :, y : y + tile_h, x : x + tile_w])


def test_each_image_of_a_batch_gets_its_own_whole_image_statistics():
    """Tiles are stacked position by position, each position holding the batch's images, and every tile's
    placement must name its own image: a batch of two different images, several tile positions per forward call,
    gets each image's own mean (not its neighbour's, nor a mix), as restoring each image alone does."""
    from modeling.tile_context import spatial_mean

    def image_mean(batch):
        return spatial_mean(batch)[..., None, None].expand_as(batch).clone()

    torch.manual_seed(0)
    images = torch.rand(2, 3, 48, 64) * torch.tensor([0.2, 1.0])[:, None, None, None]  # a dark and a bright image
    calls = []
    batched = tiled_apply(lambda batch: calls.append(len(batch)) or image_mean(batch), images, 32, 8,
                          tile_batch_size=3, statistics_passes=1)
    assert max(calls) == 6 and len(calls) > 2  # 3 positions x 2 images per call, over several calls
    expected = images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    torch.testing.assert_close(batched, expected, atol=1e-6, rtol=1e-5)
    model = tiny_model("pip")
    labels = model_labels(model, 1)

    def forward(batch):
        kwargs = {key: value.repeat(len(batch), 1) for key, value in labels.items()}
        return model(pixel_values=batch, **kwargs).reconstruction

    together = tiled_apply(forward, images, 32, 8, tile_batch_size=3, statistics_passes=1)
    for index in range(2):
        alone = tiled_apply(forward, images[index : index + 1], 32, 8, tile_batch_size=3, statistics_passes=1)
        torch.testing.assert_close(together[index : index + 1], alone, atol=2e-5, rtol=1e-4)


def test_statistics_passes_under_bf16_autocast_stay_close_to_fp32():
    """Under bf16 autocast (the default on CPUs with native bf16) the sums are gathered in fp32: the tiled result
    with statistics passes stays as close to its fp32 counterpart as plain bf16 inference does."""
    model = tiny_model("pip")
    image = torch.from_numpy(smooth_image(64, 96, seed=2)).permute(2, 0, 1)[None].float() / 255
    labels = degradation_label_ids(model, "low-light", 1)
    options = dict(degradation_labels=labels, tile=48, tile_overlap=16, statistics_passes=2)
    fp32 = run_model(model, image, dtype="fp32", **options)
    bf16 = run_model(model, image, dtype="bf16", **options)
    whole_fp32 = run_model(model, image, degradation_labels=labels, tile=0, dtype="fp32")
    whole_bf16 = run_model(model, image, degradation_labels=labels, tile=0, dtype="bf16")
    assert torch.isfinite(bf16).all()
    assert psnr(bf16, fp32) > psnr(whole_bf16, whole_fp32) - 3


def test_sites_gather_their_sums_in_fp32_under_bf16_autocast():
    """Under bf16 autocast the sums over each tile's pixels are gathered in fp32 (a bf16 product would round every
    tile's sum to 8 bits of mantissa before the tiles are added up): every site's sums equal those gathered
    without autocast."""
    from modeling.restormer_blocks import split_heads
    from modeling.tile_context import channel_attention_logits, resize_to_prompt, spatial_mean

    torch.manual_seed(0)
    crops = torch.randn(2, 8, 32, 32) + 3  # two tiles of a 32 x 56 map, at x = 0 and x = 24
    placements = [TilePlacement(0, 0, 0, (0, 32), (0, 32)), TilePlacement(0, 0, 24, (0, 32), (32, 56))]

    def gathered(autocast: bool) -> dict:
        statistics = TileStatistics(1, (32, 56), (32, 32))
        statistics.start_pass()
        statistics.start_batch(placements)
        with gathering_statistics(statistics), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            spatial_mean(crops)
            channel_attention_logits(split_heads(crops, 2), split_heads(crops.flip(1), 2), torch.ones(2, 1, 1))
            resize_to_prompt(crops, (5, 7))
        return statistics.gathering

    exact, under_autocast = gathered(False), gathered(True)
    assert sorted(under_autocast) == sorted(exact) == [0, 1, 2]
    for site, sums in exact.items():
        for value, expected in zip(under_autocast[site], sums):
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, expected, atol=1e-4, rtol=1e-5, msg=f"site {site}")


@pytest.mark.parametrize("passes", [-1, 1.5, True, "2"])
def test_bad_statistics_passes_are_refused(passes):
    from modeling import restore

    model = tiny_model("restormer")
    image = smooth_image(16, 16)
    with pytest.raises(ValueError, match="statistics_passes"):
        restore(image, model, tile=8, statistics_passes=passes)
    with pytest.raises(ValueError, match="statistics_passes"):
        run_model(model, torch.rand(1, 3, 16, 16), tile=8, statistics_passes=passes)


def test_restore_gathers_whole_image_statistics_whenever_tiles_split_the_image():
    """statistics_passes=None: at most DEFAULT_STATISTICS_PASSES where tiles split the image, whatever its
    degradation, stopping once they settle (DEFAULT_STATISTICS_TOLERANCE); none where one tile holds it; an explicit
    value wins. The pipeline takes the same options."""
    from modeling import restore
    from modeling.inference import DEFAULT_STATISTICS_PASSES, DEFAULT_STATISTICS_TOLERANCE, resolve_statistics_passes
    from modeling.pipeline_restoration import ImageRestorationPipeline

    assert (DEFAULT_STATISTICS_PASSES, DEFAULT_STATISTICS_TOLERANCE) == (6, 0.01)
    model = tiny_model("pip")
    assert resolve_statistics_passes(model, None, 24, (48, 64)) == 6
    assert resolve_statistics_passes(model, None, 64, (48, 64)) == 0  # one tile holds the image
    assert resolve_statistics_passes(model, None, None, (48, 64)) == 0  # whole image
    assert resolve_statistics_passes(model, 1, 24, (48, 64)) == 1
    image = (smooth_image(48, 64).astype(np.float32) * np.linspace(0.2, 1, 64)[:, None]).astype(np.uint8)

    def restored(**kwargs):
        return np.asarray(restore(image, model, tile=24, dtype="fp32", **kwargs), dtype=np.int16)

    for label in ("low-light", "noise"):
        changes = []
        default = restored(degradation=label, statistics_callback=lambda number, change: changes.append(change))
        # The passes ran until the first (from the second on) that changed the statistics by at most 0.01.
        assert 2 <= len(changes) <= DEFAULT_STATISTICS_PASSES
        assert all(change > 0.01 for change in changes[:-1])
        assert changes[-1] <= 0.01 or len(changes) == DEFAULT_STATISTICS_PASSES
        assert np.array_equal(default, restored(degradation=label, statistics_passes=len(changes),
                                                statistics_tolerance=0))
        assert not np.array_equal(default, restored(degradation=label, statistics_passes=0))
    pipe = ImageRestorationPipeline(model=model)
    for passes, tolerance in ((0, None), (1, None), (3, 0), (None, 0.2)):
        options = dict(statistics_passes=passes, statistics_tolerance=tolerance)
        from_pipeline = pipe(image, tile=24, degradation="haze", dtype="fp32", **options)
        assert np.array_equal(np.asarray(from_pipeline, dtype=np.int16), restored(degradation="haze", **options))
    with pytest.raises(ValueError, match="statistics_passes"):
        pipe(image, tile=24, statistics_passes=-1)
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="statistics_tolerance must be a finite number >= 0"):
            pipe(image, tile=24, statistics_tolerance=bad)
        with pytest.raises(ValueError, match="statistics_tolerance must be a finite number >= 0"):
            restore(image, model, tile=24, statistics_tolerance=bad)
        with pytest.raises(ValueError, match="statistics_tolerance must be a finite number >= 0"):
            tiled_apply(lambda tiles: tiles, torch.rand(1, 3, 16, 16), 8, statistics_passes=2,
                        statistics_tolerance=bad)


def test_relative_change_is_the_largest_change_of_any_sites_sums():
    """Per site, sum and image: |new - old| / |new| in Frobenius norm; the largest of them. inf until two passes
    have gathered the same sites."""
    statistics = TileStatistics(2, (16, 16), (8, 8))
    statistics.start_pass()
    assert statistics.relative_change() == 0.0  # no site met: nothing to settle
    statistics.gathering = {0: [torch.ones(2, 3)]}
    assert statistics.relative_change() == float("inf")  # the first pass: nothing to compare with
    statistics.gathering = {}
    old = {0: [torch.tensor([[3.0, 4.0], [1.0, 0.0]])], 1: [torch.ones(2, 2, 2), torch.ones(2, 1)]}
    new = {0: [torch.tensor([[3.0, 4.5], [1.0, 0.0]])], 1: [torch.ones(2, 2, 2), torch.ones(2, 1)]}
    new[1][0][1, 0, 0] = 2.0  # image 1 of site 1: |diff| = 1, |new| = sqrt(4 + 3)
    statistics.gathering = old
    statistics.start_pass()
    statistics.gathering = new
    change = statistics.relative_change()
    assert change == pytest.approx(max(0.5 / (3**2 + 4.5**2) ** 0.5, 1 / 7**0.5))
    statistics.gathering = {0: new[0]}  # a pass that met fewer sites is not comparable
    assert statistics.relative_change() == float("inf")


def test_statistics_passes_stop_once_they_settle():
    """With a tolerance, the passes stop after the first (from the second on) that changed the statistics by at
    most it, and the result is exactly that many fixed passes'. The changes shrink pass by pass, the callback hears
    every pass, and the restoring pass gathers nothing."""
    import modeling.tiling as tiling

    model = tiny_model("pip")
    image = torch.from_numpy(smooth_image(64, 96, seed=3)).permute(2, 0, 1)[None].float() / 255
    image = image * torch.linspace(0.2, 1.0, 96)
    labels = degradation_label_ids(model, "low-light", 1)

    def restored(passes, tolerance, record=None):
        return run_model(model, image, degradation_labels=labels, tile=32, tile_overlap=16, dtype="fp32",
                         statistics_passes=passes, statistics_tolerance=tolerance,
                         statistics_callback=None if record is None else lambda *pass_: record.append(pass_))

    passes = []
    restored(6, 0.0, passes)
    numbers, changes = zip(*passes)
    assert numbers == (1, 2, 3, 4, 5, 6) and changes[0] == float("inf")
    assert list(changes[1:]) == sorted(changes[1:], reverse=True) and changes[-1] < 1e-3, changes
    # A tolerance between two passes' changes stops after the later one.
    stop = next(index for index, change in enumerate(changes) if change < 0.05)
    settled = []
    early = restored(6, 0.05, settled)
    assert [number for number, _ in settled] == list(range(1, stop + 2))
    torch.testing.assert_close(early, restored(stop + 1, 0.0), atol=0, rtol=0)
    assert psnr(early, restored(6, 0.0)) < 200  # it did stop early: six passes differ
    at_most = []  # "at most": a change equal to the tolerance stops the passes too
    restored(6, changes[stop], at_most)
    assert [number for number, _ in at_most] == list(range(1, stop + 2))

    class CountingStatistics(TileStatistics):
        gathered_while_restoring = 0

        def add(self, site, sums):
            CountingStatistics.gathered_while_restoring += not self.collecting
            super().add(site, sums)

    original = tiling.TileStatistics
    tiling.TileStatistics = CountingStatistics
    try:
        counted = restored(2, 0.0)
    finally:
        tiling.TileStatistics = original
    assert CountingStatistics.gathered_while_restoring == 0
    torch.testing.assert_close(counted, restored(2, 0.0), atol=0, rtol=0)
    # A function without global sites has nothing to gather: the passes stop after the first.
    plain = []
    tiled_apply(lambda tiles: tiles * 2, image, 32, 16, statistics_passes=6, statistics_tolerance=0.01,
                statistics_callback=lambda *pass_: plain.append(pass_))
    assert plain == [(1, 0.0)]


def test_statistics_passes_settle_per_image_so_a_batch_restores_each_image_as_alone():
    """With a tolerance, every image of a batch stops gathering when its own statistics settle: an image that
    settles in fewer passes than a companion gets the output it gets alone (it used to run the companion's passes
    too, up to 3e-4 away on the shipped model's low-light photo)."""
    from modeling.inference import restore

    model = tiny_model("restormer")
    images = [smooth_image(40, 56, seed=seed).astype(np.float32) / 255 for seed in range(3)]
    images[2] = images[2] * 0.2  # a dark image settles in one pass more than the others
    options = dict(tile=16, tile_overlap=4, dtype="fp32")
    alone, passes = [], []
    for image in images:
        record = []
        alone.append(restore(image, model, statistics_callback=lambda number, change: record.append(number),
                             **options))
        passes.append(len(record))
    assert len(set(passes)) > 1, passes  # the images settle after different numbers of passes
    record = []
    batched = restore(images, model, batch_size=3, statistics_callback=lambda number, change: record.append(number),
                      **options)
    assert len(record) == max(passes)  # the batch runs until its slowest image settles
    for single, together in zip(alone, batched):
        np.testing.assert_allclose(together, single, atol=2e-6, rtol=0)


def test_settled_images_keep_their_sums():
    """`settle` freezes an image's sums of the pass that just ended; later passes only change the others'."""
    statistics = TileStatistics(2, (16, 16), (8, 8))
    statistics.start_pass()
    statistics.gathering = {0: [torch.tensor([[1.0], [1.0]])]}
    statistics.start_pass()
    statistics.gathering = {0: [torch.tensor([[1.001], [2.0]])]}
    changes = statistics.image_changes()
    assert changes[0] < 0.01 < changes[1]
    statistics.settle(changes <= 0.01)
    assert not statistics.all_settled()
    statistics.start_pass()
    statistics.gathering = {0: [torch.tensor([[5.0], [2.001]])]}
    assert statistics.relative_change() == pytest.approx(0.001 / 2.001, rel=1e-3)  # image 0 is settled: not counted
    statistics.settle(statistics.image_changes() <= 0.01)
    assert statistics.all_settled()
    statistics.start_pass(collect=False)
    torch.testing.assert_close(statistics.gathered[0][0], torch.tensor([[1.001], [2.001]]))


def test_bench_tile_statistics_compares_tiles_with_the_whole_image(tmp_path, capsys):
    """benchmarks/bench_tile_statistics.py on a tiny PIP and two photos: one record per row and photo with each
    pass count, row summaries that agree with the records, and statistics passes that bring the tiles closer to
    the whole image (timings are not asserted)."""
    import importlib.util
    import json
    from pathlib import Path

    from PIL import Image

    tiny_model("pip").save_pretrained(tmp_path / "pip")
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        Image.fromarray(smooth_image(40 + 8 * index, 56, seed=index)).save(photos / f"p{index}.png")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tile_statistics.py"
    spec = importlib.util.spec_from_file_location("bench_tile_statistics", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--model", str(tmp_path / "pip"), "--heldout", str(photos), "--rows", "low-light", "rain",
                         "--tile", "24", "--passes", "0", "3", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(result))
    records = result["records"]
    assert [(r["row"], r["image"]) for r in records] == [
        ("low-light", "p0.png"), ("low-light", "p1.png"), ("rain", "p0.png"), ("rain", "p1.png")]
    for record in records:
        assert record["tiled"]["3"]["agreement_db"] > record["tiled"]["0"]["agreement_db"] + 5
        assert (record["tiled"]["0"]["passes_run"], record["tiled"]["3"]["passes_run"]) == (0, 3)  # tolerance 0
    low_light = result["summary"]["low-light"]["3"]
    changes = [r["tiled"]["3"]["psnr_change"] for r in records if r["row"] == "low-light"]
    assert low_light["mean_change"] == pytest.approx(sum(changes) / 2)
    assert (low_light["min_change"], low_light["max_change"]) == (min(changes), max(changes))
    assert (low_light["mean_passes_run"], low_light["max_passes_run"]) == (3, 3)
    assert "low-light  passes 3:" in capsys.readouterr().out


def test_every_copy_of_the_module_sees_the_running_tiled_restore():
    """trust_remote_code loads its own copies of tile_context (one per folder and code hash) beside the installed
    package: a tiled restore started by one copy must reach the global sites of another."""
    import importlib.util

    import modeling.tile_context as installed

    import sys

    spec = importlib.util.spec_from_file_location("remote_copy_of_tile_context", installed.__file__)
    copy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = copy  # as importlib does (dataclasses look their module up there)
    try:
        spec.loader.exec_module(copy)
    finally:
        del sys.modules[spec.name]
    assert copy is not installed and copy.active() is None
    statistics = TileStatistics(1, (16, 16), (16, 16))
    with gathering_statistics(statistics):
        assert copy.active() is statistics
    assert copy.active() is None and installed.active() is None


def test_readme_states_the_size_of_the_gathered_sums():
    """The README gives the memory the statistics passes add per image: the sums of every global site of the shipped
    weights (channel-attention Gram matrices and norms, pooled sums, resized maps), kept twice during a pass (those
    in force and those being gathered). Measured here from a tiled restore of the shipped checkpoint."""
    import re
    from pathlib import Path

    import modeling.tiling as tiling
    from modeling.inference import DEMO_CHECKPOINT_DIR, load_model

    model = load_model(str(DEMO_CHECKPOINT_DIR), device="cpu")
    captured = []

    class CapturedStatistics(TileStatistics):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured.append(self)

    original = tiling.TileStatistics
    tiling.TileStatistics = CapturedStatistics
    try:
        run_model(model, torch.rand(1, 3, 32, 48), degradation_labels=degradation_label_ids(model, "noise", 1),
                  tile=32, tile_overlap=8, dtype="fp32", statistics_passes=1)
    finally:
        tiling.TileStatistics = original
    (statistics,) = captured
    kib = sum(total.numel() * total.element_size() for sums in statistics.gathered.values() for total in sums) / 1024
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"the gathered sums take about ([\d,]+) KiB per image", " ".join(readme.split()))
    assert stated, "README no longer states the size of the gathered sums"
    assert float(stated.group(1).replace(",", "")) == pytest.approx(kib, rel=0.1)


def test_the_frame_and_tiles_follow_the_models_multiple_not_the_grid():
    """The frame is the image padded to the model's multiple (as the model pads the whole image), so CPL's tiles
    gather the whole image's statistics: 53 dB from the whole image, 44 with the frame padded to the grid (8).
    Tiles never fall below one multiple: with a multiple of 32, a 20-px tile is 32 (16 broke the blending)."""
    model = tiny_model("cpl")
    image = torch.from_numpy(smooth_image(37, 51, seed=2)).permute(2, 0, 1)[None].float() / 255
    whole = run_model(model, image, tile=0, dtype="fp32")
    tiled = run_model(model, image, tile=40, tile_overlap=12, dtype="fp32", statistics_passes=2)
    assert psnr(tiled, whole) > 49
    shapes = []
    out = tiled_apply(lambda batch: shapes.append(tuple(batch.shape[-2:])) or batch, image, 20, 4,
                      statistics_passes=1, size_multiple=32)
    assert set(shapes) == {(32, 32)}
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)
