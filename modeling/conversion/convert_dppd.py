"""Convert a released DPPD checkpoint ("PromptIR + DPPD", Aitical/DPPD) to ours — UNVERIFIED SKELETON.

**No DPPD checkpoint key is known.** The project page links Google-Drive folders only, and no model code was
released, so the key table below is a *placeholder*: it assumes the released files are PromptIR Lightning
checkpoints (``state_dict`` with the ``net.`` prefix) whose backbone keys are PromptIR's and whose prompt
modules ``prompt3`` / ``prompt2`` / ``prompt1`` (latent / after decoder level 3 / after decoder level 2, as
PromptIR numbers them) contain modules named like ours. Nothing here has been checked against a real file.

Loading is strict: every missing, unexpected or wrongly shaped key is reported, and nothing is saved unless
the file maps one to one. To write the real table, first list what a file holds::

    python -m modeling.conversion.convert_dppd dppd_3task.ckpt --inspect
    python -m modeling.conversion.convert_dppd dppd_3task.ckpt out/dppd-3task --config '{"degradation_names": ["noise", "rain", "haze"]}'

then replace ``PLACEHOLDER_PROMPT_MODULE_PREFIXES`` / ``PLACEHOLDER_KEY_RULES`` (and, if the architecture differs,
the ``DPPDConfig`` defaults), and add a recorded output slice to the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter

import torch

from ..configuration_dppd import DPPDConfig
from ..modeling_dppd import DPPDForImageRestoration
from .common import (
    LAYER_NORM_RULE,
    checkpoint_errors_as_usage_errors,
    convert_state_dict,
    read_official_checkpoint,
    save_converted,
)

logger = logging.getLogger(__name__)

UNVERIFIED = "UNVERIFIED: the DPPD key table is a placeholder (no released checkpoint has been inspected)"

# ---- PLACEHOLDER (unverified) -------------------------------------------------------------------------------
#: Assumed official prefix of each prompt module -> our prompt place (PromptIR's numbering: 3 = latent).
PLACEHOLDER_PROMPT_MODULE_PREFIXES = [
    ("prompt3.", "decoder_prompts.latent."),
    ("prompt2.", "decoder_prompts.level3."),
    ("prompt1.", "decoder_prompts.level2."),
]
#: Assumed: the latent's 8 dim -> 4 dim reduction keeps PromptIR's name.
PLACEHOLDER_KEY_RULES = [
    (r"^reduce_noise_level3\.", "decoder_prompts.latent.output_projection."),
    *(("^" + re.escape(official), ours) for official, ours in PLACEHOLDER_PROMPT_MODULE_PREFIXES),
]
# ---- end of PLACEHOLDER ---------------------------------------------------------------------------------------

#: official key -> our key, in order: the placeholder rules, then PromptIR's backbone names under ``unet.``.
KEY_RULES = [
    *PLACEHOLDER_KEY_RULES,
    (r"^(?!decoder_prompts\.)", "unet."),
    LAYER_NORM_RULE,
]


def key_report(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, list]:
    """Missing, unexpected and wrongly shaped keys of a converted state dict against ``model`` (all of them)."""
    ours = model.state_dict()
    return {
        "missing": sorted(set(ours) - set(state_dict)),
        "unexpected": sorted(set(state_dict) - set(ours)),
        "shape_mismatch": sorted(
            (key, list(value.shape), list(ours[key].shape))
            for key, value in state_dict.items()
            if key in ours and tuple(value.shape) != tuple(ours[key].shape)
        ),
    }


def _report_text(report: dict[str, list], limit: int = 12) -> str:
    lines = []
    for kind, entries in report.items():
        if entries:
            shown = ", ".join(str(entry) for entry in entries[:limit])
            more = f" ... (+{len(entries) - limit})" if len(entries) > limit else ""
            lines.append(f"{kind} ({len(entries)}): {shown}{more}")
    return "; ".join(lines)


def convert_dppd_checkpoint(checkpoint_path: str, config: DPPDConfig | None = None) -> DPPDForImageRestoration:
    """Read a DPPD file and return our model with its weights loaded strictly (ValueError naming every bad key)."""
    logger.warning(UNVERIFIED)
    official = read_official_checkpoint(
        checkpoint_path, container_keys=("state_dict", "params", "params_ema"), strip_prefix="net."
    )
    model = DPPDForImageRestoration(config if config is not None else DPPDConfig())
    converted = convert_state_dict(official, KEY_RULES)
    report = key_report(model, converted)
    if any(report.values()):
        raise ValueError(f"{UNVERIFIED}. The converted checkpoint does not match the model: {_report_text(report)}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def inspect_checkpoint(checkpoint_path: str) -> str:
    """Every key of the file with its shape, plus a count per top-level prefix: what a real key table needs."""
    official = read_official_checkpoint(
        checkpoint_path, container_keys=("state_dict", "params", "params_ema"), strip_prefix="net."
    )
    prefixes = Counter(key.split(".")[0] for key in official)
    lines = [f"{len(official)} keys; per top-level prefix: {dict(prefixes)}"]
    lines += [f"{key}\t{list(value.shape)}" for key, value in official.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="released DPPD checkpoint (.ckpt / .pth)")
    parser.add_argument("output_dir", nargs="?", help="folder to write config.json + model.safetensors (+ code)")
    parser.add_argument("--inspect", action="store_true", help="only list the file's keys and shapes")
    parser.add_argument("--config", type=json.loads, default={}, help="DPPDConfig overrides, JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.inspect:
        with checkpoint_errors_as_usage_errors(parser, args.checkpoint):
            sys.stdout.write(inspect_checkpoint(args.checkpoint) + "\n")
        return
    if not args.output_dir:
        parser.error("output_dir is required unless --inspect is given")
    if not isinstance(args.config, dict):
        parser.error(f"--config takes a JSON object of DPPDConfig fields, got {args.config!r}")
    with checkpoint_errors_as_usage_errors(parser, args.checkpoint):
        model = convert_dppd_checkpoint(args.checkpoint, DPPDConfig(**args.config))
    save_converted(model, args.output_dir)


if __name__ == "__main__":
    main()
