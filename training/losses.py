"""Training-side losses: what a model cannot compute itself because it needs a network that is not part of it.

CPL's *contrastive prompt regularisation* (CPR) compares restorations in the feature space of a frozen pretrained
CNN. That network must never enter the saved weights, the EMA, the optimizer or DDP, so it lives here, in a
loss module that ``train.py`` builds next to (never inside) the model, for models whose config names it:

    training_loss = build_training_loss(model.config, device)      # None unless config.training_loss is set
    output = model(pixel_values=degraded, labels=clean, **kwargs)   # the model's own loss (L1 for CPL)
    loss, terms = training_loss(unwrapped_model, output, degraded, clean, kwargs)

CPR (settings documented in ``modeling.configuration_prompt_regularization``):

- anchor = the restoration with the routed prompts: ``output.reconstruction`` (it keeps its graph) when
  ``contrastive_routing_grad``, else (default) the same restoration from a second forward with detached routing
  weights (``routing_grad=False``), so that the regulariser does not train the routers;
- positive = the clean image;
- negatives = the same input restored with prompt components the router did not choose, at every prompt place
  (``forced_prompt=PerPlace(...)``), all of them or ``contrastive_num_negatives`` drawn at random; computed in
  one batched forward, without gradient unless ``contrastive_negatives_grad``;
- ``"ratio"``: sum_l w_l d(f_l(a), f_l(p)) / (sum_j d(f_l(a), f_l(n_j)) + eps), d = mean absolute difference per
  image, the ratios averaged over the batch (AECR-Net's contrastive regularisation with several negatives);
  ``"batch_ratio"``: the same with d over the whole batch, one ratio of batch means, as AECR-Net's code has it;
  ``"infonce"``: sum_l w_l mean_b -log softmax over {positive, negatives} of cos(f_l(a), f_l(x)) / temperature.

Feature network: loaded with transformers' ``AutoBackbone``. A timm name (``timm/vgg19.tv_in1k``, the paper's
VGG19) becomes ``AutoBackbone.from_config(TimmBackboneConfig(...), pretrained=True)`` -> ``TimmBackbone`` (needs
``timm``, which imports ``torchvision``). Anything else (a folder or Hub id with a transformers backbone config:
ResNet, ConvNeXt, ...) loads through the class ``AutoBackbone`` maps its config to. (transformers 5.23's
``AutoBackbone.from_pretrained`` itself first asks the Hub whether the repository exists: it fails offline and
for local folders, hence the two steps.)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from modeling import PerPlace
from modeling.configuration_prompt_regularization import CONTRASTIVE_LOSS_FORMS

#: ImageNet statistics: the inputs every pretrained backbone offered here (VGG19, ResNet, ConvNeXt) expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_timm_name(name_or_path: str) -> bool:
    """Hub ids under ``timm/`` and ``hf-hub:`` names are timm models; folders and other ids are transformers ones."""
    return not os.path.isdir(name_or_path) and (name_or_path.startswith("timm/") or name_or_path.startswith("hf-hub:"))


def load_feature_network(name_or_path: str, out_indices: list[int]) -> nn.Module:
    """A frozen, eval-mode backbone returning the feature maps of ``out_indices`` (``.feature_maps``)."""
    from transformers import AutoBackbone, AutoConfig

    if is_timm_name(name_or_path):
        from transformers.utils import is_timm_available

        if not is_timm_available():
            raise ImportError(
                f"contrastive_feature_network {name_or_path!r} is a timm model and needs `pip install timm` (timm "
                "imports torchvision); or set it to a transformers backbone, e.g. 'microsoft/resnet-50'"
            )
        from transformers import TimmBackboneConfig

        backbone = name_or_path if name_or_path.startswith("hf-hub:") else f"hf-hub:{name_or_path}"
        config = TimmBackboneConfig(backbone=backbone, out_indices=list(out_indices), features_only=True)
        network = AutoBackbone.from_config(config, pretrained=True)
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

        config = AutoConfig.from_pretrained(name_or_path, out_indices=list(out_indices))
        if type(config) not in MODEL_FOR_BACKBONE_MAPPING:
            raise ValueError(f"{name_or_path!r} ({config.model_type}) has no AutoBackbone class")
        network = MODEL_FOR_BACKBONE_MAPPING[type(config)].from_pretrained(name_or_path, config=config)
    network.eval().requires_grad_(False)
    return network


def contrastive_ratio(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, epsilon: float, per_image: bool = True
) -> torch.Tensor:
    """d(a, p) / (sum_j d(a, n_j) + epsilon), d the mean absolute difference: per image, then the ratios averaged
    (`per_image`, form ``"ratio"``), or over the whole batch, one ratio of batch means (form ``"batch_ratio"``, as
    AECR-Net's code computes it with ``L1Loss``). a, p: (B, ...); negatives: (N, B, ...)."""
    if not per_image:
        to_positive = (anchor - positive).abs().mean()
        to_negatives = (anchor.unsqueeze(0) - negatives).abs().flatten(1).mean(dim=1).sum()
        return to_positive / (to_negatives + epsilon)
    to_positive = (anchor - positive).abs().flatten(1).mean(dim=1)
    to_negatives = (anchor.unsqueeze(0) - negatives).abs().flatten(2).mean(dim=2).sum(dim=0)
    return (to_positive / (to_negatives + epsilon)).mean()


def contrastive_infonce(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """-log of the positive's softmax share among {positive, negatives}, cosine similarities / temperature."""
    anchor = F.normalize(anchor.flatten(1), dim=1)
    positive = F.normalize(positive.flatten(1), dim=1)
    negatives = F.normalize(negatives.flatten(2), dim=2)
    similarities = torch.cat([(anchor * positive).sum(1)[None], (anchor[None] * negatives).sum(2)]) / temperature
    return -F.log_softmax(similarities, dim=0)[0].mean()


def negative_prompt_indices(
    prompt_weights: tuple[torch.Tensor, ...], num_negatives: int | None, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Per prompt place, (N, B) indices of components the router did not choose (weight 0): all of them in index
    order when ``num_negatives`` is None, else ``num_negatives`` of them drawn at random per image and place."""
    indices = []
    for weights in prompt_weights:
        chosen = weights.detach() > 0
        unchosen = int((~chosen).sum(dim=1).min())
        count = unchosen if num_negatives is None else num_negatives
        if count < 1 or count > unchosen:
            raise ValueError(f"{unchosen} unchosen prompts per image at a place, {count} negatives asked for")
        if num_negatives is None:
            order = torch.arange(weights.shape[1], device=weights.device, dtype=torch.float32).expand_as(weights)
        else:
            order = torch.rand(weights.shape, generator=generator, device=weights.device)
        order = order.masked_fill(chosen, float("inf"))
        indices.append(order.argsort(dim=1)[:, :count].T)
    return indices


def repeat_forward_kwargs(kwargs: dict, times: int) -> dict:
    """Repeat per-image forward arguments (label lists, (B, ...) tensors) for a batch of ``times`` x B."""
    repeated = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            repeated[key] = value.repeat(times, *([1] * (value.ndim - 1)))
        elif isinstance(value, (list, tuple)):
            repeated[key] = list(value) * times
        else:
            repeated[key] = value
    return repeated


class ContrastivePromptRegularization(nn.Module):
    """CPL's contrastive prompt regularisation on top of a model's own loss (see the module docstring)."""

    def __init__(
        self,
        feature_network: nn.Module,
        layer_weights: list[float],
        weight: float = 0.1,
        loss_form: str = "ratio",
        num_negatives: int | None = None,
        temperature: float = 0.1,
        epsilon: float = 1e-7,
        negatives_grad: bool = False,
        routing_grad: bool = False,
    ) -> None:
        super().__init__()
        if loss_form not in CONTRASTIVE_LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {CONTRASTIVE_LOSS_FORMS}, got {loss_form!r}")
        self.feature_network = feature_network.eval().requires_grad_(False)
        self.layer_weights = list(layer_weights)
        self.weight, self.loss_form, self.num_negatives = weight, loss_form, num_negatives
        self.temperature, self.epsilon, self.negatives_grad = temperature, epsilon, negatives_grad
        self.routing_grad = routing_grad
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config) -> "ContrastivePromptRegularization":
        return cls(
            load_feature_network(config.contrastive_feature_network, config.contrastive_feature_layers),
            layer_weights=config.contrastive_layer_weights,
            weight=config.contrastive_weight,
            loss_form=config.contrastive_loss,
            num_negatives=config.contrastive_num_negatives,
            temperature=config.contrastive_temperature,
            epsilon=config.contrastive_epsilon,
            negatives_grad=config.contrastive_negatives_grad,
            routing_grad=config.contrastive_routing_grad,
        )

    def train(self, mode: bool = True) -> "ContrastivePromptRegularization":
        # The feature network stays in eval mode (frozen statistics) whatever the caller does.
        super().train(mode)
        self.feature_network.eval()
        return self

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.mean.dtype
        normalised = (images.to(dtype) - self.mean) / self.std
        feature_maps = self.feature_network(normalised).feature_maps
        if len(feature_maps) != len(self.layer_weights):
            raise ValueError(f"the feature network returns {len(feature_maps)} maps for {len(self.layer_weights)} layer weights")
        return tuple(feature_maps)

    def restore_negatives(self, model, pixel_values, prompt_weights, forward_kwargs) -> torch.Tensor:
        """(N, B, C, H, W): the input restored with unchosen prompts, N negatives in one batched forward."""
        indices = negative_prompt_indices(prompt_weights, self.num_negatives)
        count = indices[0].shape[0]
        forced = PerPlace(place.reshape(-1) for place in indices)  # negative-major, like pixel_values.repeat
        with torch.set_grad_enabled(self.negatives_grad and torch.is_grad_enabled()):
            restored = model(
                pixel_values.repeat(count, 1, 1, 1), forced_prompt=forced, routing_grad=self.routing_grad,
                **repeat_forward_kwargs(forward_kwargs, count),
            ).reconstruction
        return restored.view(count, *pixel_values.shape[:1], *restored.shape[1:])

    def regularizer(self, anchor: torch.Tensor, clean: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The weighted sum over layers of the ratio (or InfoNCE) term."""
        count, batch = negatives.shape[:2]
        anchor_features = self.features(anchor)
        with torch.no_grad():
            clean_features = self.features(clean)
        with torch.set_grad_enabled(self.negatives_grad and torch.is_grad_enabled()):
            negative_features = self.features(negatives.flatten(0, 1))
        total = anchor.new_zeros((), dtype=self.mean.dtype)
        for weight, a, p, n in zip(self.layer_weights, anchor_features, clean_features, negative_features):
            n = n.view(count, batch, *n.shape[1:])
            if self.loss_form in ("ratio", "batch_ratio"):
                term = contrastive_ratio(a, p, n, self.epsilon, per_image=self.loss_form == "ratio")
            else:
                term = contrastive_infonce(a, p, n, self.temperature)
            total = total + weight * term
        return total

    def forward(
        self, model, output, pixel_values: torch.Tensor, labels: torch.Tensor, forward_kwargs: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(output.loss + weight x CPR, terms)``; ``output`` is the model's forward with ``labels``.

        ``model`` restores the negatives: pass the unwrapped model under DDP (one synchronised forward per step).
        With ``weight`` 0 the model's own loss is returned unchanged (no negatives are computed).
        """
        terms = dict(output.loss_terms or {})
        if self.weight == 0:
            return output.loss, terms
        if output.prompt_weights is None:
            raise ValueError("contrastive prompt regularisation needs a model that reports prompt_weights")
        forward_kwargs = forward_kwargs or {}
        negatives = self.restore_negatives(model, pixel_values, output.prompt_weights, forward_kwargs)
        anchor = output.reconstruction
        if not self.routing_grad and torch.is_grad_enabled():
            # The same restoration with the routing weights detached: the regulariser's gradient reaches the
            # prompts and the network but not the routers (see contrastive_routing_grad for why).
            anchor = model(pixel_values, routing_grad=False, **forward_kwargs).reconstruction
        regularizer = self.regularizer(anchor, labels.to(anchor.dtype), negatives)
        terms["contrastive_prompt"] = regularizer
        return output.loss + self.weight * regularizer.to(output.loss.dtype), terms


def build_training_loss(config, device: torch.device | str | None = None) -> ContrastivePromptRegularization | None:
    """The training-side loss a model config names in ``training_loss`` (None when it names none)."""
    name = getattr(config, "training_loss", None)
    if name is None:
        return None
    if name == "contrastive_prompt_regularization":
        loss = ContrastivePromptRegularization.from_config(config)
        return loss if device is None else loss.to(device)
    raise ValueError(f"unknown training_loss {name!r}")


__all__ = [
    "ContrastivePromptRegularization",
    "build_training_loss",
    "contrastive_infonce",
    "contrastive_ratio",
    "load_feature_network",
    "negative_prompt_indices",
]
