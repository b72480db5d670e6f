"""PromptIR-style decoder prompts, shared by PromptIR and the methods that build on it (PIP on PromptIR's
body, CPL's sparse prompts, DPPD).

A *prompt generator* holds ``prompt_len`` learned prompt components; the pooled decoder feature predicts
softmax weights over them, their weighted sum is resized to the feature map and refined by a 3x3 conv.
With ``top_k`` the generator is CPL's *sparse prompt module*: only the ``top_k`` largest weights are kept.
A forward can *force* a prompt component instead of the routed one (``forced_prompt``); CPL's contrastive
regulariser restores the same input with the components the router did not choose to get its negatives. A
forward can also cut the routing weights out of the graph (``routing_grad=False``): the regulariser's term then
trains the prompt components and the network but not the router (why: ``ContrastivePromptRegularizationConfig``).
A *prompt fusion* concatenates the feature with that prompt, runs one Transformer block on the joint width
and reduces it with a 1x1 conv (official names ``promptK``, ``noise_levelK``, ``reduce_noise_levelK``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RestorationInputError
from .restoration_unet import EncoderFeatures
from .restormer_blocks import TransformerBlock, pointwise_conv, spatial_conv
from .tile_context import resize_from_prompt, spatial_mean


class PromptGenerator(nn.Module):
    """Input-conditioned prompt: a feature-weighted mixture of ``prompt_len`` learned components.

    Args:
        prompt_dim: channels of each prompt component. prompt_len: number of components.
        prompt_size: spatial side of the components (resized to the feature map bilinearly).
        feature_dim: channels of the feature that predicts the mixing weights.
        top_k: keep only the ``top_k`` largest softmax weights and zero the rest, without renormalising
            (CPL's sparse prompt module); ``None`` keeps all (PromptIR).
    """

    def __init__(
        self, prompt_dim: int, prompt_len: int, prompt_size: int, feature_dim: int, top_k: int | None = None
    ) -> None:
        super().__init__()
        self.top_k = top_k
        # One square prompt_size-sided map of prompt_dim channels per component (the checkpoints' layout).
        component_shape = (prompt_dim, prompt_size, prompt_size)
        self.prompt_components = nn.Parameter(torch.empty(prompt_len, *component_shape))
        self.component_weights = nn.Linear(feature_dim, prompt_len)
        self.output_conv = spatial_conv(prompt_dim, prompt_dim, bias=False)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        # Uniform [0, 1) as the official torch.rand initialisation.
        nn.init.uniform_(self.prompt_components, 0.0, 1.0)

    @property
    def prompt_len(self) -> int:
        return self.prompt_components.shape[0]

    def forward(
        self, features: torch.Tensor, forced_prompt: torch.Tensor | int | None = None, routing_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the prompt (B, prompt_dim, H, W) for ``features`` (B, feature_dim, H, W) and its weights.

        ``forced_prompt`` (an index, or one per image as a (B,) integer tensor) replaces the routed choice by
        that single component. It gets the total weight the router kept for its own choice (the top-k softmax
        values; 1 without top-k), so that a forced prompt differs from the routed one only in *which* component
        is used, not in how strongly it enters; the returned weights are the ones actually used.
        ``routing_grad=False`` detaches the routing weights: the same prompt, but no gradient reaches the router
        (``component_weights``) or, through it, the features it pools.
        """
        height, width = features.shape[-2:]
        weights = F.softmax(self.component_weights(spatial_mean(features)), dim=1)
        if not routing_grad:
            weights = weights.detach()
        if self.top_k is not None:
            kept = torch.topk(weights, self.top_k, dim=1).indices
            weights = torch.zeros_like(weights).scatter(1, kept, weights.gather(1, kept))
        if forced_prompt is not None:
            forced = self.forced_indices(forced_prompt, weights.shape[0], weights.device)
            weights = torch.zeros_like(weights).scatter(1, forced[:, None], weights.sum(dim=1, keepdim=True))
        prompt = torch.einsum("bl,lchw->bchw", weights, self.prompt_components)
        prompt = resize_from_prompt(prompt, (height, width))
        return self.output_conv(prompt), weights

    def forced_indices(self, forced_prompt: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) component indices from an int or a (B,) integer tensor, checked against ``prompt_len``."""
        if isinstance(forced_prompt, bool) or not isinstance(forced_prompt, (int, torch.Tensor)):
            raise RestorationInputError(
                f"forced_prompt must be a prompt index or a (batch,) integer tensor, got {type(forced_prompt).__name__}"
            )
        forced = torch.as_tensor(forced_prompt, device=device)
        if forced.is_floating_point() or forced.dtype == torch.bool:
            raise RestorationInputError(f"forced_prompt must hold integer prompt indices, got dtype {forced.dtype}")
        forced = forced.long().expand(batch) if forced.ndim == 0 else forced.long()
        if forced.shape != (batch,):
            raise RestorationInputError(f"forced_prompt must hold one index per image ({batch}), got shape {tuple(forced.shape)}")
        if not torch.compiler.is_compiling() and forced.numel() and (forced.min() < 0 or forced.max() >= self.prompt_len):
            raise RestorationInputError(f"forced_prompt indices must be in [0, {self.prompt_len}), got {forced.tolist()}")
        return forced


class PromptFusion(nn.Module):
    """Concatenate feature and prompt, one Transformer block on the joint width, 1x1 reduce to ``out_dim``."""

    def __init__(
        self,
        feature_dim: int,
        prompt_dim: int,
        out_dim: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
    ) -> None:
        super().__init__()
        joint = feature_dim + prompt_dim
        self.block = TransformerBlock(joint, num_heads, ffn_expansion_factor, bias, layer_norm_type)
        self.reduce = pointwise_conv(joint, out_dim, bias)

    def forward(self, features: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.block(torch.cat([features, prompt], dim=1)))


class DecoderPrompt(nn.Module):
    """One decoder prompt place: generate a prompt from the feature, then fuse it into the feature."""

    def __init__(
        self,
        feature_dim: int,
        out_dim: int,
        prompt_dim: int,
        prompt_len: int,
        prompt_size: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
        top_k: int | None = None,
    ) -> None:
        super().__init__()
        self.generator = PromptGenerator(prompt_dim, prompt_len, prompt_size, feature_dim, top_k)
        self.fusion = PromptFusion(
            feature_dim, prompt_dim, out_dim, num_heads, ffn_expansion_factor, bias, layer_norm_type
        )

    def forward(
        self, features: torch.Tensor, forced_prompt: torch.Tensor | int | None = None, routing_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompt, weights = self.generator(features, forced_prompt, routing_grad)
        return self.fusion(features, prompt), weights


class PerPlace(tuple):
    """A keyword argument of ``DecoderPromptPlaces.decode`` with its own value for each place, deepest first
    (latent, level 3, level 2) — e.g. ``forced_prompt=PerPlace((i_latent, i_level3, i_level2))``."""

    def __new__(cls, values):
        values = tuple(values)
        if len(values) != 3:
            raise RestorationInputError(f"PerPlace needs one value per prompt place (3, deepest first), got {len(values)}")
        return super().__new__(cls, values)


class DecoderPromptPlaces(nn.Module):
    """Base of every method's three decoder prompt places, ``latent``, ``level3`` and ``level2``.

    Each place is a module mapping a feature map to ``(feature map, what the method reports)``; ``decode`` runs
    the Restormer decoder with the three places in PromptIR's order, so a method file shows only its own
    place modules. Extra keyword arguments go to every place (e.g. CPL's forced routing, DPPD's assignment);
    a ``PerPlace`` value gives each place its own.
    """

    latent: nn.Module
    level3: nn.Module
    level2: nn.Module

    def decode(
        self,
        unet: nn.Module,
        features: EncoderFeatures,
        skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        **place_kwargs,
    ) -> tuple[torch.Tensor, tuple]:
        """Latent place -> decoder level 3 -> level-3 place -> decoder level 2 -> level-2 place -> decoder level 1.

        ``skips`` (levels 1-3) default to the encoder features (PIP passes its prompted skips). Returns the
        output of decoder level 1 (with refinement) and what the places reported, deepest first.
        """
        decoded2, reports = self.decode_prompted_levels(unet, features, skips, **place_kwargs)
        skip1 = skips[0] if skips is not None else features.level1
        return unet.decode_level1(decoded2, skip1), reports

    def decode_prompted_levels(
        self,
        unet: nn.Module,
        features: EncoderFeatures,
        skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        **place_kwargs,
    ) -> tuple[torch.Tensor, tuple]:
        """``decode`` up to and including the level-2 place, without decoder level 1 and the refinement (the
        full-resolution stages): enough to read what the places report, e.g. DPPD's degradation estimate."""
        _, skip2, skip3 = skips if skips is not None else (features.level1, features.level2, features.level3)

        def kwargs_of(place: int) -> dict:
            return {k: v[place] if isinstance(v, PerPlace) else v for k, v in place_kwargs.items()}

        latent, latent_info = self.latent(features.latent, **kwargs_of(0))
        decoded3, level3_info = self.level3(unet.decode_level3(latent, skip3), **kwargs_of(1))
        decoded2, level2_info = self.level2(unet.decode_level2(decoded3, skip2), **kwargs_of(2))
        return decoded2, (latent_info, level3_info, level2_info)


class DecoderPrompts(DecoderPromptPlaces):
    """The three PromptIR prompt places: on the latent (before the first upsampling), after decoder
    level 3 and after decoder level 2.

    Widths for base width ``dim``: the latent place maps 8 dim -> ``latent_out_dim`` (4 dim in PromptIR,
    whose first upsampling therefore runs at 4 dim), level 3 keeps 4 dim, level 2 keeps 2 dim.
    ``prompt_dims``/``prompt_sizes`` are listed from the shallowest place (level 2) to the deepest (latent),
    as the official ``prompt1``/``prompt2``/``prompt3``.
    """

    def __init__(
        self,
        dim: int,
        latent_out_dim: int,
        prompt_dims: list[int],
        prompt_sizes: list[int],
        prompt_len: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
        top_k: int | None = None,
    ) -> None:
        super().__init__()
        shared = dict(
            prompt_len=prompt_len,
            num_heads=num_heads,
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            layer_norm_type=layer_norm_type,
            top_k=top_k,
        )
        self.latent = DecoderPrompt(dim * 8, latent_out_dim, prompt_dims[2], prompt_size=prompt_sizes[2], **shared)
        self.level3 = DecoderPrompt(dim * 4, dim * 4, prompt_dims[1], prompt_size=prompt_sizes[1], **shared)
        self.level2 = DecoderPrompt(dim * 2, dim * 2, prompt_dims[0], prompt_size=prompt_sizes[0], **shared)

    @classmethod
    def from_promptir_config(cls, config: Any, top_k: int | None = None) -> "DecoderPrompts":
        """The places of a PromptIR-style config (``dim``, ``prompt_dims``, ``prompt_sizes``, ``prompt_len``,
        ``fusion_heads``, block settings), mapping the latent 8 dim -> 4 dim as PromptIR; ``top_k`` routes."""
        return cls(
            dim=config.dim,
            latent_out_dim=config.dim * 4,
            prompt_dims=config.prompt_dims,
            prompt_sizes=config.prompt_sizes,
            prompt_len=config.prompt_len,
            num_heads=config.fusion_heads,
            ffn_expansion_factor=config.ffn_expansion_factor,
            bias=config.bias,
            layer_norm_type=config.layer_norm_type,
            top_k=top_k,
        )
