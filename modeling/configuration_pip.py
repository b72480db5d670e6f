"""Configuration of PIP (Li et al., "Prompt-In-Prompt Learning for Universal Image Restoration",
arXiv 2312.05038; official code the official pip_universal repository)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import (
    DEGRADATION_NAMES, check_bool, check_degradation_names, check_finite, check_positive_int,
)
from .configuration_prompt_regularization import ContrastivePromptRegularizationConfig

#: What the degradation estimator reads (see `degradation_estimator_input`).
DEGRADATION_ESTIMATOR_INPUTS = ("features", "pixels")
#: Per-channel statistics the pixel estimator can pool (see `degradation_estimator_statistics`).
DEGRADATION_ESTIMATOR_STATISTICS = ("mean", "std", "max")


@strict(accept_kwargs=True)
class PIPConfig(ContrastivePromptRegularizationConfig):
    r"""
    Configuration of [`PIPForImageRestoration`]. Defaults are the configuration the official code trains
    (`src/Main_trainer.py`: `PIPNet_Restormer_onskip_inter` with `prompt_interaction_mode='pip_cross_topm'`,
    prompt dims [64, 128, 256]), which has 27,429,510 parameters with `keep_unused_official_modules=True`
    and `use_degradation_estimator=False`. (The official class defaults — 'promptir' interaction mode and
    dims [64, 128, 320] — crash upstream and are not reproduced.)

    Backbone arguments are documented in [`RestorationBackboneConfig`].

    Prompts (one PIP module per encoder skip connection, levels 1-3, listed shallowest first):
        prompt_dims (`list[int]`, defaults to `[64, 128, 256]`): channels of the prompts at levels 1-3.
        prompt_sizes (`list[int]`, defaults to `[64, 32, 16]`): side of the basic restoration prompt.
        num_degradations (`int`, defaults to 5): degradation classes, i.e. degradation-aware prompts per level.
        degradation_names (`list[str]`): names of the classes in label order, used to accept
            `degradation_labels="rain"`. Defaults to noise, rain, haze, blur, low-light (the official 5-task
            label order).
        degradation_prompt_reduction (`str`, defaults to `"mean"`): how the label-weighted degradation prompts
            are combined. The official code takes the *mean* over the classes (so the selected prompt is scaled
            by 1/num_degradations); `"sum"` is the unscaled alternative.
        prompt_interaction_heads (`int`, defaults to 2): heads of the prompt-to-prompt cross-attention block
            (official literal 2).
        prompt_interaction_ffn_expansion_factor (`float`, defaults to 2.66): feed-forward expansion of that
            block (the official code hard-codes 2.66 whatever the backbone uses).
        prompt_interaction_bias (`bool`, defaults to `False`): biases in that block's convolutions (official
            literal False).
        prompt_to_feature_heads (`int`, *optional*): heads of the selective prompt-to-feature attention;
            `None` means `heads[2]` at every level, as the official code.
        topm_fractions (`list[list[int]]`, defaults to `[[1, 2], [2, 3], [3, 4], [4, 5]]`): the top-m masks of
            the selective attention keep `int(c * num / den)` of the `c` channels per head (official values
            from DRSformer); their outputs are mixed with learned weights initialised at `topm_weight_init`.
        topm_weight_init (`float`, defaults to 0.2): initial value of each top-m mixing weight.

    Degradation estimator (ours; the official model needs the true label at test time):
        use_degradation_estimator (`bool`, defaults to `True`): build a light head on the pooled encoder
            features that predicts the degradation class; its softmax weights replace the one-hot weights when
            no `degradation_labels` are given.
        degradation_estimator_input (`str`, defaults to `"features"`): what the estimator looks at.
            `"features"`: the mean-pooled encoder features of the four levels (an MLP head). `"pixels"`: the image
            itself, through a small strided CNN whose maps are pooled by mean and standard deviation (noise,
            rain streaks and blur are high-frequency cues that mean-pooled encoder features blur away). The
            pixel estimator can be trained afterwards on its own (`python -m training.train_estimator`), with
            the restoration weights frozen.
        degradation_estimator_hidden_dim (`int`, defaults to 128): hidden width of that head (for `"pixels"`
            also the width of the CNN's last layers).
        degradation_estimator_statistics (`list[str]`, defaults to `["mean", "std"]`): how the pixel estimator
            pools each channel of each level, in this order: any of `"mean"`, `"std"`, `"max"`. `"max"` sees
            highlights: synthetic under-exposure never leaves a bright pixel, while a naturally dark photo (a
            night sky) keeps its stars, and without it the estimator took dark photos for low-light ones.
        degradation_estimator_window (`int`, *optional*): the crop side the pixel estimator was trained on
            (`training.train_estimator` records it). `restore()` then judges an image on a 4 x 4 grid of windows of
            that size and averages their weights, so statistics such as `"max"` and `"std"` are taken over as
            many pixels as in training. `None`: the whole image (four 512² crops above 1 MP).
        degradation_estimator_detach_features (`bool`, defaults to `True`): stop the estimator's gradient at
            the encoder, so training it never changes the restoration path (which always uses the true label
            when one is given, exactly as the official model).
        degradation_estimator_loss_weight (`float`, defaults to 0.1): weight of its cross-entropy in the loss.

    Loss (returned when `labels` are given; the paper's recipe):
        pixel_loss (`str`, defaults to `"smooth_l1"`): `"smooth_l1"` (official, beta 1) or `"l1"`.
        frequency_loss_weight (`float`, defaults to 0.0): add this weight times the L1 distance between the 2-D
            Fourier transforms (real and imaginary parts) of the restoration and the target, MIMO-UNet's
            frequency loss (weight 0.1 there). Not in PIP's recipe (0 = off); an option for deblurring, whose
            errors sit in the high frequencies that a pixel loss averages away. The transform is orthonormal
            (`norm="ortho"`), so the term does not grow with the patch size as MIMO-UNet's unnormalised one does.
        prompt_regularization_weight (`float`, defaults to 0.002): weight of the prompt angle regulariser
            (official `alpha`).
        prompt_angle_scale (`float`, defaults to 0.01): the regulariser's inner scale (official
            `lambda_orthogonal`): regulariser = scale x sum over levels and class pairs of relu(cos).

    PIP as a plug-in:
        decoder_prompts (`bool`, defaults to `False`): also put PromptIR's three decoder prompts on the body,
            i.e. PIP on the PromptIR backbone. The latent is then reduced by PromptIR's latent prompt fusion
            instead of the 1x1 `latent_projection` of `pip-restormer`.
        decoder_prompt_dims / decoder_prompt_sizes / decoder_prompt_len: PromptIR's values
            ([64, 128, 320], [64, 32, 16], 5), used only with `decoder_prompts=True`.
        decoder_prompt_top_k (`int`, *optional*): make those decoder prompts CPL's sparse prompt module: keep
            only the top-k softmax weights of each router (CPL: 1). `None` keeps all (PromptIR). With it,
            `training_loss="contrastive_prompt_regularization"` adds CPL's contrastive prompt regularisation
            (settings `contrastive_*`, documented in [`ContrastivePromptRegularizationConfig`]) in training.

        keep_unused_official_modules (`bool`, defaults to `False`): build the three 1x1 convolutions the
            official model constructs but never calls (`reduce_noise_channel_1-3`, 112,896 parameters), only to
            load official checkpoints strictly.
    """

    model_type = "pip"

    prompt_dims: list[int] | tuple[int, ...] = (64, 128, 256)
    prompt_sizes: list[int] | tuple[int, ...] = (64, 32, 16)
    num_degradations: int = 5
    degradation_names: list[str] | tuple[str, ...] = DEGRADATION_NAMES
    degradation_prompt_reduction: str = "mean"
    prompt_interaction_heads: int = 2
    prompt_interaction_ffn_expansion_factor: float | int = 2.66
    prompt_interaction_bias: bool = False
    prompt_to_feature_heads: int | None = None
    topm_fractions: list[list[int]] | tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 4), (4, 5))
    topm_weight_init: float = 0.2
    use_degradation_estimator: bool = True
    degradation_estimator_input: str = "features"
    degradation_estimator_hidden_dim: int = 128
    degradation_estimator_statistics: list[str] | tuple[str, ...] = ("mean", "std")
    degradation_estimator_window: int | None = None
    degradation_estimator_detach_features: bool = True
    degradation_estimator_loss_weight: float = 0.1
    pixel_loss: str = "smooth_l1"
    frequency_loss_weight: float = 0.0
    prompt_regularization_weight: float = 0.002
    prompt_angle_scale: float = 0.01
    decoder_prompts: bool = False
    decoder_prompt_dims: list[int] | tuple[int, ...] = (64, 128, 320)
    decoder_prompt_sizes: list[int] | tuple[int, ...] = (64, 32, 16)
    decoder_prompt_len: int = 5
    decoder_prompt_top_k: int | None = None
    keep_unused_official_modules: bool = False

    def __post_init__(self, **kwargs):
        for name in ("prompt_dims", "prompt_sizes", "degradation_names", "decoder_prompt_dims", "decoder_prompt_sizes",
                     "degradation_estimator_statistics"):
            setattr(self, name, list(getattr(self, name)))
        self.topm_fractions = [list(pair) for pair in self.topm_fractions]
        super().__post_init__(**kwargs)

    def sparse_prompt_routing(self) -> tuple[int, int] | None:
        if not self.decoder_prompts or self.decoder_prompt_top_k is None:
            return None
        return self.decoder_prompt_top_k, self.decoder_prompt_len

    @property
    def feature_heads(self) -> int:
        return self.heads[2] if self.prompt_to_feature_heads is None else self.prompt_to_feature_heads

    def validate_pip(self):
        if len(self.prompt_dims) != 3 or len(self.prompt_sizes) != 3:
            raise ValueError(
                f"prompt_dims and prompt_sizes must list 3 values (levels 1-3), got {self.prompt_dims} and "
                f"{self.prompt_sizes}"
            )
        for name in ("topm_weight_init", "prompt_interaction_ffn_expansion_factor", "degradation_estimator_loss_weight",
                     "prompt_regularization_weight", "prompt_angle_scale", "frequency_loss_weight"):
            check_finite(name, getattr(self, name))
        # A negative weight turns its term into one the training maximises (the estimator learning to be wrong).
        for name in ("degradation_estimator_loss_weight", "prompt_regularization_weight", "prompt_angle_scale",
                     "frequency_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.prompt_interaction_ffn_expansion_factor <= 0:
            raise ValueError("prompt_interaction_ffn_expansion_factor must be positive")
        for name in ("prompt_interaction_bias", "use_degradation_estimator", "degradation_estimator_detach_features",
                     "decoder_prompts", "keep_unused_official_modules"):
            check_bool(name, getattr(self, name))
        if self.degradation_estimator_input not in DEGRADATION_ESTIMATOR_INPUTS:
            raise ValueError(
                f"degradation_estimator_input must be one of {DEGRADATION_ESTIMATOR_INPUTS}, got "
                f"{self.degradation_estimator_input!r}"
            )
        statistics = self.degradation_estimator_statistics
        if not statistics or len(set(statistics)) != len(statistics) or not set(statistics) <= set(
            DEGRADATION_ESTIMATOR_STATISTICS
        ):
            raise ValueError(
                f"degradation_estimator_statistics must list distinct values of {DEGRADATION_ESTIMATOR_STATISTICS}, "
                f"got {statistics!r}"
            )
        window = self.degradation_estimator_window
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 8
        ):
            raise ValueError(
                f"degradation_estimator_window must be None or a side of at least 8 pixels, got "
                f"{self.degradation_estimator_window!r}"
            )
        check_positive_int("num_degradations", self.num_degradations)
        if len(self.degradation_names) != self.num_degradations:
            raise ValueError(
                f"degradation_names lists {len(self.degradation_names)} names for {self.num_degradations} "
                "degradation classes"
            )
        check_degradation_names(self.degradation_names)
        for name, values in (("prompt_dims", self.prompt_dims), ("prompt_sizes", self.prompt_sizes)):
            for value in values:
                check_positive_int(name, value)
        check_positive_int("degradation_estimator_hidden_dim", self.degradation_estimator_hidden_dim)
        # The prompt-to-prompt block runs at each level's prompt width; the narrowest needs a hidden channel.
        narrowest = min(self.prompt_dims)
        if int(narrowest * self.prompt_interaction_ffn_expansion_factor) < 1:
            raise ValueError(
                f"prompt_interaction_ffn_expansion_factor {self.prompt_interaction_ffn_expansion_factor} leaves no "
                f"hidden channel at prompt width {narrowest} (hidden width = int(width x factor))"
            )
        if self.degradation_prompt_reduction not in ("mean", "sum"):
            raise ValueError(f"degradation_prompt_reduction must be 'mean' or 'sum', got {self.degradation_prompt_reduction!r}")
        if self.pixel_loss not in ("smooth_l1", "l1"):
            raise ValueError(f"pixel_loss must be 'smooth_l1' or 'l1', got {self.pixel_loss!r}")
        if not self.topm_fractions or any(len(p) != 2 or not 0 < p[0] <= p[1] for p in self.topm_fractions):
            raise ValueError(f"topm_fractions must be [numerator, denominator] pairs in (0, 1], got {self.topm_fractions}")
        for level, prompt_dim in enumerate(self.prompt_dims, start=1):
            for role, num_heads in (("prompt_interaction_heads", self.prompt_interaction_heads),
                                    ("prompt_to_feature_heads", self.feature_heads)):
                check_positive_int(role, num_heads)
                if prompt_dim % num_heads:
                    raise ValueError(f"level {level} prompt width {prompt_dim} is not divisible by {role}={num_heads}")
            per_head = prompt_dim // self.feature_heads
            smallest = min(int(per_head * num / den) for num, den in self.topm_fractions)
            if smallest < 1:
                raise ValueError(
                    f"level {level}: {per_head} prompt channels per head keep no channel in the smallest top-m "
                    "mask; use wider prompts or fewer prompt_to_feature_heads"
                )
        if self.decoder_prompt_top_k is not None:
            if not self.decoder_prompts:
                raise ValueError("decoder_prompt_top_k needs decoder_prompts=True")
            check_positive_int("decoder_prompt_top_k", self.decoder_prompt_top_k)
            if not 1 <= self.decoder_prompt_top_k <= self.decoder_prompt_len:
                raise ValueError(
                    f"decoder_prompt_top_k must be in [1, decoder_prompt_len={self.decoder_prompt_len}], got "
                    f"{self.decoder_prompt_top_k}"
                )
        if self.decoder_prompts:
            if len(self.decoder_prompt_dims) != 3 or len(self.decoder_prompt_sizes) != 3:
                raise ValueError("decoder_prompt_dims and decoder_prompt_sizes must list 3 values")
            check_positive_int("decoder_prompt_len", self.decoder_prompt_len)
            for name in ("decoder_prompt_dims", "decoder_prompt_sizes"):
                for value in getattr(self, name):
                    check_positive_int(name, value)
            for feature_dim, prompt_dim in zip((self.dim * 2, self.dim * 4, self.dim * 8), self.decoder_prompt_dims):
                if (feature_dim + prompt_dim) % self.heads[2]:
                    raise ValueError(f"decoder prompt fusion width {feature_dim}+{prompt_dim} is not divisible by heads[2]")


__all__ = ["PIPConfig"]
