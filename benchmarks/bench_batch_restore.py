"""Archive restoration throughput: `training.batch_restore` on 1 process against N processes.

    python benchmarks/bench_batch_restore.py                               # 96 generated 64x64 images, 1 vs 2
    python benchmarks/bench_batch_restore.py --images 8 --size 32 --processes 1 2   # a quick check
    python benchmarks/bench_batch_restore.py --model path/or/hub-id --images 200 --size 256 --tile 128
    python benchmarks/bench_batch_restore.py --model modeling/demo --images 200 --size 512 --processes 1 --json r.json

Each run is the real script in a fresh output folder, launched as users launch it (``python -m`` for one process,
``accelerate launch --multi_gpu --num_processes N`` for more; on a CPU machine that gives N gloo processes). The
images/s are the script's own, from ``summary.json``: restored images over the restore phase, which starts once
every process has loaded the model. ``OMP_NUM_THREADS`` is split between the processes (default: the cores /
N each), so that the comparison is of processes, not of more threads. Prints a table with each setting's ratio
to one process (to the first setting when `--processes` has no 1).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: A small PIP (label-free "auto" path): enough work per image that processes, not start-up, dominate.
MODEL_CONFIG = {
    "dim": 16, "num_blocks": [1, 2, 2, 2], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8],
    "prompt_dims": [32, 32, 64], "prompt_sizes": [32, 16, 8], "degradation_estimator_hidden_dim": 32,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96, help="generated images in the archive")
    parser.add_argument("--size", type=int, default=64, help="side of each generated image")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: a random small PIP)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--tile", default=None, type=int)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS per process (default: CPU cores / processes, at least 1)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--json", default=None, help="also write the table here")
    return parser.parse_args(argv)


def make_archive(folder: Path, count: int, size: int) -> Path:
    """`count` textured RGB PNGs in two sub-folders (the tree is mirrored in the output)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for index in range(count):
        channels = [0.5 + 0.35 * np.sin(xx * rng.uniform(0.02, 0.2) + c) * np.cos(yy * rng.uniform(0.02, 0.2))
                    + 0.05 * rng.standard_normal(xx.shape) for c in range(3)]
        image = (np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8)
        target = folder / f"part{index % 2}" / f"img{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target)
    return folder


def make_model(folder: Path) -> Path:
    import torch

    import modeling
    from modeling import RestorationImageProcessor

    config_class, model_class = modeling.MODEL_CLASSES["pip"]
    torch.manual_seed(0)
    model_class(config_class(**MODEL_CONFIG)).save_pretrained(folder)
    RestorationImageProcessor().save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(processes: int, argv: list[str], threads: int, timeout: int) -> dict:
    """One run of the script; returns its summary.json."""
    if processes == 1:
        launcher = [sys.executable]
    else:
        accelerate = Path(sys.executable).with_name("accelerate")
        launcher = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines",
                    "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    # The checkout first, then whatever the caller's PYTHONPATH holds: on a machine whose packages were installed
    # with `pip install --target DIR` (the GPU call), torch and accelerate are found only through it.
    python_path = os.pathsep.join([str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*launcher, "-m", "training.batch_restore", *argv], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    output = Path(argv[argv.index("--output") + 1])
    return json.loads((output / "summary.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-batch-restore-") as scratch:
        root = Path(scratch)
        archive = make_archive(root / "archive", args.images, args.size)
        model = args.model or str(make_model(root / "model"))
        rows = []
        for processes in args.processes:
            threads = args.threads or max(1, cores // processes)
            argv = ["--input", str(archive), "--output", str(root / f"out-{processes}"), "--model", model,
                    "--batch_size", str(args.batch_size)]
            if args.tile:
                argv += ["--tile", str(args.tile)]
            summary = run(processes, argv, threads, args.timeout)
            rows.append((processes, threads, summary))
    # The ratio is to one process (the first setting when one process was not run).
    base = next((summary for processes, _, summary in rows if processes == 1), rows[0][2])["images_per_second"]
    print(f"\n{args.images} images of {args.size}x{args.size}, batch size {args.batch_size}, {cores} CPU cores")
    columns = (("processes", 9), ("threads each", 12), ("restored", 8), ("seconds", 8), ("images/s", 8), ("ratio", 6))
    print(" | ".join(f"{name:>{width}}" for name, width in columns))
    print("-" * 68)
    for processes, threads, summary in rows:
        rate = summary["images_per_second"]
        print(f"{processes:>9} | {threads:>12} | {summary['restored']:>8} | {summary['restore_seconds']:>8.2f} | "
              f"{rate:>8.2f} | {rate / base:>6.2f}")
    report = {"images": args.images, "size": args.size, "batch_size": args.batch_size, "tile": args.tile,
              "model": args.model or f"random PIP {MODEL_CONFIG}", "cpu_cores": cores,
              "cuda": torch_cuda_name(),
              "rows": [{"processes": processes, "threads_each": threads, "restored": summary["restored"],
                        "failed": summary["failed"], "restore_seconds": summary["restore_seconds"],
                        "images_per_second": summary["images_per_second"],
                        "ratio": summary["images_per_second"] / base} for processes, threads, summary in rows]}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def torch_cuda_name() -> str | None:
    """The GPU the script's processes use (batch_restore runs on CUDA wherever one is available), else None."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
