"""Time to restore one 512×512 photo with the shipped weights on this machine (goal on the 2-core CPU: <= 3 s).

    python benchmarks/bench_demo_restore.py                       # shipped weights, 512², 2 threads
    python benchmarks/bench_demo_restore.py --model outputs/cpu-run2/model --size 1024 --threads 1

Three paths, timed in the same run on the same image (a held-out example crop, resized to `--size`²):
1. `forward`: the bare fp32 eager model forward with a given label (`torch.inference_mode`); the baseline;
2. `restore`: `modeling.restore` with the label: PIL in, PIL out (pre-/post-processing and padding included);
3. `restore-auto`: `modeling.restore` without a label: the estimator's pass is added (what the CLI, the pipeline
   and the Space do by default).
Each is run once to warm up, then `--repeats` times; the median is reported, with its ratio to path 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up: allocator, thread pool, first-call dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped weights)")
    parser.add_argument("--size", type=int, default=512, help="side of the square test image")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from modeling import restore
    from modeling.inference import DEMO_CHECKPOINT_DIR, load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model if args.model is not None else str(DEMO_CHECKPOINT_DIR), device="cpu")
    example = DEMO_CHECKPOINT_DIR / "examples" / "lomiri-friends-noise.png"
    if example.is_file():
        image = Image.open(example).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
    else:  # no shipped examples (a checkout without modeling/demo): a fixed random image costs the same
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    labels = ["noise"] if getattr(model, "accepts_degradation_labels", False) else None

    def forward() -> None:
        with torch.inference_mode():
            kwargs = {"degradation_labels": labels} if labels else {}
            model(pixel_values=pixels, **kwargs)

    timings = {
        "forward": median_seconds(forward, args.repeats),
        "restore": median_seconds(lambda: restore(image, model, degradation=labels[0] if labels else None),
                                  args.repeats),
    }
    if getattr(model, "can_estimate_degradation", False):
        timings["restore-auto"] = median_seconds(lambda: restore(image, model), args.repeats)

    parameters = sum(p.numel() for p in model.parameters())
    print(f"{model.config.model_type}, {parameters:,} parameters, {args.size}x{args.size}, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'path':<14}{'seconds':>9}{'ratio':>8}")
    for name, seconds in timings.items():
        print(f"{name:<14}{seconds:>9.3f}{seconds / timings['forward']:>8.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"size": args.size, "threads": args.threads, "parameters": parameters,
                                         "seconds": timings}, indent=2) + "\n")


if __name__ == "__main__":
    main()
