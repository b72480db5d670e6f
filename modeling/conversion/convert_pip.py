"""Convert an official PIP checkpoint (the official pip_universal repository, dict with ``params`` and ``epoch``) to ours.

The official trainer saves ``{'params': net.state_dict(), 'epoch': ...}`` for ``PIPNet_Restormer_onskip_inter``
(612 keys). Official models need the degradation label at test time, so the converted model has no
degradation estimator unless ``--with_degradation_estimator`` is given (it then starts untrained).

    python -m modeling.conversion.convert_pip pip_5task.pth out/pip-restormer
"""

from __future__ import annotations

import logging
import re

import torch

from ..configuration_pip import PIPConfig
from ..modeling_pip import PIPForImageRestoration
from .common import (
    LAYER_NORM_RULE,
    base_argument_parser,
    checkpoint_errors_as_usage_errors,
    convert_state_dict,
    load_converted,
    read_official_checkpoint,
    save_converted,
)

logger = logging.getLogger(__name__)

_PIP = r"skip_prompts.level\1.prompt_in_prompt."
_P2F = r"skip_prompts.level\1.prompt_to_feature."

#: official key -> our key, applied in order. ``promptK`` is the prompt-in-prompt module of skip level K and
#: ``low_prompt_interaction_levelK`` its prompt-to-feature interaction.
KEY_RULES = [
    LAYER_NORM_RULE,
    (r"^prompt(\d)\.detask_prompt_param$", _PIP + "degradation_prompts"),
    (r"^prompt(\d)\.low_prompt_param$", _PIP + "basic_restoration_prompt"),
    (r"^prompt(\d)\.LGM\.norm11\.", _PIP + "prompt_interaction.norm_query."),
    (r"^prompt(\d)\.LGM\.norm12\.", _PIP + "prompt_interaction.norm_context."),
    (r"^prompt(\d)\.LGM\.", _PIP + "prompt_interaction."),
    (r"^prompt(\d)\.outconv\.", _PIP + "output_conv."),
    (r"^low_prompt_interaction_level(\d)\.prompt_transformer_cross\.norm11\.", _P2F + "norm_feature."),
    (r"^low_prompt_interaction_level(\d)\.prompt_transformer_cross\.norm12\.", _P2F + "norm_prompt."),
    (r"^low_prompt_interaction_level(\d)\.prompt_transformer_cross\.reduce_channel\.", _P2F + "project_to_feature."),
    (r"^low_prompt_interaction_level(\d)\.prompt_transformer_cross\.", _P2F),
    (r"^chnl_reduce3\.", "unet.latent_projection."),
    (r"^(reduce_noise_channel_\d)\.", r"unused_official_modules.\1."),
    (r"^(?!skip_prompts\.|unused_official_modules\.|unet\.)", "unet."),
]

#: The four top-m mixing weights ``attn1..attn4`` (each of shape (1,)) become one ``branch_weights`` vector.
_BRANCH_WEIGHT = re.compile(r"^(.*\.attn)\.attn(\d)$")


def reshape_pip_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    if key.endswith("degradation_prompts"):
        return value.reshape(value.shape[1], value.shape[2])  # (1, T, C, 1, 1) -> (T, C)
    if key.endswith("basic_restoration_prompt"):
        return value.squeeze(0)  # (1, C, S, S) -> (C, S, S)
    return value


def merge_branch_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    merged, branches = {}, {}
    for key, value in state_dict.items():
        match = _BRANCH_WEIGHT.match(key)
        if match:
            branches.setdefault(match.group(1), {})[int(match.group(2))] = value.reshape(1)
        else:
            merged[key] = value
    for prefix, parts in branches.items():
        merged[f"{prefix}.branch_weights"] = torch.cat([parts[i] for i in sorted(parts)])
    return merged


def convert_official_pip_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return merge_branch_weights(convert_state_dict(official, KEY_RULES, reshape_pip_tensor))


def convert_pip_checkpoint(
    checkpoint_path: str, config: PIPConfig | None = None, with_degradation_estimator: bool = False
) -> PIPForImageRestoration:
    """Read an official PIP file and return our model with its weights loaded (strictly, estimator aside)."""
    official = read_official_checkpoint(checkpoint_path, container_keys=("params", "params_ema", "state_dict"))
    has_unused = any(k.startswith("reduce_noise_channel_") for k in official)
    if config is None:
        config = PIPConfig(
            keep_unused_official_modules=has_unused, use_degradation_estimator=with_degradation_estimator
        )
    elif has_unused and not config.keep_unused_official_modules:
        # A config given for other reasons (publish --config) still gives the file's never-called convs a place.
        config.keep_unused_official_modules = True
    model = PIPForImageRestoration(config)
    converted = convert_official_pip_state_dict(official)
    if config.use_degradation_estimator:
        # Not part of the official model: keep the freshly initialised estimator weights.
        converted.update({k: v for k, v in model.state_dict().items() if k.startswith("degradation_estimator.")})
    load_converted(model, converted)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = base_argument_parser(__doc__)
    parser.add_argument("--with_degradation_estimator", action="store_true",
                        help="add an (untrained) degradation estimator for label-free use after fine-tuning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with checkpoint_errors_as_usage_errors(parser, args.checkpoint):
        model = convert_pip_checkpoint(args.checkpoint, with_degradation_estimator=args.with_degradation_estimator)
    save_converted(model, args.output_dir, degradation_labels="noise")


if __name__ == "__main__":
    main()
