"""Configuration fields of PromptIR-style decoder prompts, shared by the methods built on them (PromptIR, CPL)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import RestorationBackboneConfig, check_positive_int


@strict(accept_kwargs=True)
class DecoderPromptConfig(RestorationBackboneConfig):
    r"""
    Backbone arguments plus PromptIR's three decoder prompt places (on the latent, after decoder level 3, after
    decoder level 2). Defaults are the official PromptIR values, which CPL's official code keeps.

    Backbone arguments are documented in [`RestorationBackboneConfig`].

    Args:
        prompt_dims (`list[int]`, defaults to `[64, 128, 320]`): channels of the prompt components at the
            three prompt places, shallowest first: after decoder level 2, after decoder level 3, on the latent
            (official `prompt1`, `prompt2`, `prompt3`).
        prompt_sizes (`list[int]`, defaults to `[64, 32, 16]`): spatial side of the prompt components, same
            order.
        prompt_len (`int`, defaults to 5): prompt components per place (paper: 5).
        prompt_fusion_heads (`int`, *optional*): attention heads of the fusion Transformer blocks. `None`
            means `heads[2]` at every place, which is what the official code does (it passes `heads[2]` to all
            three `noise_level` blocks).
    """

    prompt_dims: list[int] | tuple[int, ...] = (64, 128, 320)
    prompt_sizes: list[int] | tuple[int, ...] = (64, 32, 16)
    prompt_len: int = 5
    prompt_fusion_heads: int | None = None

    def __post_init__(self, **kwargs):
        self.prompt_dims = list(self.prompt_dims)
        self.prompt_sizes = list(self.prompt_sizes)
        super().__post_init__(**kwargs)

    @property
    def fusion_heads(self) -> int:
        return self.heads[2] if self.prompt_fusion_heads is None else self.prompt_fusion_heads

    def validate_prompts(self):
        if len(self.prompt_dims) != 3 or len(self.prompt_sizes) != 3:
            raise ValueError(
                f"prompt_dims and prompt_sizes must each list 3 values (one per prompt place), got "
                f"{self.prompt_dims} and {self.prompt_sizes}"
            )
        check_positive_int("prompt_len", self.prompt_len)
        for name in ("prompt_dims", "prompt_sizes"):
            for value in getattr(self, name):
                check_positive_int(name, value)
        if self.prompt_fusion_heads is not None:
            check_positive_int("prompt_fusion_heads", self.prompt_fusion_heads)
        feature_dims = [self.dim * 2, self.dim * 4, self.dim * 8]
        for feature_dim, prompt_dim in zip(feature_dims, self.prompt_dims):
            if (feature_dim + prompt_dim) % self.fusion_heads:
                raise ValueError(
                    f"prompt fusion width {feature_dim}+{prompt_dim} is not divisible by {self.fusion_heads} heads"
                )


__all__ = ["DecoderPromptConfig"]
