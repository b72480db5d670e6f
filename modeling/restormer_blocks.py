"""Restormer building blocks shared by every model in this package.

Restormer (Zamir et al., CVPR 2022) introduced the blocks below; PromptIR, PIP, DPPD and CPL re-declare
them verbatim in their own code. They are written once here and every method imports them.

Parameter names inside the blocks (``norm1``, ``attn.qkv``, ``ffn.project_in``, ...) follow the official
code so that checkpoint conversion is a short table; only the LayerNorm's extra ``.body`` level is dropped.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .tile_context import channel_attention_logits, unit_vectors

LAYER_NORM_TYPES = ("WithBias", "BiasFree")

#: Whether attention (MDTA), the patch embedding and the down/upsampling convolutions (and PIP's pixel estimator)
#: leave autocast in CPU inference (eval mode under CPU bf16/fp16 autocast) and run in fp32; see
#: `fp32_in_cpu_inference`.
FP32_LAYERS_IN_CPU_INFERENCE = True


def set_fp32_layers_in_cpu_inference(enabled: bool) -> None:
    """Turn `fp32_in_cpu_inference` on (the default) or off for this process: off, CPU bf16 inference runs every
    layer in autocast, faster (1.4x at 512² on the shipped model) and further from fp32."""
    global FP32_LAYERS_IN_CPU_INFERENCE
    FP32_LAYERS_IN_CPU_INFERENCE = bool(enabled)


def fp32_in_cpu_inference(forward):
    """Decorate a ``forward(self, hidden_states)`` to leave autocast when the module is in eval mode under CPU
    autocast (and `FP32_LAYERS_IN_CPU_INFERENCE` is on): it then runs in its weights' precision, fp32 for the
    usual fp32 weights (and bf16 for weights already cast to bf16, which have nothing finer to offer).

    Why: restoring with bf16 autocast on a CPU, the shipped weights' outputs moved up to 0.59 dB from fp32's on
    single Gaussian-blurred photos (0.076 dB on the row's mean), as bf16 rounding anywhere in the network damped
    the correction it makes (benchmarks/bf16_sensitivity.py). Keeping these layers in fp32 took every held-out
    row within 0.02 dB of fp32 for 1.1-1.4x all-bf16's time (README, Performance). Training, whose speed the
    other layers' bf16 gives, and GPU autocast are unchanged.
    """

    @functools.wraps(forward)
    def forward_maybe_in_fp32(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (FP32_LAYERS_IN_CPU_INFERENCE and not self.training and hidden_states.device.type == "cpu"
                and torch.is_autocast_enabled("cpu")):
            weights_dtype = next(self.parameters()).dtype
            with torch.autocast(device_type="cpu", enabled=False):
                return forward(self, hidden_states.to(weights_dtype))
        return forward(self, hidden_states)

    return forward_maybe_in_fp32


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map, applied independently at every pixel.

    ``layer_norm_type="WithBias"`` is the usual LayerNorm (centre, scale, shift). ``"BiasFree"`` is
    Restormer's variant that divides by the standard deviation *without* subtracting the mean and has no
    shift; the official denoising checkpoints use it. Variance is the biased estimate and eps is 1e-5, as
    in the official code.
    """

    def __init__(self, num_channels: int, layer_norm_type: str = "WithBias", eps: float = 1e-5) -> None:
        super().__init__()
        if layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {layer_norm_type!r}")
        self.with_bias = layer_norm_type == "WithBias"
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels)) if self.with_bias else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if channels_innermost(hidden_states):
            return self.forward_channels_last(hidden_states)
        variance = hidden_states.var(dim=1, keepdim=True, unbiased=False)
        if self.with_bias:
            hidden_states = hidden_states - hidden_states.mean(dim=1, keepdim=True)
        hidden_states = hidden_states / torch.sqrt(variance + self.eps)
        hidden_states = hidden_states * self.weight[:, None, None]
        if self.bias is not None:
            hidden_states = hidden_states + self.bias[:, None, None]
        return hidden_states

    def forward_channels_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The same normalisation on a map whose channels are innermost in memory (``channels_last``).

        Seen as (B, H, W, C), the channel axis is the last one, so WithBias is one fused ``F.layer_norm`` and
        BiasFree reads each pixel's channels contiguously; the result is channels-last again.
        """
        pixels = hidden_states.permute(0, 2, 3, 1)
        if self.with_bias:
            pixels = F.layer_norm(pixels, (pixels.shape[-1],), self.weight, self.bias, self.eps)
        else:
            pixels = pixels / torch.sqrt(pixels.var(dim=-1, keepdim=True, unbiased=False) + self.eps) * self.weight
        return pixels.permute(0, 3, 1, 2)


def channels_innermost(tensor: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) tensor keeps each pixel's channels next to each other in memory (channels-last,
    or a channel slice of a channels-last map) while it has more than one pixel, so NCHW is not also true."""
    return tensor.dim() == 4 and tensor.stride(1) == 1 and tensor.shape[2] * tensor.shape[3] > 1


def split_heads(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, heads, C / heads, H * W), a view in either memory layout where one exists.

    For NCHW this is the plain reshape. For a channels-last map the pixel axis of the result has stride C:
    matmul and the reductions read it in place, where the plain reshape would first transpose the whole map.
    """
    batch, channels, height, width = tensor.shape
    if channels_innermost(tensor):
        per_pixel = tensor.permute(0, 2, 3, 1).reshape(batch, height * width, num_heads, channels // num_heads)
        return per_pixel.permute(0, 2, 3, 1)
    return tensor.reshape(batch, num_heads, channels // num_heads, height * width)


def merge_heads(heads: torch.Tensor, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """(B, heads, C / heads, H * W) -> (B, C, H, W), dense channels-last when ``channels_last`` (a view when
    matmul already wrote it so, else one copy)."""
    batch, num_heads, head_channels, _ = heads.shape
    if channels_last:
        per_pixel = heads.permute(0, 3, 1, 2).reshape(batch, height, width, num_heads * head_channels)
        return per_pixel.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return heads.reshape(batch, num_heads * head_channels, height, width)


def channel_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    temperature: torch.Tensor,
    spans_image: bool = True,
) -> torch.Tensor:
    """Restormer's "transposed" attention: a (C/heads x C/heads) map per head, over all pixels.

    Inputs are (B, C, H, W); query and key are L2-normalised over the pixel axis, so the attention map is a
    cosine similarity between channels scaled by a learned per-head temperature. `spans_image`: the maps are
    (tiles of) the image, so a tiled restore gathers the map over the whole image (`tile_context`); False for
    maps of another size, such as PIP's prompts.
    """
    height, width = value.shape[-2:]
    channels_last = channels_innermost(value)
    query, key = split_heads(query, num_heads), split_heads(key, num_heads)
    if spans_image:
        attention = channel_attention_logits(query, key, temperature)
    else:
        attention = (unit_vectors(query) @ unit_vectors(key).transpose(-2, -1)) * temperature
    out = attention.softmax(dim=-1) @ split_heads(value, num_heads)
    return merge_heads(out, height, width, channels_last)


def pointwise_conv(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """A 1x1 convolution: a per-pixel linear map of the channels."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def spatial_conv(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """A full 3x3 convolution that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


def depthwise_conv(channels: int, bias: bool) -> nn.Conv2d:
    """A 3x3 convolution of each channel on its own (groups = channels), size-preserving."""
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=bias)


def head_temperature(num_heads: int) -> nn.Parameter:
    """A learned scale of the attention logits per head, starting at 1; shaped (heads, 1, 1) to broadcast over
    each head's channel-by-channel map."""
    return nn.Parameter(torch.ones(num_heads).view(num_heads, 1, 1))


class MultiDconvHeadTransposedAttention(nn.Module):
    """MDTA: 1x1 then depthwise 3x3 convolutions make q, k, v; channel attention; 1x1 projection."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = head_temperature(num_heads)
        # Query, key and value side by side in one map of 3 x dim channels (checkpoint names: qkv, qkv_dwconv).
        self.qkv = pointwise_conv(dim, 3 * dim, bias)
        self.qkv_dwconv = depthwise_conv(3 * dim, bias)
        self.project_out = pointwise_conv(dim, dim, bias)

    @fp32_in_cpu_inference
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv_dwconv(self.qkv(hidden_states)).chunk(3, dim=1)
        out = channel_attention(query, key, value, self.num_heads, self.temperature)
        return self.project_out(out)


class GatedDconvFeedForward(nn.Module):
    """GDFN: expand to 2 x hidden, depthwise 3x3, GELU(x1) * x2 gate, project back.

    ``hidden = int(dim * expansion)`` truncates, as the official code does (127 channels at dim 48).
    """

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        # Gate and content halves expanded together, then each gated against the other in `forward`.
        self.project_in = pointwise_conv(dim, 2 * hidden, bias)
        self.dwconv = depthwise_conv(2 * hidden, bias)
        self.project_out = pointwise_conv(hidden, dim, bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, content = self.dwconv(self.project_in(hidden_states)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * content)


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: x + MDTA(LN(x)), then x + GDFN(LN(x)).

    Subclassing ``GradientCheckpointingLayer`` lets ``model.gradient_checkpointing_enable()`` recompute
    each block in the backward pass without any change to the forward code.
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str
    ) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, layer_norm_type)
        self.attn = MultiDconvHeadTransposedAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, layer_norm_type)
        self.ffn = GatedDconvFeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.ffn(self.norm2(hidden_states))


def transformer_stage(
    dim: int, depth: int, num_heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str
) -> nn.Sequential:
    """``depth`` TransformerBlocks of one width, as the official ``nn.Sequential`` (keys ``<stage>.<i>.*``)."""
    return nn.Sequential(
        *[TransformerBlock(dim, num_heads, ffn_expansion_factor, bias, layer_norm_type) for _ in range(depth)]
    )


class OverlapPatchEmbed(nn.Module):
    """3x3 convolution from image channels to the base width (no bias, as the official code)."""

    def __init__(self, in_channels: int, embed_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = spatial_conv(in_channels, embed_dim, bias)

    @fp32_in_cpu_inference
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values)


class Downsample(nn.Module):
    """Halve the resolution, double the width: conv3x3 (n -> n/2) then PixelUnshuffle(2) (-> 2n)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spatial_conv(channels, channels // 2, bias=False), nn.PixelUnshuffle(2)
        )

    @fp32_in_cpu_inference
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.body(hidden_states)


class Upsample(nn.Module):
    """Double the resolution, halve the width: conv3x3 (n -> 2n) then PixelShuffle(2) (-> n/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spatial_conv(channels, channels * 2, bias=False), nn.PixelShuffle(2)
        )

    @fp32_in_cpu_inference
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.body(hidden_states)
