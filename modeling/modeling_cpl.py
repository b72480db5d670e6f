"""CPL — contrastive prompt learning — as a transformers model ("PromptIR + CPL").

Official code: Aitical/CPLIR, basicsr/archs/cplir_inference_arch.py (class ``SparsePromptIR``, inference only;
its constructor refers to an undefined name and does not run as released). No training code was released.

The network is PromptIR's body and three decoder prompt places with the *sparse prompt module*: each place's
router keeps only its top-k softmax weight(s) (official default k = 1, not renormalised), so one prompt
component is chosen per image and place. The official model has none of PromptIR's never-called modules.

Training adds *contrastive prompt regularisation* (CPR) to the L1 loss this model returns: the restoration with
the routed prompts (anchor) is pulled towards the clean image and pushed away from restorations of the same
input with prompts the router did not choose (negatives), in the feature space of a frozen pretrained CNN. That
network must not become part of the model, so CPR lives on the training side (``training/losses.py``); this
model provides what it needs: ``forced_prompt`` restores with chosen prompt components, and ``prompt_weights``
reports the routing. See [`CPLConfig`] for what follows the paper and code and what is our choice.
"""

from __future__ import annotations

import torch

from .configuration_cpl import CPLConfig
from .decoder_prompts import DecoderPrompts, PerPlace
from .modeling_outputs import ImageRestorationOutput
from .modeling_utils import PromptRestorationPreTrainedModel
from .restoration_unet import RestorationUNet


class CPLForImageRestoration(PromptRestorationPreTrainedModel):
    """PromptIR body + three sparse decoder prompt places. Returns the L1 loss; CPR is added by training."""

    config_class = CPLConfig

    def __init__(self, config: CPLConfig) -> None:
        super().__init__(config)
        # The latent prompt fusion reduces 8 dim to 4 dim, so the first upsampling runs at 4 dim (as PromptIR).
        self.unet = RestorationUNet.from_config(config, decoder_latent_channels=config.dim * 4)
        self.decoder_prompts = DecoderPrompts.from_promptir_config(config, top_k=config.prompt_top_k)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        forced_prompt: torch.Tensor | int | PerPlace | None = None,
        routing_grad: bool = True,
        return_dict: bool | None = None,
    ) -> ImageRestorationOutput | tuple:
        """Restore ``pixel_values`` (B, C, H, W) in [0, 1]; any H x W.

        Args:
            labels: clean images; when given, ``loss`` is the mean L1 distance (the official pixel loss).
            forced_prompt: use this prompt component instead of the routed one: an index, a (B,) tensor of
                indices, or ``PerPlace((latent, level3, level2))`` with one of those per place. The forced
                component gets the weight the router gave its own choice. ``prompt_weights`` reports the
                weights actually used, per place (deepest first).
            routing_grad: ``False`` gives the same restoration with the routing weights detached, so a loss on
                it trains everything but the routers (CPL's regulariser by default, ``contrastive_routing_grad``).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.check_pixel_values(pixel_values)
        height, width = pixel_values.shape[-2:]
        padded = self.pad_to_multiple(pixel_values)

        features = self.unet.encode(padded)
        decoded1, prompt_weights = self.decoder_prompts.decode(
            self.unet, features, forced_prompt=forced_prompt, routing_grad=routing_grad
        )
        restored = self.crop_to(self.unet.reconstruct(decoded1, padded, features), height, width)

        loss = loss_terms = None
        if labels is not None:
            loss, loss_terms = self.l1_loss(restored, labels, pixel_values)
        output = ImageRestorationOutput(
            loss=loss, reconstruction=restored, prompt_weights=prompt_weights, loss_terms=loss_terms
        )
        return output if return_dict else output.to_tuple()


__all__ = ["CPLForImageRestoration"]
