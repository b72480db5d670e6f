"""Restormer as a transformers model: the plain 4-level encoder/decoder, no prompts.

Official code: swz30/Restormer, basicsr/models/archs/restormer_arch.py (class ``Restormer``).
"""

from __future__ import annotations

import torch

from .configuration_restormer import RestormerConfig
from .modeling_outputs import ImageRestorationOutput
from .modeling_utils import PromptRestorationPreTrainedModel
from .restoration_unet import RestorationUNet


class RestormerForImageRestoration(PromptRestorationPreTrainedModel):
    """Restormer: MDTA/GDFN Transformer U-Net with a global residual. Trained with an L1 loss."""

    config_class = RestormerConfig

    def __init__(self, config: RestormerConfig) -> None:
        super().__init__(config)
        self.unet = RestorationUNet.from_config(
            config, decoder_latent_channels=config.dim * 8, dual_pixel_task=config.dual_pixel_task
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ImageRestorationOutput | tuple:
        """Restore ``pixel_values`` (B, C, H, W) in [0, 1]; any H x W (padded internally, cropped back).

        ``labels``: clean images; when given, ``loss`` is the mean L1 distance (the paper's loss).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.check_pixel_values(pixel_values)
        height, width = pixel_values.shape[-2:]
        padded = self.pad_to_multiple(pixel_values)

        features = self.unet.encode(padded)
        decoded3 = self.unet.decode_level3(features.latent, features.level3)
        decoded2 = self.unet.decode_level2(decoded3, features.level2)
        decoded1 = self.unet.decode_level1(decoded2, features.level1)
        restored = self.crop_to(self.unet.reconstruct(decoded1, padded, features), height, width)

        loss = loss_terms = None
        if labels is not None:
            loss, loss_terms = self.l1_loss(restored, labels, pixel_values)
        output = ImageRestorationOutput(loss=loss, reconstruction=restored, loss_terms=loss_terms)
        return output if return_dict else output.to_tuple()


__all__ = ["RestormerForImageRestoration"]
