"""The CPU recipe sweep: equal wall-clock budgets, one change at a time, quality on held-out photos.

Each candidate is `training/train.py` on `training/configs/pip_restormer_cpu.yaml` with a few overrides, started
from scratch with the same seed, stopped by `--max_train_minutes` (the budget is training time; the final
validation is not counted), and scored by the run's own final validation: centre crops of the held-out photos,
synthesized degradations, PSNR per task with the true label. Candidates run one after the other, so each has
the machine to itself (run nothing else meanwhile). Columns: parameters, steps and images trained in the
budget, PSNR gain over the degraded input per task and its mean (quality per CPU-budget).

    python -m training.prepare_embedded_corpus --output data/embedded --dead_leaves 60
    python benchmarks/sweep_cpu_recipe.py --minutes 8 --json outputs/sweep.json

`--candidates` picks some of the built-in ones (`--list` shows them); `--config`, `--train_dir` and
`--heldout_dir` point elsewhere, for instance at a tiny corpus in the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)

#: name: (what changes, train.py overrides). "recipe" is the recipe as committed.
CANDIDATES: dict[str, tuple[str, dict[str, str]]] = {
    "recipe": ("the recipe: dim 16, blocks [1,2,2,2], 8x64², lr 1e-3", {}),
    "lr-2e-3": ("learning rate 2e-3", {"learning_rate": "2e-3"}),
    "lr-5e-4": ("learning rate 5e-4", {"learning_rate": "5e-4"}),
    "batch-16x48": ("16 crops of 48² per step", {"train_batch_size": "16", "patch_size": "48"}),
    "batch-4x96": ("4 crops of 96² per step", {"train_batch_size": "4", "patch_size": "96"}),
    "dim-24": ("wider model: dim 24 (prompt dims 24/48/96)",
               {"model_config": json.dumps({"dim": 24, "prompt_dims": [24, 48, 96]})}),
}


def run_candidate(name: str, overrides: dict[str, str], args: argparse.Namespace, output_dir: Path) -> dict:
    """Train one candidate for the budget and return its row."""
    if "model_config" in overrides:
        # train.py's --model_config replaces the recipe's whole model_config; a candidate changes only its keys,
        # on top of the sweep's --model_config when one is given, else the recipe's.
        import yaml

        base = (json.loads(args.model_config) if args.model_config is not None
                else (yaml.safe_load(Path(args.config).read_text()) or {}).get("model_config") or {})
        overrides = {**overrides, "model_config": json.dumps({**base, **json.loads(overrides["model_config"])})}
    command = [sys.executable, str(REPO_ROOT / "training" / "train.py"), "--config", str(args.config),
               "--output_dir", str(output_dir), "--max_train_steps", str(args.max_steps),
               "--max_train_minutes", str(args.minutes), "--validation_steps", "0", "--checkpointing_steps", "0",
               "--lr_scheduler", "linear_warmup_cosine",
               # warm-up over the first 100 steps, then (nearly) constant: every candidate gets the same schedule
               # whatever number of steps its budget buys
               "--steps_per_epoch", "100", "--lr_scheduler_options",
               json.dumps({"warmup_epochs": 1, "max_epochs": 1000, "warmup_start_factor": 0.1, "per_step": True}),
               "--seed", "0", "--report_to", "none"]
    if args.train_dir is not None:
        command += ["--data_roots", f"clean={args.train_dir}"]
    if args.heldout_dir is not None:
        command += ["--validation_roots", f"clean={args.heldout_dir}"]
    if args.model_config is not None:
        command += ["--model_config", args.model_config]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    command += args.extra
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO_ROOT))
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"candidate {name} failed:\n{result.stderr[-3000:]}")
    model_dir = output_dir / "model"
    card = (model_dir / "README.md").read_text()
    steps = int(re.search(r"- \*\*steps\*\*: (\d+)", card).group(1))
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        parameters = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    scores = json.loads((model_dir / "eval_results.json").read_text())
    gains = {task: s["psnr"] - s["input_psnr"] for task, s in scores.items() if isinstance(s, dict) and "psnr" in s}
    batch = int(re.search(r"- \*\*train batch size\*\*: (\d+)", card).group(1))
    return {
        "candidate": name, "change": CANDIDATES.get(name, (name,))[0], "parameters": parameters, "steps": steps,
        "images": steps * batch, "wall_s": wall, "gains": gains, "mean_gain": sum(gains.values()) / max(1, len(gains)),
    }


def print_sweep(rows: list[dict]) -> None:
    tasks = sorted({task for row in rows for task in row["gains"]})
    print("| candidate | change | parameters | steps | images | " + " | ".join(f"{t} gain (dB)" for t in tasks)
          + " | mean gain (dB) |")
    print("|---|---|---|---|---|" + "---|" * len(tasks) + "---|")
    for row in rows:
        cells = " | ".join(f"{row['gains'].get(t, float('nan')):+.2f}" for t in tasks)
        print(f"| {row['candidate']} | {row['change']} | {row['parameters']:,} | {row['steps']} | {row['images']} | "
              f"{cells} | {row['mean_gain']:+.2f} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per candidate (wall minutes)")
    parser.add_argument("--max_steps", type=int, default=100000, help="upper bound on steps (the budget stops first)")
    parser.add_argument("--candidates", nargs="*", default=None, help=f"some of {', '.join(CANDIDATES)}")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "training" / "configs" / "pip_restormer_cpu.yaml")
    parser.add_argument("--train_dir", type=Path, default=None, help="clean training photos (default: the recipe's)")
    parser.add_argument("--heldout_dir", type=Path, default=None, help="held-out photos (default: the recipe's)")
    parser.add_argument("--model_config", default=None, help="JSON model config replacing the recipe's (tests)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--output", type=Path, default=Path("outputs/sweep"), help="runs are written under here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--list", action="store_true", help="list the candidates and exit")
    parser.add_argument("extra", nargs="*", help="further train.py arguments after --, for every candidate")
    args = parser.parse_args(argv)
    if args.list:
        for name, (change, overrides) in CANDIDATES.items():
            print(f"{name}: {change} {overrides}")
        return []
    names = args.candidates or list(CANDIDATES)
    unknown = [name for name in names if name not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    rows = []
    for name in names:
        rows.append(run_candidate(name, CANDIDATES[name][1], args, args.output / name))
        print(f"[sweep] {name}: mean gain {rows[-1]['mean_gain']:+.2f} dB after {rows[-1]['steps']} steps",
              file=sys.stderr, flush=True)
    print_sweep(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"minutes": args.minutes, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
