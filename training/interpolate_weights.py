"""Average the weights of models of one architecture: a point on the line between two fine-tuning runs.

    python -m training.interpolate_weights --models training/weights/pip-restormer-step47591 \
        outputs/pip-restormer-cpu-v22 --weights 0.5 0.5 --output outputs/pip-restormer-interpolated

Two runs that continue one another (one model trained on with another task mix) stay in one basin of the loss,
so the straight line between their weights passes through models that keep part of what each run gained
(the weight-space ensembles of WiSE-FT and "model soups"). Use it when a continued run gains on some
degradations and loses on others: an interpolated model trades between the two without another training run.
Every interpolated model still has to be evaluated like any other before it is shipped.

Each floating-point weight becomes ``sum_i weights[i] * weight_i`` (computed in float64, stored in the models'
dtype); the weights are non-negative and sum to 1. Models must share their config (apart from bookkeeping
fields such as ``_name_or_path``); non-float tensors (counters, indices) must be equal in every model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.modeling_utils import model_config_fields  # noqa: E402
from training.checkpointing import check_output_folder, folder_written_atomically  # noqa: E402

logger = logging.getLogger("training.interpolate_weights")

def interpolate_state_dicts(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """The weighted average of ``states`` (same keys and shapes); ``weights`` are ≥ 0 and sum to 1."""
    if len(states) < 2 or len(states) != len(weights):
        raise ValueError(f"need two or more state dicts and one weight each, got {len(states)} and {len(weights)}")
    if any(weight < 0 for weight in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ValueError(f"weights must be non-negative and sum to 1, got {list(weights)}")
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if set(state) != set(keys):
            different = sorted(set(state) ^ set(keys))
            raise ValueError(f"model {index} has other weights than model 0: {different[:5]}")
    averaged = {}
    for key in keys:
        tensors = [state[key] for state in states]
        if any(tensor.shape != tensors[0].shape for tensor in tensors):
            raise ValueError(f"{key}: shapes differ: {[tuple(tensor.shape) for tensor in tensors]}")
        if not tensors[0].is_floating_point():
            if any(not torch.equal(tensor, tensors[0]) for tensor in tensors):
                raise ValueError(f"{key}: a non-float tensor differs between the models")
            averaged[key] = tensors[0].clone()
            continue
        total = sum(weight * tensor.double() for weight, tensor in zip(weights, tensors))
        averaged[key] = total.to(tensors[0].dtype)
    return averaged


def architecture(config) -> dict:
    """The config as a dict without the bookkeeping fields: equal for models that can be averaged."""
    return model_config_fields(config)


def interpolate_models(models: Sequence[torch.nn.Module], weights: Sequence[float]) -> torch.nn.Module:
    """A copy of ``models[0]`` holding the weighted average of all models' weights."""
    reference = architecture(models[0].config)
    for index, model in enumerate(models[1:], start=1):
        if type(model) is not type(models[0]):
            raise ValueError(f"model {index} is a {type(model).__name__}, model 0 a {type(models[0]).__name__}")
        other = architecture(model.config)
        if other != reference:
            fields = sorted(key for key in set(other) | set(reference) if other.get(key) != reference.get(key))
            raise ValueError(f"model {index}'s config differs from model 0's in {fields}")
    averaged = interpolate_state_dicts([model.state_dict() for model in models], weights)
    result = models[0].__class__(models[0].config).to(next(models[0].parameters()).dtype)  # the models' dtype
    result.load_state_dict(averaged, strict=True)
    return result.eval()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, nargs="+", help="two or more model folders or Hub ids")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one per model, non-negative, summing to 1 (default: equal)")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for the interpolated model: new, empty or an earlier model folder (replaced)")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error(f"--models needs two or more models, got {len(args.models)}")
    if args.weights is not None and len(args.weights) != len(args.models):
        parser.error(f"--weights needs one weight per model ({len(args.models)}), got {len(args.weights)}")
    try:  # before anything is loaded: a folder that is not a model folder would be replaced whole
        check_output_folder(args.output, args.models)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    from modeling import save_restoration_folder
    from modeling.inference import load_model, load_processor

    weights = args.weights if args.weights is not None else [1.0 / len(args.models)] * len(args.models)
    try:
        models = [load_model(source, device="cpu") for source in args.models]
        interpolated = interpolate_models(models, weights)
    except (OSError, ValueError) as error:  # a missing model, bad weights, two architectures: one line, not a traceback
        print(f"interpolate_weights: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    record = {"models": [str(source) for source in args.models], "weights": list(weights)}
    processor = load_processor(args.models[0])
    with folder_written_atomically(args.output) as partial:
        save_restoration_folder(interpolated, partial, processor)
        (partial / "interpolate_weights.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("%s: %s", args.output, ", ".join(f"{w:g} x {m}" for w, m in zip(weights, args.models)))
    return record


if __name__ == "__main__":
    main()
