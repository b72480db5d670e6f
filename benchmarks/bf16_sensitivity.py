"""Where bf16 autocast moves a held-out row: `restore()` in bf16 with chosen groups of layers kept in fp32, per photo.

    python benchmarks/bf16_sensitivity.py --row blur-gaussian --images lomiri-friends.png \\
        --keep-fp32 none convolutions attention blocks everything

For each held-out photo (`--heldout`, default data/embedded/heldout; `--images` picks some by name) the row's
degraded input is the one `training.evaluate_model` scores (`synthesize_row_image`), and the model gets the row's
degradation label when it takes labels. The fp32 restoration is the reference; then, for each policy of
`--keep-fp32`, the model restores the input in bf16 autocast with that group's modules run in fp32 (their inputs
cast up, autocast off inside them). Groups:
- `none`: the default bf16 path as it is: attention, patch embedding and down/upsampling already run in fp32 there
  (`modeling.restormer_blocks.fp32_in_cpu_inference`); `--all-bf16` turns that off, so that every layer not named
  by a policy runs in autocast (the default path before 2026-12-05);
- `convolutions` (every `nn.Conv2d`), `pointwise` (1x1), `depthwise` (grouped), `dense` (the other convolutions:
  patch embedding, down/upsampling, output);
- `attention` (MDTA), `feed-forward` (GDFN), `blocks` (whole Transformer blocks), `layer-norms`;
- `full-resolution`: the modules that see full-size maps (patch embedding, level-1 encoder and decoder,
  refinement, output);
- several groups at once, joined by "+": `dense+attention`;
- `everything`: the whole model, which must give back the fp32 output exactly (a check of this harness).
Columns: the PSNR of the bf16 output minus the fp32 one (dB), the largest pixel difference, the seconds of the
bf16 restore, and the correction scale: the least-squares slope of the bf16 correction (output - input) on the
fp32 one, 1 when bf16 changes the image as much as fp32 does. The fp32 line gives the same slope for the ideal
correction (clean - input): below 1 where fp32 overshoots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

GROUPS = ("none", "convolutions", "pointwise", "depthwise", "dense", "attention", "feed-forward", "blocks",
          "layer-norms", "full-resolution", "everything")
FULL_RESOLUTION = ("patch_embed", "encoder_level1", "decoder_level1", "refinement", "output")


def policy(text: str) -> str:
    """A `--keep-fp32` policy: one group or several joined by "+" (``dense+attention``)."""
    unknown = [group for group in text.split("+") if group not in GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
    return text


def policy_modules(model, text: str) -> list:
    """The modules a policy (groups joined by "+") runs in fp32, each once."""
    modules = {}
    for group in text.split("+"):
        modules.update((id(module), module) for module in group_modules(model, group))
    return list(modules.values())


def group_modules(model, group: str) -> list:
    """The modules of ``model`` that ``group`` runs in fp32."""
    from torch import nn

    from modeling.restormer_blocks import (
        ChannelLayerNorm,
        GatedDconvFeedForward,
        MultiDconvHeadTransposedAttention,
        TransformerBlock,
    )

    def conv_kind(module) -> str | None:
        if not isinstance(module, nn.Conv2d):
            return None
        if module.groups > 1:
            return "depthwise"
        return "pointwise" if module.kernel_size == (1, 1) else "dense"

    if group == "none":
        return []
    if group == "everything":
        return [model]
    if group == "full-resolution":
        return [module for name, module in model.named_modules() if name.split(".")[-1] in FULL_RESOLUTION]
    classes = {"attention": MultiDconvHeadTransposedAttention, "feed-forward": GatedDconvFeedForward,
               "blocks": TransformerBlock, "layer-norms": ChannelLayerNorm}
    if group in classes:
        return [module for module in model.modules() if isinstance(module, classes[group])]
    if group == "convolutions":
        return [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    return [module for module in model.modules() if conv_kind(module) == group]


@contextlib.contextmanager
def kept_in_fp32(modules: list):
    """Run each of ``modules`` with autocast off and its floating inputs in fp32, until the block exits."""
    import torch

    def to_fp32(value):
        return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

    def wrap(forward):
        def forward_in_fp32(*args, **kwargs):
            args = [to_fp32(value) for value in args]
            kwargs = {key: to_fp32(value) for key, value in kwargs.items()}
            with torch.autocast(device_type="cpu", enabled=False):
                return forward(*args, **kwargs)
        return forward_in_fp32

    for module in modules:
        module.forward = wrap(module.forward)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def correction_slope(output, degraded, target) -> float:
    """Least-squares slope of ``target - degraded`` on ``output - degraded``: how large the target's correction
    is against the output's."""
    import numpy as np

    correction = (np.clip(output, 0, 1) - degraded).ravel().astype(np.float64)
    wanted = (target - degraded).ravel().astype(np.float64)
    return float(correction @ wanted / max(correction @ correction, 1e-20))


def measure(model, heldout: Path, row: str, names: list[str] | None, groups: list[str]) -> list[dict]:
    """One dict per photo: the fp32 gain and correction slope, and per group the bf16 figures (module doc)."""
    import numpy as np

    from modeling import restore
    from modeling.inference import accepts_degradation_labels
    from training.data.files import decode_image, list_image_files
    from training.evaluate_model import row_setting, synthesize_row_image
    from training.evaluation import psnr

    task, _ = row_setting(row)
    kwargs = {"degradation": task} if accepts_degradation_labels(model) else {}
    files = list_image_files(heldout)
    wanted = set(names or [])
    unknown = wanted - {Path(path).name for path in files}
    if unknown:
        raise SystemExit(f"no such held-out photos in {heldout}: {sorted(unknown)}")

    results = []
    for index, path in enumerate(files):  # the photo's place in the folder seeds its degradation, as in evaluation
        if wanted and Path(path).name not in wanted:
            continue
        clean_u8 = decode_image(path)[0]
        clean = clean_u8.astype(np.float32) / 255
        degraded = synthesize_row_image(clean_u8, row, index)
        reference = restore(degraded, model, dtype="fp32", **kwargs)
        entry = {"image": Path(path).name, "input_psnr": psnr(degraded, clean),
                 "fp32_gain": psnr(reference, clean) - psnr(degraded, clean),
                 "ideal_correction_slope": correction_slope(reference, degraded, clean), "policies": {}}
        for group in groups:
            with kept_in_fp32(policy_modules(model, group)):
                started = time.perf_counter()
                output = restore(degraded, model, dtype="bf16", **kwargs)
                seconds = time.perf_counter() - started
            entry["policies"][group] = {
                "psnr_vs_fp32": psnr(output, clean) - psnr(reference, clean),
                "max_abs_difference": float(np.abs(np.clip(output, 0, 1) - np.clip(reference, 0, 1)).max()),
                "seconds": seconds, "correction_slope": correction_slope(reference, degraded, output),
            }
        results.append(entry)
        print(f"{entry['image']}: fp32 gain {entry['fp32_gain']:+.3f} dB, ideal correction "
              f"{entry['ideal_correction_slope']:.3f}x fp32's", flush=True)
        for group, figures in entry["policies"].items():
            print(f"  bf16, fp32 kept in {group:<16} {figures['psnr_vs_fp32']:+8.3f} dB  max diff "
                  f"{figures['max_abs_difference']:.4f}  {figures['seconds']:6.2f} s  correction "
                  f"{figures['correction_slope']:.3f}x", flush=True)
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped weights)")
    parser.add_argument("--heldout", default=str(REPO_ROOT / "data" / "embedded" / "heldout"),
                        help="folder of clean held-out photos (default: the embedded corpus's)")
    parser.add_argument("--row", default="blur-gaussian", help="a held-out row: noise-25, blur-gaussian, haze, ...")
    parser.add_argument("--images", nargs="+", default=None, help="photo file names (default: all)")
    parser.add_argument("--keep-fp32", nargs="+", default=["none", "convolutions", "blocks", "everything"],
                        type=policy, help="policies to run: each a group of layers kept in fp32, or groups "
                        f"joined by '+' ({', '.join(GROUPS)})")
    parser.add_argument("--all-bf16", action="store_true",
                        help="turn off the default fp32 attention and resampling of CPU bf16 inference")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    from modeling.inference import DEMO_CHECKPOINT_DIR, load_model
    from modeling.restormer_blocks import set_fp32_layers_in_cpu_inference

    torch.set_num_threads(args.threads)
    set_fp32_layers_in_cpu_inference(not args.all_bf16)
    # On the CPU, whatever else the machine has: the groups are kept in fp32 by turning CPU autocast off.
    model = load_model(args.model or str(DEMO_CHECKPOINT_DIR), device="cpu")
    results = measure(model, Path(args.heldout), args.row, args.images, args.keep_fp32)
    if args.json:
        Path(args.json).write_text(json.dumps({"row": args.row, "all_bf16": args.all_bf16, "photos": results},
                                              indent=2))
    return results


if __name__ == "__main__":
    main()
