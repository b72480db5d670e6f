"""Tiled inference: run an image-to-image function on overlapping tiles and blend them without seams.

Every tile has the same size (``min(tile, H)`` x ``min(tile, W)``), so tiles are batched. Each tile's output is
weighted by a separable window that is 1 in its interior and rises smoothly (raised cosine, sin^2) across the
``overlap`` pixels next to every *interior* tile edge; edges on the image border keep weight 1, so the total weight
is never 0. The accumulated sum is divided by the accumulated weight.

Tiling is exact only for a network whose receptive field is smaller than the context a tile provides. Convolutional
parts of Restormer-style models have a limited receptive field, but their channel attention (MDTA), prompt routing
and prompt placement use statistics of the *whole* input, so tiles that use their own statistics differ from the
whole image. For a random Restormer on a noisy image the difference is small (the tests check a 512x512 image with
``tile=256, overlap=32`` agrees with whole-image inference within 0.05 dB PSNR), but trained weights whose
correction depends on the whole image differ by dB (the README's tiling table). ``statistics_passes`` gathers the
whole image's statistics over the tiles first (`tile_context`), which removes most of that difference.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Callable, Optional

import torch

from .tile_context import GRID, TilePlacement, TileStatistics, aligned_starts, gathering_statistics, owned_spans


#: Smallest tile side. The models work on multiples of 8 pixels (three 2x downsamplings), so a smaller tile would be
#: padded up to 8 and spend most of its compute on padding.
MIN_TILE = 8
#: Overlap used when none is given, capped at a quarter of the tile (`default_tile_overlap`).
DEFAULT_TILE_OVERLAP = 32
#: `tile=WHOLE_IMAGE` (0) asks for whole-image inference even from a model whose config names an `inference_tile`
#: (`tile=None` means "the model's choice": its `inference_tile`, else the whole image).
WHOLE_IMAGE = 0


def default_tile_overlap(tile: int) -> int:
    """Overlap used for `tile` when the caller gives none: 32 pixels, at most a quarter of the tile."""
    return min(DEFAULT_TILE_OVERLAP, tile // 4)


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def check_tiling(
    tile: Any, tile_overlap: Any = None, *, names: tuple[str, str] = ("tile", "tile_overlap")
) -> tuple[Optional[int], int]:
    """The one tiling rule, shared by `restore`, the pipeline, the CLI and `tiled_apply`; returns `(tile, overlap)`.

    * `tile=None` or `tile=WHOLE_IMAGE` (0): whole-image inference; returns `(None, 0)` and ignores
      `tile_overlap`. (Callers that honour a model's `inference_tile` resolve `None` to it first; see
      `modeling.inference.model_inference_tile`.)
    * Otherwise `tile` is an integer >= `MIN_TILE` (8).
    * `tile_overlap=None` picks `default_tile_overlap(tile)` = min(32, tile // 4), which always fits.
    * A given overlap must be an integer in [0, tile // 2]: then the tile stride (tile - overlap) is at least the
      overlap, so a tile's two blending ramps never overlap. The tiles then cover each axis at most about
      tile / (tile - overlap) <= 2 times (the last tile sits flush with the edge and may share more with its
      neighbour), so up to about 4x the whole-image compute per pass. With statistics passes the stride is also
      rounded down to the model's 8-px grid, which costs more for small tiles with large overlaps (tile 24,
      overlap 12: stride 8, about 3 tiles per pixel per axis).

    `names` are the argument names used in error messages (the CLI passes `("--tile", "--tile-overlap")`).
    Raises ValueError.
    """
    tile_name, overlap_name = names
    tile_int = _as_int(tile)
    if tile is None or tile_int == WHOLE_IMAGE:
        return None, 0
    if tile_int is None or tile_int < MIN_TILE:
        raise ValueError(
            f"{tile_name} must be an integer of at least {MIN_TILE} pixels, got {tile!r} "
            f"({WHOLE_IMAGE} for whole-image inference)."
        )
    if tile_overlap is None:
        return tile_int, default_tile_overlap(tile_int)
    overlap_int = _as_int(tile_overlap)
    if overlap_int is None or not 0 <= overlap_int <= tile_int // 2:
        raise ValueError(
            f"{overlap_name} must be an integer between 0 and half the tile ({tile_int // 2} for {tile_name} "
            f"{tile_int}), got {tile_overlap!r}."
        )
    return tile_int, overlap_int


def check_statistics_tolerance(statistics_tolerance: Any, name: str = "statistics_tolerance") -> None:
    """ValueError unless `statistics_tolerance` is a finite number >= 0 (0: a fixed number of statistics passes)."""
    if (
        isinstance(statistics_tolerance, bool)
        or not isinstance(statistics_tolerance, numbers.Real)
        or not math.isfinite(statistics_tolerance)
        or statistics_tolerance < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {statistics_tolerance!r}.")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering `[0, size)` with at least `overlap` pixels shared."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)  # last tile flush with the border (may overlap its neighbour by more)
    return starts


def blend_ramp(tile: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D blending window of length `tile` with ramps over `overlap` pixels at the requested (interior) edges.

    A ramp is 0 over its first `overlap // 4` pixels (outputs there lack context: for a network whose receptive
    field radius is at most `overlap // 4`, tiled and whole-image results then agree exactly) and then rises as
    sin^2 to 1. Neighbouring tiles share at least `overlap` pixels, so the summed weight is positive everywhere;
    edges on the image border get no ramp.
    """
    window = torch.ones(tile, dtype=torch.float32)
    ramp_len = min(overlap, tile)
    if ramp_len > 0:
        margin = ramp_len // 4
        rise = ramp_len - margin
        positions = (torch.arange(rise, dtype=torch.float64) + 0.5) / rise
        ramp = torch.cat([torch.zeros(margin, dtype=torch.float64), torch.sin(positions * math.pi / 2).pow(2)])
        ramp = ramp.float()
        if ramp_start:
            window[:ramp_len] = torch.minimum(window[:ramp_len], ramp)
        if ramp_end:
            window[tile - ramp_len :] = torch.minimum(window[tile - ramp_len :], ramp.flip(0))
    return window


def _padded_positions(start: int, length: int, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices of positions [start, start + length) of an axis of `size` padded at its end, as
    `F.pad` with `mode` pads, and which positions lie in the padding."""
    positions = torch.arange(start, start + length)
    beyond = positions >= size
    if mode == "reflect":
        return torch.where(beyond, 2 * (size - 1) - positions, positions), beyond
    return positions.clamp_max(size - 1), beyond


def _tile_of(
    pixel_values: torch.Tensor, top: int, left: int, tile_h: int, tile_w: int, frame_h: int, frame_w: int, mode: str
) -> torch.Tensor:
    """The tile at (top, left) of the image padded at the bottom and right to the frame, copying only the tile."""
    height, width = pixel_values.shape[-2:]
    if top + tile_h <= height and left + tile_w <= width:
        return pixel_values[:, :, top : top + tile_h, left : left + tile_w]
    if mode == "reflect" and (frame_h - height >= height or frame_w - width >= width):
        mode = "replicate"  # as `pad_to_multiple`: too small a side to reflect, in either direction
    rows, rows_beyond = _padded_positions(top, tile_h, height, mode)
    cols, cols_beyond = _padded_positions(left, tile_w, width, mode)
    tile = pixel_values[:, :, rows.to(pixel_values.device)][:, :, :, cols.to(pixel_values.device)]
    if mode == "constant":
        inside = ~(rows_beyond[:, None] | cols_beyond[None, :])
        tile = tile * inside.to(tile.device, tile.dtype)
    return tile


@torch.no_grad()
def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    pixel_values: torch.Tensor,
    tile: int,
    overlap: Optional[int] = None,
    *,
    tile_batch_size: int = 4,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    statistics_passes: int = 0,
    statistics_tolerance: float = 0.0,
    statistics_callback: Optional[Callable[[int, float], None]] = None,
    pad_mode: str = "reflect",
    size_multiple: int = GRID,
) -> torch.Tensor:
    """Apply `fn` ((N, C, h, w) -> (N, C, h, w)) to `pixel_values` (B, C, H, W) tile by tile and blend the results.

    Args:
        fn: image-to-image function that keeps the spatial size (e.g. a model call returning `reconstruction`).
        pixel_values: input batch; it stays on its own device (e.g. CPU), only tiles are moved to `device`.
        tile: tile side in pixels (tiles are squares clipped to the image size); at least `MIN_TILE`.
        overlap: pixels shared by neighbouring tiles and blended, in [0, tile // 2]; default
            `default_tile_overlap(tile)` (see `check_tiling`).
        tile_batch_size: number of tile positions run through `fn` at once (each holds B tiles).
        device: where `fn` runs; defaults to the device of `pixel_values`.
        progress: show a tqdm progress bar over tile batches.
        statistics_passes: 0: every tile uses its own statistics. n > 0: `fn`'s global sites (`tile_context`) use
            whole-image statistics gathered over the tiles in n earlier passes (n + 1 times the compute). Then
            tiles are rounded down to `tile_context.GRID` (8 px), to 16 px at least, and start on it, in the image
            padded at the bottom and right to the grid as the model pads its input (`pad_mode`: "reflect", which
            falls back to "replicate" where the image is too small to reflect, "replicate" or "constant"), without
            a padded copy.
        size_multiple: the multiple the model pads its input to (`config.size_multiple`: 8, CPL 16), a multiple of
            the grid. With statistics passes the frame is padded to it and tiles are rounded down to it (to 16 px
            at least), so the model pads no tile itself and the frame is the whole image as the model would pad it.
        statistics_tolerance: 0: exactly `statistics_passes` passes. t > 0: `statistics_passes` at most, stopping
            after the second or a later pass once that pass changed the gathered statistics by at most t
            (`TileStatistics.image_changes`: the largest relative change of any site's sums), per image: an image
            that settled keeps its sums while the passes go on for the others of the batch, so its output does not
            depend on its companions.
        statistics_callback: called after every statistics pass with its number (from 1) and that relative change
            (`inf` after the first pass; the largest of the images not yet settled), e.g. to report how many passes an
            image needed.

    Returns:
        Tensor of the same shape as `pixel_values`, float32, on the device of `pixel_values`.
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}.")
    tile, overlap = check_tiling(tile, overlap, names=("tile", "overlap"))
    if tile is None:
        raise ValueError(
            f"tile must be an integer number of pixels for tiled_apply (None and {WHOLE_IMAGE} mean no tiling)."
        )
    if tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be >= 1, got {tile_batch_size}.")
    if _as_int(statistics_passes) is None or statistics_passes < 0:
        raise ValueError(f"statistics_passes must be an integer >= 0, got {statistics_passes!r}.")
    check_statistics_tolerance(statistics_tolerance)
    if pad_mode not in ("reflect", "replicate", "constant"):
        raise ValueError(f"pad_mode must be 'reflect', 'replicate' or 'constant', got {pad_mode!r}.")
    if _as_int(size_multiple) is None or size_multiple < GRID or size_multiple % GRID:
        raise ValueError(f"size_multiple must be a positive multiple of {GRID}, got {size_multiple!r}.")
    batch, channels, height, width = pixel_values.shape
    device = torch.device(device) if device is not None else pixel_values.device
    statistics = None
    # Tiles cover a frame: the image itself, or with statistics passes the image padded to the grid.
    frame_h, frame_w = height, width
    if statistics_passes:
        frame_h, frame_w = -(-height // size_multiple) * size_multiple, -(-width // size_multiple) * size_multiple
        # Two grid cells at least: neighbouring aligned tiles then always share a grid cell to blend over (8-px
        # tiles would sit edge to edge, and with an overlap of 4 or more their zero margins would leave pixels of
        # no weight at all). A multiple of the model's own multiple, which it would otherwise pad each tile to.
        tile = max(-(-2 * GRID // size_multiple) * size_multiple, tile // size_multiple * size_multiple)
        tile_h, tile_w = min(tile, frame_h), min(tile, frame_w)
        starts_y, starts_x = aligned_starts(frame_h, tile_h, overlap), aligned_starts(frame_w, tile_w, overlap)
        statistics = TileStatistics(batch, (frame_h, frame_w), (tile_h, tile_w))
        owned_y, owned_x = owned_spans(starts_y, tile_h, frame_h), owned_spans(starts_x, tile_w, frame_w)
    else:
        tile_h, tile_w = min(tile, height), min(tile, width)
        starts_y = tile_starts(height, tile_h, overlap)
        starts_x = tile_starts(width, tile_w, overlap)
    positions = [(y, x) for y in starts_y for x in starts_x]

    out_device = pixel_values.device
    # Memory: the output is the only full-size buffer (4 bytes per value). The windows are separable and the tile
    # grid is a product of row and column starts, so the summed weight is too: sum_y(wy) x sum_x(wx), two vectors.
    output = torch.zeros((batch, channels, height, width), dtype=torch.float32, device=out_device)
    row_windows = {start: blend_ramp(tile_h, overlap, start > 0, start + tile_h < frame_h) for start in starts_y}
    col_windows = {start: blend_ramp(tile_w, overlap, start > 0, start + tile_w < frame_w) for start in starts_x}
    row_total = torch.zeros(frame_h, dtype=torch.float32)
    col_total = torch.zeros(frame_w, dtype=torch.float32)
    for start, window in row_windows.items():
        row_total[start : start + tile_h] += window
    for start, window in col_windows.items():
        col_total[start : start + tile_w] += window
    row_total, col_total = row_total[:height], col_total[:width]
    row_windows = {start: window.to(out_device) for start, window in row_windows.items()}
    col_windows = {start: window.to(out_device) for start, window in col_windows.items()}

    groups = [positions[i : i + tile_batch_size] for i in range(0, len(positions), tile_batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=(statistics_passes + 1) * len(groups), desc="tiles", unit="batch", leave=False)

    def run_pass(restoring: bool) -> None:
        for group in groups:
            if statistics is not None:
                # Tiles are stacked position by position, each holding the B images.
                statistics.start_batch([
                    TilePlacement(image, y, x, owned_y[y], owned_x[x]) for y, x in group for image in range(batch)
                ])
            crops = torch.cat(
                [_tile_of(pixel_values, y, x, tile_h, tile_w, frame_h, frame_w, pad_mode) for y, x in group], dim=0
            )
            result = fn(crops.to(device))
            if result.shape != crops.shape:
                raise ValueError(
                    f"The tiled function must keep the tile shape {tuple(crops.shape)}, got {tuple(result.shape)}."
                )
            del crops
            if bar is not None:
                bar.update()
            if not restoring:
                continue  # a statistics pass: only the gathered sums are kept
            result = result.to(device=out_device, dtype=torch.float32)
            for index, (y, x) in enumerate(group):
                inside_h, inside_w = min(tile_h, height - y), min(tile_w, width - x)  # less only in the padding
                window = row_windows[y][:inside_h, None] * col_windows[x][None, :inside_w]
                output[:, :, y : y + inside_h, x : x + inside_w].addcmul_(
                    result[index * batch : (index + 1) * batch, :, :inside_h, :inside_w], window
                )
            del result

    try:
        with gathering_statistics(statistics) if statistics is not None else contextlib.nullcontext():
            for pass_index in range(statistics_passes):
                statistics.start_pass()
                run_pass(restoring=False)
                change = statistics.relative_change()
                if statistics_callback is not None:
                    statistics_callback(pass_index + 1, change)
                if statistics_tolerance:
                    # Per image: one that settled keeps its sums while the others go on, so an image restored in a
                    # batch gets the statistics (and the output) it gets alone.
                    statistics.settle(statistics.image_changes() <= statistics_tolerance)
                if statistics_tolerance and statistics.all_settled():
                    if bar is not None:  # settled early: the bar counts the restoring pass next
                        bar.total = bar.n + len(groups)
                        bar.refresh()
                    break
            if statistics is not None:
                statistics.start_pass(collect=False)
            run_pass(restoring=True)
    finally:
        if bar is not None:
            bar.close()
    # In place, row by row of the separable total (no second full-size buffer).
    output.div_(row_total.to(out_device)[:, None]).div_(col_total.to(out_device)[None, :])
    return output


__all__ = [
    "DEFAULT_TILE_OVERLAP",
    "MIN_TILE",
    "WHOLE_IMAGE",
    "blend_ramp",
    "check_statistics_tolerance",
    "check_tiling",
    "default_tile_overlap",
    "tile_starts",
    "tiled_apply",
]
