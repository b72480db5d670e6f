"""Convert an official Restormer checkpoint (swz30/Restormer, BasicSR ``.pth`` with ``params``) to ours.

    python -m modeling.conversion.convert_restormer deraining.pth out/restormer-deraining
    python -m modeling.conversion.convert_restormer gaussian_color_denoising_blind.pth out/dn --layer_norm_type BiasFree
"""

from __future__ import annotations

import logging

from ..configuration_restormer import RestormerConfig
from ..modeling_restormer import RestormerForImageRestoration
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

#: official key -> our key. Every body module keeps its official name under ``unet.``.
KEY_RULES = [
    (r"^", "unet."),
    LAYER_NORM_RULE,
]


def convert_restormer_checkpoint(
    checkpoint_path: str, config: RestormerConfig, use_ema_weights: bool = False
) -> RestormerForImageRestoration:
    """Read an official Restormer file and return our model with its weights loaded strictly. A BasicSR file
    holding both gives ``params``, what the official test scripts load, unless `use_ema_weights`."""
    container_keys = ("params_ema", "params") if use_ema_weights else ("params", "params_ema")
    official = read_official_checkpoint(checkpoint_path, container_keys=(*container_keys, "state_dict"))
    model = RestormerForImageRestoration(config)
    load_converted(model, convert_state_dict(official, KEY_RULES))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = base_argument_parser(__doc__)
    parser.add_argument("--layer_norm_type", default="WithBias", choices=["WithBias", "BiasFree"],
                        help="BiasFree for the official denoising checkpoints")
    parser.add_argument("--dual_pixel_task", action="store_true", help="dual-pixel defocus checkpoint")
    parser.add_argument("--use_ema_weights", action="store_true",
                        help="convert `params_ema` (the EMA weights) instead of `params` where a file holds both")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = RestormerConfig(
        layer_norm_type=args.layer_norm_type,
        dual_pixel_task=args.dual_pixel_task,
        in_channels=6 if args.dual_pixel_task else 3,
    )
    with checkpoint_errors_as_usage_errors(parser, args.checkpoint):
        model = convert_restormer_checkpoint(args.checkpoint, config, use_ema_weights=args.use_ema_weights)
    save_converted(model, args.output_dir)


if __name__ == "__main__":
    main()
