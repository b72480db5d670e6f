"""Configuration of DPPD (Wu et al., "Learning Dynamic Prompts for All-in-One Image Restoration" — degradation
prototype assignment and prompt distribution learning; IEEE TIP 34, 2025; project page Aitical/DPPD).

No official code exists (the project repository holds a README, figures and checkpoint links), so every
choice below that the abstract and the framework figure do not fix is ours, marked [ours], and behind an
option, so the defaults can be set to the paper's once its details are known.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import (
    DEGRADATION_NAMES, RestorationBackboneConfig, check_bool, check_degradation_names, check_finite,
)

PROMPT_CONDITIONING_MODES = ("soft", "hard")


@strict(accept_kwargs=True)
class DPPDConfig(RestorationBackboneConfig):
    r"""
    Configuration of [`DPPDForImageRestoration`]: PromptIR's body with a DPPD prompt module at each of
    PromptIR's three decoder prompt places (on the latent, after decoder level 3, after decoder level 2), as
    the paper's framework figure draws them. One prompt module = degradation prototype assignment (DPA) ->
    prompt distribution learning (PDL) -> CrossFusion (CF) with a residual add.

    Backbone arguments are documented in [`RestorationBackboneConfig`]; the paper's checkpoints are
    "PromptIR + DPPD", so the backbone defaults are PromptIR's (= Restormer's).

    Degradation prototype assignment (DPA):
        degradation_names (`list[str]`, defaults to noise, rain, haze, blur, low-light): one prototype per
            name, in label order; these are the names `degradation_labels` may use. Paper: one prototype per
            degradation type of the setting (3 for the 3-task setting, 5 for the 5-task one).
        embedding_dim (`int`, defaults to 128) [ours]: width of the embedding space in which the pooled
            feature meets the prototypes (pooled feature -> parameter-free layer norm -> Linear -> GELU ->
            Linear -> L2-normalised embedding).
        assignment_temperature (`float`, defaults to 0.1) [ours]: the assignment is
            softmax(cosine(embedding, prototype) / temperature) over the prototypes.
        learnable_prototypes (`bool`, defaults to `True`) [ours]: prototypes are trained. `False` keeps them
            fixed at their (orthogonal) initialisation — one reading of the abstract's "predefined"
            prototypes.
        shared_assignment (`bool`, defaults to `False`) [ours]: `False` gives every prompt module its own
            pooling, embedding and prototypes (the figure draws a DPPD module inside each prompt module);
            `True` assigns the latent feature once and conditions all three places on it.
        prompt_conditioning (`str`, defaults to `"soft"`) [ours]: what conditions the prompt distribution when
            no labels are given. `"soft"`: the assignment probabilities (a mixture of prototypes,
            differentiable); `"hard"`: the one-hot of the nearest prototype (the figure's single assignment; no
            gradient passes through the choice itself, but the embedding and the chosen prototype still condition
            the prompt distribution, so the reconstruction trains them as well as the prototype loss does).

    Prompt distribution learning (PDL):
        prompt_dims (`list[int]`, defaults to `[64, 128, 320]`) [ours: PromptIR's prompt widths]: width of the
            prompt tokens at the three places, shallowest first (after decoder level 2, after decoder level 3,
            on the latent).
        num_prompt_tokens (`int`, defaults to 5) [ours: PromptIR's `prompt_len`]: prompt tokens sampled per
            place (the figure draws a set of prompts).
        prior_std (`float`, defaults to 1.0) [ours]: standard deviation of the prototype-conditioned Gaussian
            prior N(prior token means of the assigned prototype(s), prior_std^2) that the KL term pulls the
            predicted distribution towards.
        log_variance_limit (`float`, defaults to 5.0) [ours]: predicted log-variances are squashed into
            (-limit, limit) with `limit * tanh(x / limit)`, so sampling and the KL stay finite.
        num_inference_samples (`int`, defaults to 1) [ours]: prompts outside training. 1: the mean of the
            distribution. n > 1: the average of n reparameterised samples whose standard-normal draws are
            fixed (a seeded generator per prompt place): every image, every tile of a tiled restore and every
            call gets the same draws, so the output stays deterministic, tiles agree with the whole image as
            with the mean, and an image restores in a batch as alone. Training always draws one sample per
            image from torch's generator.

    CrossFusion (CF):
        cross_fusion_heads (`int`, defaults to 1) [ours]: heads of the cross-attention in which every feature
            position (query) attends to the prompt tokens (keys/values); its width is the place's prompt
            width. Memory is linear in H x W (an H W x num_prompt_tokens map per head).
        fusion_transformer_block (`bool`, defaults to `False`) [ours]: add one Transformer block at the
            feature width after the CrossFusion, as PromptIR's fusion has one (the figure draws none).
        latent_reduction (`bool`, defaults to `True`) [ours]: end the latent prompt module with a 1x1 conv
            8 dim -> 4 dim, so the decoder is PromptIR's (first upsampling at 4 dim). `False` keeps 8 dim and
            Restormer's first upsampling.

    Loss (returned when `labels`, the clean images, are given; weights [ours], see "Loss weights" below):
        prototype_loss_weight (`float`, defaults to 0.1): weight of the cross-entropy between the assignment
            and the degradation labels (only when `degradation_labels` are given), averaged over assignments.
        prototype_separation_weight (`float`, defaults to 0.1): weight of the separation term, the mean over
            prototype pairs of relu(cosine - margin), averaged over the prototype sets.
        prototype_separation_margin (`float`, defaults to 0.0): cosine above which two prototypes are pushed
            apart (0: towards orthogonal).
        kl_loss_weight (`float`, defaults to 0.01): weight of KL(predicted || prior), per element, averaged
            over the places.

    Loss weights. Chosen with `nice python benchmarks/ablate_dppd_loss_weights.py --corpus data/embedded`
    (tiny DPPD: dim 16, one block per level, prompt widths [8, 16, 32], embedding 16; 3-task noise/rain/haze
    synthesized on 32 px crops of the embedded photo corpus; batch 6, 200 AdamW steps at 1e-3 per setting; 36
    held-out crops, input PSNR 18.38 dB). "PSNR" is label-free restoration (the model's own assignment), "with
    labels" gives the true degradation, "assign" is the accuracy of `estimate_degradation`; seed 1 repeats the
    KL settings (`--seed 1 --settings '[[0.1,0.1,0.001],[0.1,0.1,0.01],[0.1,0.1,0.1]]'`).

    | prototype | separation | KL | seed | PSNR (dB) | with labels (dB) | assign | max prototype cosine |
    |---|---|---|---|---|---|---|---|
    | 0 | 0 | 0 | 0 | 18.41 | 23.63 | 0.14 | 0.058 |
    | 0.1 | 0.1 | 0.001 | 0 / 1 | 21.32 / 20.87 | 23.06 / 23.72 | 0.78 / 0.67 | -0.005 / -0.016 |
    | 1 | 0.1 | 0.001 | 0 | 21.20 | 22.54 | 0.72 | -0.003 |
    | 0.1 | 0 | 0.001 | 0 | 21.77 | 22.65 | 0.81 | 0.010 |
    | **0.1** | **0.1** | **0.01** | 0 / 1 | **22.84 / 21.66** | 23.83 / 22.97 | 0.83 / 0.78 | -0.004 / -0.010 |
    | 0.1 | 0.1 | 0.1 | 0 / 1 | 22.64 / 21.81 | 23.80 / 23.67 | 0.83 / 0.81 | -0.005 / -0.010 |

    Reading: without the prototype cross-entropy the label-free assignment is not learned (accuracy 0.14) and
    label-free restoration gains nothing over the input, so the prototype term is what makes DPPD usable without
    labels; 1.0 is no better than 0.1. KL 0.01 and 0.1 tie (seed-to-seed spread is about 1 dB) and both beat
    0.001 on both seeds; 0.01 is the smaller of the two. Separation has no measurable effect in runs this short
    (the orthogonally initialised prototypes barely move); it is kept at 0.1 as a guard against prototype
    collapse (it pulls collapsed prototypes apart, see tests/test_dppd.py). Short CPU runs rank settings only
    roughly; the paper's weights are unknown.

    Memory. Nothing in a prompt module is quadratic in the number of pixels: the CrossFusion map is
    (H W x num_prompt_tokens) per head, and the backbone's attention is over channels.
    """

    model_type = "dppd"

    degradation_names: list[str] | tuple[str, ...] = DEGRADATION_NAMES
    embedding_dim: int = 128
    assignment_temperature: float = 0.1
    learnable_prototypes: bool = True
    shared_assignment: bool = False
    prompt_conditioning: str = "soft"
    prompt_dims: list[int] | tuple[int, ...] = (64, 128, 320)
    num_prompt_tokens: int = 5
    prior_std: float = 1.0
    log_variance_limit: float = 5.0
    num_inference_samples: int = 1
    cross_fusion_heads: int = 1
    fusion_transformer_block: bool = False
    latent_reduction: bool = True
    prototype_loss_weight: float = 0.1
    prototype_separation_weight: float = 0.1
    prototype_separation_margin: float = 0.0
    kl_loss_weight: float = 0.01

    def __post_init__(self, **kwargs):
        self.degradation_names = list(self.degradation_names)
        self.prompt_dims = list(self.prompt_dims)
        super().__post_init__(**kwargs)

    @property
    def num_degradations(self) -> int:
        """Number of degradation prototypes (one per name)."""
        return len(self.degradation_names)

    def validate_dppd(self):
        check_degradation_names(self.degradation_names)
        if len(self.prompt_dims) != 3:
            raise ValueError(f"prompt_dims must list 3 widths (one per prompt place), got {self.prompt_dims}")
        for name in ("embedding_dim", "num_prompt_tokens", "num_inference_samples", "cross_fusion_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for place, prompt_dim in zip(("level 2", "level 3", "latent"), self.prompt_dims):
            if isinstance(prompt_dim, bool) or not isinstance(prompt_dim, int) or prompt_dim < 1:
                raise ValueError(f"prompt_dims must be positive integers, got {self.prompt_dims}")
            if prompt_dim % self.cross_fusion_heads:
                raise ValueError(
                    f"{place} prompt width {prompt_dim} is not divisible by cross_fusion_heads={self.cross_fusion_heads}"
                )
        for name in ("assignment_temperature", "prior_std", "log_variance_limit"):
            check_finite(name, getattr(self, name))
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("prototype_loss_weight", "prototype_separation_weight", "kl_loss_weight"):
            check_finite(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        check_finite("prototype_separation_margin", self.prototype_separation_margin)
        if not -1 <= self.prototype_separation_margin < 1:
            raise ValueError(f"prototype_separation_margin is a cosine in [-1, 1), got {self.prototype_separation_margin}")
        for name in ("learnable_prototypes", "shared_assignment", "fusion_transformer_block", "latent_reduction"):
            check_bool(name, getattr(self, name))
        if self.prompt_conditioning not in PROMPT_CONDITIONING_MODES:
            raise ValueError(
                f"prompt_conditioning must be one of {PROMPT_CONDITIONING_MODES}, got {self.prompt_conditioning!r}"
            )


__all__ = ["DPPDConfig"]
