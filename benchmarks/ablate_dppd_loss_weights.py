"""Short CPU ablation of DPPD's loss weights (prototype cross-entropy, prototype separation, KL).

    python -m training.prepare_embedded_corpus --output data/embedded     # once: the clean photo corpus
    nice python benchmarks/ablate_dppd_loss_weights.py --corpus data/embedded
    nice python benchmarks/ablate_dppd_loss_weights.py --seed 1 --settings "[[0.1,0.1,0.001],[0.1,0.1,0.01],[0.1,0.1,0.1]]"

A tiny DPPD (dim 16, one block per level) learns 3-task restoration (noise sigma 15/25/50, rain, haze, each
synthesized on random 32 px crops of the corpus's training photos with ``training.degradations``) for
``--steps`` AdamW steps per weight setting, with the same seed, data and initialisation for every setting.
Evaluated on fixed held-out crops (12 per task from the corpus's held-out photos):

- ``psnr``: label-free restoration (the model's own prototype assignment conditions the prompts);
- ``psnr_labels``: restoration given the true degradation labels;
- ``assign``: accuracy of ``estimate_degradation`` (the label-free assignment) against the true task;
- ``max_cos``: the largest cosine between two prototypes, averaged over the three prompt modules;
- ``kl``: the KL term (per element) on the held-out crops.

Prints a Markdown table (the one in ``DPPDConfig``'s docstring). Short runs rank the settings only roughly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from modeling import DPPDConfig, DPPDForImageRestoration  # noqa: E402
from training.data import decode_image, list_image_files  # noqa: E402
from training.degradations import synthesize  # noqa: E402

TASKS = ("noise", "rain", "haze")
TINY = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], prompt_dims=[8, 16, 32],
            num_prompt_tokens=5, embedding_dim=16, degradation_names=list(TASKS))
#: (prototype_loss_weight, prototype_separation_weight, kl_loss_weight)
SETTINGS = [(0.0, 0.0, 0.0), (0.1, 0.1, 0.001), (1.0, 0.1, 0.001), (0.1, 0.0, 0.001), (0.1, 0.1, 0.01), (0.1, 0.1, 0.1)]


def load_photos(folder: Path) -> list[np.ndarray]:
    return [decode_image(path)[0] for path in list_image_files(folder)]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    return image[top : top + size, left : left + size]


def make_batch(photos, tasks, size: int, rng: np.random.Generator):
    degraded, clean = [], []
    for task in tasks:
        crop = random_crop(photos[int(rng.integers(len(photos)))], size, rng)
        degraded.append(synthesize(crop, task, rng).image)
        clean.append(crop)

    def to_tensor(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)

    labels = torch.tensor([TASKS.index(task) for task in tasks])
    return to_tensor(degraded), to_tensor(clean), labels


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    mse = ((restored.clamp(0, 1) - clean) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


@torch.no_grad()
def max_prototype_cosine(model: DPPDForImageRestoration) -> float:
    values = []
    for module in model.decoder_prompts.assignment_modules():
        unit = module.unit_prototypes()
        cosine = unit @ unit.t() - 2 * torch.eye(unit.shape[0])
        values.append(float(cosine.max()))
    return float(np.mean(values))


def run_setting(weights, photos, heldout, args) -> dict:
    prototype, separation, kl = weights
    torch.manual_seed(args.seed)
    config = DPPDConfig(**TINY, prototype_loss_weight=prototype, prototype_separation_weight=separation,
                        kl_loss_weight=kl)
    model = DPPDForImageRestoration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    tasks = [TASKS[i % len(TASKS)] for i in range(args.batch_size)]
    start = time.perf_counter()
    for _ in range(args.steps):
        degraded, clean, labels = make_batch(photos, tasks, args.crop, rng)
        loss = model(degraded, labels=clean, degradation_labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    degraded, clean, labels = heldout
    with torch.no_grad():
        free = model(degraded, labels=clean)
        given = model(degraded, degradation_labels=labels)
        estimate = model.estimate_degradation(degraded)
    return {
        "prototype": prototype, "separation": separation, "kl_weight": kl,
        "psnr": psnr(free.reconstruction, clean), "psnr_labels": psnr(given.reconstruction, clean),
        "input_psnr": psnr(degraded, clean),
        "assign": float((estimate.argmax(-1) == labels).float().mean()),
        "max_cos": max_prototype_cosine(model), "kl": float(free.loss_terms["prompt_kl"]), "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "data" / "embedded")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=6)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--heldout_per_task", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--settings", type=json.loads, default=SETTINGS,
                        help="JSON list of [prototype, separation, KL] weight triples (default: the table's six)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.corpus / "train").is_dir():
        raise SystemExit(f"{args.corpus}/train not found: run python -m training.prepare_embedded_corpus first")
    photos = load_photos(args.corpus / "train")
    heldout_rng = np.random.default_rng(1234)
    heldout_tasks = [task for task in TASKS for _ in range(args.heldout_per_task)]
    heldout = make_batch(load_photos(args.corpus / "heldout"), heldout_tasks, args.crop, heldout_rng)

    rows = []
    for weights in args.settings:
        rows.append(run_setting(weights, photos, heldout, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"input PSNR of the held-out crops: {rows[0]['input_psnr']:.2f} dB; {args.steps} steps per setting, "
          f"seed {args.seed}\n")
    print("| prototype | separation | KL | PSNR (dB) | PSNR with labels (dB) | assign | max prototype cosine | KL term |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['prototype']:g} | {row['separation']:g} | {row['kl_weight']:g} | {row['psnr']:.2f} | "
              f"{row['psnr_labels']:.2f} | {row['assign']:.2f} | {row['max_cos']:.3f} | {row['kl']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    assert all(math.isfinite(row["psnr"]) for row in rows)


if __name__ == "__main__":
    main()
