"""CPU inference: the fp32 NCHW reference, the channels-last fast path, and the fast path with
`keep_freed_memory_for_reuse()` (glibc's mmap/trim thresholds raised), which is what the CLI, the Space and
batch restoration run on CPU.

The allocator setting belongs to the whole process and cannot be undone in it, so every measurement is a fresh
child interpreter: it loads the model, applies the setting or not, restores once to warm up, then times
`--forwards` restorations through `modeling.inference.run_model`. Children of the three kinds alternate for
`--repeats` rounds, so load from other programs affects all alike. Columns: median ms per restoration over all
children of a kind, img/s, the children's peak RSS (VmHWM, the largest), the ratio against the reference, the
largest absolute difference from the reference output (channels-last reorders the sums: float rounding only)
and whether the output is bit-identical to the fast path's (the allocator must not change the math).

    python benchmarks/bench_malloc.py --random promptir --size 512     # PromptIR at its official size
    python benchmarks/bench_malloc.py                                   # the shipped weights, 512²
    python benchmarks/bench_malloc.py --bf16   # + the fast path in bf16 autocast (CPUs with native bf16)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import peak_rss_kib, print_table  # noqa: E402

#: path: (channels_last, keep freed memory for reuse, autocast dtype)
PATHS = {"reference": (False, False, "fp32"), "fast": (True, False, "fp32"),
         "fast+freed-memory-reuse": (True, True, "fp32"),
         "fast+bf16+freed-memory-reuse": (True, True, "bf16")}
#: the bf16 row runs only with --bf16: fast on CPUs with native bf16 (AVX-512 BF16, AMX), slow elsewhere
BF16_PATH = "fast+bf16+freed-memory-reuse"


def paths_to_run(bf16: bool) -> list[str]:
    """The rows a run measures, in order: every path, the bf16 one only when asked for."""
    return [name for name in PATHS if bf16 or name != BF16_PATH]


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process: prints a JSON line with the times, peak and output digest."""
    import time

    import torch

    from modeling import MODEL_CLASSES
    from modeling.inference import DEMO_CHECKPOINT_DIR, keep_freed_memory_for_reuse, load_model, run_model

    channels_last, reuse, dtype = PATHS[args.child_path]
    applied = keep_freed_memory_for_reuse() if reuse else False
    torch.set_num_threads(args.threads)
    if args.random:
        config_class, model_class = MODEL_CLASSES[args.random]
        torch.manual_seed(0)
        model = model_class(config_class()).eval()
    else:
        model = load_model(args.model or str(DEMO_CHECKPOINT_DIR), device="cpu")
    pixel_values = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    labels = None
    if getattr(type(model), "accepts_degradation_labels", False):
        labels = model.degradation_weights(model.config.degradation_names[0], 1, "cpu")
    output = run_model(model, pixel_values, degradation_labels=labels, channels_last=channels_last,
                       dtype=dtype)  # warm-up
    times = []
    for _ in range(args.forwards):
        started = time.perf_counter()
        output = run_model(model, pixel_values, degradation_labels=labels, channels_last=channels_last, dtype=dtype)
        times.append(time.perf_counter() - started)
    output = output.float().contiguous().numpy()
    digest = hashlib.sha256(output.tobytes()).hexdigest()
    np.save(args.child_output, output)
    print(json.dumps({"times": times, "peak_kib": peak_rss_kib(), "digest": digest, "applied": applied}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped weights)")
    parser.add_argument("--random", default=None, metavar="MODEL_TYPE",
                        help="a randomly initialised model of this type at its official size instead")
    parser.add_argument("--size", type=int, default=512, help="side of the square input")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each one child of every kind")
    parser.add_argument("--forwards", type=int, default=3, help="timed restorations per child")
    parser.add_argument("--bf16", action="store_true",
                        help=f"also run {BF16_PATH} (bf16 autocast; max_abs_diff then shows bf16 rounding)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child-path", default=None, choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_path:
        child(args)
        return {}
    forwarded = ["--size", str(args.size), "--threads", str(args.threads), "--forwards", str(args.forwards)]
    forwarded += ["--random", args.random] if args.random else []
    forwarded += ["--model", args.model] if args.model else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    paths = paths_to_run(args.bf16)
    results: dict[str, list[dict]] = {name: [] for name in paths}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for name in paths:
                saved = Path(scratch) / f"{name}.npy"
                completed = subprocess.run([sys.executable, __file__, *forwarded, "--child-path", name,
                                            "--child-output", str(saved)], capture_output=True, text=True, env=env)
                if completed.returncode != 0:
                    raise RuntimeError(f"{name} child failed:\n{completed.stderr[-3000:]}")
                results[name].append(json.loads(completed.stdout.strip().splitlines()[-1]))
                outputs[name] = np.load(saved)
    digests = {name: {run["digest"] for run in runs} for name, runs in results.items()}
    rows = []
    for name in paths:
        ms = 1000 * statistics.median(t for run in results[name] for t in run["times"])
        rows.append({"path": name, "ms": ms, "images_per_s": 1000 / ms,
                     "peak_mib": max(run["peak_kib"] for run in results[name]) / 1024,
                     "applied": all(run["applied"] for run in results[name]),
                     "max_abs_diff_vs_reference": float(np.abs(outputs[name] - outputs["reference"]).max()),
                     "identical_to_fast": digests[name] == digests["fast"] and len(digests[name]) == 1})
    for row in rows:
        row["ratio"] = rows[0]["ms"] / row["ms"]
    report = {"model": args.random or args.model or "shipped", "size": args.size, "threads": args.threads,
              "repeats": args.repeats, "forwards": args.forwards, "rows": rows}
    print(f"model {report['model']}, {args.size}², {args.threads} threads, {args.repeats} children x "
          f"{args.forwards} restorations per path")
    print_table(rows)
    print("freed-memory reuse leaves the fast path's output bit-identical:", rows[2]["identical_to_fast"])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
