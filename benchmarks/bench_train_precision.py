"""Training throughput with bf16 autocast vs fp32, same model, data and optimizer, in one process.

    python benchmarks/bench_train_precision.py                 # CPU, small pip-restormer
    python benchmarks/bench_train_precision.py --device cuda --dim 48 --batch 8 --size 128

Prints images/s of each precision and the bf16/fp32 ratio. Rounds alternate between the two precisions so
that machine load affects both alike; the first steps of each are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from modeling import PIPConfig, PIPForImageRestoration  # noqa: E402


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    config = PIPConfig(
        dim=args.dim, num_blocks=[1, 2, 2, 2], num_refinement_blocks=1, heads=[1, 2, 4, 8],
        prompt_dims=[args.dim * 2, args.dim * 2, args.dim * 4], prompt_sizes=[32, 16, 8],
    )
    model = PIPForImageRestoration(config).to(args.device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def run(model, optimizer, batch, labels, names, steps: int, dtype) -> float:
    """Seconds per step (mean over ``steps``)."""
    device_type = batch.device.type
    if device_type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(batch, degradation_labels=names, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device_type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
    labels = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
    names = ["noise", "rain", "haze", "blur", "low-light"] * args.batch
    names = names[: args.batch]
    model, optimizer = build(args)
    timings = {"fp32": [], "bf16": []}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        run(model, optimizer, batch, labels, names, 2, dtype)  # warm-up: kernel selection, allocator
    for _ in range(args.rounds):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            timings[name].append(run(model, optimizer, batch, labels, names, args.steps, dtype))
    params = sum(p.numel() for p in model.parameters())
    print(f"device {args.device}, threads {torch.get_num_threads()}, pip-restormer dim {args.dim} ({params / 1e6:.2f} M params), "
          f"batch {args.batch} x {args.size}x{args.size}, {args.rounds} rounds x {args.steps} steps")
    rates = {}
    for name, values in timings.items():
        rates[name] = args.batch / statistics.median(values)
        print(f"{name}: {rates[name]:7.2f} img/s (median of {[round(args.batch / v, 2) for v in values]})")
    print(f"ratio bf16 / fp32 throughput: {rates['bf16'] / rates['fp32']:.2f}")


if __name__ == "__main__":
    main()
