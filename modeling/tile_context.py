"""Whole-image statistics for tiled inference.

A tile of a Restormer-style model sees less than the whole image in a few places, all of them *global*:

* every channel attention (MDTA, PIP's top-m cross-attention) normalises its queries and keys over all pixels and
  multiplies them over all pixels: a (C x C) map per head that is a sum over the image;
* prompt routers and prototype assignment pool the feature map to one vector per image (a mean);
* PIP's prompt-in-prompt resizes the skip feature to the prompt size (a fixed weighted sum of pixels), and every
  prompt is resized back to the feature size, so where a pixel lies in the *image* decides which part of the
  prompt it gets.

Restored tile by tile, a dark or hazy photo then gets each tile's statistics instead of the image's, which costs
dB on exactly the degradations that are corrected globally (see the README's tiling table). This module lets those
sites see the whole image while the network still runs on tiles:

1. The image is padded to a multiple of the model's 8-pixel grid, and tiles start on that grid, so a tile's
   feature maps at every level are crops of the whole image's (up to the receptive field at tile borders).
2. Every tile *owns* a part of the image (its neighbours' shared borders are split in the middle, on the grid), and
   each global site sums its statistics over the owned pixels of every tile: together one sum over the image.
3. A statistics pass gathers these sums with the tiles' own statistics in force; the next pass uses the gathered
   whole-image statistics (and gathers them again from its better features). ``passes`` statistics passes come
   before the pass whose output is kept. One pass makes every site's statistics whole-image ones computed from
   features that used tile statistics upstream; each further pass feeds the sites better features, so the sums
   settle pass by pass (`TileStatistics.relative_change` measures by how much, and `tiled_apply` can stop there).
   The restoring pass only reads the sums.
4. Prompts are resized to the whole image's feature size and each tile takes its own crop (computed directly, as
   a product with the rows of the interpolation matrix, never as a whole-image map).

The model code calls `spatial_mean`, `channel_attention_logits`, `resize_to_prompt` and `resize_from_prompt`;
without an active `TileStatistics` (whole-image inference, training) they are the plain PyTorch operations.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import types
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F


#: The models' downsampling grid: three 2x downsamplings, so tiles start on multiples of 8 pixels.
GRID = 8

#: The tiled restore running in each thread is kept in one object that every copy of this module shares: the
#: installed package and the copies `trust_remote_code` makes (one per model or pipeline folder and code hash) must
#: all see the statistics of a restore, whichever copy's tiling started it and whichever copy's sites read them.
_SHARED_STATE = "prompt_restoration_tile_context_state"
_shared = sys.modules.setdefault(_SHARED_STATE, types.ModuleType(_SHARED_STATE))
if not hasattr(_shared, "threads"):
    _shared.threads = threading.local()
_state = _shared.threads


@dataclass(frozen=True)
class TilePlacement:
    """Where one tile of a batch lies, in pixels of the padded image, and the part of it that it owns."""

    image: int
    top: int
    left: int
    owned_rows: tuple[int, int]  # [start, end) in image rows
    owned_cols: tuple[int, int]


class TileStatistics:
    """Whole-image statistics of every global site, gathered over the tiles of one tiled restore.

    Sites are numbered in the order a forward pass reaches them, which is the same for every tile. ``gathered``
    holds the previous pass's sums (used by the sites), ``gathering`` this pass's.
    """

    def __init__(self, num_images: int, image_size: tuple[int, int], tile_size: tuple[int, int]) -> None:
        self.num_images = num_images
        self.image_size = image_size  # padded (H, W): a multiple of GRID
        self.tile_size = tile_size
        self.gathered: dict[int, list[torch.Tensor]] = {}
        self.gathering: dict[int, list[torch.Tensor]] = {}
        self.tiles: list[TilePlacement] = []
        self.site = 0
        self.collecting = True
        # Images whose sums are final (`settle`): later passes still run their tiles, but keep their sums.
        self.settled = torch.zeros(num_images, dtype=torch.bool)
        self._settling = torch.zeros(num_images, dtype=torch.bool)

    def start_pass(self, collect: bool = True) -> None:
        """Make the sums of the pass that ended the ones in force, and start gathering afresh (`collect=False`:
        the restoring pass, which only uses the sums in force). Images settled before that pass keep the sums
        they settled on."""
        if self.gathering:
            if self.settled.any() and self.gathered.keys() == self.gathering.keys():
                for site, sums in self.gathering.items():
                    for new, old in zip(sums, self.gathered[site]):
                        new[self.settled.to(new.device)] = old[self.settled.to(old.device)]
            self.gathered = self.gathering
        self.settled |= self._settling
        self._settling = torch.zeros_like(self.settled)
        self.gathering = {}
        self.collecting = collect

    def image_changes(self) -> torch.Tensor:
        """Per image (num_images,), how much the pass that just ended changed its statistics: over every site
        and sum, the largest ``|new - old| / |new|`` (Frobenius norms) against the pass before; ``inf`` after
        the first; 0 for a function without global sites (nothing to gather)."""
        if not self.gathering:
            return torch.zeros(self.num_images, dtype=torch.float64)
        if not self.gathered or self.gathered.keys() != self.gathering.keys():
            return torch.full((self.num_images,), math.inf, dtype=torch.float64)
        change = torch.zeros(self.num_images, dtype=torch.float64)
        for site, sums in self.gathering.items():
            for new, old in zip(sums, self.gathered[site]):
                new, old = new.flatten(1).double(), old.flatten(1).double()
                ratio = (new - old).norm(dim=1) / new.norm(dim=1).clamp_min(1e-30)
                change = torch.maximum(change, ratio.cpu())
        return change

    def relative_change(self) -> float:
        """The largest of `image_changes` over the images not yet settled (0 when every image is)."""
        changes = self.image_changes()[~self.settled]
        return float(changes.max()) if changes.numel() else 0.0

    def settle(self, images: torch.Tensor) -> None:
        """Make the sums that the pass just ended gathered for `images` ((num_images,) bool) final: the sums in
        force for them from now on, whatever later passes gather. Why: an image then gets the statistics it gets
        when restored alone, whichever images share its batch and however long those take to settle."""
        self._settling |= images.cpu() & ~self.settled

    def all_settled(self) -> bool:
        """Whether every image's sums are final (settled now or earlier)."""
        return bool((self.settled | self._settling).all())

    def start_batch(self, tiles: list[TilePlacement]) -> None:
        """The tiles of the next forward call, in batch order."""
        self.tiles = tiles
        self.site = 0

    # -- helpers for the sites ------------------------------------------------------------------------------
    def next_site(self) -> int:
        site = self.site
        self.site += 1
        return site

    def scale(self, height: int) -> int:
        """Pixels per feature row at a level whose maps are `height` rows high (1, 2, 4 or 8)."""
        factor = self.tile_size[0] // height
        if factor < 1 or factor * height != self.tile_size[0] or GRID % factor:
            raise ValueError(
                f"A global site got a {height}-row map from {self.tile_size[0]}-row tiles; tiled whole-image "
                "statistics need maps at 1/1, 1/2, 1/4 or 1/8 of the tile."
            )
        return factor

    def owned_masks(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tile, 0/1 masks of its owned rows (N, height) and columns (N, width) at this level."""
        factor = self.scale(height)
        rows = torch.zeros(len(self.tiles), height, device=device)
        cols = torch.zeros(len(self.tiles), width, device=device)
        for index, tile in enumerate(self.tiles):
            rows[index, (tile.owned_rows[0] - tile.top) // factor : (tile.owned_rows[1] - tile.top) // factor] = 1
            cols[index, (tile.owned_cols[0] - tile.left) // factor : (tile.owned_cols[1] - tile.left) // factor] = 1
        return rows, cols

    def image_index(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([tile.image for tile in self.tiles], device=device)

    def add(self, site: int, sums: list[torch.Tensor]) -> None:
        """Add this batch's per-tile sums (each (N, ...)) into the image sums of `site` (in fp32)."""
        index = self.image_index(sums[0].device)
        if site not in self.gathering:
            self.gathering[site] = [
                torch.zeros((self.num_images, *value.shape[1:]), dtype=torch.float32, device=value.device)
                for value in sums
            ]
        for total, value in zip(self.gathering[site], sums):
            if total.shape[1:] != value.shape[1:]:
                raise RuntimeError("A global site changed shape between tiles; the model's forward is not tileable.")
            total.index_add_(0, index, value.float())

    def in_force(self, site: int, device: torch.device) -> Optional[list[torch.Tensor]]:
        """The image sums of `site` in force for this batch's tiles (each (N, ...)), or None in the first pass."""
        if site not in self.gathered:
            return None
        index = self.image_index(device)
        return [total.to(device)[index] for total in self.gathered[site]]


def active() -> Optional[TileStatistics]:
    """The `TileStatistics` of the tiled restore running in this thread, if any."""
    return getattr(_state, "statistics", None)


@contextlib.contextmanager
def gathering_statistics(statistics: TileStatistics) -> Iterator[TileStatistics]:
    """Make `statistics` the one the global sites use in this thread."""
    previous = active()
    _state.statistics = statistics
    try:
        yield statistics
    finally:
        _state.statistics = previous


def _full_precision(tensor: torch.Tensor):
    """Autocast off: the sums over a tile's pixels are gathered in fp32 (a bf16 matmul would round each tile's sum
    to 8 bits of mantissa before the tiles are added up)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def unit_vectors(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """`F.normalize` along ``dim``, safe in half precision: fp16/bf16 inputs are normalised in fp32 and cast back.

    `F.normalize` clamps the norm at 1e-12, which is 0 in fp16: an all-zero row (a black image, a zero-padded
    prompt channel) became 0 / 0 = NaN. fp32 inputs take `F.normalize` itself, so fp32 results are unchanged.
    """
    if tensor.dtype in (torch.float16, torch.bfloat16):
        with _full_precision(tensor):
            return F.normalize(tensor.float(), dim=dim).to(tensor.dtype)
    return F.normalize(tensor, dim=dim)


# -- the global sites ----------------------------------------------------------------------------------------
def spatial_mean(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the mean over the pixels (of the whole image during a tiled restore)."""
    statistics = active()
    local = features.mean(dim=(-2, -1))
    if statistics is None:
        return local
    site = statistics.next_site()
    if statistics.collecting:
        rows, cols = statistics.owned_masks(*features.shape[-2:], features.device)
        with _full_precision(features):
            owned = torch.einsum("nchw,nh,nw->nc", features.float(), rows, cols)
        statistics.add(site, [owned, (rows.sum(1) * cols.sum(1))[:, None]])
    whole = statistics.in_force(site, features.device)
    if whole is None:
        return local
    return (whole[0] / whole[1]).to(local.dtype)


def channel_attention_logits(query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Per head, the cosine similarities of query and key channels over all pixels, times the temperature.

    `query`, `key`: (B, heads, c, H*W) (see `restormer_blocks.split_heads`), pixels in row-major order. During a
    tiled restore the pixel sums span the whole image: the Gram matrix and both channel norms are sums of owned
    pixels, and the logits follow from them as from `unit_vectors` (norms clamped at 1e-12).
    """
    statistics = active()
    if statistics is None:
        query, key = unit_vectors(query), unit_vectors(key)
        return (query @ key.transpose(-2, -1)) * temperature
    site = statistics.next_site()
    if statistics.collecting:
        level_height = _level_height(statistics, query.shape[-1])
        rows, cols = statistics.owned_masks(level_height, query.shape[-1] // level_height, query.device)
        mask = (rows[:, :, None] * cols[:, None, :]).reshape(len(rows), 1, 1, -1)
        with _full_precision(query):
            query32, key32 = query.float(), key.float()
            owned_query = query32 * mask
            gram = owned_query @ key32.transpose(-2, -1)
            query_norms = (owned_query * query32).sum(-1)
            key_norms = (key32 * key32 * mask).sum(-1)
        statistics.add(site, [gram, query_norms, key_norms])
    whole = statistics.in_force(site, query.device)
    if whole is None:
        query, key = unit_vectors(query), unit_vectors(key)
        return (query @ key.transpose(-2, -1)) * temperature
    gram, query_norms, key_norms = whole
    denominator = query_norms.sqrt().clamp_min(1e-12)[..., :, None] * key_norms.sqrt().clamp_min(1e-12)[..., None, :]
    return ((gram / denominator) * temperature.float()).to(torch.result_type(query, temperature))


def _level_height(statistics: TileStatistics, pixels: int) -> int:
    """The height of a map of `pixels` pixels at one of the grid levels of the current tiles."""
    tile_height, tile_width = statistics.tile_size
    for factor in (1, 2, 4, 8):
        if (tile_height // factor) * (tile_width // factor) == pixels:
            return tile_height // factor
    raise ValueError(f"A channel attention over {pixels} pixels matches no level of {tile_height}x{tile_width} tiles.")


def interpolation_matrix(out_size: int, in_size: int, rows: Optional[slice] = None) -> torch.Tensor:
    """The (out_size, in_size) matrix of 1-D linear resizing as `F.interpolate(mode="bilinear",
    align_corners=False)` applies it along one axis (no antialiasing), or only its `rows`."""
    start, stop = (0, out_size) if rows is None else (rows.start, rows.stop)
    scale = in_size / out_size
    source = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
    lower = source.floor().long().clamp_max(in_size - 1)
    upper = (lower + 1).clamp_max(in_size - 1)
    upper_weight = source - lower
    matrix = torch.zeros(stop - start, in_size, dtype=torch.float64)
    positions = torch.arange(stop - start)
    matrix.index_put_((positions, lower), 1 - upper_weight, accumulate=True)
    matrix.index_put_((positions, upper), upper_weight, accumulate=True)
    return matrix.float()


def _bilinear(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def resize_to_prompt(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a feature map (B, C, H, W) to a prompt's `size` (of the whole image in a tiled restore).

    Resizing is linear in the pixels, so the whole image's resized map is a sum over tiles of each tile's owned
    pixels times their columns of the two interpolation matrices.
    """
    statistics = active()
    local = _bilinear(features, size)
    if statistics is None:
        return local
    site = statistics.next_site()
    if statistics.collecting:
        height, width = features.shape[-2:]
        factor = statistics.scale(height)
        image_height, image_width = statistics.image_size[0] // factor, statistics.image_size[1] // factor
        row_matrix = interpolation_matrix(size[0], image_height).to(features.device)
        col_matrix = interpolation_matrix(size[1], image_width).to(features.device)
        rows, cols = statistics.owned_masks(height, width, features.device)
        row_parts = torch.stack([row_matrix[:, t.top // factor : t.top // factor + height] for t in statistics.tiles])
        col_parts = torch.stack([col_matrix[:, t.left // factor : t.left // factor + width] for t in statistics.tiles])
        row_parts, col_parts = row_parts * rows[:, None, :], col_parts * cols[:, None, :]
        with _full_precision(features):
            owned = row_parts[:, None] @ features.float() @ col_parts[:, None].transpose(-2, -1)
        statistics.add(site, [owned])
    whole = statistics.in_force(site, features.device)
    return local if whole is None else whole[0].to(local.dtype)


def resize_from_prompt(prompt: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a prompt (B, C, h, w) to a feature map's `size`; in a tiled restore, each tile's crop of
    the prompt resized to the whole image's feature size."""
    statistics = active()
    if statistics is None:
        return _bilinear(prompt, size)
    factor = statistics.scale(size[0])
    image_height, image_width = statistics.image_size[0] // factor, statistics.image_size[1] // factor
    row_parts, col_parts = [], []
    for tile in statistics.tiles:
        top, left = tile.top // factor, tile.left // factor
        row_parts.append(interpolation_matrix(image_height, prompt.shape[-2], slice(top, top + size[0])))
        col_parts.append(interpolation_matrix(image_width, prompt.shape[-1], slice(left, left + size[1])))
    row_parts = torch.stack(row_parts).to(prompt.device, prompt.dtype)[:, None]
    col_parts = torch.stack(col_parts).to(prompt.device, prompt.dtype)[:, None]
    return row_parts @ prompt @ col_parts.transpose(-2, -1)


def aligned_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts on the `GRID` covering `[0, size)` (`size`, `tile` multiples of the grid), neighbours sharing at
    least `overlap` pixels."""
    if size <= tile:
        return [0]
    stride = max(GRID, (tile - overlap) // GRID * GRID)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def owned_spans(starts: list[int], tile: int, size: int) -> dict[int, tuple[int, int]]:
    """For each tile start, the [start, end) it owns: shared borders split at their middle, on the grid."""
    bounds = [0]
    for previous, start in zip(starts, starts[1:]):
        middle = (start + previous + tile) / 2
        bounds.append(int(math.floor(middle / GRID + 0.5)) * GRID)
    bounds.append(size)
    return {start: (bounds[i], bounds[i + 1]) for i, start in enumerate(starts)}


__all__ = [
    "GRID",
    "TilePlacement",
    "TileStatistics",
    "active",
    "aligned_starts",
    "channel_attention_logits",
    "gathering_statistics",
    "interpolation_matrix",
    "owned_spans",
    "resize_from_prompt",
    "resize_to_prompt",
    "spatial_mean",
]
