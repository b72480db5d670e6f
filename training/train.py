"""Train any model of this package with accelerate, streaming the degradation corpora.

    accelerate launch training/train.py --config training/configs/pip_restormer_5task.yaml
    accelerate launch --multi_gpu --num_processes 8 training/train.py --config ... --mixed_precision bf16
    accelerate launch training/train.py --config ... --resume_from_checkpoint latest --max_train_steps 20000

Every recipe value comes from the YAML file given with ``--config``; any flag overrides it. The model
returns its own loss (L1 for Restormer/PromptIR; smooth-L1 + prompt regulariser + estimator for PIP), plus the
training-side loss its config names (CPL's contrastive prompt regularisation, training/losses.py), so the
loop has no per-method branch. Shaped after diffusers' training examples, with two fixes: checkpoints are
written atomically and pruned only after the new one is complete, and the data position is part of the
checkpoint, so a resumed run continues with exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `accelerate launch training/train.py` runs this file as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from modeling import MODEL_CLASSES
from training import checkpointing
from training.losses import build_training_loss
from training.schedules import build_lr_lambda

logger = get_logger(__name__)

# name: (type, default, help). Every field can be set in the YAML recipe or on the command line.
FIELDS: dict[str, tuple[Any, Any, str]] = {
    # model
    "model_type": (str, "pip", "one of " + ", ".join(MODEL_CLASSES)),
    "model_config": (json.loads, {}, "config overrides, JSON (YAML: a mapping)"),
    "pretrained_model_name_or_path": (str, None, "start from these weights (Hub id or folder)"),
    # data
    "data_preset": (str, "5-task", "3-task, 5-task or cdd11"),
    "data_roots": ("mapping", {}, "task=folder pairs: clean, rain, haze, blur, low-light, cdd11 (or Hub ids)"),
    "synthesize_missing": (bool, False, "synthesize tasks without a root from the clean photos"),
    "validation_roots": ("mapping", {}, "task=folder pairs of held-out data (test layouts)"),
    "validation_images_per_task": (int, 8, "held-out images per source used at each validation"),
    "validation_crop": (int, 0, "centre-crop held-out images to at most this side (0: full images)"),
    "patch_size": (int, 128, "training crop size"),
    "train_batch_size": (int, 8, "batch per process"),
    "dataloader_num_workers": (int, 2, "DataLoader workers per process"),
    "shards_per_rank": (int, 16, "stream shards per process (multiple of the workers)"),
    "steps_per_epoch": (int, 1000, "optimizer steps that make one epoch of the lr schedule"),
    # optimisation
    "learning_rate": (float, 2e-4, "base learning rate"),
    "adam_beta1": (float, 0.9, ""),
    "adam_beta2": (float, 0.999, ""),
    "adam_weight_decay": (float, 0.01, ""),
    "adam_epsilon": (float, 1e-8, ""),
    "max_grad_norm": (float, 0.0, "gradient clipping max norm; 0 disables"),
    "lr_scheduler": (str, "constant", "constant, linear_warmup_cosine, cosine_restart_cyclic, cosine_restart"),
    "lr_scheduler_options": (json.loads, {}, "options of the schedule, JSON (see training/schedules.py)"),
    "num_train_epochs": (int, None, "epochs of steps_per_epoch steps (or use max_train_steps)"),
    "max_train_steps": (int, None, "total optimizer steps; overrides num_train_epochs"),
    "gradient_accumulation_steps": (int, 1, ""),
    "mixed_precision": (str, None, "no, fp16 or bf16 (default: accelerate config)"),
    "gradient_checkpointing": (bool, False, "recompute Transformer blocks in backward"),
    "seed": (int, 0, "seed of the model initialisation and of the data plan"),
    "loss_spike_guard": (bool, False, "PIP's guard: a loss above factor x min(last N) is rescaled to factor/2 x min"),
    "loss_spike_history": (int, 100, ""),
    "loss_spike_factor": (float, 5.0, ""),
    # EMA
    "use_ema": (bool, True, "keep an EMA of the weights (final and best weights are the EMA)"),
    "ema_decay": (float, 0.999, ""),
    "ema_update_after_step": (int, 0, ""),
    # checkpoints, validation, logging
    "output_dir": (str, "outputs/run", ""),
    "checkpointing_steps": (int, 500, ""),
    "checkpoints_total_limit": (int, None, "keep at most this many checkpoints (pruned after a save completes)"),
    "resume_from_checkpoint": (str, None, "'latest' or a checkpoint folder"),
    "validation_steps": (int, 500, "0 disables periodic validation"),
    "logging_steps": (int, 10, ""),
    "report_to": (str, "tensorboard", "accelerate tracker(s), comma separated, or 'none'"),
    "cpu": (bool, False, "force CPU even if a GPU is present"),
    # Hub
    "push_to_hub": (bool, False, "upload the final folder (weights, processor, card, figures)"),
    "hub_model_id": (str, None, "org/name on the Hub"),
    "hub_token": (str, None, "defaults to the HF_TOKEN environment variable / login"),
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _parse_mapping(items: list[str]) -> dict[str, str]:
    mapping = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        mapping[key] = value
    return mapping


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults < YAML recipe (``--config``) < command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (training/configs/*.yaml)")
    for name, (kind, default, help_text) in FIELDS.items():
        if kind is bool:
            parser.add_argument(f"--{name}", type=_parse_bool, nargs="?", const=True, default=None, help=help_text)
        elif kind == "mapping":
            parser.add_argument(f"--{name}", nargs="*", default=None, metavar="KEY=VALUE", help=help_text)
        else:
            parser.add_argument(f"--{name}", type=kind, default=None, help=help_text)
    cli = parser.parse_args(argv)
    values = {name: default for name, (_, default, _) in FIELDS.items()}
    if cli.config:
        recipe = yaml.safe_load(Path(cli.config).read_text()) or {}
        unknown = set(recipe) - set(FIELDS)
        if unknown:
            parser.error(f"{cli.config}: unknown fields {sorted(unknown)}")
        values.update(recipe)
    for name, (kind, _, _) in FIELDS.items():
        given = getattr(cli, name)
        if given is not None:
            values[name] = _parse_mapping(given) if kind == "mapping" else given
    args = argparse.Namespace(config=cli.config, **values)
    if args.model_type not in MODEL_CLASSES:
        parser.error(f"model_type must be one of {sorted(MODEL_CLASSES)}, got {args.model_type!r}")
    if args.max_train_steps is None:
        if args.num_train_epochs is None:
            parser.error("set max_train_steps or num_train_epochs")
        args.max_train_steps = args.num_train_epochs * args.steps_per_epoch
    try:
        build_lr_lambda(args.lr_scheduler, args.steps_per_epoch, **args.lr_scheduler_options)
    except (TypeError, ValueError) as error:
        parser.error(f"lr_scheduler {args.lr_scheduler!r} with options {args.lr_scheduler_options}: {error}")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id org/name")
    return args


class LossSpikeGuard:
    """PIP's guard against loss spikes (official ``LossScaler(max_len=100, scale_factor=5)``).

    The current loss joins a window of recent values; if it exceeds ``factor`` x the window minimum it is
    rescaled (gradient included) to ``factor / 2`` x that minimum.
    """

    def __init__(self, history: int = 100, factor: float = 5.0) -> None:
        self.history: deque[float] = deque(maxlen=history)
        self.factor = factor
        self.triggered = 0

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        value = loss.detach().item()
        self.history.append(value)
        minimum = min(self.history)
        if value > minimum * self.factor:
            self.triggered += 1
            return loss * (minimum * (self.factor / 2) / value)
        return loss

    def state_dict(self) -> dict:
        return {"history": list(self.history), "triggered": self.triggered}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.triggered = state["triggered"]


def weights_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Two float64 numbers summarising all weights (sum and position-weighted sum), for replica checks."""
    total, weighted = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for index, parameter in enumerate(model.parameters(), start=1):
        values = parameter.detach().double().cpu()
        total += values.sum()
        weighted += index * values.abs().sum()
    return torch.stack([total, weighted])[None]


def build_model(args: argparse.Namespace):
    config_class, model_class = MODEL_CLASSES[args.model_type]
    if args.pretrained_model_name_or_path:
        return model_class.from_pretrained(args.pretrained_model_name_or_path, **args.model_config)
    return model_class(config_class(**args.model_config))


def accepts_degradation_labels(model: torch.nn.Module) -> bool:
    return "degradation_labels" in inspect.signature(model.forward).parameters


def build_validation_set(args: argparse.Namespace) -> list[dict]:
    """Held-out full images per task (from ``validation_roots``; synthesized ones follow ``synthesize_missing``)."""
    if not args.validation_roots:
        return []
    from training.data import PRESET_LABELS, preset_sources, validation_pairs

    sources = preset_sources(
        args.data_preset, args.validation_roots, synthesize_missing=args.synthesize_missing, cdd11_split="test"
    )
    pairs = list(
        validation_pairs(
            sources,
            label_names=PRESET_LABELS[args.data_preset],
            seed=args.seed,
            max_per_source=args.validation_images_per_task,
            multiple_of=16,
        )
    )
    if args.validation_crop:
        # Same window of degraded and clean image; keeps periodic validation cheap on large photos.
        for pair in pairs:
            height, width = pair["clean"].shape[:2]
            top, left = max(0, (height - args.validation_crop) // 2), max(0, (width - args.validation_crop) // 2)
            window = (slice(top, top + args.validation_crop), slice(left, left + args.validation_crop))
            pair["clean"], pair["degraded"] = pair["clean"][window], pair["degraded"][window]
    return pairs


@torch.no_grad()
def evaluate_model(model, pairs: list[dict], autocast_dtype: torch.dtype | None, with_labels: bool) -> dict:
    """PSNR/SSIM per task on held-out pairs (PromptIR protocol: RGB, [0, 1], data_range 1)."""
    from training.evaluation import load_restoration_metric

    metric = load_restoration_metric()
    model.eval()
    device = next(model.parameters()).device
    use_labels = with_labels and accepts_degradation_labels(model)
    by_task: dict[str, dict[str, list]] = {}
    samples = {}
    for pair in pairs:
        degraded = torch.from_numpy(pair["degraded"]).permute(2, 0, 1)[None].float().div(255).to(device)
        kwargs = {"degradation_labels": [pair["task_name"]]} if use_labels else {}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            restored = model(degraded, **kwargs).reconstruction
        restored = restored.float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        clean = pair["clean"].astype(np.float32) / 255
        entry = by_task.setdefault(pair["task_name"], {"restored": [], "clean": [], "degraded": []})
        entry["restored"].append(restored)
        entry["clean"].append(clean)
        entry["degraded"].append(pair["degraded"].astype(np.float32) / 255)
        samples.setdefault(pair["task_name"], (pair["degraded"], (restored * 255).round().astype(np.uint8), pair["clean"]))
    results = {}
    for task, entry in by_task.items():
        scores = metric.compute(predictions=entry["restored"], references=entry["clean"])
        baseline = metric.compute(predictions=entry["degraded"], references=entry["clean"])
        results[task] = {
            "psnr": float(scores["psnr"]), "ssim": float(scores["ssim"]),
            "input_psnr": float(baseline["psnr"]), "input_ssim": float(baseline["ssim"]), "images": len(entry["clean"]),
        }
    return {"tasks": results, "samples": samples}


def sample_grid(samples: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], height: int = 160) -> np.ndarray:
    """One row per task: degraded | restored | clean, each resized to ``height`` pixels high."""
    from PIL import Image

    rows = []
    for _, images in sorted(samples.items()):
        tiles = []
        for image in images:
            width = max(1, round(image.shape[1] * height / image.shape[0]))
            tiles.append(np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC)))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
    return np.concatenate(rows, axis=0)


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and learning rate against the step, as a PNG drawn with PIL (no plotting dependency)."""
    from PIL import Image, ImageDraw

    if len(history) < 2:
        return
    width, height, margin = 720, 300, 40
    image = Image.new("RGB", (width * 2, height), "white")
    draw = ImageDraw.Draw(image)
    steps = np.array([h["step"] for h in history], dtype=np.float64)
    for panel, (key, colour) in enumerate((("loss", (200, 40, 40)), ("lr", (40, 80, 200)))):
        values = np.array([h[key] for h in history], dtype=np.float64)
        if key == "loss":
            values = np.log10(np.maximum(values, 1e-12))
        x0 = panel * width
        lo, hi = float(values.min()), float(values.max())
        span, step_span = (hi - lo) or 1.0, (steps.max() - steps.min()) or 1.0
        points = [
            (x0 + margin + (s - steps.min()) / step_span * (width - 2 * margin),
             height - margin - (v - lo) / span * (height - 2 * margin))
            for s, v in zip(steps, values)
        ]
        draw.rectangle([x0 + margin, margin, x0 + width - margin, height - margin], outline=(120, 120, 120))
        draw.line(points, fill=colour, width=2)
        label = "log10 training loss" if key == "loss" else "learning rate"
        draw.text((x0 + margin, 10), f"{label}: {hi if key == 'lr' else 10 ** lo:.3g} .. {10 ** hi if key == 'loss' else lo:.3g}", fill=(0, 0, 0))
        draw.text((x0 + margin, height - margin + 8), f"step {int(steps.min())} .. {int(steps.max())}", fill=(0, 0, 0))
    image.save(path)


def save_final_folder(model, folder: Path, args, results: dict, history: list[dict], accelerator) -> None:
    """Weights (safetensors) + image processor + model card + training curves, written atomically."""
    from modeling.image_processing_restoration import RestorationImageProcessor
    from training.model_card import build_model_card, save_model_card

    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    # Saving through the pipeline also records the custom "image-restoration" task and ships its code, so the
    # folder works with pipeline("image-restoration", model=folder, trust_remote_code=True).
    from transformers import pipeline as make_pipeline

    make_pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor(), device=model.device).save_pretrained(partial)
    figures = []
    if history:
        plot_curves(history, partial / "training_curves.png")
        figures.append("training_curves.png")
    card_results = [
        {"task": task, "dataset": args.data_preset, "split": "validation", **scores}
        for task, scores in results.get("tasks", {}).items()
    ]
    summary = {
        "command": "accelerate launch training/train.py " + (f"--config {args.config}" if args.config else ""),
        "steps": history[-1]["step"] if history else 0,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
        **{k: getattr(args, k) for k in ("learning_rate", "train_batch_size", "patch_size", "lr_scheduler", "data_preset")},
    }
    card = build_model_card(
        model_id=args.hub_model_id or folder.name, model_type=args.model_type, results=card_results,
        training_summary=summary, figures=figures,
    )
    save_model_card(card, partial)
    (partial / "eval_results.json").write_text(json.dumps(results.get("tasks", {}), indent=2))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(partial, folder)


def main(args: argparse.Namespace) -> dict:
    """Train, checkpoint, validate, save the final EMA weights (and push them). Returns the last validation."""
    from training.data import build_dataloader, build_stream

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    output_dir = Path(args.output_dir)
    report_to = None if args.report_to in (None, "none", "") else args.report_to.split(",")
    # DDP must be told about parameters that never get a gradient: only the unused official modules.
    find_unused = bool(args.model_config.get("keep_unused_official_modules", False))
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        cpu=args.cpu or not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )
    set_seed(args.seed)  # identical initial weights on every process
    model = build_model(args)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    uses_labels = accepts_degradation_labels(model)
    with accelerator.main_process_first():  # a loss the config names (CPL's CPR); never part of the model
        training_loss = build_training_loss(model.config, accelerator.device)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    # Stepped once per optimizer step by us (an accelerate-prepared scheduler steps once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_lr_lambda(args.lr_scheduler, args.steps_per_epoch, **args.lr_scheduler_options)
    )
    ema = None
    if args.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=args.ema_decay, update_after_step=args.ema_update_after_step)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    guard = LossSpikeGuard(args.loss_spike_history, args.loss_spike_factor) if args.loss_spike_guard else None

    # Each process streams its own shards (split_dataset_by_node inside the stream): the loader is NOT prepared.
    stream = build_stream(
        args.data_preset, args.data_roots, synthesize_missing=args.synthesize_missing, patch_size=args.patch_size,
        seed=args.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
        shards_per_rank=args.shards_per_rank,
    )
    loader = build_dataloader(stream, args.train_batch_size, num_workers=args.dataloader_num_workers)
    validation_set = build_validation_set(args) if accelerator.is_main_process else []

    step, history, best_psnr, last_results = 0, [], -math.inf, {}
    resume = checkpointing.resolve_resume_path(args.resume_from_checkpoint, output_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        state = checkpointing.load_training_state(resume)
        step, history = state["step"], state.get("history", [])
        best_psnr = -math.inf if state.get("best_psnr") is None else state["best_psnr"]
        data_state = checkpointing.load_data_state(resume, accelerator.process_index)
        if data_state is not None:
            stream.set_epoch(data_state["epoch"])
            loader.load_state_dict(data_state["loader"])
            if guard is not None and data_state.get("loss_spike_guard"):
                guard.load_state_dict(data_state["loss_spike_guard"])
        logger.info(f"resumed from {resume} at step {step}")
    elif args.resume_from_checkpoint:
        logger.info("no checkpoint to resume from; starting a new run")

    if accelerator.is_main_process and report_to:
        accelerator.init_trackers("prompt-restoration", config={k: str(v) for k, v in vars(args).items()})
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    progress = tqdm(total=args.max_train_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    window_start, window_images = time.perf_counter(), 0

    def data_state() -> dict:
        return {
            "epoch": stream.epoch, "loader": loader.state_dict(),
            "loss_spike_guard": guard.state_dict() if guard is not None else None,
        }

    def validate() -> dict:
        nonlocal best_psnr
        results = {}
        if accelerator.is_main_process and validation_set:
            unwrapped = accelerator.unwrap_model(model)
            if ema is not None:
                ema.store(unwrapped.parameters())
                ema.copy_to(unwrapped.parameters())
            results = evaluate_model(unwrapped, validation_set, autocast_dtype, with_labels=True)
            if uses_labels and getattr(unwrapped, "degradation_estimator", None) is not None:
                auto = evaluate_model(unwrapped, validation_set, autocast_dtype, with_labels=False)
                for task, scores in auto["tasks"].items():
                    results["tasks"][task]["psnr_auto"] = scores["psnr"]
                    results["tasks"][task]["ssim_auto"] = scores["ssim"]
            mean_psnr = float(np.mean([s["psnr"] for s in results["tasks"].values()]))
            logs = {f"val/{t}/{k}": v for t, s in results["tasks"].items() for k, v in s.items() if k != "images"}
            accelerator.log({**logs, "val/mean_psnr": mean_psnr}, step=step)
            grid = sample_grid(results.pop("samples"))
            (output_dir / "validation").mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(grid).save(output_dir / "validation" / f"step-{step:07d}.png")
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("val/degraded_restored_clean", grid, step, dataformats="HWC")
            if mean_psnr > best_psnr:
                best_psnr = mean_psnr
                save_final_folder(unwrapped, output_dir / "best", args, results, history, accelerator)
            if ema is not None:
                ema.restore(unwrapped.parameters())
            model.train()
        accelerator.wait_for_everyone()
        return results

    while step < args.max_train_steps:
        batches_this_pass = 0
        for batch in loader:
            batches_this_pass += 1
            with accelerator.accumulate(model):
                degraded = batch["degraded"].to(accelerator.device, non_blocking=True)
                clean = batch["clean"].to(accelerator.device, non_blocking=True)
                kwargs = {"degradation_labels": list(batch["task_name"])} if uses_labels else {}
                output = model(pixel_values=degraded, labels=clean, **kwargs)
                loss = output.loss if training_loss is None else training_loss(
                    accelerator.unwrap_model(model), output, degraded, clean, kwargs)[0]
                raw_loss = loss.detach().float()
                if guard is not None:
                    loss = guard(loss)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_images += degraded.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            if ema is not None:
                ema.step(model.parameters())
            step += 1
            progress.update(1)
            if step % args.logging_steps == 0 or step == args.max_train_steps:
                loss_value = accelerator.reduce(raw_loss, reduction="mean").item()
                elapsed = time.perf_counter() - window_start
                logs = {"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0],
                        "train/images_per_second": window_images / max(elapsed, 1e-9)}
                history.append({"step": step, "loss": loss_value, "lr": logs["train/lr"]})
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{logs['train/lr']:.2e}",
                                     img_s=f"{logs['train/images_per_second']:.1f}")
                accelerator.log(logs, step=step)
                window_start, window_images = time.perf_counter(), 0
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                checkpointing.save_checkpoint(
                    accelerator, output_dir, step,
                    {"history": history, "best_psnr": best_psnr if math.isfinite(best_psnr) else None,
                     "epoch": stream.epoch},
                    data_state(), args.checkpoints_total_limit,
                )
            if args.validation_steps and step % args.validation_steps == 0:
                last_results = validate() or last_results
            if step >= args.max_train_steps:
                break
        else:
            if batches_this_pass == 0 and not resume:
                raise RuntimeError(f"the training stream yielded no batch (bad data per source: {stream.bad_data_counts()})")
            stream.set_epoch(stream.epoch + 1)
    progress.close()

    # Decided from the arguments, identical on every process (only the main one holds the validation set).
    if args.validation_roots and (not args.validation_steps or step % args.validation_steps):
        last_results = validate() or last_results
    accelerator.wait_for_everyone()
    # DDP keeps the replicas identical; check it rather than trust it (a silent divergence wastes a run).
    checksums = accelerator.gather(weights_checksum(accelerator.unwrap_model(model)).to(accelerator.device)).cpu()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.write_json_atomic(output_dir / "replica_checksums.json", {"checksums": checksums.tolist()})
        if not torch.allclose(checksums, checksums[0].expand_as(checksums), rtol=0, atol=0):
            raise RuntimeError(f"model replicas diverged across processes: checksums {checksums.tolist()}")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(unwrapped.parameters())
        final = output_dir / "model"
        save_final_folder(unwrapped, final, args, last_results, history, accelerator)
        counts = stream.bad_data_counts() if hasattr(stream, "bad_data_counts") else {}
        logger.info(f"saved {final}; bad data per source: {counts}")
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the process group down while every rank is still here: left to garbage collection at exit, the
        # gloo group of the last rank can wait forever for peers that already left.
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    if args.push_to_hub and accelerator.is_main_process:
        from training.model_card import HubPushError, push_folder_to_hub

        try:
            url = push_folder_to_hub(str(output_dir / "model"), args.hub_model_id, token=args.hub_token)
            logger.info(f"pushed to {url}")
        except HubPushError as error:
            raise SystemExit(str(error)) from None
    return last_results


if __name__ == "__main__":
    main(parse_args())
