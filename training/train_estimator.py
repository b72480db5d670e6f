"""Train PIP's degradation estimator on its own, with the restoration weights frozen.

    python -m training.train_estimator --model outputs/pip-restormer-cpu/model --output outputs/pip-restormer-cpu/final \
        --data_roots clean=data/embedded/train --heldout data/embedded/heldout --max_train_steps 600

Why a second stage: the estimator is what the label-free mode ("auto") runs on, and a wrong estimate costs far
more than any restoration detail (a noise prompt on a dark photo does not brighten it). During the main run it is
a small head on detached features trained by 0.1 x cross-entropy beside the restoration loss, on the restoration's
small crops; here it gets its own steps, larger crops and, by default, its own input (``--estimator_input
pixels``: a small CNN on the image, `PixelDegradationEstimator`), which can be trained after the fact because it
never reads the body. Only the estimator's parameters change (checked before saving).

The data is the training stream of ``train.py`` (the same presets, roots and synthesis). Before and after, the
estimator is scored on the held-out photos exactly as ``restore()`` uses it (`estimate_degradation_weights`:
the whole image up to 1 MP, else four 512² crops), one synthesized image per photo and degradation with a seed
fixed by (photo, degradation). The folder written holds the model (weights, config, processor, code for
``trust_remote_code``), the input folder's card and figures, and ``estimator_training.json`` (arguments, loss
curve, held-out accuracy and confusion matrix before and after).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.checkpointing import check_output_folder, folder_written_atomically  # noqa: E402

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="trained PIP folder (or Hub id)")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder to write: new, empty or an earlier model folder (replaced atomically)")
    parser.add_argument("--data_preset", default="5-task", help="3-task, 5-task or cdd11 (as train.py)")
    parser.add_argument("--data_roots", nargs="+", default=[], metavar="TASK=DIR",
                        help="task=folder pairs (as train.py); tasks without a root are synthesized from 'clean'")
    parser.add_argument("--heldout", type=Path, default=None, help="held-out clean photos to score the estimator on")
    parser.add_argument("--skip_score_before", action="store_true",
                        help="do not score the estimator the model came with (saves the encoder passes)")
    parser.add_argument("--estimator_input", default="pixels", choices=("pixels", "features", "keep"),
                        help="build a new estimator reading this input ('keep': fine-tune the current one)")
    parser.add_argument("--estimator_statistics", nargs="+", default=None, choices=("mean", "std", "max"),
                        help="what the new pixel estimator pools per channel (default: the model's config, "
                             "mean and std); 'max' sees the highlights that tell a dark photo from an "
                             "under-exposed one")
    parser.add_argument("--judge_on_windows", action="store_true",
                        help="record --patch_size as the config's degradation_estimator_window, so restore() "
                             "judges images on a grid of windows of the size the estimator was trained on")
    parser.add_argument("--dark_scene_probability", type=float, default=0.0,
                        help="darken this fraction of the noise, rain and blur examples by a gamma of 1.5-3 "
                             "(highlights stay white): dark scenes that are not under-exposed, such as a night "
                             "sky, which the estimator otherwise takes for low light")
    parser.add_argument("--init_estimator_from", type=Path, default=None,
                        help="start from the estimator of this folder (e.g. one trained beside an earlier checkpoint: "
                             "a pixel estimator does not depend on the body)")
    parser.add_argument("--max_train_steps", type=int, default=600, help="0: only evaluate and save")
    parser.add_argument("--patch_size", default=128, type=int)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--dataloader_num_workers", type=int, default=1)
    parser.add_argument("--logging_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_train_steps < 0:
        parser.error("--max_train_steps must be >= 0")
    for name in ("patch_size", "train_batch_size", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    try:
        args.data_roots = dict(item.split("=", 1) for item in args.data_roots)
    except ValueError:
        parser.error("--data_roots takes TASK=DIR pairs")
    try:  # before the training: a folder that is not a model folder would be replaced whole
        inputs = [args.model, *([args.init_estimator_from] if args.init_estimator_from else [])]
        check_output_folder(args.output, inputs)
    except ValueError as error:
        parser.error(str(error))
    return args


#: Classes whose examples `darken_scenes` may darken: darkening keeps them what they are. Not haze (a darkened
#: veil reads as dim light) and not low light itself.
DARK_SCENE_CLASSES = ("noise", "rain", "blur")


def darken_scenes(
    images: torch.Tensor, allowed: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """``images ** gamma`` (gamma uniform in 1.5-3) for each allowed image of a (B, 3, H, W) batch in [0, 1], with
    the given probability. A gamma darkens the bulk of the picture but keeps white highlights white, unlike the
    low-light synthesis (``scale * x ** gamma`` with scale at most 0.8, plus sensor noise), so the estimator must
    learn the cues of under-exposure rather than darkness alone."""
    chosen = (torch.rand(len(images), generator=generator) < probability) & allowed
    gamma = 1.5 + 1.5 * torch.rand(len(images), generator=generator)
    exponent = torch.where(chosen, gamma, torch.ones_like(gamma)).view(-1, 1, 1, 1)
    return images.clamp(0, 1).pow(exponent)


def heldout_confusion(model, heldout: Path, seed: int = 0) -> dict:
    """Accuracy and confusion matrix (rows: true, columns: estimated) of the estimator on held-out photos, each
    degraded once per class with a seed fixed by (seed, photo, class), estimated as ``restore()`` does."""
    from modeling.inference import estimate_degradation_weights
    from training.data import decode_image, list_image_files
    from training.degradations import synthesize

    names = list(model.config.degradation_names)
    confusion = np.zeros((len(names), len(names)), dtype=int)
    for path in list_image_files(heldout):
        clean = decode_image(path)[0]
        for true_index, task in enumerate(names):
            rng = np.random.default_rng([seed, zlib.crc32(f"{Path(path).stem}-{task}".encode())])
            degraded = synthesize(clean, task, rng).image
            pixels = torch.from_numpy(degraded).permute(2, 0, 1)[None].float() / 255
            weights = estimate_degradation_weights(model, pixels, device="cpu", dtype="fp32")
            confusion[true_index, int(weights.argmax())] += 1
    total = int(confusion.sum())
    return {"classes": names, "accuracy": float(np.trace(confusion) / max(total, 1)), "images": total,
            "confusion": confusion.tolist()}


def train_estimator(args: argparse.Namespace) -> dict:
    """Run the estimator stage; returns the record written as ``estimator_training.json``."""
    from modeling import save_restoration_folder
    from modeling.inference import load_model, load_processor
    from training.data import build_dataloader, build_stream
    from training.evaluation import degradation_label_lookup
    from training.schedules import linear_warmup_cosine

    model = load_model(args.model, device="cpu")
    if not getattr(model, "can_estimate_degradation", False) or not hasattr(model.config, "degradation_estimator_input"):
        raise SystemExit(f"{args.model}: not a PIP model with a degradation estimator")
    record: dict = {"arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.heldout is not None and not args.skip_score_before:
        record["heldout_before"] = heldout_confusion(model, args.heldout, args.seed)
        logger.info("held-out accuracy before: %.3f", record["heldout_before"]["accuracy"])

    torch.manual_seed(args.seed)
    if args.estimator_input == "keep" and args.estimator_statistics is not None:
        raise SystemExit("--estimator_statistics builds a new estimator; it cannot be combined with --estimator_input keep")
    if args.estimator_input != "keep":
        from modeling.modeling_pip import build_degradation_estimator

        model.config.degradation_estimator_input = args.estimator_input
        if args.estimator_statistics is not None:
            model.config.degradation_estimator_statistics = list(args.estimator_statistics)
        model.degradation_estimator = build_degradation_estimator(model.config)
    if args.judge_on_windows:  # restore() then judges images on windows of the size trained on
        model.config.degradation_estimator_window = args.patch_size
    if args.init_estimator_from is not None:
        from safetensors.torch import load_file

        donor_config = json.loads((args.init_estimator_from / "config.json").read_text())
        donor = donor_config["degradation_estimator_input"]
        if donor != model.config.degradation_estimator_input:
            raise SystemExit(f"{args.init_estimator_from} has a {donor!r} estimator, not "
                             f"{model.config.degradation_estimator_input!r} (see --estimator_input)")
        # The weights read the statistics they were trained on, judged on windows of their size: those come with them
        # unless given here.
        statistics = donor_config.get("degradation_estimator_statistics")
        current = model.config.degradation_estimator_statistics
        if args.estimator_statistics is None and statistics and statistics != current:
            from modeling.modeling_pip import build_degradation_estimator

            model.config.degradation_estimator_statistics = list(statistics)
            model.degradation_estimator = build_degradation_estimator(model.config)
        elif args.estimator_statistics is not None and statistics and list(args.estimator_statistics) != statistics:
            raise SystemExit(f"{args.init_estimator_from} was trained on the statistics {statistics}, not "
                             f"{list(args.estimator_statistics)} (--estimator_statistics)")
        if not args.judge_on_windows and donor_config.get("degradation_estimator_window"):
            model.config.degradation_estimator_window = donor_config["degradation_estimator_window"]
        prefix = "degradation_estimator."
        weights = load_file(args.init_estimator_from / "model.safetensors")
        model.degradation_estimator.load_state_dict(
            {name[len(prefix):]: tensor for name, tensor in weights.items() if name.startswith(prefix)}, strict=True
        )
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
              if not name.startswith("degradation_estimator.")}
    model.requires_grad_(False)
    estimator = model.degradation_estimator
    estimator.requires_grad_(True)
    model.eval()  # the body is frozen and has no dropout/batch-norm; the estimator neither
    optimizer = torch.optim.AdamW(estimator.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    # Per-step warm-up and cosine: an "epoch" of the schedule is one step here.
    schedule = linear_warmup_cosine(1, max(1, args.warmup_steps), args.max_train_steps, 0.1, 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    stream = build_stream(args.data_preset, args.data_roots, synthesize_missing=True, patch_size=args.patch_size,
                          seed=args.seed, rank=0, world_size=1, shards_per_rank=max(2, args.dataloader_num_workers),
                          output_dtype="uint8")
    used = {source.task_name for source in stream.sources}
    lookup = degradation_label_lookup(model, stream.label_names, None if "" in used else used)
    loader = build_dataloader(stream, args.train_batch_size, num_workers=args.dataloader_num_workers)
    uses_pixels = model.config.degradation_estimator_input == "pixels"
    darkenable = torch.tensor([name in DARK_SCENE_CLASSES for name in model.config.degradation_names])
    augment_rng = torch.Generator().manual_seed(args.seed)

    history, window_loss, window_correct, window_count = [], 0.0, 0, 0
    step, epoch = 0, 0
    from tqdm.auto import tqdm

    progress = tqdm(total=args.max_train_steps, desc="estimator", unit="step")
    while step < args.max_train_steps:
        stream.set_epoch(epoch)
        for batch in loader:
            degraded = batch["degraded"].float().div_(255)
            targets = lookup[batch["task"]]
            if args.dark_scene_probability > 0:
                degraded = darken_scenes(degraded, darkenable[targets], args.dark_scene_probability, augment_rng)
            if uses_pixels:
                logits = estimator(model.pad_to_multiple(degraded))
            else:
                with torch.no_grad():
                    features = model.unet.encode(model.pad_to_multiple(degraded))
                logits = estimator(features)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_lr = scheduler.get_last_lr()[0]  # what this step used (logged), not the next step's
            scheduler.step()
            step += 1
            progress.update(1)
            window_loss += loss.item() * len(targets)
            window_correct += int((logits.argmax(1) == targets).sum())
            window_count += len(targets)
            if step % args.logging_steps == 0 or step == args.max_train_steps:
                history.append({"step": step, "loss": window_loss / window_count,
                                "accuracy": window_correct / window_count, "lr": step_lr})
                progress.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['accuracy']:.2f}")
                window_loss, window_correct, window_count = 0.0, 0, 0
            if step >= args.max_train_steps:
                break
        epoch += 1
    progress.close()
    if not all(math.isfinite(row["loss"]) for row in history):
        raise RuntimeError("the estimator's loss became non-finite; nothing was written")
    after = model.state_dict()
    changed = [name for name, tensor in before.items() if not torch.equal(tensor, after[name])]
    if changed:  # cannot happen with requires_grad off; refuse to write a model whose restoration changed
        raise RuntimeError(f"restoration weights changed: {changed[:5]}")
    record["history"] = history
    if args.heldout is not None:
        record["heldout_after"] = heldout_confusion(model, args.heldout, args.seed)
        logger.info("held-out accuracy after: %.3f", record["heldout_after"]["accuracy"])

    source = Path(args.model)
    # The processor saved with the input model, a local folder's or a Hub id's (defaults where it has none).
    processor = load_processor(args.model, model=model)
    model.requires_grad_(True)
    with folder_written_atomically(args.output) as partial:
        save_restoration_folder(model, partial, processor)  # config, safetensors, processor, fresh code files
        if source.is_dir():  # keep the run's card, curves and validation results beside the new weights
            for name in ("README.md", "training_curves.png", "eval_results.json", "replica_checksums.json"):
                if (source / name).is_file():
                    shutil.copy(source / name, partial / name)
        (partial / "estimator_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    record = train_estimator(args)
    for key in ("heldout_before", "heldout_after"):
        if key in record:
            print(f"{key}: accuracy {record[key]['accuracy']:.3f} over {record[key]['images']} images; "
                  f"confusion (rows true {record[key]['classes']}): {record[key]['confusion']}")
    return record


if __name__ == "__main__":
    main()
