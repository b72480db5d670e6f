"""Inference speed of the fast paths against the plain fp32 eager path, in one table.

    python benchmarks/bench_infer.py                                # shipped weights, 512², CPU, 2 threads
    python benchmarks/bench_infer.py --random promptir --size 256   # a random PromptIR of the official size
    python benchmarks/bench_infer.py --model org/pip-restormer --device cuda --size 1024 --bf16

Rows (paths), all through `modeling.inference.run_model`, the function behind `restore()`, the CLI, the
pipeline and the Space:
- `reference`: fp32, NCHW inputs (`channels_last=False`): the official code's eager path;
- `channels-last`: fp32, channels-last inputs: the default of `restore()` & co. on a CPU without native bf16;
- `bf16`, `channels-last+bf16` (with `--bf16`, always on a GPU): bf16 autocast; `channels-last+bf16` is the
  default on a CPU with native bf16 (`modeling.inference.default_autocast_dtype`), where attention and the
  resampling layers stay in fp32 (`modeling.restormer_blocks.fp32_in_cpu_inference`);
- `channels-last+all-bf16` (only through `--paths`): the same with every layer in autocast on CPU as well (the CPU
  default before 2026-12-05);
- `bf16+compile`, `channels-last+bf16+compile` (with `--compile`, always on a GPU): the same on a copy of the model
  whose Transformer blocks are compiled (`model.compile_transformer_blocks()`; compiled during the warm-up);
- `channels-last+compile` (only through `--paths`): fp32 with compiled blocks, for CPUs without fast bf16;
- `bf16+compile-model`, `channels-last+bf16+compile-model` (only through `--paths`): bf16 with the whole model
  compiled as one graph, on a GPU in "reduce-overhead" mode (CUDA graphs), compiled during the warm-up.
`--paths` picks a subset (the reference always runs).

Paths are warmed up, then timed in turn for `--repeats` rounds, so every ratio compares runs of the same
minutes. Columns: median ms per batch, img/s, peak memory (CUDA: `max_memory_allocated` of that path; CPU: peak
RSS of a fresh interpreter that loads the model and runs only that path once), and the ratio reference
ms / path ms. Quality: where the model takes the shipped examples' degradations (the shipped weights do), each
path restores the example crops of held-out photos (`modeling/demo/examples`, listed with their labels and clean
crops in `modeling/demo/eval_results.json`), and the table gives
its mean PSNR against the clean crops and the difference to the reference path (goal: within 0.05 dB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    child_peak_mib,
    compilation_phases,
    path_names,
    print_table,
    report_child_peak,
    time_phase,
    timing_rows,
)

PATHS = {  # name: (channels_last, autocast dtype, what is compiled: None, "blocks" or "model")
    "reference": (False, "fp32", None),
    "channels-last": (True, "fp32", None),
    "bf16": (False, "bf16", None),
    "channels-last+bf16": (True, "bf16", None),
    "bf16+compile": (False, "bf16", "blocks"),
    "channels-last+bf16+compile": (True, "bf16", "blocks"),
    "channels-last+compile": (True, "fp32", "blocks"),
    "channels-last+all-bf16": (True, "bf16", None),
    "bf16+compile-model": (False, "bf16", "model"),
    "channels-last+bf16+compile-model": (True, "bf16", "model"),
}
ALL_LAYERS_IN_AUTOCAST = ("channels-last+all-bf16",)  # paths that turn off fp32_in_cpu_inference


def load(args: argparse.Namespace):
    """The model to measure: `--random TYPE` (official configuration, random weights) or `--model` (default:
    the shipped weights)."""
    import torch

    from modeling import MODEL_CLASSES
    from modeling.inference import DEMO_CHECKPOINT_DIR, load_model

    if args.random:
        config_class, model_class = MODEL_CLASSES[args.random]
        torch.manual_seed(0)
        return model_class(config_class()).eval().to(args.device)
    return load_model(args.model or str(DEMO_CHECKPOINT_DIR), device=args.device)


def inputs_for(model, size: int, batch: int):
    """A fixed random batch and, for models that take them, the weights of their first degradation."""
    import torch

    from modeling.inference import accepts_degradation_labels, degradation_label_ids

    pixel_values = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = degradation_label_ids(model, 0, batch) if accepts_degradation_labels(model) else None
    return pixel_values, labels


def models_for(model, names: list[str], compile_backend: str = "inductor") -> dict:
    """The model each path runs: `model` itself, or for compiled paths a shared copy per kind: with compiled
    Transformer blocks, or compiled whole as one graph (on a GPU in "reduce-overhead" mode: CUDA graphs)."""
    import copy

    import torch

    compiled = {}
    kinds = {PATHS[name][2] for name in names} - {None}
    if "blocks" in kinds:
        compiled["blocks"] = copy.deepcopy(model)
        compiled["blocks"].compile_transformer_blocks(backend=compile_backend)
    if "model" in kinds:
        on_gpu = next(model.parameters()).device.type == "cuda"
        mode = "reduce-overhead" if on_gpu and compile_backend == "inductor" else None
        compiled["model"] = torch.compile(copy.deepcopy(model), fullgraph=True, dynamic=False, mode=mode,
                                          backend=compile_backend)
    return {name: compiled.get(PATHS[name][2], model) for name in names}


def run_path(model, pixel_values, labels, name: str, device: str):
    from modeling.inference import run_model
    from modeling.restormer_blocks import set_fp32_layers_in_cpu_inference

    channels_last, dtype, _ = PATHS[name]
    set_fp32_layers_in_cpu_inference(name not in ALL_LAYERS_IN_AUTOCAST)
    try:
        return run_model(model, pixel_values, degradation_labels=labels, device=device, dtype=dtype,
                         channels_last=channels_last)
    finally:
        set_fp32_layers_in_cpu_inference(True)


def child_peak_rss(args: argparse.Namespace) -> None:
    """`--child-path NAME`: load, run one path once, report the peak RSS (one fresh interpreter per path)."""
    import torch

    torch.set_num_threads(args.threads)
    model = load(args)
    pixel_values, labels = inputs_for(model, args.size, args.batch)
    models = models_for(model, [args.child_path], args.compile_backend)
    run_path(models[args.child_path], pixel_values, labels, args.child_path, args.device)
    report_child_peak()


def cpu_peak_mib(args: argparse.Namespace, name: str) -> float:
    argv = ["--child-path", name, "--size", str(args.size), "--batch", str(args.batch), "--threads", str(args.threads),
            "--device", args.device, "--compile-backend", args.compile_backend]
    argv += ["--random", args.random] if args.random else (["--model", args.model] if args.model else [])
    return child_peak_mib(__file__, argv, args.threads)


def example_psnr(models: dict, names: list[str], device: str) -> dict[str, float]:
    """Mean PSNR of each path on the shipped examples (listed in the demo's eval_results.json, as
    training/package_demo.py wrote them) whose degradation the model takes; {} when none."""
    import numpy as np
    import torch
    from PIL import Image

    from modeling.inference import DEMO_CHECKPOINT_DIR, accepts_degradation_labels, degradation_label_ids
    from training.evaluation import psnr

    model = models["reference"]
    manifest = DEMO_CHECKPOINT_DIR / "eval_results.json"
    if not accepts_degradation_labels(model) or not manifest.is_file():
        return {}
    classes = set(model.config.degradation_names)
    examples = [e for e in json.loads(manifest.read_text()).get("examples", []) if e["degradation"] in classes]
    if not examples:
        return {}
    scores = {name: [] for name in names}
    for example in examples:
        degraded = np.asarray(Image.open(DEMO_CHECKPOINT_DIR / example["file"]).convert("RGB"), dtype=np.float32)
        clean = np.asarray(Image.open(DEMO_CHECKPOINT_DIR / example["clean"]).convert("RGB"), dtype=np.float32)
        pixel_values = torch.from_numpy(degraded / 255).permute(2, 0, 1)[None]
        labels = degradation_label_ids(model, example["degradation"], 1)
        for name in names:
            restored = run_path(models[name], pixel_values, labels, name, device)[0].clamp(0, 1)
            scores[name].append(psnr(restored.permute(1, 2, 0).numpy(), clean / 255))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped weights)")
    parser.add_argument("--random", default=None, metavar="MODEL_TYPE",
                        help="instead: a randomly initialised model of this type in its official configuration")
    parser.add_argument("--size", type=int, default=512, help="side of the square input")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every path once)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (always on a GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="also time bf16 with compiled Transformer blocks (always on a GPU)")
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help="time only these paths (and the reference)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled paths (eager or aot_eager: trace only)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column (no child processes)")
    parser.add_argument("--no-quality", action="store_true", help="skip the PSNR columns")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_path:
        child_peak_rss(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # one graph per block width and input shape (timing + examples)
    model = load(args)
    on_gpu = args.device.startswith("cuda")
    names = path_names(list(PATHS), args.paths, args.bf16 or on_gpu, args.compile or on_gpu)
    models = models_for(model, names, args.compile_backend)
    pixel_values, labels = inputs_for(model, args.size, args.batch)
    if on_gpu:  # the input already on the GPU, as in a GPU pipeline; each result still comes back to the host
        pixel_values = pixel_values.to(args.device)

    def run_once(name: str) -> None:
        run_path(models[name], pixel_values, labels, name, args.device)  # returns on CPU: includes the copy back

    parameters = sum(p.numel() for p in model.parameters())
    peaks: dict[str, float] = {}
    timings: dict[str, tuple[float, Optional[float]]] = {}
    quality: dict[str, float] = {}

    def report() -> None:
        """Print the table and write the JSON (after each phase: a run cut short keeps the rows measured)."""
        print(f"{model.config.model_type}, {parameters:,} parameters, batch {args.batch} x {args.size}², "
              f"{args.device}" + ("" if on_gpu else f", {args.threads} threads") + f", median of {args.repeats}",
              flush=True)
        rows = timing_rows(names, timings, peaks, args.batch)
        for row in rows:
            if row["path"] in quality and "reference" in quality:
                row["psnr"] = quality[row["path"]]
                row["psnr_vs_reference"] = row["psnr"] - quality["reference"]
        with_quality = all("psnr" in row for row in rows)
        print_table(rows, "psnr" if with_quality else None, "PSNR dB", ".3f", ".3f")
        if args.json:
            args.json.write_text(json.dumps({"model": model.config.model_type, "parameters": parameters,
                                             "size": args.size, "batch": args.batch, "device": args.device,
                                             "threads": args.threads, "repeats": args.repeats, "rows": rows},
                                            indent=2))

    for phase in compilation_phases(names, {name: PATHS[name][2] for name in names}):
        for name in phase:  # warm-up (allocator, oneDNN primitives, cuDNN autotune, compilation) and the GPU peak
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            run_once(name)
            if on_gpu:
                peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        timings.update(time_phase(phase, names, run_once, args.repeats))
        if not on_gpu and not args.no_memory:
            peaks.update({name: cpu_peak_mib(args, name) for name in phase})
        if not args.no_quality:  # the reference's scores once, with the first phase
            scored = [name for name in ["reference", *phase] if name not in quality]
            quality.update(example_psnr(models, scored, args.device))
        report()


if __name__ == "__main__":
    main()
