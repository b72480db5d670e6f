"""Convert the official CPL checkpoint (Aitical/CPLIR ``SparsePromptIR``, BasicSR ``.pth``) to ours.

The BasicSR file holds the network under ``params`` and, when trained with EMA, its moving average under
``params_ema``. The official test config loads ``params`` (BasicSR's default key), so that is the default here.
The released architecture keeps PromptIR's parameter names and drops PromptIR's never-called modules (542 keys).

    python -m modeling.conversion.convert_cpl CPLIR_Weatherbench.pth out/cpl-weatherbench
    python -m modeling.conversion.convert_cpl CPLIR_Weatherbench.pth out/cpl-weatherbench --use_ema_weights
"""

from __future__ import annotations

import logging

from ..configuration_cpl import CPLConfig
from ..modeling_cpl import CPLForImageRestoration
from .common import (
    LAYER_NORM_RULE,
    PROMPTIR_DECODER_PROMPT_RULES,
    base_argument_parser,
    checkpoint_errors_as_usage_errors,
    convert_state_dict,
    load_converted,
    read_official_checkpoint,
    save_converted,
    squeeze_prompt_components,
)

logger = logging.getLogger(__name__)

#: official key -> our key, in order: the official file uses PromptIR's names for the prompt places, the
#: Restormer names for the body.
KEY_RULES = [
    *PROMPTIR_DECODER_PROMPT_RULES,
    (r"^(?!decoder_prompts\.)", "unet."),
    LAYER_NORM_RULE,
]


def convert_cpl_checkpoint(
    checkpoint_path: str, config: CPLConfig | None = None, use_ema_weights: bool = False
) -> CPLForImageRestoration:
    """Read an official ``SparsePromptIR`` file and return our model with its weights loaded strictly."""
    container_keys = ("params_ema", "params") if use_ema_weights else ("params", "params_ema")
    official = read_official_checkpoint(checkpoint_path, container_keys=container_keys)
    model = CPLForImageRestoration(config if config is not None else CPLConfig())
    load_converted(model, convert_state_dict(official, KEY_RULES, squeeze_prompt_components))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = base_argument_parser(__doc__)
    parser.add_argument("--use_ema_weights", action="store_true",
                        help="convert `params_ema` (the EMA weights) instead of `params`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with checkpoint_errors_as_usage_errors(parser, args.checkpoint):
        model = convert_cpl_checkpoint(args.checkpoint, use_ema_weights=args.use_ema_weights)
    save_converted(model, args.output_dir)


if __name__ == "__main__":
    main()
