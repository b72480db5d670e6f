"""The Space under load (p50/p95 latency) and its overhead over `restore()` alone (ratio; goal <= 1.2x).

    python benchmarks/bench_space.py                                   # tiny random PIP, loopback only
    python benchmarks/bench_space.py --model outputs/pip-restormer-demo/model --size 512 --threads 2

Starts space/app.py in this process on 127.0.0.1 (a free port) and talks to it with gradio_client:
1. load: `--requests` requests of a `--load-size`² image submitted at once; latency = submit to result on the
   client (upload, queue wait, restoration, PNG encode, download), reported as p50 / p95 / max;
2. overhead: one `--size`² image restored `--repeats` times through the Space, one request at a time, against
   `restore()` on the same, already loaded model and file; the ratio of the medians.
Random weights: this measures cost, not quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)
#: A tiny PIP (the same shape as the tests' tiny model).
TINY_PIP = dict(
    dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
    prompt_dims=[12, 20, 16], prompt_sizes=[8, 4, 4], degradation_estimator_hidden_dim=16,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random tiny PIP), 'demo', a Hub id or a folder")
    parser.add_argument("--requests", type=int, default=50, help="concurrent requests in the load test")
    parser.add_argument("--load-size", type=int, default=64, help="side of the load-test image")
    parser.add_argument("--size", type=int, default=512, help="side of the overhead-test image")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side of the overhead test")
    parser.add_argument("--concurrency", type=int, default=None, help="SPACE_CONCURRENCY (default: the app's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be >= 1")

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from gradio_client import Client, handle_file
    from PIL import Image

    from modeling import PIPConfig, PIPForImageRestoration
    from modeling.inference import DEFAULT_AUTO_MODE, model_inference_tile, restore
    from modeling.tiling import WHOLE_IMAGE

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("prompt_restoration_space_app", REPO_ROOT / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)

    work = Path(tempfile.mkdtemp(prefix="bench-space-"))
    model = args.model
    if model == "tiny":
        torch.manual_seed(0)
        model = str(work / "tiny-pip")
        PIPForImageRestoration(PIPConfig(**TINY_PIP)).save_pretrained(model)
    rng = np.random.default_rng(0)
    load_image, big_image = work / "load.png", work / "big.png"
    Image.fromarray(rng.integers(0, 256, (args.load_size, args.load_size, 3), dtype=np.uint8)).save(load_image)
    Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(big_image)

    side = max(args.size, args.load_size)
    settings = app.SpaceSettings(
        model=model, device=args.device, concurrency=args.concurrency, queue_size=max(64, args.requests),
        max_megapixels=side * side / 1e6 + 0.01, max_file_mb=64, tile=max(512, side), output_dir=work / "outputs",
    )
    demo, space = app.build_demo(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **space.launch_kwargs())
    try:
        client = Client(
            demo.local_url, verbose=False, analytics_enabled=False, max_workers=args.requests,
            httpx_kwargs={"timeout": 600},
        )

        def predict(path: Path):
            return client.predict(handle_file(str(path)), "", "auto", DEFAULT_AUTO_MODE, api_name="/restore")

        predict(load_image)  # warm-up: first request, allocator, kernels
        predict(big_image)

        # 1. Load: all requests at once.
        latencies: list[float] = []
        lock = threading.Lock()
        started = time.perf_counter()
        jobs = []
        for _ in range(args.requests):
            submitted = time.perf_counter()
            job = client.submit(handle_file(str(load_image)), "", "auto", DEFAULT_AUTO_MODE, api_name="/restore")

            def done(_future, submitted=submitted):
                with lock:
                    latencies.append(time.perf_counter() - submitted)

            job.add_done_callback(done)
            jobs.append(job)
        failures = 0
        for job in jobs:
            try:
                job.result(timeout=1200)
            except Exception:  # noqa: BLE001 - count and report, do not stop the benchmark
                failures += 1
        wall = time.perf_counter() - started
        while len(latencies) < len(jobs):  # callbacks run just after result() returns
            time.sleep(0.01)

        # 2. Overhead at --size: the Space (sequential requests) vs restore() on the same loaded model.
        loaded = space.get_model(None)
        space_times, direct_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            predict(big_image)
            space_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            # The Space's tiles: the model's own inference_tile, else whole (SPACE_TILE >= --size), passed as tile=0
            # since restore()'s default would tile above 4 megapixels.
            tile = model_inference_tile(loaded.model) or WHOLE_IMAGE
            restore(str(big_image), loaded.model, loaded.processor, device=args.device, tile=tile)
            direct_times.append(time.perf_counter() - start)
    finally:
        demo.close()

    result = {
        "model": args.model,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "concurrency": space.concurrency,
        "load": {
            "requests": args.requests,
            "image": f"{args.load_size}x{args.load_size}",
            "failures": failures,
            "wall_s": round(wall, 3),
            "p50_s": round(percentile(latencies, 50), 3),
            "p95_s": round(percentile(latencies, 95), 3),
            "max_s": round(max(latencies), 3),
            "throughput_per_s": round(args.requests / wall, 2),
        },
        "overhead": {
            "image": f"{args.size}x{args.size}",
            "repeats": args.repeats,
            "space_median_s": round(statistics.median(space_times), 3),
            "restore_median_s": round(statistics.median(direct_times), 3),
            "ratio": round(statistics.median(space_times) / statistics.median(direct_times), 3),
        },
    }
    load, overhead = result["load"], result["overhead"]
    print(
        f"load: {load['requests']} concurrent {load['image']} requests, {load['failures']} failed, "
        f"p50 {load['p50_s']} s, p95 {load['p95_s']} s, max {load['max_s']} s, {load['throughput_per_s']} req/s"
    )
    print(
        f"overhead at {overhead['image']}: Space {overhead['space_median_s']} s vs restore() "
        f"{overhead['restore_median_s']} s = {overhead['ratio']}x (goal <= 1.2x)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
