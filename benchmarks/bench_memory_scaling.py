"""Peak forward memory against image size: does a model's memory grow linearly with the pixels?

    python benchmarks/bench_memory_scaling.py --model_type dppd --sizes 256 1024
    python benchmarks/bench_memory_scaling.py --model_type promptir --model_config '{"dim": 16}' --sizes 256 512 1024

Each size runs in a fresh subprocess (``--measure``), on CPU, in ``torch.inference_mode`` with random weights:

1. build the model and the input, and run one warm-up forward at 64 x 64 (kernels, thread pools and the
   allocator's first arenas are set up once, outside the measurement);
2. baseline = the process's current resident memory (``/proc/self/statm``), and the peak-RSS mark is reset
   (``/proc/self/clear_refs``); ``ru_maxrss`` cannot be used, since Linux carries it over ``exec`` from the
   forked parent, so a child of a large process (a long pytest run) would report the parent's size;
3. forward at the size; peak = the process's peak resident memory since the reset (``VmHWM``);
4. report peak - baseline: the memory the forward itself needed.

glibc's dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that every large tensor is its own
mapping, given back when freed; resident memory then follows the live tensors instead of a fragmented heap.
Prints one JSON object: per size the MiB and, against the first size, the memory ratio and the pixel ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)

#: A small configuration of each model's body (the methods add their own prompt widths on top).
SMALL_BACKBONE = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
SMALL_PROMPTS = {
    "restormer": {},
    "promptir": {"prompt_dims": [4, 8, 16], "prompt_sizes": [8, 4, 2]},
    "pip": {"prompt_dims": [12, 20, 16], "prompt_sizes": [8, 4, 4], "degradation_estimator_hidden_dim": 16},
    "dppd": {"prompt_dims": [8, 16, 32], "num_prompt_tokens": 5, "embedding_dim": 16},
}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_resident() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(model_type: str, model_config: dict, size: int) -> dict:
    import torch

    from modeling import MODEL_CLASSES

    torch.manual_seed(0)
    config_class, model_class = MODEL_CLASSES[model_type]
    model = model_class(config_class(**model_config)).eval()
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(image[..., :64, :64])
        baseline = resident_bytes()
        reset_peak_resident()
        output = model(image).reconstruction
    peak = peak_resident_bytes()
    return {"size": size, "baseline_mib": baseline / 2**20, "forward_mib": (peak - baseline) / 2**20,
            "finite": bool(torch.isfinite(output).all())}


def run(model_type: str, model_config: dict, sizes: list[int], threads: int = 2) -> dict:
    """Measure every size in its own subprocess; return the per-size results and the ratios to the first."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    results = []
    for size in sizes:
        command = [sys.executable, __file__, "--measure", str(size), "--model_type", model_type,
                   "--model_config", json.dumps(model_config)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"measuring {size}x{size} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = results[0]
    for result in results:
        result["memory_ratio"] = result["forward_mib"] / first["forward_mib"]
        result["pixel_ratio"] = (result["size"] / first["size"]) ** 2
    return {"model_type": model_type, "model_config": model_config, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_type", default="dppd")
    parser.add_argument("--model_config", type=json.loads, default=None,
                        help="JSON config overrides (default: a small config of the model)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = args.model_config
    if config is None:
        config = {**SMALL_BACKBONE, **SMALL_PROMPTS.get(args.model_type, {})}
    if args.measure:
        print(json.dumps(measure(args.model_type, config, args.measure)))
        return
    print(json.dumps(run(args.model_type, config, args.sizes, args.threads), indent=2))


if __name__ == "__main__":
    main()
