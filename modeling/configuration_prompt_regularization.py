"""Configuration fields of contrastive prompt regularisation (CPR, from CPL), shared by every method whose decoder
prompts can be forced (CPL, and PIP with sparse decoder prompts).

The regulariser itself is computed on the training side (``training/losses.py``): it needs a frozen pretrained
feature network that must never become part of the model. The model config only *names* it and stores its
settings, so a saved model records how it was trained and ``train.py`` knows what to add to the model's own loss.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_backbone import RestorationBackboneConfig, check_bool, check_finite, check_positive_int

#: Training-side losses a config can name in ``training_loss`` (implemented in ``training/losses.py``).
TRAINING_LOSSES = ("contrastive_prompt_regularization",)
CONTRASTIVE_LOSS_FORMS = ("ratio", "batch_ratio", "infonce")


@strict(accept_kwargs=True)
class ContrastivePromptRegularizationConfig(RestorationBackboneConfig):
    r"""
    Settings of contrastive prompt regularisation (CPL's CPR). The anchor is the restoration with the routed
    prompts, the positive the clean image, the negatives the same input restored with prompts the router did
    not choose; distances are taken in the feature space of a frozen pretrained CNN.

    Args:
        training_loss (`str`, *optional*): the training-side loss that `train.py` adds to the model's own loss:
            `"contrastive_prompt_regularization"`, or `None` for the model's own loss only.
        contrastive_weight (`float`, defaults to 0.1): lambda, the weight of the regulariser. The paper's value is
            not released; 0.1 is AECR-Net's weight of its contrastive regulariser (our choice). 0 turns it off.
        contrastive_loss (`str`, defaults to `"ratio"`): `"ratio"` = AECR-Net's form
            sum_l w_l d(f_l(anchor), f_l(clean)) / (sum_j d(f_l(anchor), f_l(negative_j)) + epsilon), d = mean L1
            per image, the ratios averaged over the batch (ours: no image's distances drown another's; the form
            CPL's figure matches, whose exact form is not released); `"batch_ratio"` = the same with d over the
            whole batch, one ratio of batch means, as AECR-Net's code computes it; or `"infonce"` =
            sum_l w_l InfoNCE over the cosine similarities of the flattened features with `contrastive_temperature`.
        contrastive_feature_network (`str`, defaults to `"timm/vgg19.tv_in1k"`): Hub id or local folder of the
            frozen feature network, loaded with transformers `AutoBackbone`. A timm name (Hub id under `timm/`,
            or a `hf-hub:` name) goes through `TimmBackbone` and needs `timm` (VGG19 as in the paper and
            AECR-Net); a folder or Hub id with a transformers backbone config (ResNet, ConvNeXt, ...) loads
            without timm.
        contrastive_feature_layers (`list[int]`, defaults to `[0, 1, 2, 3, 4]`): backbone `out_indices` whose
            feature maps are compared. For timm's VGG19 these are the five stages before each max-pool (relu1_2,
            relu2_2, relu3_4, relu4_4, relu5_4); AECR-Net taps relu1_1 ... relu5_1, which timm's feature
            extractor does not expose.
        contrastive_layer_weights (`list[float]`, defaults to `[1/32, 1/16, 1/8, 1/4, 1]`): w_l, one per layer
            (AECR-Net's weights).
        contrastive_num_negatives (`int`, *optional*): negatives per image, drawn at random among the prompts
            the router did not choose (independently at every prompt place). `None` uses all of them
            (prompt_len - top_k).
        contrastive_temperature (`float`, defaults to 0.1): InfoNCE temperature (ours; unused by `"ratio"`).
        contrastive_epsilon (`float`, defaults to 1e-7): added to the ratio's denominator (AECR-Net's value).
        contrastive_negatives_grad (`bool`, defaults to `False`): let gradients flow through the negative
            restorations. Off by default: with gradients the ratio can be lowered without improving the anchor,
            by making wrong-prompt restorations arbitrarily bad (the denominator is unbounded), and the negatives
            would cost a full backward pass each; detached, they are a fixed target that the anchor is pushed
            away from, as AECR-Net's negatives are.
        contrastive_routing_grad (`bool`, defaults to `False`): let the regulariser's gradient reach the routers
            (the prompt weights). Off by default (our choice; the paper does not say): the ratio's denominator
            grows with the weight the router keeps for its choice, since a stronger prompt moves the anchor further
            from every wrong-prompt restoration, so through the router the regulariser rewards one
            component kept ever more strongly for *every* input. In the 100-step toy
            (`benchmarks/cpl_prompt_drift.py`) that collapsed the routing of all three degradations onto the same
            component at every place in 3 of 3 seeds. Off, the regulariser is computed on a second forward with
            detached routing weights (the same restoration, one extra forward and backward per step): it trains
            the prompt components and the network, and the routers learn from the reconstruction loss alone.
    """

    training_loss: str | None = None
    contrastive_weight: float | int = 0.1
    contrastive_loss: str = "ratio"
    contrastive_feature_network: str = "timm/vgg19.tv_in1k"
    contrastive_feature_layers: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4)
    contrastive_layer_weights: list[float | int] | tuple[float | int, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    contrastive_num_negatives: int | None = None
    contrastive_temperature: float | int = 0.1
    contrastive_epsilon: float | int = 1e-7
    contrastive_negatives_grad: bool = False
    contrastive_routing_grad: bool = False

    def __post_init__(self, **kwargs):
        self.contrastive_feature_layers = list(self.contrastive_feature_layers)
        self.contrastive_layer_weights = list(self.contrastive_layer_weights)
        super().__post_init__(**kwargs)

    def sparse_prompt_routing(self) -> tuple[int, int] | None:
        """``(top_k, prompt_len)`` of the decoder prompts the regulariser can force, or ``None`` if there are none."""
        return None

    def validate_contrastive_prompt_regularization(self):
        if self.training_loss is not None and self.training_loss not in TRAINING_LOSSES:
            raise ValueError(f"training_loss must be one of {TRAINING_LOSSES} or None, got {self.training_loss!r}")
        for name in ("contrastive_weight", "contrastive_temperature", "contrastive_epsilon"):
            check_finite(name, getattr(self, name))
        check_bool("contrastive_negatives_grad", self.contrastive_negatives_grad)
        check_bool("contrastive_routing_grad", self.contrastive_routing_grad)
        if self.contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be non-negative, got {self.contrastive_weight}")
        if self.contrastive_temperature <= 0 or self.contrastive_epsilon <= 0:
            raise ValueError("contrastive_temperature and contrastive_epsilon must be positive")
        if self.contrastive_loss not in CONTRASTIVE_LOSS_FORMS:
            raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSS_FORMS}, got {self.contrastive_loss!r}")
        if not self.contrastive_feature_network:
            raise ValueError("contrastive_feature_network must name a Hub id or a folder")
        if not self.contrastive_feature_layers:
            raise ValueError("contrastive_feature_layers must list at least one backbone out_index")
        if len(self.contrastive_layer_weights) != len(self.contrastive_feature_layers):
            raise ValueError(
                f"contrastive_layer_weights lists {len(self.contrastive_layer_weights)} weights for "
                f"{len(self.contrastive_feature_layers)} contrastive_feature_layers"
            )
        for weight in self.contrastive_layer_weights:
            check_finite("contrastive_layer_weights", weight)
            if weight < 0:  # would reward restorations far from the clean image on that layer
                raise ValueError(f"contrastive_layer_weights must be non-negative, got {self.contrastive_layer_weights}")
        if self.contrastive_num_negatives is not None:
            check_positive_int("contrastive_num_negatives", self.contrastive_num_negatives)
        if self.training_loss == "contrastive_prompt_regularization":
            routing = self.sparse_prompt_routing()
            if routing is None:
                raise ValueError(
                    "contrastive prompt regularisation needs sparse decoder prompts to force (CPL; PIP with "
                    "decoder_prompts=True and decoder_prompt_top_k set)"
                )
            top_k, prompt_len = routing
            unchosen = prompt_len - top_k
            if unchosen < 1:
                raise ValueError(f"top-{top_k} routing over {prompt_len} prompts leaves no prompt for a negative")
            if self.contrastive_num_negatives is not None and self.contrastive_num_negatives > unchosen:
                raise ValueError(
                    f"contrastive_num_negatives={self.contrastive_num_negatives} but only {unchosen} prompts are "
                    f"left unchosen by top-{top_k} routing over {prompt_len}"
                )


__all__ = ["CONTRASTIVE_LOSS_FORMS", "ContrastivePromptRegularizationConfig", "TRAINING_LOSSES"]
