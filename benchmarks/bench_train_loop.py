"""Training throughput on CPU: the bare optimizer step against the real `training/train.py` loop.

    python benchmarks/bench_train_loop.py                          # pip-restormer dim 16 (1.2 M params), 8 x 64x64
    python benchmarks/bench_train_loop.py --rounds 3 --workers 0 2 4 --steps 40
    python benchmarks/bench_train_loop.py --clean data/embedded/train   # photos to synthesize from (default: generated)

Every measurement runs in a fresh subprocess (threads and loader workers never leak between them), and the
rounds alternate between the variants so that load from other programs affects them alike:

* ``bare``       forward + backward + AdamW on one fixed float batch: the ceiling.
* ``bare+ema``   the same plus the EMA update (diffusers ``EMAModel``, ``foreach`` or the per-parameter loop).
* ``loader:N``   the 5-task stream alone (decode, crop, synthesize, collate) with N DataLoader workers.
* ``train:N``    ``training.train.main`` on the same model and batch size with N workers (synthesized tasks, EMA,
  loss-spike guard, integer labels, uint8 batches), images/s of the logging windows after the first one.
* ``train-nchw:N`` the same with ``--channels_last false`` (the script's CPU default is channels-last).

A suffix ``@T`` runs a variant with ``OMP_NUM_THREADS=T`` (e.g. ``bare@1``, ``train:1@2``); ``+passive`` or
``+active`` sets ``OMP_WAIT_POLICY`` (OpenMP threads sleep, or spin, between parallel regions). ``train``
defaults to PASSIVE, as ``training/train.py`` does; ``bare`` runs with the OpenMP default (spinning).

Prints images/s per variant (median over rounds) and each one's ratio to ``bare``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_CONFIG = {
    "dim": 16, "num_blocks": [1, 2, 2, 2], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8],
    "prompt_dims": [32, 32, 64], "prompt_sizes": [32, 16, 8],
}


def generated_photos(folder: Path, count: int = 16, size: int = 192) -> Path:
    """Smooth textured RGB photos (enough content for every synthesized degradation)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for index in range(count):
        channels = []
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.3)
            channels.append(0.5 + 0.35 * np.sin(xx * fx + phase) * np.cos(yy * fy) + 0.05 * rng.standard_normal(xx.shape))
        image = (np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"photo{index:02d}.png")
    return folder


# ---- one measurement per process -------------------------------------------------------------------------------


def measure_bare(args: argparse.Namespace, ema: str) -> float:
    import torch

    from modeling import PIPConfig, PIPForImageRestoration

    torch.manual_seed(0)
    model = PIPForImageRestoration(PIPConfig(**MODEL_CONFIG)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    average = None
    if ema != "none":
        from diffusers.training_utils import EMAModel

        average = EMAModel(model.parameters(), decay=0.999, foreach=ema == "foreach")
    batch = torch.rand(args.batch, 3, args.size, args.size)
    clean = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.arange(args.batch) % 5

    def step() -> None:
        loss = model(batch, degradation_labels=labels, labels=clean).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            average.step(model.parameters())

    for _ in range(3):  # warm-up: allocator, kernel selection
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch * args.steps / (time.perf_counter() - start)


def measure_loader(args: argparse.Namespace, workers: int) -> float:
    from training.data import build_dataloader, build_stream

    stream = build_stream("5-task", {"clean": args.clean}, synthesize_missing=True, patch_size=args.size, seed=0,
                          shards_per_rank=16, output_dtype="uint8")
    loader = iter(build_dataloader(stream, args.batch, num_workers=workers))
    for _ in range(2):
        next(loader)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(loader)
    return args.batch * args.steps / (time.perf_counter() - start)


def measure_train(args: argparse.Namespace, workers: int, channels_last: bool = True) -> float:
    from training.train import main, parse_args  # first: it sets the OpenMP wait policy before torch loads

    from training import checkpointing

    with tempfile.TemporaryDirectory() as output_dir:
        window = 5
        steps = max(args.steps, 2 * window)
        argv = [
            "--config", str(REPO / "training" / "configs" / "pip_restormer_demo.yaml"),
            "--model_config", json.dumps(MODEL_CONFIG), "--data_roots", f"clean={args.clean}",
            "--validation_roots", "--train_batch_size", str(args.batch), "--patch_size", str(args.size),
            "--dataloader_num_workers", str(workers), "--max_train_steps", str(steps), "--logging_steps", str(window),
            "--checkpointing_steps", str(steps), "--validation_steps", "0", "--report_to", "none",
            "--output_dir", output_dir, "--mixed_precision", "no", "--channels_last", str(channels_last).lower(),
        ]
        main(parse_args(argv))
        history = checkpointing.load_training_state(Path(output_dir) / f"checkpoint-{steps}")["history"]
    rates = [row["images_per_second"] for row in history[1:]]  # the first window holds start-up
    return statistics.mean(rates)


def run_one(variant: str, args: argparse.Namespace) -> float:
    kind, _, option = variant.partition(":")
    if kind == "bare":
        return measure_bare(args, option or "none")
    if kind == "loader":
        return measure_loader(args, int(option))
    if kind in ("train", "train-nchw"):
        return measure_train(args, int(option), channels_last=kind == "train")
    raise ValueError(variant)


# ---- driver ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--variants", nargs="*", help="override: e.g. bare bare:foreach loader:2 train:0")
    parser.add_argument("--clean", help="folder of clean photos (default: generated in a temporary folder)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"images_per_second": run_one(args.one, args)}))
        return
    with tempfile.TemporaryDirectory() as scratch:
        if not args.clean:
            args.clean = str(generated_photos(Path(scratch) / "clean"))
        variants = args.variants or (
            ["bare", "bare:loop", "bare:foreach"]
            + [f"loader:{n}" for n in args.workers]
            + [f"train:{n}" for n in args.workers]
        )
        rates: dict[str, list[float]] = {v: [] for v in variants}
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for round_index in range(args.rounds):
            for variant in variants:
                env = dict(base_env)
                name, _, threads = variant.partition("@")
                if threads:
                    threads, _, policy = threads.partition("+")
                    env["OMP_NUM_THREADS"] = threads
                    if policy:
                        env["OMP_WAIT_POLICY"] = policy.upper()
                command = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--size",
                           str(args.size), "--steps", str(args.steps), "--clean", args.clean]
                result = subprocess.run(command, env=env, capture_output=True, text=True)
                if result.returncode:
                    sys.exit(f"{variant} failed:\n{result.stderr[-3000:]}")
                rate = json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"]
                rates[variant].append(rate)
                print(f"round {round_index + 1} {variant:14s} {rate:7.2f} img/s", flush=True)
    import torch

    print(f"\npip-restormer {MODEL_CONFIG}, batch {args.batch} x {args.size}x{args.size}, {args.steps} steps, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    base = statistics.median(rates[variants[0]])
    for variant, values in rates.items():
        median = statistics.median(values)
        print(f"{variant:14s} {median:7.2f} img/s  x{median / base:.2f} of {variants[0]}  "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
