"""Shared machinery of the official-checkpoint converters.

A converter is one ordered table of ``(official regex, our replacement)`` key rules per method. The same
table converts official state dicts to ours and (for parity checks) ours back to the official names.
Official files are read with ``torch.load(..., weights_only=True)``; we only ever write safetensors.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

KeyRule = tuple[str, str]

#: Inside every Transformer block the official LayerNorm wraps its parameters in a ``.body`` module.
LAYER_NORM_RULE: KeyRule = (r"\.(norm1|norm2|norm11|norm12)\.body\.", r".\1.")

#: PromptIR's decoder prompt names, which CPL's official code keeps. Official ``promptK``/``noise_levelK``/
#: ``reduce_noise_levelK`` are one prompt place: K=3 acts on the latent, K=2 after decoder level 3, K=1 after
#: decoder level 2.
PROMPTIR_DECODER_PROMPT_RULES: list[KeyRule] = [
    (r"^prompt3\.", "decoder_prompts.latent.generator."),
    (r"^noise_level3\.", "decoder_prompts.latent.fusion.block."),
    (r"^reduce_noise_level3\.", "decoder_prompts.latent.fusion.reduce."),
    (r"^prompt2\.", "decoder_prompts.level3.generator."),
    (r"^noise_level2\.", "decoder_prompts.level3.fusion.block."),
    (r"^reduce_noise_level2\.", "decoder_prompts.level3.fusion.reduce."),
    (r"^prompt1\.", "decoder_prompts.level2.generator."),
    (r"^noise_level1\.", "decoder_prompts.level2.fusion.block."),
    (r"^reduce_noise_level1\.", "decoder_prompts.level2.fusion.reduce."),
    (r"\.generator\.prompt_param$", ".generator.prompt_components"),
    (r"\.generator\.linear_layer\.", ".generator.component_weights."),
    (r"\.generator\.conv3x3\.", ".generator.output_conv."),
]


def squeeze_prompt_components(key: str, value: torch.Tensor) -> torch.Tensor:
    """Official prompt components carry a leading broadcast axis: (1, L, C, S, S) -> (L, C, S, S)."""
    if key.endswith("prompt_components") and value.ndim == 5:
        return value.squeeze(0)
    return value


def rename_key(key: str, rules: Iterable[KeyRule]) -> str:
    """Apply every rule whose pattern matches, in order (several may apply to one key)."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    rules: Iterable[KeyRule],
    reshape: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename official keys to ours and let ``reshape`` adapt tensors whose layout differs."""
    rules = list(rules)
    converted = {}
    for key, value in state_dict.items():
        new_key = rename_key(key, rules)
        if new_key in converted:
            raise ValueError(f"two official keys map to {new_key!r}; the key table is ambiguous")
        converted[new_key] = reshape(new_key, value) if reshape is not None else value
    return converted


def read_official_checkpoint(path: str | Path, container_keys: Iterable[str], strip_prefix: str = "") -> dict:
    """Load an official ``.pth``/``.ckpt`` safely and return its plain state dict.

    ``container_keys`` are tried in order (``params_ema``, ``params``, ``state_dict``); a file that is
    already a bare state dict is accepted as is. ``strip_prefix`` removes a wrapper prefix (``net.`` for
    PromptIR's Lightning module, ``module.`` for DDP).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
    state_dict = None
    for key in container_keys:
        if key in checkpoint and isinstance(checkpoint[key], dict):
            state_dict = checkpoint[key]
            logger.info("reading weights from %r in %s", key, path)
            break
    if state_dict is None:
        if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            state_dict = checkpoint
        else:
            basicsr = sorted({"params", "params_ema"} & set(checkpoint))
            hint = (f" (a BasicSR file holding {basicsr}, as CPL's and PIP's releases are: another method's "
                    "checkpoint?)" if basicsr else "")
            raise ValueError(
                f"{path}: none of {list(container_keys)} found; keys are {sorted(checkpoint)[:10]}{hint}"
            )
    prefixes = [p for p in (strip_prefix, "module.") if p]
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def _is_layer_norm_bias(key: str) -> bool:
    return bool(re.search(r"\.norm\d*\.bias$", key))


def load_converted(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load strictly and report exactly which keys did not match (an official file must map 1:1)."""
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        # The one mismatch a user makes by hand: Restormer's denoising releases have LayerNorms without a bias.
        if result.missing_keys and not result.unexpected_keys and all(map(_is_layer_norm_bias, result.missing_keys)):
            hint = "The file's LayerNorms have no bias: convert it with layer_norm_type='BiasFree'."
        elif result.unexpected_keys and not result.missing_keys and all(
            map(_is_layer_norm_bias, result.unexpected_keys)
        ):
            hint = "The file's LayerNorms have a bias: convert it with layer_norm_type='WithBias'."
        else:
            hint = "If the unexpected keys are the unused official modules, set keep_unused_official_modules=True."
        raise ValueError(
            "converted checkpoint does not match the model: "
            f"missing {sorted(result.missing_keys)[:8]} ({len(result.missing_keys)}), "
            f"unexpected {sorted(result.unexpected_keys)[:8]} ({len(result.unexpected_keys)}). {hint}"
        )


def check_output_slice(model: torch.nn.Module, expected: torch.Tensor | None, **forward_kwargs) -> torch.Tensor:
    """Run the converted model on a fixed input and return its 3x3 output slice ``[0, 0, :3, :3]``.

    Raises when the output is not finite, or differs from `expected` (a slice recorded from the official code).
    """
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.rand(1, model.config.in_channels, 32, 32, generator=generator)
    with torch.no_grad():
        output = model(pixel_values, **forward_kwargs).reconstruction
    if not torch.isfinite(output).all():
        raise ValueError("the converted model's output on a fixed input is not finite: the weights are damaged")
    output_slice = output[0, 0, :3, :3]
    if expected is not None and not torch.allclose(output_slice, expected, atol=1e-4):
        raise ValueError(f"converted model output slice {output_slice.tolist()} differs from expected {expected}")
    logger.info("output slice [0, 0, :3, :3] = %s", output_slice.tolist())
    return output_slice


class _ConverterArgumentParser(argparse.ArgumentParser):
    """Refuses an output folder that `save_converted` would refuse, as a usage error before anything is read."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's own
        parsed = super().parse_args(args, namespace)
        output = getattr(parsed, "output_dir", None)
        if output is not None and Path(output).exists() and (not Path(output).is_dir() or any(Path(output).iterdir())):
            self.error(f"{output} exists and is not an empty folder: write the converted model into a new or empty "
                       "folder")
        return parsed


#: What reading or mapping a bad checkpoint file raises: missing or unreadable (OSError), empty (EOFError), no
#: torch file (KeyError, RuntimeError, UnpicklingError), objects `weights_only` refuses (UnpicklingError), keys that
#: do not map (ValueError).
CHECKPOINT_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError)


@contextmanager
def checkpoint_errors_as_usage_errors(parser: argparse.ArgumentParser, checkpoint: str) -> Iterator[None]:
    """Report a bad checkpoint file as one usage line (``parser.error``, exit code 2) instead of a traceback.

    torch's own text for a refused pickle advises ``weights_only=False``, which these converters never do, so that
    error is reported in our words."""
    try:
        yield
    except pickle.UnpicklingError:
        parser.error(f"cannot convert {checkpoint}: torch.load(weights_only=True) refuses it (not a torch file, or "
                     "it holds Python objects besides tensors, which are never unpickled)")
    except EOFError:
        parser.error(f"cannot convert {checkpoint}: the file is empty or truncated")
    except CHECKPOINT_ERRORS as error:
        parser.error(f"cannot convert {checkpoint}: {' '.join(str(error).split())}")


def base_argument_parser(description: str) -> argparse.ArgumentParser:
    parser = _ConverterArgumentParser(description=description)
    parser.add_argument("checkpoint", help="official checkpoint file (.pth / .ckpt)")
    parser.add_argument("output_dir", help="folder to write (weights, config, processor, code; see save_converted)")
    return parser


def save_converted(model, output_dir: str, expected_slice: torch.Tensor | None = None, **forward_kwargs) -> None:
    """Check the output on a fixed input, save the complete folder (safetensors, config, image processor, code and
    pipeline: what `training.publish` uploads, without the card), then reload it and check the same output.

    To publish converted weights with a model card and evaluation, use ``python -m training.publish
    --official_checkpoint FILE --model_type TYPE`` (it converts with these converters)."""
    from ..pipeline_restoration import save_restoration_folder

    if Path(output_dir).exists() and (not Path(output_dir).is_dir() or any(Path(output_dir).iterdir())):
        # the folder is written whole: files of something else (an old pytorch_model.bin) would stay beside it
        raise FileExistsError(f"{output_dir} exists and is not an empty folder: write the converted model into a "
                              "new or empty folder")
    before = check_output_slice(model, expected_slice, **forward_kwargs)
    save_restoration_folder(model, output_dir)
    reloaded = type(model).from_pretrained(output_dir).eval()
    after = check_output_slice(reloaded, None, **forward_kwargs)
    if not torch.equal(before, after):
        raise ValueError(f"{output_dir} reloads with another output ({after.tolist()} vs {before.tolist()})")
    logger.info("saved %s", output_dir)
