"""Output dataclass returned by every restoration model in this package."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class ImageRestorationOutput(ModelOutput):
    """Output of a ``*ForImageRestoration`` model.

    With ``return_dict=False`` a model returns ``output.to_tuple()``, as transformers models do: the fields below
    that are not ``None``, in this order (so with ``labels``, ``loss`` first and ``loss_terms`` last).

    Args:
        loss: training loss when ``labels`` were given (the method's own loss, regularisers included).
        reconstruction: restored images, (B, C, H, W), same size as the input.
        degradation_weights: (B, num_degradations) weights of the degradation classes the model used
            (one-hot / mixed labels when given, the estimator's soft weights otherwise). PIP and DPPD (DPPD:
            the mean of its prompt modules' prototype assignment probabilities when no labels are given).
        degradation_logits: (B, num_degradations) logits of the built-in degradation estimator, if any.
        prompt_weights: per prompt level (deepest first), the (B, prompt_len) softmax weights with which
            PromptIR-style prompt generators mixed their prompt components; for DPPD, each prompt module's
            (B, num_degradations) prototype assignment probabilities.
        loss_terms: the named, unweighted parts of ``loss`` (e.g. ``pixel``, ``prompt_angle``); they keep their
            autograd graph (see ``PromptRestorationPreTrainedModel``).
    """

    loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    degradation_weights: torch.Tensor | None = None
    degradation_logits: torch.Tensor | None = None
    prompt_weights: tuple[torch.Tensor, ...] | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
