"""DPPD — degradation prototype assignment + prompt distribution learning — as a transformers model.

Paper: Wu, Jiang, Jiang, Liu, Nie, "Learning Dynamic Prompts for All-in-One Image Restoration", IEEE TIP 34
(2025). Project page Aitical/DPPD: README, figures and checkpoint links only; **no official code**. This is
an implementation from the abstract and the framework figure; what they leave open is ours and behind a
``DPPDConfig`` option (marked [ours] there).

From the paper (abstract + framework figure):

- the body is PromptIR's (the released checkpoints are "PromptIR + DPPD"), with a *prompt module* at
  PromptIR's three decoder places: on the latent, after decoder level 3, after decoder level 2;
- a prompt module = a DPPD module followed by a CrossFusion module, with a residual around the fusion;
- **degradation prototype assignment**: the input feature is pooled, embedded and assigned to one of a set
  of degradation prototypes (one per degradation type), which anchors degradation representations;
- **prompt distribution learning**: prompts are a Gaussian (mean, covariance) rather than fixed parameters,
  and a set of prompts is sampled from it;
- **CrossFusion**: queries from the feature (W_Q), keys and values from the prompts (W_K, W_V), a softmax
  over the prompts, an output projection (W_O); the image loss is a reconstruction loss.

Ours: every width and form below, the cosine/temperature assignment, the cross-entropy and separation terms
that train the prototypes, the diagonal Gaussian conditioned on the embedding and the assigned prototype(s),
the prototype-conditioned prior of the KL term, per-position cross-attention, and how labels are used:

- **Degradation labels.** ``degradation_labels`` (any form ``modeling.degradation_labels`` parses; the
  training loop passes names or a (B,) LongTensor of class ids, ``restore()`` passes the (B, K) weights it
  estimated once per image) *replace the assignment probabilities as the condition of the prompt
  distribution* at every place, exactly as PIP feeds its labels; rows are normalised to sum to one (a mixture
  of prototypes). The model's own assignment is still computed: with clean ``labels`` too, its cross-entropy
  against the degradation labels trains the prototypes. Without labels, each place is conditioned on its own
  assignment (soft probabilities, or the nearest prototype with ``prompt_conditioning="hard"``).
- **Label-free estimate.** ``estimate_degradation`` returns the assignment probabilities (the mean over the
  three places, or the shared latent assignment); passed back as ``degradation_labels`` they fix the
  degradation prototype for every tile of an image. The input-dependent part of the prompt distribution still
  follows each tile's content, as PromptIR's prompt weights do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_dppd import DPPDConfig
from .decoder_prompts import DecoderPromptPlaces
from .degradation_labels import hard_weights
from .modeling_outputs import ImageRestorationOutput
from .modeling_utils import PromptRestorationPreTrainedModel
from .restoration_unet import RestorationUNet
from .tile_context import spatial_mean
from .restormer_blocks import (
    ChannelLayerNorm,
    TransformerBlock,
    channels_innermost,
    merge_heads,
    pointwise_conv,
    split_heads,
)


@dataclass
class PrototypeAssignment:
    """How one prompt module placed its input among the degradation prototypes."""

    embedding: torch.Tensor  # (B, embedding_dim), unit length
    logits: torch.Tensor  # (B, K) cosine similarities / temperature, float32
    probabilities: torch.Tensor  # (B, K) softmax of the logits
    weights: torch.Tensor  # (B, K) what conditions the prompt distribution (labels, probabilities or one-hot)
    prototype: torch.Tensor  # (B, embedding_dim) the weights' mixture of unit prototypes


@dataclass
class PromptModuleReport:
    """What one prompt module reports to the model (for the loss and the outputs)."""

    assignment: PrototypeAssignment
    owns_assignment: bool  # False for levels 3 and 2 under shared_assignment (the latent's is reused)
    prompt_mean: torch.Tensor  # (B, N, prompt_dim)
    prompt_log_variance: torch.Tensor  # (B, N, prompt_dim)
    prior_mean: torch.Tensor  # (B, N, prompt_dim)
    kl: torch.Tensor  # scalar, KL(predicted || prior) per element, float32


class DegradationPrototypeAssignment(nn.Module):
    """Pooled feature -> embedding -> softmax over cosine similarities to K degradation prototypes.

    Args:
        feature_dim: channels of the feature map. embedding_dim: width of the embedding/prototype space.
        num_prototypes: K, one per degradation class. temperature: divides the cosine similarities.
        learnable_prototypes: train the prototypes (else they are a buffer kept at its orthogonal initialisation).
    """

    def __init__(
        self, feature_dim: int, embedding_dim: int, num_prototypes: int, temperature: float, learnable_prototypes: bool
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.embedding = nn.Sequential(
            nn.Linear(feature_dim, embedding_dim), nn.GELU(), nn.Linear(embedding_dim, embedding_dim)
        )
        prototypes = torch.empty(num_prototypes, embedding_dim)
        if learnable_prototypes:
            self.prototypes = nn.Parameter(prototypes)
        else:  # a buffer: saved and loaded like a weight, never trained (and never seen by an optimizer or DDP)
            self.register_buffer("prototypes", prototypes)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        # Orthogonal rows (when K <= embedding_dim): the prototypes start as far apart as they can be.
        nn.init.orthogonal_(self.prototypes)

    def unit_prototypes(self) -> torch.Tensor:
        return F.normalize(self.prototypes.float(), dim=-1)

    def forward(
        self, features: torch.Tensor, degradation_weights: torch.Tensor | None = None, hard: bool = False
    ) -> PrototypeAssignment:
        """Assign ``features`` to the prototypes (embedding and logits in float32). The condition is
        ``degradation_weights`` (B, K) when given, else the probabilities (their one-hot argmax with ``hard``).

        The prototype mixture is computed here, inside this module's forward, and not by its caller: a model
        loaded with ``device_map`` (disk offload, or split across devices) has this module's parameters in
        place only while its forward runs, and ``prototypes`` read outside it gave NaN restorations.
        """
        pooled = spatial_mean(features.float())
        # Parameter-free layer norm: the pooled latent grows with the residual stream; its scale says nothing
        # about the degradation and must not saturate the embedding.
        pooled = F.layer_norm(pooled, pooled.shape[-1:])
        embedding = self.embedding(pooled.to(features.dtype)).float()
        embedding = F.normalize(embedding, dim=-1)
        unit = self.unit_prototypes()
        logits = embedding @ unit.t() / self.temperature
        probabilities = logits.softmax(dim=-1)
        if degradation_weights is not None:
            weights = degradation_weights.to(device=unit.device, dtype=torch.float32)
        elif hard:
            weights = hard_weights(probabilities)
        else:
            weights = probabilities
        return PrototypeAssignment(embedding, logits, probabilities, weights, weights @ unit)

    def separation(self, margin: float) -> torch.Tensor:
        """Mean over prototype pairs of relu(cosine - margin): zero once all pairs are at most ``margin`` alike."""
        unit = self.unit_prototypes()
        count = unit.shape[0]
        if count < 2:
            return unit.sum() * 0.0
        cosine = unit @ unit.t()
        pairs = torch.triu_indices(count, count, offset=1, device=unit.device)
        return F.relu(cosine[pairs[0], pairs[1]] - margin).mean()


class PromptDistribution(nn.Module):
    """A diagonal Gaussian over ``num_tokens`` prompt tokens, conditioned on the assigned prototype(s).

    mean = (weights @ prior_means) + offset([embedding, prototype]); log-variance = head([embedding, prototype])
    squashed into (-limit, limit). The prior of the KL term is N(weights @ prior_means, prior_std^2): each
    prototype owns a learned set of token means, and the input moves its prompts away from them only at a
    cost. Embedding and prototype are unit vectors, so mean and variance are bounded for any input.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_prototypes: int,
        num_tokens: int,
        prompt_dim: int,
        prior_std: float,
        log_variance_limit: float,
    ) -> None:
        super().__init__()
        self.num_tokens, self.prompt_dim = num_tokens, prompt_dim
        self.prior_std, self.log_variance_limit = prior_std, log_variance_limit
        self.prior_means = nn.Parameter(torch.empty(num_prototypes, num_tokens, prompt_dim))
        self.mean_offset = nn.Linear(2 * embedding_dim, num_tokens * prompt_dim)
        self.log_variance = nn.Linear(2 * embedding_dim, num_tokens * prompt_dim)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        nn.init.normal_(self.prior_means, std=self.prior_std)

    def forward(self, assignment: PrototypeAssignment) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, log-variance and prior mean, each (B, num_tokens, prompt_dim)."""
        dtype = self.mean_offset.weight.dtype
        condition = torch.cat([assignment.embedding, assignment.prototype], dim=-1).to(dtype)
        shape = (condition.shape[0], self.num_tokens, self.prompt_dim)
        prior_mean = torch.einsum("bk,knc->bnc", assignment.weights.to(self.prior_means.dtype), self.prior_means)
        mean = prior_mean + self.mean_offset(condition).reshape(shape)
        limit = self.log_variance_limit
        log_variance = limit * torch.tanh(self.log_variance(condition).reshape(shape) / limit)
        return mean, log_variance, prior_mean

    def kl_divergence(self, mean: torch.Tensor, log_variance: torch.Tensor, prior_mean: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(log_variance)) || N(prior_mean, prior_std^2)), averaged over all elements, in float32."""
        mean, log_variance, prior_mean = mean.float(), log_variance.float(), prior_mean.float()
        prior_variance = self.prior_std**2
        kl = 0.5 * (
            (log_variance.exp() + (mean - prior_mean) ** 2) / prior_variance
            - 1.0
            - log_variance
            + torch.log(torch.tensor(prior_variance, device=mean.device))
        )
        return kl.mean()


def sample_prompts(
    mean: torch.Tensor,
    log_variance: torch.Tensor,
    training: bool,
    num_inference_samples: int,
    noise_seed: int = 0,
) -> torch.Tensor:
    """Reparameterised sample in training (torch's global generator); outside training the mean, or with
    ``num_inference_samples`` = n > 1 the average of n samples whose standard-normal draws come from a generator
    seeded with ``noise_seed``: one set of draws per token, shared by every image, tile and call."""
    if not training and num_inference_samples == 1:
        return mean
    std = torch.exp(0.5 * log_variance)
    if training:
        return mean + std * torch.randn_like(std)
    # Fixed draws, not the global generator: a tiled restore calls the model once per group of tiles and per
    # statistics pass, and fresh draws there gave neighbouring tiles different prompts (a tiny model's tiles came
    # 31.6 dB from the whole image, 46 dB with fixed draws); they also made an image depend on its batch companions.
    generator = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn((num_inference_samples, *std.shape[1:]), generator=generator, dtype=torch.float32)
    # The average of n samples mean + std * noise_i is mean + std * (the average of the n draws).
    return mean + std * noise.mean(dim=0).to(device=std.device, dtype=std.dtype)


class CrossFusion(nn.Module):
    """Feature positions attend to the prompt tokens; the result is projected back and added to the feature.

    Queries: 1x1 conv of the (channel-)normalised feature; keys/values: linear maps of the tokens; softmax over
    the tokens at every position. The attention map is (B, heads, H W, num_tokens): linear in the pixels.
    """

    def __init__(self, feature_dim: int, prompt_dim: int, num_heads: int, bias: bool, layer_norm_type: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = ChannelLayerNorm(feature_dim, layer_norm_type)
        self.query = pointwise_conv(feature_dim, prompt_dim, bias)
        self.key = nn.Linear(prompt_dim, prompt_dim, bias=bias)
        self.value = nn.Linear(prompt_dim, prompt_dim, bias=bias)
        self.project_out = pointwise_conv(prompt_dim, feature_dim, bias)

    def forward(self, features: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = features.shape
        tokens = prompts.shape[1]
        query = self.query(self.norm(features))
        head_dim = query.shape[1] // self.num_heads
        query = split_heads(query, self.num_heads).transpose(-2, -1)
        prompts = prompts.to(query.dtype)
        key = self.key(prompts).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        value = self.value(prompts).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        attention = ((query @ key.transpose(-2, -1)) * head_dim**-0.5).float().softmax(dim=-1).to(value.dtype)
        fused = merge_heads((attention @ value).transpose(-2, -1), height, width, channels_innermost(features))
        return features + self.project_out(fused)


class DPPDPromptModule(nn.Module):
    """One prompt place: prototype assignment -> prompt distribution -> sampled prompts -> CrossFusion.

    Args:
        feature_dim: width of the feature at this place. out_dim: width handed on (a 1x1 conv reduces it when
            it differs: the latent place of PromptIR's body). prompt_dim: width of the prompt tokens.
        block_heads: heads of the optional Transformer block after the fusion (the level's own head count).
        owns_assignment: build a prototype assignment here (False: one is passed in, ``shared_assignment``).
        noise_seed: seed of this place's fixed inference draws (``num_inference_samples`` > 1; see
            `sample_prompts`); each place has its own, so the places' draws are independent.
    """

    def __init__(
        self,
        config: DPPDConfig,
        feature_dim: int,
        out_dim: int,
        prompt_dim: int,
        block_heads: int,
        owns_assignment: bool,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        self.hard_conditioning = config.prompt_conditioning == "hard"
        self.num_inference_samples = config.num_inference_samples
        self.noise_seed = noise_seed
        self.assignment = (
            DegradationPrototypeAssignment(
                feature_dim, config.embedding_dim, config.num_degradations, config.assignment_temperature,
                config.learnable_prototypes,
            )
            if owns_assignment
            else None
        )
        self.distribution = PromptDistribution(
            config.embedding_dim, config.num_degradations, config.num_prompt_tokens, prompt_dim, config.prior_std,
            config.log_variance_limit,
        )
        self.fusion = CrossFusion(feature_dim, prompt_dim, config.cross_fusion_heads, config.bias, config.layer_norm_type)
        self.fusion_block = (
            TransformerBlock(feature_dim, block_heads, config.ffn_expansion_factor, config.bias, config.layer_norm_type)
            if config.fusion_transformer_block
            else None
        )
        self.output_projection = (
            pointwise_conv(feature_dim, out_dim, config.bias) if out_dim != feature_dim else None
        )

    def assign(self, features: torch.Tensor, degradation_weights: torch.Tensor | None) -> PrototypeAssignment:
        """Assign ``features`` to the prototypes; given (B, K) ``degradation_weights`` become the condition."""
        return self.assignment(features, degradation_weights, hard=self.hard_conditioning)

    def forward(
        self,
        features: torch.Tensor,
        degradation_weights: torch.Tensor | None = None,
        assignment: PrototypeAssignment | None = None,
    ) -> tuple[torch.Tensor, PromptModuleReport]:
        owns = assignment is None
        if owns:
            assignment = self.assign(features, degradation_weights)
        mean, log_variance, prior_mean = self.distribution(assignment)
        prompts = sample_prompts(mean, log_variance, self.training, self.num_inference_samples, self.noise_seed)
        hidden = self.fusion(features, prompts)
        if self.fusion_block is not None:
            hidden = self.fusion_block(hidden)
        if self.output_projection is not None:
            hidden = self.output_projection(hidden)
        kl = self.distribution.kl_divergence(mean, log_variance, prior_mean)
        return hidden, PromptModuleReport(assignment, owns, mean, log_variance, prior_mean, kl)


class DPPDPromptPlaces(DecoderPromptPlaces):
    """DPPD prompt modules at PromptIR's three decoder places; ``decode`` is the shared decoder forward."""

    def __init__(self, config: DPPDConfig) -> None:
        super().__init__()
        dim, heads, prompt_dims = config.dim, config.heads, config.prompt_dims
        per_place = not config.shared_assignment
        latent_out = dim * 4 if config.latent_reduction else dim * 8
        self.latent = DPPDPromptModule(
            config, dim * 8, latent_out, prompt_dims[2], heads[3], owns_assignment=True, noise_seed=0
        )
        self.level3 = DPPDPromptModule(
            config, dim * 4, dim * 4, prompt_dims[1], heads[2], owns_assignment=per_place, noise_seed=1
        )
        self.level2 = DPPDPromptModule(
            config, dim * 2, dim * 2, prompt_dims[0], heads[1], owns_assignment=per_place, noise_seed=2
        )

    def assignment_modules(self) -> list[DegradationPrototypeAssignment]:
        return [place.assignment for place in (self.latent, self.level3, self.level2) if place.assignment is not None]


class DPPDForImageRestoration(PromptRestorationPreTrainedModel):
    """DPPD on PromptIR's body: a DPPD prompt module at each of PromptIR's three decoder places."""

    config_class = DPPDConfig
    accepts_degradation_labels = True

    def __init__(self, config: DPPDConfig) -> None:
        super().__init__(config)
        latent_out = config.dim * 4 if config.latent_reduction else config.dim * 8
        self.unet = RestorationUNet.from_config(config, decoder_latent_channels=latent_out)
        self.decoder_prompts = DPPDPromptPlaces(config)
        self.post_init()

    # ----- degradation labels -------------------------------------------------------------------------
    @property
    def can_estimate_degradation(self) -> bool:
        return True

    def _condition(self, degradation_labels, batch: int, device) -> torch.Tensor | None:
        if degradation_labels is None:
            return None
        weights = self.degradation_weights(degradation_labels, batch, device)
        # A mixture of prototypes: rows sum to one (an all-zero row stays zero).
        return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    def _run_places(self, features, degradation_weights, full: bool):
        kwargs = {"degradation_weights": degradation_weights}
        if self.config.shared_assignment:
            kwargs = {"assignment": self.decoder_prompts.latent.assign(features.latent, degradation_weights)}
        run = self.decoder_prompts.decode if full else self.decoder_prompts.decode_prompted_levels
        return run(self.unet, features, **kwargs)

    @staticmethod
    def _own_assignments(reports) -> list[PrototypeAssignment]:
        assignments = [report.assignment for report in reports if report.owns_assignment]
        return assignments or [reports[0].assignment]  # shared: the latent's, passed to every place

    def estimate_degradation(self, pixel_values: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """Label-free (B, K) assignment probabilities (mean over the places' assignments; the shared latent
        assignment with ``shared_assignment``). ``restore()`` calls this once per image and passes the result
        back as ``degradation_labels`` for every tile."""
        self.check_pixel_values(pixel_values)
        features = self.unet.encode(self.pad_to_multiple(pixel_values))
        if self.config.shared_assignment:
            probabilities = self.decoder_prompts.latent.assign(features.latent, None).probabilities
        else:
            _, reports = self._run_places(features, None, full=False)
            probabilities = torch.stack([a.probabilities for a in self._own_assignments(reports)]).mean(dim=0)
        return hard_weights(probabilities) if hard else probabilities

    # ----- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        degradation_labels=None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ImageRestorationOutput | tuple:
        """Restore ``pixel_values`` (B, C, H, W) in [0, 1]; any H x W.

        Args:
            degradation_labels: the degradation of each image in any form ``modeling.degradation_labels``
                parses (names, aliases, mixtures, a (B,) LongTensor of class ids, (B, K) weights). They replace
                the assignment as the condition of the prompt distributions (see the module docstring).
                Omitted: the model's own prototype assignment conditions the prompts.
            labels: clean images; when given, ``loss`` = L1 + prototype_loss_weight x cross-entropy (only with
                ``degradation_labels``) + prototype_separation_weight x separation + kl_loss_weight x KL, and
                ``loss_terms`` holds the unweighted terms ``pixel``, ``prototype_assignment``,
                ``prototype_separation`` and ``prompt_kl``.

        Returns ``reconstruction``; ``degradation_weights`` (B, K): the given weights (normalised) or the mean
        assignment probabilities; ``prompt_weights``: each place's assignment probabilities, deepest first.
        Training mode samples the prompts (seed torch for reproducible runs); eval mode is deterministic, with
        ``num_inference_samples`` > 1 too (fixed draws, the same for every image, tile and call).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.check_pixel_values(pixel_values)
        batch, height, width = pixel_values.shape[0], *pixel_values.shape[-2:]
        padded = self.pad_to_multiple(pixel_values)
        condition = self._condition(degradation_labels, batch, padded.device)

        features = self.unet.encode(padded)
        decoded1, reports = self._run_places(features, condition, full=True)
        restored = self.crop_to(self.unet.reconstruct(decoded1, padded, features), height, width)

        assignments = self._own_assignments(reports)
        if condition is None:
            degradation_weights = torch.stack([a.probabilities for a in assignments]).mean(dim=0)
        else:
            degradation_weights = condition
        place_probabilities = tuple(report.assignment.probabilities for report in reports)

        loss = loss_terms = None
        if labels is not None:
            loss, loss_terms = self.compute_loss(restored, labels, pixel_values, reports, condition)
        output = ImageRestorationOutput(
            loss=loss,
            reconstruction=restored,
            degradation_weights=degradation_weights,
            prompt_weights=place_probabilities,
            loss_terms=loss_terms,
        )
        return output if return_dict else output.to_tuple()

    def compute_loss(self, restored, labels, pixel_values, reports, condition):
        """L1 + weighted prototype cross-entropy, prototype separation and KL; the terms unweighted, with graph."""
        config = self.config
        self.check_labels(labels, pixel_values)
        pixel = F.l1_loss(restored, labels.to(restored.dtype))
        separation = torch.stack(
            [m.separation(config.prototype_separation_margin) for m in self.decoder_prompts.assignment_modules()]
        ).mean()
        kl = torch.stack([report.kl for report in reports]).mean()
        loss = pixel + config.prototype_separation_weight * separation + config.kl_loss_weight * kl
        terms = {"pixel": pixel, "prototype_separation": separation, "prompt_kl": kl}
        if condition is not None:
            # Soft targets, so that mixed labels train the assignment too.
            assignment = torch.stack(
                [F.cross_entropy(a.logits, condition.float()) for a in self._own_assignments(reports)]
            ).mean()
            loss = loss + config.prototype_loss_weight * assignment
            terms["prototype_assignment"] = assignment
        return loss, terms


__all__ = ["DPPDForImageRestoration"]
