"""Training-step speed of the fast paths against the plain fp32 eager step, in one table, with a toy loss curve each.

    python benchmarks/bench_train.py                           # the CPU recipe's pip-restormer, 8 x 64², CPU
    python benchmarks/bench_train.py --model-type promptir --official-size --batch 8 --size 128 --device cuda

The model: the recipe's (`--recipe`, default training/configs/pip_restormer_cpu.yaml: the shipped weights'
architecture), the official configuration of `--model-type` with `--official-size`, or `--model-config JSON`.
One step is what `training/train.py` does per batch: the model's own loss on (degraded, clean), integer degradation
labels for models that take them, backward, AdamW. Rows (paths):
- `reference`: fp32, NCHW weights and batches: the official code's eager step;
- `channels-last`: fp32, channels-last weights and batches: `train.py`'s default on CPU;
- `bf16`, `channels-last+bf16` (with `--bf16`, always on a GPU): bf16 autocast, as `--mixed_precision bf16`;
- `bf16+compile`, `channels-last+bf16+compile` (with `--compile`, always on a GPU): the same with every
  Transformer block compiled (`model.compile_transformer_blocks()`, regional `torch.compile`), as `train.py`
  does on a GPU.
- `bf16+compile-model`, `channels-last+bf16+compile-model` (only through `--paths`): bf16 with the whole model
  compiled as one graph (`torch.compile(model, fullgraph=True)`), on a GPU in "reduce-overhead" mode: forward and
  backward replayed as CUDA graphs, the lever for small batches whose step is bound by kernel launches;
- `bf16+checkpointing`, `channels-last+bf16+checkpointing` (only through `--paths`): bf16 with every Transformer
  block recomputed in the backward pass instead of keeping its activations (`train.py --gradient_checkpointing`):
  less peak memory for more compute, the lever for large batches on one GPU;
- `channels-last+bf16+compile-model+checkpointing` (only through `--paths`): both, as `train.py --compile_model
  --gradient_checkpointing` (the recomputation is compiled with the rest).
On a GPU every path but the reference steps a fused AdamW (`fused=True`, as `train.py` there); the reference
keeps PyTorch's default AdamW, as the official code. `--paths` picks a subset (the reference always runs).

Every path starts from the same initial weights. Paths are warmed up (compiled paths compile there), then timed in
turn for `--repeats` rounds of `--steps` steps. Columns: ms per step, img/s, peak memory (CUDA: the
`max_memory_allocated` of the path's creation and warm-up less what earlier paths hold; CPU: peak RSS of a fresh
interpreter that runs only that path's warm-up), and the ratio reference ms / path ms.
Agreement: each path then trains a fresh copy for `--curve-steps` steps on a toy denoising task (the same batches
for all), and the table gives the mean loss of the last fifth of the steps and its relative difference to the
reference path (goal: within 1 %). `--curve-only` runs only the curves. A path that runs out of GPU memory is
listed under "failed" in the JSON; when every path does, the exit status is 1.
"""

from __future__ import annotations

import argparse
import gc
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

PATHS = {  # name: (channels_last, autocast to bf16, what is compiled (None, "blocks", "model"), checkpointing)
    "reference": (False, False, None, False),
    "channels-last": (True, False, None, False),
    "bf16": (False, True, None, False),
    "channels-last+bf16": (True, True, None, False),
    "bf16+compile": (False, True, "blocks", False),
    "channels-last+bf16+compile": (True, True, "blocks", False),
    "bf16+checkpointing": (False, True, None, True),
    "channels-last+bf16+checkpointing": (True, True, None, True),
    "bf16+compile-model": (False, True, "model", False),
    "channels-last+bf16+compile-model": (True, True, "model", False),
    "channels-last+bf16+compile-model+checkpointing": (True, True, "model", True),
}
DEFAULT_RECIPE = REPO_ROOT / "training" / "configs" / "pip_restormer_cpu.yaml"


def model_spec(args: argparse.Namespace) -> tuple[str, dict]:
    """(model_type, config overrides) of the model to measure."""
    if args.model_config is not None:
        return args.model_type or "pip", json.loads(args.model_config)
    if args.official_size:
        return args.model_type or "promptir", {}
    import yaml

    recipe = yaml.safe_load(Path(args.recipe).read_text())
    return recipe.get("model_type", "pip"), dict(recipe.get("model_config") or {})


class TrainingPath:
    """One path's model, optimizer and step, from the same seeded initial weights as every other path."""

    def __init__(self, name: str, model_type: str, config: dict, device: str, learning_rate: float = 1e-3,
                 compile_backend: str = "inductor"):
        import torch

        from modeling import MODEL_CLASSES

        self.name = name
        self.channels_last, self.bf16, compiled, checkpointing = PATHS[name]
        self.device = torch.device(device)
        config_class, model_class = MODEL_CLASSES[model_type]
        torch.manual_seed(0)
        self.model = model_class(config_class(**config)).to(self.device).train()
        if checkpointing:  # as train.py --gradient_checkpointing (the method's name in transformers 5, else 4's)
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            (enable or self.model.gradient_checkpointing_enable)()
        if self.channels_last:  # as train.py does: the weights once, each batch as it arrives
            self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if compiled == "blocks":
            self.model.compile_transformer_blocks()
        elif compiled == "model":
            # The whole model as one graph (its input checks step aside under torch.compile, so there is no host
            # sync inside); on a GPU "reduce-overhead" replays it, forward and backward, as CUDA graphs.
            mode = "reduce-overhead" if self.device.type == "cuda" and compile_backend == "inductor" else None
            self.forward = torch.compile(self.model, fullgraph=True, dynamic=False, mode=mode, backend=compile_backend)
        # The fast paths on a GPU update all parameters in one fused kernel, as train.py does there.
        fused = self.device.type == "cuda" and name != "reference"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, fused=fused or None)
        self.num_labels = len(self.model.config.degradation_names) if self.model.accepts_degradation_labels else 0

    def loss(self, degraded, clean):
        """The training forward on float batches in [0, 1] (moved to the path's device and layout): the loss,
        with the autograd graph that its backward will walk."""
        import torch

        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        degraded = degraded.to(self.device).contiguous(memory_format=memory_format)
        clean = clean.to(self.device).contiguous(memory_format=memory_format)
        kwargs = {}
        if self.num_labels:
            kwargs["degradation_labels"] = torch.arange(degraded.shape[0], device=self.device) % self.num_labels
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.forward(pixel_values=degraded, labels=clean, **kwargs).loss

    def step(self, degraded, clean) -> float:
        """One optimizer step on float batches in [0, 1]; returns the loss (the value is only read at the end)."""
        loss = self.loss(degraded, clean)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def fixed_batch(batch: int, size: int, seed: int):
    """A (degraded, clean) pair: smooth random images and the same plus Gaussian noise of sigma 25/255."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(size // 8, 1), max(size // 8, 1), generator=generator)
    clean = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    degraded = clean + torch.randn(clean.shape, generator=generator) * (25 / 255)
    return degraded, clean


def loss_curve(path: TrainingPath, steps: int, batch: int, size: int) -> list[float]:
    """The path's loss at each of `steps` steps on the toy denoising task (batch i is the same for all paths)."""
    return [float(path.step(*fixed_batch(batch, size, seed=1000 + i))) for i in range(steps)]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `model_spec` reads, and the device ones (shared with bench_activation_memory.py)."""
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="YAML recipe whose model to measure")
    parser.add_argument("--model-type", default=None, help="with --official-size or --model-config")
    parser.add_argument("--official-size", action="store_true", help="the official configuration of --model-type")
    parser.add_argument("--model-config", default=None, help="config overrides, JSON (instead of the recipe)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--size", type=int, default=64, help="side of the square training crops")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path per round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every path)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (always on a GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="also time bf16 with compiled Transformer blocks (always on a GPU)")
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help="time only these paths (and the reference)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compile-model paths (eager or aot_eager: trace only)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (the CPU recipe's)")
    parser.add_argument("--curve-steps", type=int, default=200, help="steps of the toy loss curve (0: skip)")
    parser.add_argument("--curve-batch", type=int, default=4, help="batch of the toy loss curve")
    parser.add_argument("--curve-size", type=int, default=32, help="crop side of the toy loss curve")
    parser.add_argument("--curve-only", action="store_true",
                        help="only the toy loss curves: no timings, no memory (each compiled path compiles once)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column (no child processes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.curve_only and not args.curve_steps:
        parser.error("--curve-only needs --curve-steps > 0")

    import torch

    torch.set_num_threads(args.threads)
    # Regional compilation caches one graph per block width and input shape; the default limit of 8 is too few
    # for the toy curve's second crop size on top of the timed one.
    torch._dynamo.config.recompile_limit = 64
    model_type, config = model_spec(args)
    batch = fixed_batch(args.batch, args.size, seed=0)
    if args.child_path:  # CPU: one path's warm-up in a fresh interpreter, its peak RSS free of other paths' weights
        path = TrainingPath(args.child_path, model_type, config, args.device, compile_backend=args.compile_backend)
        for _ in range(2):
            path.step(*batch)
        report_child_peak()
        return

    on_gpu = args.device.startswith("cuda")
    names = path_names(list(PATHS), args.paths, args.bf16 or on_gpu, args.compile or on_gpu)
    paths: dict[str, TrainingPath] = {}
    peaks: dict[str, float] = {}
    timings: dict[str, tuple[float, Optional[float]]] = {}
    failed: dict[str, str] = {}  # path -> why it has no row (a GPU out of memory: recorded, the others go on)

    def attempt(name: str, work) -> bool:
        """Run `work()` for path `name`; on a GPU out-of-memory error record it, free the path and go on."""
        try:
            work()
            return True
        except torch.OutOfMemoryError as error:
            failed[name] = "out of memory: " + str(error).splitlines()[0][:200]
            paths.pop(name, None)
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
            print(f"{name}: out of memory, no row", flush=True)
            return False

    def warm_up(name: str) -> None:  # allocator, oneDNN primitives, cuDNN autotune, compilation
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            held_before = torch.cuda.memory_allocated()
        paths[name] = TrainingPath(name, model_type, config, args.device, compile_backend=args.compile_backend)
        for _ in range(2):
            paths[name].step(*batch)
        if on_gpu:
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - held_before) / 2**20

    def run_once(name: str) -> None:
        for _ in range(args.steps):
            paths[name].step(*batch)
        if on_gpu:
            torch.cuda.synchronize()

    from modeling import MODEL_CLASSES

    config_class, model_class = MODEL_CLASSES[model_type]
    with torch.device("meta"):  # counted without allocating (every path may run out of memory)
        parameters = sum(p.numel() for p in model_class(config_class(**config)).parameters())

    def report(final_losses: dict[str, float], first_losses: dict[str, float]) -> None:
        """Print the table and write the JSON: after each phase's timings, again after each toy curve, so that a
        run cut short (a time limit during a compilation) keeps every row measured until then."""
        batch, size = (args.curve_batch, args.curve_size) if args.curve_only else (args.batch, args.size)
        print(f"{model_type}, {parameters:,} parameters, training steps of {batch} x {size}², {args.device}"
              + ("" if on_gpu else f", {args.threads} threads")
              + ("" if args.curve_only else f", median of {args.repeats} x {args.steps} steps")
              + (f"; toy loss: mean of the last {max(args.curve_steps // 5, 1)} of {args.curve_steps} steps"
                 if final_losses else ""), flush=True)
        rows = timing_rows(names, timings, peaks, args.batch)
        rows += [{"path": name} for name in names if name in final_losses and name not in timings]  # --curve-only
        rows.sort(key=lambda row: names.index(row["path"]))
        for row in rows:
            name = row["path"]
            if name in final_losses and "reference" in final_losses:
                reference = final_losses["reference"]
                row["toy_loss"], row["toy_loss_first_steps"] = final_losses[name], first_losses[name]
                row["toy_loss_vs_reference"] = (final_losses[name] - reference) / reference
        curves_done = [row for row in rows if "toy_loss" in row]
        print_table(curves_done if curves_done else rows, "toy_loss" if curves_done else None, "toy loss", ".5f",
                    ".2%")
        for name, reason in failed.items():
            print(f"{name}: {reason}")
        if args.json:
            timing = {} if args.curve_only else {"repeats": args.repeats, "steps": args.steps}  # none were run
            args.json.write_text(json.dumps({"model": model_type, "parameters": parameters, "batch": batch,
                                             "size": size, "device": args.device, "threads": args.threads,
                                             **timing, "curve_steps": args.curve_steps if final_losses else 0,
                                             "curve_batch": args.curve_batch, "curve_size": args.curve_size,
                                             "rows": rows, "failed": failed}, indent=2))

    for phase in [] if args.curve_only else compilation_phases(names, {name: PATHS[name][2] for name in names}):
        for name in phase:
            attempt(name, lambda: warm_up(name))
        measured = time_phase(phase, list(paths), run_once, args.repeats, per=args.steps)
        if measured:
            timings.update(measured)
            report({}, {})
    paths.clear()  # free the timed models before the memory and curve runs
    if not args.curve_only and not timings:  # every path out of memory: the JSON says so, the exit status too
        report({}, {})
        sys.exit(1)
    if not on_gpu and not args.no_memory and not args.curve_only:
        argv = ["--batch", str(args.batch), "--size", str(args.size), "--threads", str(args.threads),
                "--device", args.device, "--recipe", args.recipe, "--compile-backend", args.compile_backend]
        argv += ["--model-type", args.model_type] if args.model_type else []
        argv += ["--official-size"] if args.official_size else []
        argv += ["--model-config", args.model_config] if args.model_config is not None else []
        peaks = {name: child_peak_mib(__file__, [*argv, "--child-path", name], args.threads) for name in names}
        report({}, {})
    if args.curve_steps:
        final_losses, first_losses = {}, {}
        tail = max(args.curve_steps // 5, 1)
        for name in [n for n in names if n in timings or args.curve_only]:
            def curve_run(name: str = name) -> None:
                path = TrainingPath(name, model_type, config, args.device, args.learning_rate, args.compile_backend)
                curve = loss_curve(path, args.curve_steps, args.curve_batch, args.curve_size)
                final_losses[name] = sum(curve[-tail:]) / tail
                first_losses[name] = sum(curve[:tail]) / tail

            if attempt(name, curve_run):
                report(final_losses, first_losses)
        if not final_losses:  # every curve out of memory
            report(final_losses, first_losses)
            sys.exit(1)


if __name__ == "__main__":
    main()
