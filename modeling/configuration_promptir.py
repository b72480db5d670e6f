"""Configuration of PromptIR (Potlapalli et al., "PromptIR: Prompting for All-in-One Blind Image
Restoration", NeurIPS 2023)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import check_bool
from .configuration_decoder_prompts import DecoderPromptConfig


@strict(accept_kwargs=True)
class PromptIRConfig(DecoderPromptConfig):
    r"""
    Configuration of [`PromptIRForImageRestoration`]. Defaults reproduce the official `PromptIR(decoder=True)`
    (35,376,967 parameters; 35,592,263 with `keep_unused_official_modules=True`).

    Backbone arguments are documented in [`RestorationBackboneConfig`]; the prompt arguments (`prompt_dims`,
    `prompt_sizes`, `prompt_len`, `prompt_fusion_heads`) in [`DecoderPromptConfig`].

    Args:
        keep_unused_official_modules (`bool`, defaults to `False`): also build the six 1x1 convolutions that the
            official model constructs but never calls (`chnl_reduce1-3`, `reduce_noise_channel_1-3`,
            215,296 parameters). Only useful to load an official checkpoint strictly; they never run.
    """

    model_type = "promptir"

    keep_unused_official_modules: bool = False

    def validate_unused_official_modules(self):
        check_bool("keep_unused_official_modules", self.keep_unused_official_modules)  # "false" would be truthy


__all__ = ["PromptIRConfig"]
