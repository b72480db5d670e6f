"""Convert the official PromptIR checkpoint (va1shn9v/PromptIR, Lightning ``model.ckpt``) to ours.

The Lightning file stores the network under ``state_dict`` with the ``net.`` prefix of ``PromptIRModel``.

    python -m modeling.conversion.convert_promptir model.ckpt out/promptir-3task
    python -m modeling.conversion.convert_promptir model.ckpt out/promptir --drop_unused_official_modules
"""

from __future__ import annotations

import logging

from ..configuration_promptir import PromptIRConfig
from ..modeling_promptir import PromptIRForImageRestoration
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

UNUSED_OFFICIAL_MODULES = (
    "chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
    "reduce_noise_channel_1", "reduce_noise_channel_2", "reduce_noise_channel_3",
)

#: official key -> our key, in order (the prompt places are named as in every PromptIR-derived official code).
KEY_RULES = [
    *PROMPTIR_DECODER_PROMPT_RULES,
    (r"^(" + "|".join(UNUSED_OFFICIAL_MODULES) + r")\.", r"unused_official_modules.\1."),
    (r"^(?!decoder_prompts\.|unused_official_modules\.)", "unet."),
    LAYER_NORM_RULE,
]

def convert_promptir_checkpoint(
    checkpoint_path: str, config: PromptIRConfig | None = None, drop_unused_official_modules: bool = False
) -> PromptIRForImageRestoration:
    """Read an official PromptIR file and return our model with its weights loaded strictly."""
    # Only Lightning's container: CPL's BasicSR files (params / params_ema) hold the very same keys, and converting
    # one here would silently give a soft-routing PromptIR instead of CPL.
    official = read_official_checkpoint(checkpoint_path, container_keys=("state_dict",), strip_prefix="net.")
    if drop_unused_official_modules:
        official = {k: v for k, v in official.items() if k.split(".")[0] not in UNUSED_OFFICIAL_MODULES}
    has_unused = any(k.split(".")[0] in UNUSED_OFFICIAL_MODULES for k in official)
    if config is None:
        config = PromptIRConfig(keep_unused_official_modules=has_unused)
    elif has_unused and not config.keep_unused_official_modules:
        # A config given for other reasons (publish --config) still gives the file's never-called convs a place.
        config.keep_unused_official_modules = True
    model = PromptIRForImageRestoration(config)
    load_converted(model, convert_state_dict(official, KEY_RULES, squeeze_prompt_components))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = base_argument_parser(__doc__)
    parser.add_argument("--drop_unused_official_modules", action="store_true",
                        help="leave out the six 1x1 convs the official model never calls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with checkpoint_errors_as_usage_errors(parser, args.checkpoint):
        model = convert_promptir_checkpoint(args.checkpoint, drop_unused_official_modules=args.drop_unused_official_modules)
    save_converted(model, args.output_dir)


if __name__ == "__main__":
    main()
