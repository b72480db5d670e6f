"""Label-free restoration photo by photo: what the estimator says, and what each auto mode makes of it.

For every held-out photo of the chosen rows of `training/evaluate_model.py` (the same seeded syntheses), prints
the estimator's weights (averaged over its windows, as `restore()` judges an image) and the PSNR gain over the
degraded input of four restorations: with the true label, `auto_mode="hard"` (only the likeliest prompt),
`auto_mode="soft"` (the prompts blended by the weights) and `auto_mode="cautious"` (the default: hard, unless the
top classes are close: then the one whose restoration changes the image least). The question it answers: when the estimator
is unsure, which use of its estimate stays safe?

    python benchmarks/auto_mode_per_photo.py --rows rain haze --json outputs/auto_mode.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from modeling import restore  # noqa: E402
from modeling.inference import DEMO_CHECKPOINT_DIR, estimate_degradation_weights, load_model  # noqa: E402
from training.data import decode_image, list_image_files  # noqa: E402
from training.evaluate_model import row_setting, synthesize_row_image  # noqa: E402
from training.evaluation import psnr  # noqa: E402  (the evaluate metric every table uses)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEMO_CHECKPOINT_DIR), help="a PIP folder with an estimator")
    parser.add_argument("--heldout", default=str(REPO_ROOT / "data" / "embedded" / "heldout"))
    parser.add_argument("--rows", nargs="+", default=["rain", "haze"], help="held-out rows, e.g. noise-25 rain")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's synthesis seed")
    parser.add_argument("--photos", nargs="+", default=None,
                        help="only the held-out photos whose names contain one of these (each keeps its place, "
                             "so its synthesis is the evaluation's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch

    model = load_model(args.model, device="cpu")
    if not getattr(model, "can_estimate_degradation", False):
        raise SystemExit(f"{args.model} has no degradation estimator")
    names = list(model.config.degradation_names)
    files = list_image_files(args.heldout)
    rows = []
    for label in args.rows:
        task, _ = row_setting(label)
        for index, path in enumerate(files):
            if args.photos and not any(part in Path(path).name for part in args.photos):
                continue
            clean = decode_image(path)[0]
            reference = clean.astype(np.float64) / 255
            degraded = synthesize_row_image(clean, label, index, args.seed)
            pixel_values = torch.from_numpy(degraded).permute(2, 0, 1)[None]
            weights = estimate_degradation_weights(model, pixel_values, auto_mode="soft", dtype="fp32")[0].tolist()
            before = psnr(degraded, reference)
            gains = {mode: psnr(restore(degraded, model, dtype="fp32", **kwargs), reference) - before for mode, kwargs in (
                ("labelled", {"degradation": task}),
                ("hard", {"degradation": "auto", "auto_mode": "hard"}),
                ("soft", {"degradation": "auto", "auto_mode": "soft"}),
                ("cautious", {"degradation": "auto", "auto_mode": "cautious"}),
            )}
            row = {"row": label, "photo": Path(path).stem, "weights": dict(zip(names, weights)),
                   "top": names[int(np.argmax(weights))], **{f"gain_{m}": g for m, g in gains.items()}}
            rows.append(row)
            print(f"{label:<14}{row['photo'][:26]:<28}top {row['top']:<10}{max(weights):5.2f}   labelled "
                  f"{gains['labelled']:+6.2f}  hard {gains['hard']:+6.2f}  soft {gains['soft']:+6.2f}  cautious "
                  f"{gains['cautious']:+6.2f}", flush=True)
    summary = {}
    for label in args.rows:
        mine = [r for r in rows if r["row"] == label]
        summary[label] = {f"{k}_{m}": float(f(r[f"gain_{m}"] for r in mine)) for m in ("labelled", "hard", "soft", "cautious")
                          for k, f in (("mean", lambda v: np.mean(list(v))), ("worst", min))}
        modes = ("labelled", "hard", "soft", "cautious")
        print(f"{label}: mean gain {' / '.join(modes)} "
              f"{' / '.join(format(summary[label]['mean_' + m], '+.2f') for m in modes)} dB; worst photo "
              f"{' / '.join(format(summary[label]['worst_' + m], '+.2f') for m in modes)}")
    report = {"model": args.model, "rows": rows, "summary": summary}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
