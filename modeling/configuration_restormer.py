"""Configuration of Restormer (Zamir et al., "Restormer: Efficient Transformer for High-Resolution Image
Restoration", CVPR 2022)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import RestorationBackboneConfig, check_bool


@strict(accept_kwargs=True)
class RestormerConfig(RestorationBackboneConfig):
    r"""
    Configuration of [`RestormerForImageRestoration`]. Defaults reproduce the official architecture
    (26,126,644 parameters with WithBias LayerNorm, 26,111,668 with BiasFree).

    Backbone arguments (`in_channels`, `out_channels`, `dim`, `num_blocks`, `num_refinement_blocks`, `heads`,
    `ffn_expansion_factor`, `bias`, `layer_norm_type`, `pad_mode`) are documented in
    [`RestorationBackboneConfig`].

    Args:
        dual_pixel_task (`bool`, defaults to `False`): the dual-pixel defocus-deblurring variant: reads 6
            channels (set `in_channels=6`), adds a 1x1 skip from the patch embedding before the output
            convolution and drops the global image residual (official `dual_pixel_task`).

    Example:

    ```python
    >>> from modeling import RestormerConfig, RestormerForImageRestoration
    >>> model = RestormerForImageRestoration(RestormerConfig(layer_norm_type="BiasFree"))  # denoising setting
    ```
    """

    model_type = "restormer"

    dual_pixel_task: bool = False

    def validate_dual_pixel(self):
        check_bool("dual_pixel_task", self.dual_pixel_task)  # "false" from a hand-edited JSON would be truthy
        if self.dual_pixel_task and self.in_channels != 6:
            raise ValueError(f"dual_pixel_task=True reads two RGB views: set in_channels=6 (got {self.in_channels})")


__all__ = ["RestormerConfig"]
