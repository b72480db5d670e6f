"""PIP — Prompt-In-Prompt learning — as a transformers model.

Official code: the official pip_universal repository, src/net/PIP_Net.py (``PIPNet_Restormer_onskip_inter``),
src/net/PIP.py (``PromptInPrompt``, ``PromptToFeature``), src/net/PIP_utils.py (blocks).

PIP modulates the encoder skip connections of a Restormer/PromptIR-style U-Net. At each of levels 1-3:

1. **degradation-aware prompt**: one learned vector per degradation class, combined with the class
   weights (the true label, one-hot; or a mixture of two labels; or our estimator's soft weights);
2. **basic restoration prompt**: one learned (C, S, S) map shared by all degradations;
3. **prompt-to-prompt interaction**: the basic prompt attends (channel cross-attention) to the
   degradation-aware prompt modulated by the resized skip feature -> a universal restoration prompt;
4. **selective prompt-to-feature interaction**: the skip feature attends to that prompt through top-m
   masked channel attention (four masks mixed by learned weights) and a dual-gate feed-forward network.

The modulated skip feature then enters the decoder in place of the plain one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pip import PIPConfig
from .decoder_prompts import DecoderPrompts, PerPlace
from .modeling_outputs import ImageRestorationOutput
from .degradation_labels import hard_weights
from .errors import RestorationInputError
from .modeling_utils import PromptRestorationPreTrainedModel
from .restoration_unet import EncoderFeatures, RestorationUNet
from .restormer_blocks import (
    ChannelLayerNorm,
    GatedDconvFeedForward,
    channel_attention,
    channels_innermost,
    depthwise_conv,
    fp32_in_cpu_inference,
    head_temperature,
    merge_heads,
    pointwise_conv,
    spatial_conv,
    split_heads,
)
from .tile_context import channel_attention_logits, resize_from_prompt, resize_to_prompt, spatial_mean


def frequency_l1_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the orthonormal 2-D FFTs (real and imaginary parts) over the last two axes.

    The real FFT keeps the non-redundant half of the spectrum (the other half is its complex conjugate).
    """
    # FFTs in fp32: cuFFT/pocketfft take bf16 only for power-of-two sizes, and the sums need the range.
    difference = torch.fft.rfft2(restored.float() - target.float(), norm="ortho")
    return torch.view_as_real(difference).abs().mean()


def align_channels(features: torch.Tensor, channels: int) -> torch.Tensor:
    """Zero-pad (or truncate) the channel axis to ``channels``, as the official code aligns feature and prompt."""
    current = features.shape[1]
    if current > channels:
        return features[:, :channels]
    if current < channels:
        padding = features.new_zeros(features.shape[0], channels - current, *features.shape[2:])
        return torch.cat([features, padding], dim=1)
    return features


class PromptCrossAttention(nn.Module):
    """Channel ("transposed") cross-attention: queries from one map, keys/values from another."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = head_temperature(num_heads)
        self.q = pointwise_conv(dim, dim, bias)
        self.q_dwconv = depthwise_conv(dim, bias)
        self.kv = pointwise_conv(dim, 2 * dim, bias)  # key and value side by side
        self.kv_dwconv = depthwise_conv(2 * dim, bias)
        self.project_out = pointwise_conv(dim, dim, bias)

    def init_own_parameters(self) -> None:
        nn.init.ones_(self.temperature)

    def forward(self, query_map: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        query = self.q_dwconv(self.q(query_map))
        key, value = self.kv_dwconv(self.kv(context)).chunk(2, dim=1)
        # PIP uses this block between prompts (prompt-sized maps), whose statistics are no image's.
        return self.project_out(
            channel_attention(query, key, value, self.num_heads, self.temperature, spans_image=False)
        )


class PromptToPromptInteraction(nn.Module):
    """The basic restoration prompt (query) attends to the degradation-aware prompt (context); official ``LGM``."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        # The official block hard-codes the WithBias LayerNorm whatever the backbone uses.
        self.norm_query = ChannelLayerNorm(dim, "WithBias")
        self.norm_context = ChannelLayerNorm(dim, "WithBias")
        self.attn = PromptCrossAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, "WithBias")
        self.ffn = GatedDconvFeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        hidden = query + self.attn(self.norm_query(query), self.norm_context(context))
        return hidden + self.ffn(self.norm2(hidden))


class PromptInPrompt(nn.Module):
    """Degradation-aware prompt + basic restoration prompt + their interaction -> a prompt for one skip level."""

    def __init__(
        self,
        prompt_dim: int,
        prompt_size: int,
        num_degradations: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        reduction: str,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.prompt_size = prompt_size
        self.degradation_prompts = nn.Parameter(torch.empty(num_degradations, prompt_dim))
        self.basic_restoration_prompt = nn.Parameter(torch.empty(prompt_dim, prompt_size, prompt_size))
        self.prompt_interaction = PromptToPromptInteraction(prompt_dim, num_heads, ffn_expansion_factor, bias)
        self.output_conv = spatial_conv(prompt_dim, prompt_dim, bias=False)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        # Standard normal, as the official torch.randn initialisation.
        nn.init.normal_(self.degradation_prompts)
        nn.init.normal_(self.basic_restoration_prompt)

    def degradation_aware_prompt(self, degradation_weights: torch.Tensor) -> torch.Tensor:
        """(B, num_degradations) class weights -> (B, prompt_dim) prompt vector."""
        prompt = degradation_weights.to(self.degradation_prompts.dtype) @ self.degradation_prompts
        if self.reduction == "mean":
            # Official: mean over the classes of the weighted prompts, i.e. the selected prompt / num classes.
            prompt = prompt / self.degradation_prompts.shape[0]
        return prompt

    def forward(self, skip: torch.Tensor, degradation_weights: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = skip.shape
        prompt_dim = self.degradation_prompts.shape[1]
        degradation_prompt = self.degradation_aware_prompt(degradation_weights)[:, :, None, None]
        feature = resize_to_prompt(skip, (self.prompt_size, self.prompt_size))
        semantic_prompt = degradation_prompt * align_channels(feature, prompt_dim)
        basic = self.basic_restoration_prompt.unsqueeze(0).expand(batch, -1, -1, -1)
        universal_prompt = self.prompt_interaction(basic, semantic_prompt)
        universal_prompt = resize_from_prompt(universal_prompt, (height, width))
        return self.output_conv(universal_prompt)

    def angle_regularization(self) -> torch.Tensor:
        """Sum over class pairs of relu(cos(prompt_i, prompt_j)): pushes degradation prompts >= 90 degrees apart."""
        normalized = F.normalize(self.degradation_prompts, dim=1)
        cosine = normalized @ normalized.T
        pairs = torch.triu_indices(cosine.shape[0], cosine.shape[0], offset=1, device=cosine.device)
        return F.relu(cosine[pairs[0], pairs[1]]).sum()


class TopMCrossAttention(PromptCrossAttention):
    """Selective channel cross-attention: several top-m masks of the attention map, mixed by learned weights.

    For ``c`` channels per head and each fraction num/den, only the ``int(c * num / den)`` largest entries of
    each attention row survive the softmax (official ``Topm_CrossAttention_Restormer``, after DRSformer).
    Same projections as ``PromptCrossAttention``; only the attention itself differs.
    """

    def __init__(
        self, dim: int, num_heads: int, bias: bool, fractions: list[list[int]], weight_init: float
    ) -> None:
        super().__init__(dim, num_heads, bias)
        self.fractions = [tuple(pair) for pair in fractions]
        self.weight_init = weight_init
        self.branch_weights = nn.Parameter(torch.full((len(self.fractions),), float(weight_init)))

    def init_own_parameters(self) -> None:
        nn.init.ones_(self.temperature)
        nn.init.constant_(self.branch_weights, self.weight_init)

    def attention_logits(self, feature: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 channel-attention logits (B, heads, c, c) and the values (B, heads, c, HW).

        The top-m masks are a discrete choice from these logits; under autocast, bf16 logits select other
        channels than fp32 ones. So the projections run outside autocast in the weights' precision (fp32 for an
        fp32 model under autocast) and the logits in fp32.
        """
        weight_dtype = self.q.weight.dtype
        with torch.autocast(device_type=feature.device.type, enabled=False):
            query = split_heads(self.q_dwconv(self.q(feature.to(weight_dtype))), self.num_heads)
            key, value = self.kv_dwconv(self.kv(prompt.to(weight_dtype))).chunk(2, dim=1)
            key, value = split_heads(key, self.num_heads), split_heads(value, self.num_heads)
            return channel_attention_logits(query.float(), key.float(), self.temperature.float()), value

    def kept_counts(self, per_head: int) -> list[int]:
        return [int(per_head * numerator / denominator) for numerator, denominator in self.fractions]

    def forward(self, feature: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        height, width = feature.shape[-2:]
        attention, value = self.attention_logits(feature, prompt)
        with torch.autocast(device_type=feature.device.type, enabled=False):
            probabilities = 0
            for keep, weight in zip(self.kept_counts(attention.shape[-1]), self.branch_weights):
                kept = torch.topk(attention, k=keep, dim=-1).indices
                mask = torch.zeros_like(attention, dtype=torch.bool).scatter_(-1, kept, True)
                probabilities = probabilities + attention.masked_fill(~mask, float("-inf")).softmax(dim=-1) * weight.float()
            out = probabilities.to(value.dtype) @ value
        return self.project_out(merge_heads(out, height, width, channels_innermost(feature)))

    def selected_channels(self, feature: torch.Tensor, prompt: torch.Tensor) -> list[torch.Tensor]:
        """Sorted channel indices kept by each top-m mask (the discrete choice the forward makes)."""
        attention, _ = self.attention_logits(feature, prompt)
        return [torch.topk(attention, k=keep, dim=-1).indices.sort(dim=-1).values
                for keep in self.kept_counts(attention.shape[-1])]


class DualGateFeedForward(GatedDconvFeedForward):
    """GDFN with both halves gating each other: gelu(x2) * x1 + gelu(x1) * x2 (official, after LLFormer). The
    layers (and checkpoint names) are GDFN's; only the gating differs."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first, second = self.dwconv(self.project_in(hidden_states)).chunk(2, dim=1)
        return self.project_out(F.gelu(second) * first + F.gelu(first) * second)


class SelectivePromptToFeature(nn.Module):
    """The skip feature attends to its prompt (top-m attention), then a dual-gate feed-forward network.

    Feature and prompt are normalised first; a feature narrower than the prompt is zero-padded to the prompt
    width for the attention and projected back with a 1x1 conv; a wider one lets its extra channels pass
    unchanged. The attention residual is added to the *normalised* feature, as in the official code.
    """

    def __init__(self, feature_dim: int, prompt_dim: int, config: PIPConfig) -> None:
        super().__init__()
        self.feature_dim, self.prompt_dim = feature_dim, prompt_dim
        self.norm_feature = ChannelLayerNorm(feature_dim, config.layer_norm_type)
        self.norm_prompt = ChannelLayerNorm(prompt_dim, config.layer_norm_type)
        self.attn = TopMCrossAttention(
            prompt_dim, config.feature_heads, config.bias, config.topm_fractions, config.topm_weight_init
        )
        self.project_to_feature = (
            pointwise_conv(prompt_dim, feature_dim, bias=False) if feature_dim < prompt_dim else None
        )
        self.norm2 = ChannelLayerNorm(feature_dim, config.layer_norm_type)
        self.ffn = DualGateFeedForward(feature_dim, config.ffn_expansion_factor, config.bias)

    def forward(self, feature: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        feature, prompt = self.norm_feature(feature), self.norm_prompt(prompt)
        interacting, passing = feature, None
        if self.feature_dim > self.prompt_dim:
            interacting, passing = feature.split([self.prompt_dim, self.feature_dim - self.prompt_dim], dim=1)
        interacting = align_channels(interacting, self.prompt_dim)
        hidden = interacting + self.attn(interacting, prompt)
        if passing is not None:
            hidden = torch.cat([hidden, passing], dim=1)
        elif self.project_to_feature is not None:
            hidden = self.project_to_feature(hidden)
        return hidden + self.ffn(self.norm2(hidden))


class SkipPrompt(nn.Module):
    """PIP at one skip connection: prompt-in-prompt generation, then selective prompt-to-feature interaction."""

    def __init__(self, feature_dim: int, prompt_dim: int, prompt_size: int, config: PIPConfig) -> None:
        super().__init__()
        self.prompt_in_prompt = PromptInPrompt(
            prompt_dim,
            prompt_size,
            config.num_degradations,
            config.prompt_interaction_heads,
            config.prompt_interaction_ffn_expansion_factor,
            config.prompt_interaction_bias,
            config.degradation_prompt_reduction,
        )
        self.prompt_to_feature = SelectivePromptToFeature(feature_dim, prompt_dim, config)

    def forward(self, skip: torch.Tensor, degradation_weights: torch.Tensor) -> torch.Tensor:
        return self.prompt_to_feature(skip, self.prompt_in_prompt(skip, degradation_weights))


class DegradationEstimator(nn.Module):
    """Predicts the degradation class from the pooled encoder features (ours; lets PIP run without labels)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_degradations: int, detach_features: bool) -> None:
        super().__init__()
        self.detach_features = detach_features
        self.classifier = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_degradations)
        )

    def forward(self, features: EncoderFeatures) -> torch.Tensor:
        pooled = torch.cat(
            [spatial_mean(f) for f in (features.level1, features.level2, features.level3, features.latent)], dim=1
        )
        if self.detach_features:
            pooled = pooled.detach()
        return self.classifier(pooled)


def build_degradation_estimator(config: PIPConfig) -> nn.Module:
    """The estimator ``config.degradation_estimator_input`` names (the encoder-feature head or the pixel CNN)."""
    if config.degradation_estimator_input == "pixels":
        return PixelDegradationEstimator(config.degradation_estimator_hidden_dim, config.num_degradations,
                                         config.in_channels, config.degradation_estimator_statistics)
    return DegradationEstimator(
        config.dim * 15, config.degradation_estimator_hidden_dim, config.num_degradations,
        config.degradation_estimator_detach_features,
    )


def _pool_channels(flat: torch.Tensor, statistic: str) -> torch.Tensor:
    """One statistic ("mean", "std" or "max") of each channel of a (B, C, N) tensor."""
    if statistic == "mean":
        return flat.mean(dim=-1)
    if statistic == "std":
        return flat.std(dim=-1, unbiased=False)
    return flat.amax(dim=-1)


#: The side below which `PixelDegradationEstimator` mirrors an input out before judging it: two cells of its
#: coarsest (1/16) level. On thinner images the zero padding of its strided convolutions outweighs the pixels.
ESTIMATOR_MIN_SIDE = 32


def mirror_extend(pixel_values: torch.Tensor, min_side: int) -> torch.Tensor:
    """A (B, C, H, W) map extended at the bottom and right, by repeated mirror images of itself, to ``min_side``
    on each shorter side (a side at least that long is kept): its pixel statistics stay those of the image,
    whatever its size (``F.pad``'s reflection needs a side larger than the padding)."""
    for axis in (-2, -1):
        if pixel_values.shape[axis] >= min_side:
            continue
        while pixel_values.shape[axis] < min_side:
            pixel_values = torch.cat([pixel_values, pixel_values.flip(axis)], dim=axis)
        pixel_values = pixel_values.narrow(axis, 0, min_side)
    return pixel_values


class PixelDegradationEstimator(nn.Module):
    """Predicts the degradation class from the image itself (ours; ``degradation_estimator_input="pixels"``).

    Four strided 3x3 convolutions (1/2 ... 1/16 resolution); the head reads ``statistics`` of every channel at
    every level: by default the mean *and* standard deviation. The standard deviations carry the texture energy
    at each scale that tells noise (finest), rain streaks and blur (missing fine texture) apart; the means carry
    the global brightness and contrast that tell low light and haze apart; the maxima (optional) carry the
    highlights that a naturally dark photo keeps and an under-exposed one loses. It never reads the restoration
    body, so it can be trained afterwards with the body frozen.
    """

    def __init__(
        self, hidden_dim: int, num_degradations: int, in_channels: int = 3, statistics: Sequence[str] = ("mean", "std")
    ) -> None:
        super().__init__()
        self.statistics = tuple(statistics)
        widths = (max(8, hidden_dim // 4), max(8, hidden_dim // 2), hidden_dim, hidden_dim)
        self.levels = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.levels.append(nn.Sequential(nn.Conv2d(previous, width, kernel_size=3, stride=2, padding=1), nn.GELU()))
            previous = width
        # The statistics differ in scale by orders of magnitude (a noise std against a mean brightness): without
        # this normalisation the head learned only the large ones (about 50 % accuracy instead of about 90 %).
        pooled_width = len(self.statistics) * sum(widths)
        self.norm = nn.LayerNorm(pooled_width)
        self.classifier = nn.Sequential(
            nn.Linear(pooled_width, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_degradations)
        )

    # fp32 under CPU bf16 inference: PyTorch's CPU bf16 stride-2 convolution reads uninitialised memory when its
    # output is one pixel wide (images up to 16 px wide here), which turned thin images' estimates into NaN.
    @fp32_in_cpu_inference
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # A thin image (a 2 x 3000 strip) would be judged mostly from the convolutions' zero padding, which reads as
        # darkness: flat grey strips went to the low-light prompt and came back nearly white.
        pooled, hidden = [], mirror_extend(pixel_values, ESTIMATOR_MIN_SIDE)
        for level in self.levels:
            hidden = level(hidden)
            # Statistics in fp32: a standard deviation over many pixels loses precision in half precision.
            flat = hidden.float().flatten(2)
            pooled += [_pool_channels(flat, name) for name in self.statistics]
        return self.classifier(self.norm(torch.cat(pooled, dim=1).to(self.norm.weight.dtype)))


class PIPForImageRestoration(PromptRestorationPreTrainedModel):
    """PIP on the PromptIR-style Restormer body (``pip-restormer``), or on PromptIR with ``decoder_prompts``."""

    config_class = PIPConfig
    accepts_degradation_labels = True

    def __init__(self, config: PIPConfig) -> None:
        super().__init__(config)
        dim = config.dim
        # pip-restormer reduces the latent with a 1x1 conv; on PromptIR's body the latent prompt does it.
        self.unet = RestorationUNet.from_config(
            config, decoder_latent_channels=dim * 4, latent_projection=not config.decoder_prompts
        )
        self.skip_prompts = nn.ModuleDict(
            {
                f"level{level}": SkipPrompt(dim * 2 ** (level - 1), prompt_dim, prompt_size, config)
                for level, (prompt_dim, prompt_size) in enumerate(zip(config.prompt_dims, config.prompt_sizes), start=1)
            }
        )
        self.decoder_prompts = (
            DecoderPrompts(
                dim=dim,
                latent_out_dim=dim * 4,
                prompt_dims=config.decoder_prompt_dims,
                prompt_sizes=config.decoder_prompt_sizes,
                prompt_len=config.decoder_prompt_len,
                num_heads=config.heads[2],
                ffn_expansion_factor=config.ffn_expansion_factor,
                bias=config.bias,
                layer_norm_type=config.layer_norm_type,
                top_k=config.decoder_prompt_top_k,
            )
            if config.decoder_prompts
            else None
        )
        self.degradation_estimator = build_degradation_estimator(config) if config.use_degradation_estimator else None
        self.unused_official_modules = None
        if config.keep_unused_official_modules:
            # Constructed but never called by the official model; present only so its checkpoints load strictly.
            widths = {1: dim, 2: dim * 2, 3: dim * 4}
            self.unused_official_modules = nn.ModuleDict(
                {
                    f"reduce_noise_channel_{level}": pointwise_conv(
                        widths[level] + config.prompt_dims[level - 1], widths[level], config.bias
                    )
                    for level in (1, 2, 3)
                }
            )
        self.post_init()

    # ----- degradation labels -------------------------------------------------------------------------
    @property
    def can_estimate_degradation(self) -> bool:
        return self.degradation_estimator is not None

    def estimate_degradation(self, pixel_values: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """The estimator's (B, num_degradations) softmax weights for ``pixel_values`` (one-hot of the argmax
        with ``hard``). ``restore()`` calls this once per image, so every tile of it uses the same prompts."""
        if self.degradation_estimator is None:
            raise RestorationInputError(self._no_estimator_message())
        self.check_pixel_values(pixel_values)
        padded = self.pad_to_multiple(pixel_values)
        if isinstance(self.degradation_estimator, PixelDegradationEstimator):
            logits = self.degradation_estimator(padded)  # no encoder pass needed
        else:
            logits = self.degradation_estimator(self.unet.encode(padded))
        weights = logits.softmax(dim=-1)
        return hard_weights(weights) if hard else weights

    def _no_estimator_message(self) -> str:
        return (
            "this PIP model has no degradation estimator (use_degradation_estimator=False, as converted official "
            f"checkpoints): pass degradation_labels, one of {', '.join(self.config.degradation_names)}"
        )

    # ----- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        degradation_labels=None,
        labels: torch.Tensor | None = None,
        forced_prompt: torch.Tensor | int | PerPlace | None = None,
        routing_grad: bool = True,
        return_dict: bool | None = None,
    ) -> ImageRestorationOutput | tuple:
        """Restore ``pixel_values`` (B, C, H, W) in [0, 1]; any H x W.

        Args:
            degradation_labels: the degradation of each image, in any form ``modeling.degradation_labels``
                parses (names, aliases, mixtures, indices, (B, num_degradations) weights). When omitted, the
                built-in estimator's softmax weights are used.
            labels: clean images; when given, ``loss`` = pixel loss + weight x prompt angle regulariser
                (+ the estimator's cross-entropy when ``degradation_labels`` are given too).
            forced_prompt: with ``decoder_prompts``, use these decoder prompt components instead of the routed
                ones (see ``CPLForImageRestoration.forward``; CPL's regulariser uses it for its negatives).
            routing_grad: with ``decoder_prompts``, ``False`` detaches their routing weights (the same
                restoration; see ``CPLForImageRestoration.forward``).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.check_pixel_values(pixel_values)
        if forced_prompt is not None and self.decoder_prompts is None:
            raise RestorationInputError("forced_prompt needs decoder prompts (PIPConfig(decoder_prompts=True))")
        batch, height, width = pixel_values.shape[0], *pixel_values.shape[-2:]
        padded = self.pad_to_multiple(pixel_values)
        features = self.unet.encode(padded)

        estimator_logits = None
        if isinstance(self.degradation_estimator, PixelDegradationEstimator):
            estimator_logits = self.degradation_estimator(padded)
        elif self.degradation_estimator is not None:
            estimator_logits = self.degradation_estimator(features)
        if degradation_labels is not None:
            weights = self.degradation_weights(degradation_labels, batch, padded.device)
        elif estimator_logits is not None:
            weights = estimator_logits.softmax(dim=-1)
        else:
            raise RestorationInputError(self._no_estimator_message())
        weights = weights.to(padded.dtype)

        skips = (
            self.skip_prompts["level1"](features.level1, weights),
            self.skip_prompts["level2"](features.level2, weights),
            self.skip_prompts["level3"](features.level3, weights),
        )
        prompt_weights = None
        if self.decoder_prompts is None:
            latent = self.unet.project_latent(features.latent)
            decoded3 = self.unet.decode_level3(latent, skips[2])
            decoded1 = self.unet.decode_level1(self.unet.decode_level2(decoded3, skips[1]), skips[0])
        else:
            decoded1, prompt_weights = self.decoder_prompts.decode(
                self.unet, features, skips, forced_prompt=forced_prompt, routing_grad=routing_grad
            )
        restored = self.crop_to(self.unet.reconstruct(decoded1, padded, features), height, width)

        loss = loss_terms = None
        if labels is not None:
            loss, loss_terms = self.compute_loss(restored, labels, pixel_values, estimator_logits, weights, degradation_labels)
        output = ImageRestorationOutput(
            loss=loss,
            reconstruction=restored,
            degradation_weights=weights,
            degradation_logits=estimator_logits,
            prompt_weights=prompt_weights,
            loss_terms=loss_terms,
        )
        return output if return_dict else output.to_tuple()

    def prompt_angle_regularization(self) -> torch.Tensor:
        """The paper's prompt regulariser: scale x sum over levels of the pairwise positive cosines."""
        total = sum(skip.prompt_in_prompt.angle_regularization() for skip in self.skip_prompts.values())
        return total * self.config.prompt_angle_scale

    def compute_loss(self, restored, labels, pixel_values, estimator_logits, weights, degradation_labels):
        config = self.config
        self.check_labels(labels, pixel_values)
        labels = labels.to(restored.dtype)
        if config.pixel_loss == "smooth_l1":
            pixel = F.smooth_l1_loss(restored, labels, beta=1.0)
        else:
            pixel = F.l1_loss(restored, labels)
        regularizer = self.prompt_angle_regularization()
        loss = pixel + config.prompt_regularization_weight * regularizer
        # Unweighted terms with their graph: a training loop may treat the pixel term alone (loss-spike guard).
        terms = {"pixel": pixel, "prompt_angle": regularizer}
        if config.frequency_loss_weight > 0:
            frequency = frequency_l1_loss(restored, labels)
            loss = loss + config.frequency_loss_weight * frequency
            terms["frequency"] = frequency
        if estimator_logits is not None and degradation_labels is not None:
            # Soft targets so that mixed labels (two halves) train the estimator too.
            estimator = F.cross_entropy(estimator_logits.float(), weights.float())
            loss = loss + config.degradation_estimator_loss_weight * estimator
            terms["degradation_estimator"] = estimator
        return loss, terms


__all__ = ["PIPForImageRestoration"]
