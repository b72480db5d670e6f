"""PromptIR as a transformers model: the Restormer body with prompts on the decoder side.

Official code: va1shn9v/PromptIR, net/model.py (class ``PromptIR`` with ``decoder=True``, the setting all
official training uses).

Differences from Restormer, all reproduced: the latent (8 dim) is fused with its prompt and reduced to 4 dim
*before* the first upsampling, so ``up4_3`` runs at 4 dim; decoder levels 3 and 2 are each followed by a
prompt place that keeps their width.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_promptir import PromptIRConfig
from .decoder_prompts import DecoderPrompts
from .modeling_outputs import ImageRestorationOutput
from .modeling_utils import PromptRestorationPreTrainedModel
from .restoration_unet import RestorationUNet
from .restormer_blocks import pointwise_conv

# The official model builds this third unused 1x1 conv with a literal width of 256 prompt channels.
_UNUSED_OFFICIAL_PROMPT_WIDTH = 256


def unused_official_modules(config: PromptIRConfig) -> nn.ModuleDict:
    """The six 1x1 convolutions the official PromptIR constructs but never calls (kept for strict loading)."""
    dim, prompt_dims = config.dim, config.prompt_dims
    convs = {
        "chnl_reduce1": (prompt_dims[0], prompt_dims[0]),
        "chnl_reduce2": (prompt_dims[1], prompt_dims[1]),
        "chnl_reduce3": (prompt_dims[2], _UNUSED_OFFICIAL_PROMPT_WIDTH),
        "reduce_noise_channel_1": (dim + prompt_dims[0], dim),
        "reduce_noise_channel_2": (dim * 2 + prompt_dims[1], dim * 2),
        "reduce_noise_channel_3": (dim * 4 + _UNUSED_OFFICIAL_PROMPT_WIDTH, dim * 4),
    }
    return nn.ModuleDict(
        {name: pointwise_conv(cin, cout, config.bias) for name, (cin, cout) in convs.items()}
    )


class PromptIRForImageRestoration(PromptRestorationPreTrainedModel):
    """PromptIR: Restormer body + three decoder prompt places. Trained with an L1 loss."""

    config_class = PromptIRConfig

    def __init__(self, config: PromptIRConfig) -> None:
        super().__init__(config)
        # The latent prompt fusion reduces 8 dim to 4 dim, so the first upsampling runs at 4 dim.
        self.unet = RestorationUNet.from_config(config, decoder_latent_channels=config.dim * 4)
        self.decoder_prompts = DecoderPrompts.from_promptir_config(config)
        self.unused_official_modules = unused_official_modules(config) if config.keep_unused_official_modules else None
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ImageRestorationOutput | tuple:
        """Restore ``pixel_values`` (B, C, H, W) in [0, 1]; any H x W. ``labels`` (clean images) give the L1 loss."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.check_pixel_values(pixel_values)
        height, width = pixel_values.shape[-2:]
        padded = self.pad_to_multiple(pixel_values)

        features = self.unet.encode(padded)
        decoded1, prompt_weights = self.decoder_prompts.decode(self.unet, features)
        restored = self.crop_to(self.unet.reconstruct(decoded1, padded, features), height, width)

        loss = loss_terms = None
        if labels is not None:
            loss, loss_terms = self.l1_loss(restored, labels, pixel_values)
        output = ImageRestorationOutput(
            loss=loss, reconstruction=restored, prompt_weights=prompt_weights, loss_terms=loss_terms
        )
        return output if return_dict else output.to_tuple()


__all__ = ["PromptIRForImageRestoration"]
