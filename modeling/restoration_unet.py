"""The 4-level Restormer encoder/decoder body that every method in this package is built on.

The body is split into stages so that a method's forward reads top to bottom and plugs its prompt
modules in between them:

    features = unet.encode(pixel_values)          # skip features of levels 1-3 and the latent (H/8)
    latent   = <method: decoder prompt at the latent>          (PromptIR, CPL, DPPD)
    skip3    = <method: prompt on the level-3 skip connection> (PIP)
    decoded3 = unet.decode_level3(latent, skip3)
    decoded3 = <method: decoder prompt after level 3>          (PromptIR, CPL, DPPD)
    decoded2 = unet.decode_level2(decoded3, skip2)
    decoded2 = <method: decoder prompt after level 2>          (PromptIR, CPL, DPPD)
    decoded1 = unet.decode_level1(decoded2, skip1)
    restored = unet.reconstruct(decoded1, pixel_values, features)

Widths, for base width ``dim`` (48 officially): level 1 = dim, level 2 = 2 dim, level 3 = 4 dim, latent =
8 dim; decoder level 1 and the refinement stage run at 2 dim (the official code does not reduce after the
last concatenation). ``decoder_latent_channels`` is the width entering the first upsampling: 8 dim in
Restormer, 4 dim in PromptIR, PIP and CPL, whose decoder prompt (or a 1x1 ``latent_projection``) reduces the
latent first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .restormer_blocks import Downsample, OverlapPatchEmbed, Upsample, pointwise_conv, spatial_conv, transformer_stage


@dataclass
class EncoderFeatures:
    """What the encoder hands to the decoder."""

    embedding: torch.Tensor  # patch embedding (dim, H), needed by the dual-pixel output skip
    level1: torch.Tensor  # (dim, H)
    level2: torch.Tensor  # (2 dim, H/2)
    level3: torch.Tensor  # (4 dim, H/4)
    latent: torch.Tensor  # (8 dim, H/8)


class RestorationUNet(nn.Module):
    """Restormer's encoder/decoder, with the PromptIR-family width options.

    Args:
        in_channels, out_channels: image channels (3; Restormer's dual-pixel task reads 6).
        dim: base width. num_blocks: blocks at encoder levels 1-3 and the latent; the decoder reuses
            levels 1-3. num_refinement_blocks: blocks after decoder level 1. heads: attention heads per level.
        ffn_expansion_factor, bias, layer_norm_type: block settings (see ``restormer_blocks``).
        decoder_latent_channels: width entering ``up4_3`` (8 dim for Restormer, 4 dim for PromptIR-style).
        latent_projection: add a 1x1 conv (official name ``chnl_reduce3``) from 8 dim to
            ``decoder_latent_channels`` — PIP's backbone has it; PromptIR reduces inside its prompt fusion.
        dual_pixel_task: Restormer's dual-pixel defocus variant: output = conv(features) + 1x1(embedding)
            instead of the global image residual.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dim: int,
        num_blocks: list[int],
        num_refinement_blocks: int,
        heads: list[int],
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
        decoder_latent_channels: int,
        latent_projection: bool = False,
        dual_pixel_task: bool = False,
    ) -> None:
        super().__init__()
        block = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, layer_norm_type=layer_norm_type)
        width1, width2, width3, width4 = dim, dim * 2, dim * 4, dim * 8

        self.patch_embed = OverlapPatchEmbed(in_channels, dim)
        self.encoder_level1 = transformer_stage(width1, num_blocks[0], heads[0], **block)
        self.down1_2 = Downsample(width1)
        self.encoder_level2 = transformer_stage(width2, num_blocks[1], heads[1], **block)
        self.down2_3 = Downsample(width2)
        self.encoder_level3 = transformer_stage(width3, num_blocks[2], heads[2], **block)
        self.down3_4 = Downsample(width3)
        self.latent = transformer_stage(width4, num_blocks[3], heads[3], **block)

        self.latent_projection = (
            pointwise_conv(width4, decoder_latent_channels, bias) if latent_projection else None
        )
        self.up4_3 = Upsample(decoder_latent_channels)
        self.reduce_chan_level3 = pointwise_conv(decoder_latent_channels // 2 + width3, width3, bias)
        self.decoder_level3 = transformer_stage(width3, num_blocks[2], heads[2], **block)
        self.up3_2 = Upsample(width3)
        self.reduce_chan_level2 = pointwise_conv(width3, width2, bias)
        self.decoder_level2 = transformer_stage(width2, num_blocks[1], heads[1], **block)
        self.up2_1 = Upsample(width2)
        # No 1x1 reduction after the last concatenation: decoder level 1 runs at 2 dim (official design).
        self.decoder_level1 = transformer_stage(width2, num_blocks[0], heads[0], **block)
        self.refinement = transformer_stage(width2, num_refinement_blocks, heads[0], **block)

        # Only the dual-pixel variant has this 1x1 path from the embedding (None: the output conv alone).
        self.skip_conv = pointwise_conv(dim, width2, bias) if dual_pixel_task else None
        self.output = spatial_conv(width2, out_channels, bias)

    @classmethod
    def from_config(cls, config, decoder_latent_channels: int, **options) -> "RestorationUNet":
        """Build the body from a ``RestorationBackboneConfig``; ``options``: latent_projection, dual_pixel_task."""
        return cls(
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            dim=config.dim,
            num_blocks=config.num_blocks,
            num_refinement_blocks=config.num_refinement_blocks,
            heads=config.heads,
            ffn_expansion_factor=config.ffn_expansion_factor,
            bias=config.bias,
            layer_norm_type=config.layer_norm_type,
            decoder_latent_channels=decoder_latent_channels,
            **options,
        )

    def encode(self, pixel_values: torch.Tensor) -> EncoderFeatures:
        embedding = self.patch_embed(pixel_values)
        level1 = self.encoder_level1(embedding)
        level2 = self.encoder_level2(self.down1_2(level1))
        level3 = self.encoder_level3(self.down2_3(level2))
        latent = self.latent(self.down3_4(level3))
        return EncoderFeatures(embedding, level1, level2, level3, latent)

    def project_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Apply the optional 1x1 latent reduction (identity when the body has none)."""
        return latent if self.latent_projection is None else self.latent_projection(latent)

    def decode_level3(self, latent: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([self.up4_3(latent), skip], dim=1)
        return self.decoder_level3(self.reduce_chan_level3(hidden))

    def decode_level2(self, decoded3: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([self.up3_2(decoded3), skip], dim=1)
        return self.decoder_level2(self.reduce_chan_level2(hidden))

    def decode_level1(self, decoded2: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([self.up2_1(decoded2), skip], dim=1)
        return self.refinement(self.decoder_level1(hidden))

    def reconstruct(
        self, decoded1: torch.Tensor, pixel_values: torch.Tensor, features: EncoderFeatures
    ) -> torch.Tensor:
        """Output convolution plus the global residual (or the dual-pixel embedding skip)."""
        if self.skip_conv is not None:
            return self.output(decoded1 + self.skip_conv(features.embedding))
        return self.output(decoded1) + pixel_values
