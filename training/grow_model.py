"""Deepen a trained restoration model without changing what it computes, then keep training it.

    python -m training.grow_model --model training/weights/pip-restormer-cpu-step23620 \
        --num_blocks 1 2 2 6 --output outputs/pip-restormer-grown

The Transformer stages are ``nn.Sequential`` stacks of pre-norm residual blocks, ``x + MDTA(LN(x))`` then
``x + GDFN(LN(x))``. A block whose two output projections (``attn.project_out`` and ``ffn.project_out``, both
1x1 convolutions) are zero, biases included where the config has them, is the identity, so appending such blocks to a stage leaves the model's
output unchanged to the last bit, while the gradient reaching the zero projections is not zero: training grows
them from there (the zero-initialised residual branch of ReZero / SkipInit, applied to a trained network). The
other weights of a new block take the model's own initialisation.

Use it when a small model's validation has flattened: the extra depth starts from the trained function instead
of from scratch, so no CPU-hour already spent is lost. Deeper stages at low resolution are cheap per pixel (the
latent runs at 1/64 of the pixels) and widen the receptive field, which large blur kernels need (NAFNet's
deblurring configuration, for one, puts most of its blocks there).

Works for every model here built on the shared U-Net body (Restormer, PromptIR, PIP, CPL, DPPD): the config's
``num_blocks`` (encoder levels 1-3 and the latent; the decoder reuses levels 1-3) and ``num_refinement_blocks``
may only grow. The script checks on a random image that the output is unchanged before it writes anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.checkpointing import check_output_folder, folder_written_atomically  # noqa: E402

logger = logging.getLogger("training.grow_model")

#: Stage modules of the shared body and the config entry that sets their depth (index into ``num_blocks``, or
#: ``None`` for ``num_refinement_blocks``).
STAGE_DEPTHS = {
    "encoder_level1": 0, "encoder_level2": 1, "encoder_level3": 2, "latent": 3,
    "decoder_level3": 2, "decoder_level2": 1, "decoder_level1": 0, "refinement": None,
}
#: The residual branches' last layers, zeroed in every new block so the block starts as the identity.
ZERO_INIT_SUFFIXES = ("attn.project_out.weight", "ffn.project_out.weight", "attn.project_out.bias",
                      "ffn.project_out.bias")

#: A weight of block ``i`` of a body stage (every model here holds the shared body as ``unet``).
_BLOCK_KEY = re.compile(r"(?:^|\.)unet\.(" + "|".join(STAGE_DEPTHS) + r")\.(\d+)\.")


def _stage_depth(config, stage: str) -> int:
    index = STAGE_DEPTHS[stage]
    return int(config.num_refinement_blocks) if index is None else int(config.num_blocks[index])


def grow_model(
    model: torch.nn.Module, num_blocks: Sequence[int], num_refinement_blocks: Optional[int] = None, seed: int = 0
) -> torch.nn.Module:
    """A deeper copy of ``model`` that computes the same function: new blocks appended, residual outputs zero.

    ``num_blocks`` (four entries) and ``num_refinement_blocks`` (default: unchanged) must each be ≥ the model's.
    Raises ``ValueError`` for a shrink, a wrong length or a model without these config fields.
    """
    config = model.config
    for field in ("num_blocks", "num_refinement_blocks"):
        if not hasattr(config, field):
            raise ValueError(
                f"{type(model).__name__} has no {field!r} in its config; it is not built on the U-Net body"
            )
    num_blocks = [int(count) for count in num_blocks]
    if len(num_blocks) != len(config.num_blocks):
        raise ValueError(f"num_blocks needs {len(config.num_blocks)} entries, got {num_blocks}")
    refinement = config.num_refinement_blocks if num_refinement_blocks is None else int(num_refinement_blocks)
    old_depths = list(config.num_blocks) + [config.num_refinement_blocks]
    new_depths = num_blocks + [refinement]
    if any(new < old for new, old in zip(new_depths, old_depths)):
        raise ValueError(f"blocks can only be added: {old_depths[:-1]} (+{old_depths[-1]} refinement) -> "
                         f"{new_depths[:-1]} (+{new_depths[-1]} refinement)")

    new_config = config.__class__.from_dict({**config.to_dict(), "num_blocks": num_blocks,
                                             "num_refinement_blocks": refinement})
    torch.manual_seed(seed)  # the new blocks' non-zero weights: the class's own initialisation, reproducibly
    grown = model.__class__(new_config)
    grown.to(next(model.parameters()).dtype)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected:
        raise RuntimeError(f"weights with no place in the grown model: {unexpected[:5]}")
    for key in missing:  # only the appended blocks may be missing
        match = _BLOCK_KEY.search(key)
        if match is None or int(match.group(2)) < _stage_depth(config, match.group(1)):
            raise RuntimeError(f"weight {key!r} of the grown model is neither loaded nor in a new block")
    state = grown.state_dict()
    with torch.no_grad():
        for key in missing:
            if key.endswith(ZERO_INIT_SUFFIXES):
                state[key].zero_()
    return grown


def check_same_output(original: torch.nn.Module, grown: torch.nn.Module, size: int = 64, seed: int = 0) -> float:
    """Max absolute difference of the two models' restorations of one random image (with a label where taken)."""
    generator = torch.Generator().manual_seed(seed)
    # in the models' own precision (a bf16 checkpoint is grown in bf16)
    pixels = torch.rand(1, 3, size, size, generator=generator).to(next(original.parameters()).dtype)
    kwargs = {}
    names = getattr(original.config, "degradation_names", None)
    if names:
        kwargs["degradation_labels"] = [names[0]]
    original.eval()
    grown.eval()
    with torch.no_grad():
        before = original(pixel_values=pixels, **kwargs).reconstruction
        after = grown(pixel_values=pixels, **kwargs).reconstruction
    return float((before - after).abs().max())


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="trained model folder or Hub id")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for the grown model: new, empty or an earlier model folder (replaced)")
    parser.add_argument("--num_blocks", required=True, type=int, nargs="+",
                        help="blocks at encoder levels 1-3 and the latent (the decoder reuses levels 1-3)")
    parser.add_argument("--num_refinement_blocks", type=int, default=None, help="default: unchanged")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new blocks' initialisation")
    args = parser.parse_args(argv)
    try:  # before anything is loaded: a folder that is not a model folder would be replaced whole
        check_output_folder(args.output, [args.model])
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    from modeling import save_restoration_folder
    from modeling.inference import load_model, load_processor

    try:
        model = load_model(args.model, device="cpu")
        grown = grow_model(model, args.num_blocks, args.num_refinement_blocks, args.seed)
    except (OSError, ValueError) as error:  # a missing model, fewer blocks: one line, as argparse reports options
        print(f"grow_model: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    difference = check_same_output(model, grown)
    if difference != 0.0:
        raise RuntimeError(f"the grown model's output differs from the original's by {difference:g}; nothing written")
    record = {
        "source": str(args.model),
        "num_blocks": [list(model.config.num_blocks), list(grown.config.num_blocks)],
        "num_refinement_blocks": [model.config.num_refinement_blocks, grown.config.num_refinement_blocks],
        "parameters": [sum(p.numel() for p in model.parameters()), sum(p.numel() for p in grown.parameters())],
        "max_abs_output_difference": difference,
        "seed": args.seed,
    }
    processor = load_processor(args.model)  # the saved one, else the defaults
    with folder_written_atomically(args.output) as partial:
        save_restoration_folder(grown, partial, processor)
        (partial / "grow_model.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("grown %s -> %s: %s -> %s parameters, output unchanged (max |difference| %g)", args.model,
                args.output, f"{record['parameters'][0]:,}", f"{record['parameters'][1]:,}", difference)
    return record


if __name__ == "__main__":
    main()
