"""Activation memory of a training step: what the autograd graph holds between the forward and the backward.

    python benchmarks/bench_activation_memory.py --model-type promptir --official-size --size 128
    python benchmarks/bench_activation_memory.py --model-type pip --official-size --device cuda

Activations are most of a training step's peak memory, and what a path keeps for its backward depends on the
path (precision, layout, recomputation, the compiler's partition of forward and backward), not on the device. So
this measures, on any device, the memory allocated by one training forward of `bench_train.py`'s paths and still
held when it returns (the tensors saved for the backward, the loss): on CPU from glibc's own count of the bytes
it has handed out (`mallinfo2`: in-use heap blocks plus mmapped chunks, every arena), on a GPU from
`torch.cuda.memory_allocated`. Each path runs at batch 1 and batch 2 (after a warm-up, so compiled paths have
compiled); the difference is the memory per image, the rest a fixed part (weights cast to bf16, buffers).

The table gives, per path, MiB per image, the fixed part, and a floor for the peak at `--batch` images: the held
activations plus 16 bytes per parameter (fp32 weights, gradients and AdamW's two moments). The real peak adds the
backward's own temporaries and the allocator's slack. Against the peaks measured on an H200 with `bench_train.py`
(README, Performance), the floors computed here on the CPU for the official PromptIR at 128² were 1.00x those
peaks in fp32 (batch 8: 26,149 vs 26,209 MiB; batch 32: 103,174 vs 103,190) and 0.91x in channels-last + bf16
(batch 8: 11,945 vs 13,146; batch 32: 46,054 vs 51,057). Compiled paths use `--compile-backend`: the
default for this benchmark, `aot_eager_decomp_partition`, applies inductor's decompositions and its min-cut
partition of the forward and backward graphs (which fixes what is saved) without generating code, so it takes
seconds where inductor takes minutes on this CPU; `--compile-backend inductor` measures the real thing.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import PATHS, TrainingPath, add_model_arguments, fixed_batch, model_spec  # noqa: E402

DEFAULT_PATHS = ("reference", "channels-last+bf16", "channels-last+bf16+compile-model",
                 "channels-last+bf16+checkpointing", "channels-last+bf16+compile-model+checkpointing")
STATE_BYTES_PER_PARAMETER = 16  # fp32 weight, fp32 gradient, AdamW's exp_avg and exp_avg_sq


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def host_bytes_in_use() -> int:
    """Bytes glibc's malloc has handed out and not yet taken back: in-use heap blocks of every arena plus mmapped
    chunks (PyTorch's CPU tensors are allocated through malloc)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def held_after_forward(path: TrainingPath, batch: int, size: int) -> int:
    """Bytes allocated by one training forward of `path` at `batch` images and still held when it returns;
    the backward and an optimizer step then run, so the next call starts from the same state."""
    import torch

    degraded, clean = fixed_batch(batch, size, seed=0)
    degraded, clean = degraded.to(path.device), clean.to(path.device)
    on_gpu = path.device.type == "cuda"
    gc.collect()
    if on_gpu:
        torch.cuda.synchronize()
    before = torch.cuda.memory_allocated() if on_gpu else host_bytes_in_use()
    loss = path.loss(degraded, clean)
    if on_gpu:
        torch.cuda.synchronize()
    held = (torch.cuda.memory_allocated() if on_gpu else host_bytes_in_use()) - before
    loss.backward()
    path.optimizer.step()
    path.optimizer.zero_grad(set_to_none=True)
    return held


def measure(name: str, model_type: str, config: dict, device: str, size: int, compile_backend: str) -> dict:
    """MiB per image and fixed MiB held after the training forward of path `name`, and its parameter count."""
    path = TrainingPath(name, model_type, config, device, compile_backend=compile_backend)
    for batch in (1, 2):  # warm-up: compiled paths compile once per batch size, the allocator settles
        held_after_forward(path, batch, size)
    one, two = held_after_forward(path, 1, size), held_after_forward(path, 2, size)
    parameters = sum(p.numel() for p in path.model.parameters())
    return {"mib_per_image": (two - one) / 2**20, "fixed_mib": (2 * one - two) / 2**20, "parameters": parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="side of the square training crops")
    parser.add_argument("--batch", type=int, default=8, help="images per step of the peak floor column")
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=list(PATHS),
                        help="bench_train.py paths to measure")
    parser.add_argument("--compile-backend", default="aot_eager_decomp_partition",
                        help="torch.compile backend of the compile-model paths (inductor: the real thing, slow)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64
    model_type, config = model_spec(args)
    rows, results = [], {}
    for name in args.paths:
        started = time.perf_counter()
        result = measure(name, model_type, config, args.device, args.size, args.compile_backend)
        state_mib = result["parameters"] * STATE_BYTES_PER_PARAMETER / 2**20
        result["floor_mib"] = args.batch * result["mib_per_image"] + result["fixed_mib"] + state_mib
        results[name] = result
        print(f"{name}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        ratio = result["mib_per_image"] / results[args.paths[0]]["mib_per_image"]
        rows.append([name, f"{result['mib_per_image']:,.1f}", f"{result['fixed_mib']:,.1f}", f"{ratio:.2f}x",
                     f"{result['floor_mib']:,.0f}"])
    print(f"{model_type}, {results[args.paths[0]]['parameters'] / 1e6:.1f} M parameters, {args.size}² crops, "
          f"{args.device}; compile backend {args.compile_backend}")
    header = ["path", "MiB per image", "fixed MiB", f"vs {args.paths[0]}", f"floor at batch {args.batch}, MiB"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(row[0].ljust(widths[0]) + "".join(str(cell).rjust(width + 2) for cell, width in zip(row[1:], widths[1:])))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model_type": model_type, "size": args.size, "device": args.device, "batch": args.batch,
            "compile_backend": args.compile_backend, "paths": results,
        }, indent=2))


if __name__ == "__main__":
    main()
