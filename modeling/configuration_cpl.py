"""Configuration of CPL (Wu et al., "Beyond Degradation Redundancy: Contrastive Prompt Learning for All-in-One
Image Restoration", arXiv 2504.09973; official code: Aitical/CPLIR, inference architecture only)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import check_positive_int
from .configuration_decoder_prompts import DecoderPromptConfig
from .configuration_prompt_regularization import ContrastivePromptRegularizationConfig


@strict(accept_kwargs=True)
class CPLConfig(DecoderPromptConfig, ContrastivePromptRegularizationConfig):
    r"""
    Configuration of [`CPLForImageRestoration`] ("PromptIR + CPL"). Defaults reproduce the official
    `SparsePromptIR(decoder=True)` (35,376,967 parameters): PromptIR's body and prompt places with the sparse
    prompt module (top-1 routing over 5 prompts, no renormalisation).

    Backbone arguments are documented in [`RestorationBackboneConfig`], the prompt places (`prompt_dims`,
    `prompt_sizes`, `prompt_len`, `prompt_fusion_heads`) in [`DecoderPromptConfig`], and the contrastive prompt
    regularisation (`contrastive_*`) in [`ContrastivePromptRegularizationConfig`].

    Args:
        prompt_top_k (`int`, defaults to 1): the sparse prompt module keeps the `prompt_top_k` largest softmax
            weights of each place's router and zeroes the rest, without renormalising (official `num_expert`,
            default 1; the kept weight is its softmax value). `None` keeps all weights (PromptIR).
        training_loss (`str`, defaults to `"contrastive_prompt_regularization"`): what `train.py` adds to the
            model's own L1 loss (CPL's CPR); `None` trains with L1 only, as the official config's `pixel_opt`.
        pad_multiple (`int`, defaults to 16): inputs are padded (bottom/right, `pad_mode`) to a multiple of this
            and cropped back, as CPL's official test script pads (`SwinIRModel.test`: reflect to its `window_size`
            option, 16 when the test config names none, as the released `Test_CPLIR_WeatherBench.yml`), so the
            converted official weights restore sizes that are not multiples of 16 as the official script does: the
            routers and channel attention pool over the padded image, so other padding changes the output. A
            multiple of 8 (the three downsamplings); 8 pads as the other models here.

    What follows the paper and code, and what is ours:
        - Official code: architecture, widths, parameter names (via the converter), top-k routing without
          renormalisation, the L1 pixel loss.
        - Paper (figure and text; no code released): CPR's anchor (routed prompts), positive (clean image),
          negatives (the same input restored with the prompts the router did not choose, at the same prompt
          places), distances in a frozen pretrained CNN's feature space (VGG19).
        - Ours: the ratio form and its weights (AECR-Net's), the InfoNCE option, lambda = 0.1, the weight a
          forced prompt gets (the router's weight for its own choice, so a negative differs from the anchor
          only in *which* prompt is used), detached negatives, random negatives when fewer than all are used.
        - Padding: the official test script's (`pad_multiple`, 16), not the other models' 8. The official script's
          reflect padding fails on a side not longer than its pad; here such an image is replicate-padded
          (`pad_mode`), as for every model here.
    """

    model_type = "cpl"

    prompt_top_k: int | None = 1
    training_loss: str | None = "contrastive_prompt_regularization"
    pad_multiple: int = 16

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this: `pad_multiple` (the official test script's 16)."""
        return self.pad_multiple

    def validate_pad_multiple(self):
        check_positive_int("pad_multiple", self.pad_multiple)
        if self.pad_multiple % 8:
            raise ValueError(f"pad_multiple must be a multiple of 8 (three 2x downsamplings), got {self.pad_multiple}")

    def sparse_prompt_routing(self) -> tuple[int, int] | None:
        return None if self.prompt_top_k is None else (self.prompt_top_k, self.prompt_len)

    def validate_sparse_prompts(self):
        if self.prompt_top_k is not None:
            check_positive_int("prompt_top_k", self.prompt_top_k)
        if self.prompt_top_k is not None and not 1 <= self.prompt_top_k <= self.prompt_len:
            raise ValueError(f"prompt_top_k must be in [1, prompt_len={self.prompt_len}] or None, got {self.prompt_top_k}")


__all__ = ["CPLConfig"]
