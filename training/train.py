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
import dataclasses
import difflib
import gc
import inspect
import json
import logging
import math
import os
import shlex
import sys
import time
import typing
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

if __package__ in (None, ""):
    # `accelerate launch training/train.py` runs this file as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# OpenMP threads that spin between parallel regions take the cores from the DataLoader workers and from any other
# program: on a 2-core CPU a training step was 5-10x slower with spinning threads (benchmarks/bench_train_loop.py).
# Takes effect only before torch is imported, i.e. when this file runs as the training script; set
# OMP_WAIT_POLICY=ACTIVE to opt out (a GPU run does not care either way).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from huggingface_hub.errors import StrictDataclassError
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from modeling import MODEL_CLASSES
from modeling.modeling_utils import model_config_fields
from training import checkpointing
from training.losses import build_training_loss
from training.schedules import build_lr_lambda, schedule_end_step

logger = get_logger(__name__)


def _arg(default: Any = None, help: str = "", value: Optional[str] = None) -> Any:
    """A `TrainingArguments` field: its default, its --help text and, for dict fields, how a flag is read
    (``value="json"``: a JSON object; ``value="mapping"``: ``key=value`` items)."""
    metadata = {"help": help, **({"value": value} if value else {})}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingArguments:
    """Every field can be set in the YAML recipe (``--config``) or as a flag; flags win over the recipe."""

    config: Optional[str] = _arg(None, "YAML recipe (training/configs/*.yaml)")
    # model
    model_type: str = _arg("pip", "one of " + ", ".join(MODEL_CLASSES))
    model_config: dict = _arg({}, "config overrides, JSON (YAML: a mapping)", value="json")
    pretrained_model_name_or_path: Optional[str] = _arg(None, "start from these weights (Hub id or folder)")
    # data
    data_preset: str = _arg("5-task", "3-task, 5-task or cdd11")
    data_roots: dict = _arg(
        {}, "task=folder pairs: clean, rain, haze, blur, low-light, cdd11 (or Hub ids; in a recipe, a task "
        "may list several folders)", value="mapping"
    )
    synthesize_missing: bool = _arg(False, "synthesize tasks without a root from the clean photos")
    task_probabilities: dict = _arg(
        {}, "task=probability pairs (task or source names, e.g. blur=0.3): sample the training stream by these "
        "instead of the official repeat factors; empty: the repeat factors", value="mapping"
    )
    validation_roots: dict = _arg({}, "task=folder pairs of held-out data (test layouts)", value="mapping")
    validation_images_per_task: int = _arg(8, "held-out images per source used at each validation")
    validation_crop: int = _arg(0, "centre-crop held-out images to at most this side (0: full images)")
    patch_size: int = _arg(128, "training crop size")
    synthesis_crop_size: int = _arg(
        0, "synthesize degradations on a random crop of this side and train on its centre patch (0: synthesize on "
        "the patch itself); keeps blur and rain borders real, and haze depth over more of the scene"
    )
    crop_to_multiple: int = _arg(
        0, "centre-crop each training image to a multiple of this before the random crop, as PromptIR's loaders "
        "(crop_img, 16); 0: the whole image"
    )
    train_batch_size: int = _arg(8, "batch per process")
    dataloader_num_workers: int = _arg(2, "DataLoader workers per process")
    shards_per_rank: int = _arg(16, "stream shards per process (multiple of the workers)")
    steps_per_epoch: int = _arg(1000, "optimizer steps that make one epoch of the lr schedule")
    # optimisation
    learning_rate: float = _arg(2e-4, "base learning rate")
    adam_beta1: float = _arg(0.9, "AdamW beta1")
    adam_beta2: float = _arg(0.999, "AdamW beta2")
    adam_weight_decay: float = _arg(0.01, "AdamW weight decay")
    adam_epsilon: float = _arg(1e-8, "AdamW epsilon")
    max_grad_norm: float = _arg(0.0, "gradient clipping max norm; 0 disables")
    lr_scheduler: str = _arg("constant", "constant, linear_warmup_cosine, cosine_restart_cyclic, cosine_restart")
    lr_scheduler_options: dict = _arg({}, "options of the schedule, JSON (see training/schedules.py)", value="json")
    num_train_epochs: Optional[int] = _arg(None, "epochs of steps_per_epoch steps (or use max_train_steps)")
    max_train_steps: Optional[int] = _arg(None, "total optimizer steps; overrides num_train_epochs")
    max_train_minutes: Optional[float] = _arg(
        None, "also stop (and save the final model as usual) once this many minutes of training have passed, "
        "counted from the first step of this launch; all processes stop at the same step (timed sweeps)"
    )
    gradient_accumulation_steps: int = _arg(1, "micro-batches per optimizer step")
    mixed_precision: Optional[str] = _arg(
        "auto", "no, fp16 (GPU only), bf16 or auto. auto: what `accelerate launch --mixed_precision` (or accelerate "
        "config) asks for when that is bf16, or fp16 on a GPU; otherwise bf16 autocast on a CPU that computes bf16 natively (AVX-512 "
        "BF16 or AMX: a CPU recipe step 1.3x as fast, README Performance) and fp32 elsewhere, GPUs included (not "
        "measured there yet). no turns autocast off"
    )
    gradient_checkpointing: bool = _arg(False, "recompute Transformer blocks in backward")
    channels_last: Optional[bool] = _arg(
        None, "channels-last weights and batches: faster convolutions on CPU (benchmarks/bench_train.py); "
        "default: on for CPU, off on GPU (not measured there yet); false turns it off"
    )
    compile_blocks: Optional[bool] = _arg(
        None, "regional torch.compile of every Transformer block (model.compile_transformer_blocks(); fixed crop "
        "sizes compile once); default: on for GPU, off on CPU (where compiling costs minutes); false turns it off"
    )
    compile_model: bool = _arg(
        False, "torch.compile the whole training forward, loss included, as one graph (static shapes: the fixed "
        "crop size compiles once; under several processes DDP's bookkeeping stays outside the graph) instead of "
        "the blocks alone; validation, the EMA and the saved weights stay eager. Opt-in: on CPU a 1.17x step for "
        "minutes of compilation (README Performance), not yet measured on a GPU"
    )
    compile_mode: Optional[str] = _arg(
        None, "torch.compile mode of --compile_model: default, reduce-overhead (CUDA graphs on a GPU), "
        "max-autotune or max-autotune-no-cudagraphs"
    )
    compile_backend: str = _arg(
        "inductor", "torch.compile backend of --compile_model (inductor; eager and aot_eager only trace, for checks)"
    )
    seed: int = _arg(0, "seed of the model initialisation and of the data plan")
    loss_spike_guard: bool = _arg(
        False, "PIP's guard: a pixel loss above factor x min(last N) is rescaled to factor/2 x min"
    )
    loss_spike_history: int = _arg(100, "N: pixel losses remembered by the guard")
    loss_spike_factor: float = _arg(5.0, "factor of the guard")
    # EMA
    use_ema: bool = _arg(True, "keep an EMA of the weights (final and best weights are the EMA)")
    ema_decay: float = _arg(0.999, "EMA decay")
    ema_update_after_step: int = _arg(0, "steps before the EMA starts averaging")
    ema_warmup: bool = _arg(
        True, "ramp the EMA decay up as (1 + s) / (10 + s) until it reaches ema_decay (diffusers' EMAModel); false: "
        "ema_decay from the second update on, as BasicSR's EMA (CPL's released recipe)"
    )
    # checkpoints, validation, logging
    output_dir: str = _arg("outputs/run", "checkpoints, logs, validation grids, final model")
    checkpointing_steps: int = _arg(500, "save a checkpoint every N steps; 0 disables")
    checkpoints_total_limit: Optional[int] = _arg(None, "keep at most this many checkpoints (pruned after a save)")
    resume_from_checkpoint: Optional[str] = _arg(None, "'latest' or a checkpoint folder")
    validation_steps: int = _arg(500, "0 disables periodic validation")
    logging_steps: int = _arg(10, "log the mean loss of each window of N steps (at least 1)")
    report_to: str = _arg("tensorboard", "accelerate tracker(s), comma separated, or 'none'")
    cpu: bool = _arg(False, "force CPU even if a GPU is present")
    # Hub
    push_to_hub: bool = _arg(False, "upload the final folder (weights, processor, card, figures)")
    hub_model_id: Optional[str] = _arg(None, "org/name on the Hub")
    hub_token: Optional[str] = _arg(None, "defaults to the HF_TOKEN environment variable / login")


#: Keyword arguments every transformers config accepts besides its dataclass fields.
PRETRAINED_CONFIG_KWARGS = frozenset(
    {"torch_dtype", "num_labels", "name_or_path", "output_attentions", "attn_implementation", "experts_implementation"}
)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


class _MappingAction(argparse.Action):
    """``--data_roots clean=/x rain=/y`` -> ``{"clean": "/x", "rain": "/y"}`` (replaces the recipe's mapping)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, dict(values or []))


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over `TrainingArguments` with recipe-friendly mapping and JSON fields, no abbreviations."""

    def __init__(self) -> None:
        super().__init__(
            TrainingArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # `--learning_rat` must be an error, not a silent prefix of --learning_rate
        )
        for action in self._actions:  # HfArgumentParser gives `--no_X` the help of `--X`, which says the opposite
            if action.option_strings and action.option_strings[0].startswith("--no_") and action.const is False:
                action.help = f"turn {action.option_strings[0].replace('--no_', '--', 1)} off"

    @staticmethod
    def _parse_dataclass_field(parser, field):
        kind = field.metadata.get("value")
        if kind is None:
            return HfArgumentParser._parse_dataclass_field(parser, field)
        options = [f"--{field.name}", f"--{field.name.replace('_', '-')}"]
        help_text = field.metadata.get("help")
        if kind == "mapping":
            parser.add_argument(*options, nargs="*", type=_key_value, action=_MappingAction, default={},
                                metavar="KEY=VALUE", help=help_text)
        else:
            parser.add_argument(*options, type=_json_object, default={}, metavar="JSON", help=help_text)

    def option_names(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings if option.startswith("--")]


def _closest(name: str, valid, prefix: str = "") -> str:
    """``"; did you mean 'x'?"`` for the closest of `valid` (difflib), or nothing when none is close."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {prefix + match[0]!r}?" if match else ""


def check_model_config(model_type: str, model_config: dict, from_pretrained: bool = False) -> None:
    """Fail early on misspelled ``model_config`` keys (and, for a new model, invalid values).

    Keys are checked against the dataclass fields of the model's config class plus the keyword arguments every
    transformers config accepts, so a typo cannot be swallowed as an unused extra attribute.
    """
    config_class, _ = MODEL_CLASSES[model_type]
    if dataclasses.is_dataclass(config_class):
        valid = {f.name for f in dataclasses.fields(config_class)}
    else:
        valid = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    valid |= PRETRAINED_CONFIG_KWARGS
    for key in model_config:
        if key not in valid:
            raise ValueError(f"model_config: unknown key {key!r} for {config_class.__name__}{_closest(key, valid)}")
    if not from_pretrained:  # with pretrained weights the values are overrides of the saved config
        try:
            config_class(**model_config)
        except Exception as error:  # noqa: BLE001 - ValueError, TypeError or huggingface_hub's strict-dataclass errors
            reason = error.__cause__ or error
            raise ValueError(f"model_config is not a valid {config_class.__name__}: {reason}") from error


#: Arguments whose values are secrets: never written to a card, a log or a tracker.
SECRET_ARGUMENTS = ("hub_token",)


def redacted_command_line(argv: list[str]) -> list[str]:
    """`argv` with the values of `SECRET_ARGUMENTS` replaced by ``***``, in every spelling the parser accepts
    (``--hub_token``, ``--hub-token``, with ``=`` or as the next item): the model card shows the run's command."""
    redacted, hide_next = [], False
    for item in argv:
        flag, equals, _ = item.partition("=")
        secret = item.startswith("--") and flag[2:].replace("-", "_") in SECRET_ARGUMENTS
        if hide_next:
            redacted.append("***")
        elif secret and equals:
            redacted.append(f"{flag}=***")
        else:
            redacted.append(item)
        hide_next = secret and not equals
    return redacted


def launcher_flags(
    num_processes: int, mixed_precision: str, environ: Optional[Mapping[str, str]] = None
) -> list[str]:
    """The ``accelerate launch`` flags that give a run like this one: what the model card's command puts before
    ``training/train.py`` (the script's own flags follow it).

    ``num_processes`` and ``mixed_precision`` are the run's (``accelerator.num_processes``,
    ``accelerator.mixed_precision``): several processes need ``--multi_gpu`` (also on CPUs, where ``--cpu
    --num_processes 2`` runs one), and the precision is the one the run trained in (a bf16 run that the script's
    ``--mixed_precision auto`` chose on a CPU with native bf16 is then bf16 on any machine). From the environment
    ``accelerate launch`` sets (``environ``, default ``os.environ``): the number of machines (``LOCAL_WORLD_SIZE``
    processes on each; each machine's ``--machine_rank`` and ``--main_process_ip`` are its own), ``--cpu`` asked of
    a one-process launch (``ACCELERATE_USE_CPU``) and a dynamo backend (``ACCELERATE_DYNAMO_BACKEND``).
    """
    environ = os.environ if environ is None else environ
    flags = []
    if num_processes > 1:
        flags.append("--multi_gpu")
    elif environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"):
        flags.append("--cpu")
    flags += ["--num_processes", str(num_processes)]
    per_machine = environ.get("LOCAL_WORLD_SIZE", "")
    if per_machine.isdigit() and 0 < int(per_machine) < num_processes:
        flags += ["--num_machines", str(num_processes // int(per_machine))]
    flags += ["--mixed_precision", str(mixed_precision)]
    dynamo = environ.get("ACCELERATE_DYNAMO_BACKEND", "no").strip().lower()
    if dynamo not in ("", "no"):
        flags += ["--dynamo_backend", dynamo]
    return flags


def parse_args(argv: Optional[list[str]] = None) -> TrainingArguments:
    """Defaults < YAML recipe (``--config``) < command-line flags. Unknown keys and flags are errors."""
    parser = RecipeArgumentParser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    config_path = pre.parse_known_args(argv)[0].config
    if config_path:
        recipe = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(recipe, dict):
            parser.error(f"{config_path}: a recipe is a mapping of argument names to values")
        valid = [f.name for f in dataclasses.fields(TrainingArguments) if f.name != "config"]
        for key in recipe:
            if key not in valid:
                parser.error(f"{config_path}: unknown key {key!r}{_closest(str(key), valid)}")
        # Recipe values become the parser's defaults, so any flag given on the command line overrides them
        # (string values go through the field's type, as flags do).
        parser.set_defaults(**recipe)
    args, remaining = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True, look_for_args_file=False)
    if remaining:
        unknown = next((item for item in remaining if item.startswith("-")), remaining[0])
        flag = unknown.split("=", 1)[0]
        names = [option[2:] for option in parser.option_names() if "-" not in option[2:]]
        parser.error(f"unknown argument {flag!r}{_closest(flag.lstrip('-').replace('-', '_'), names, prefix='--')}")
    try:
        validate_args(args)
    except ValueError as error:
        parser.error(str(error))
    args.command_line = argv  # not a field: what the model card reports as the run's command
    return args


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


#: Smallest value of each integer argument (None stays allowed where the field is optional).
_INTEGER_MINIMUM = {
    "train_batch_size": 1, "gradient_accumulation_steps": 1, "steps_per_epoch": 1, "shards_per_rank": 1,
    "dataloader_num_workers": 0, "patch_size": 8, "max_train_steps": 1, "num_train_epochs": 1,
    "checkpointing_steps": 0, "checkpoints_total_limit": 1, "validation_steps": 0, "validation_images_per_task": 1,
    "validation_crop": 0, "loss_spike_history": 1, "ema_update_after_step": 0,
}


def _check_ranges(args: TrainingArguments) -> None:
    """Values no run can use (a zero batch, negative steps, an EMA decay above 1), named before anything starts
    rather than failing deep inside torch or, worse, running."""
    for name, minimum in _INTEGER_MINIMUM.items():
        value = getattr(args, name)
        if value is None and name in ("max_train_steps", "num_train_epochs", "checkpoints_total_limit"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    for name, low, high, closed_low, closed_high in (
        ("learning_rate", 0.0, math.inf, False, False), ("adam_epsilon", 0.0, math.inf, False, False),
        ("adam_weight_decay", 0.0, math.inf, True, False), ("max_grad_norm", 0.0, math.inf, True, False),
        ("ema_decay", 0.0, 1.0, True, True), ("loss_spike_factor", 1.0, math.inf, False, False),
        # AdamW refuses a beta of 1 or more only when it is built, after the model and the data (a traceback)
        ("adam_beta1", 0.0, 1.0, True, False), ("adam_beta2", 0.0, 1.0, True, False),
    ):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)
        ):
            interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
            raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def _data_root(name: str, task: str, value) -> Union[str, list[str]]:
    """A recipe's root: a folder or Hub id, or a list of them (BSD400 and WED as two folders), each as a string.

    A list used to become its own repr (``"['a', 'b']"``), which no folder or Hub id is."""
    if isinstance(value, (list, tuple)):
        if not value or any(item is None or isinstance(item, (list, tuple, dict)) for item in value):
            raise ValueError(f"{name}[{task!r}] must be a folder or a non-empty list of folders, got {value!r}")
        return [str(item) for item in value]
    if value is None or isinstance(value, dict):
        raise ValueError(f"{name}[{task!r}] must be a folder or a non-empty list of folders, got {value!r}")
    return str(value)


def validate_args(args: TrainingArguments) -> None:
    """Cross-field checks and normalisation (recipe values arrive as YAML types); ValueError with a clear message."""
    if args.model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type must be one of {sorted(MODEL_CLASSES)}, got {args.model_type!r}"
                         f"{_closest(str(args.model_type), MODEL_CLASSES)}")
    for name in ("model_config", "lr_scheduler_options"):
        value = getattr(args, name)
        if isinstance(value, str):
            setattr(args, name, value := _json_object(value))
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
    for name in ("data_roots", "validation_roots"):
        value = getattr(args, name)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping of task to folder, got {value!r}")
        setattr(args, name, {str(k): _data_root(name, str(k), v) for k, v in value.items()})
    if not isinstance(args.task_probabilities, dict):
        raise ValueError(f"task_probabilities must be a mapping of task to probability, got {args.task_probabilities!r}")
    try:
        args.task_probabilities = {str(k): float(v) for k, v in args.task_probabilities.items()}
    except (TypeError, ValueError):
        raise ValueError(f"task_probabilities must map tasks to numbers, got {args.task_probabilities!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in args.task_probabilities.values()) or (
        args.task_probabilities and sum(args.task_probabilities.values()) <= 0
    ):
        raise ValueError(f"task_probabilities must be non-negative with a positive sum, got {args.task_probabilities}")
    # YAML 1.1 reads `no` (the documented value) as False: the recipe meant the word.
    if args.mixed_precision is False:
        args.mixed_precision = "no"
    if args.report_to is False:
        args.report_to = "none"
    if isinstance(args.mixed_precision, str):
        args.mixed_precision = args.mixed_precision.strip().lower()
    if args.mixed_precision is not None and str(args.mixed_precision) not in ("no", "fp16", "bf16", "auto"):
        raise ValueError(f"mixed_precision must be no, fp16, bf16 or auto, got {args.mixed_precision!r}")
    refuse_fp16_on_cpu(args.mixed_precision, runs_on_cpu(args))
    if args.report_to is not None and not isinstance(args.report_to, str):
        raise ValueError(f"report_to must name tracker(s), comma separated, or 'none', got {args.report_to!r}")
    types = typing.get_type_hints(TrainingArguments)
    for f in dataclasses.fields(TrainingArguments):  # YAML reads 1e-4 as a string, and 10 for a float as an int
        value, kind = getattr(args, f.name), types[f.name]
        if value is None or isinstance(value, bool):
            continue
        if kind in (float, Optional[float]) and isinstance(value, (str, int)):
            setattr(args, f.name, float(value))
        elif kind in (int, Optional[int]) and isinstance(value, str):
            setattr(args, f.name, int(value))
    _check_ranges(args)
    check_model_config(args.model_type, args.model_config, bool(args.pretrained_model_name_or_path))
    if args.max_train_minutes is not None and not (math.isfinite(args.max_train_minutes) and args.max_train_minutes > 0):
        raise ValueError(f"max_train_minutes must be a positive number of minutes, got {args.max_train_minutes}")
    if args.max_train_steps is None:
        if args.num_train_epochs is None:
            raise ValueError("set max_train_steps or num_train_epochs")
        args.max_train_steps = args.num_train_epochs * args.steps_per_epoch
    try:
        factor = build_lr_lambda(args.lr_scheduler, args.steps_per_epoch, **args.lr_scheduler_options)
        for at in (0, args.max_train_steps - 1):  # a schedule that cannot be evaluated fails now, not mid-run
            factor(at)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise ValueError(
            f"lr_scheduler {args.lr_scheduler!r} with options {args.lr_scheduler_options}: {error}"
        ) from None
    if isinstance(args.logging_steps, bool) or not isinstance(args.logging_steps, int) or args.logging_steps < 1:
        raise ValueError(f"logging_steps must be a positive number of steps, got {args.logging_steps!r}")
    if args.compile_model and args.compile_blocks:
        raise ValueError("--compile_model compiles the blocks with the rest of the model: leave --compile_blocks off")
    if args.compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {[m for m in COMPILE_MODES if m]}, got {args.compile_mode!r}")
    if args.compile_mode and not args.compile_model:
        raise ValueError("--compile_mode applies to --compile_model, which is off")
    if args.compile_mode in ("reduce-overhead", "max-autotune") and args.gradient_accumulation_steps > 1:
        # CUDA graphs replay into the same output buffers: a second micro-batch's backward before the optimizer
        # step overwrites the first one's (PyTorch #169545: wrong accumulated gradients or an error)
        raise ValueError(f"--compile_mode {args.compile_mode} (CUDA graphs) cannot accumulate gradients over "
                         f"micro-batches: use gradient_accumulation_steps 1 or compile_mode default")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id org/name")
    # Checked now: the output folder is first written at the first checkpoint (or, without checkpoints, at the end)
    problem = checkpointing.unwritable_folder_reason(args.output_dir, "output_dir")
    if problem is not None:
        raise ValueError(problem)


class LossSpikeGuard:
    """PIP's guard against loss spikes (official ``LossScaler(max_len=100, scale_factor=5)``).

    The current value joins a window of recent values; if it exceeds ``factor`` x the window minimum it is
    rescaled (gradient included) to ``factor / 2`` x that minimum. The trainer applies it to the pixel term only
    (`guard_pixel_loss`), as the official trainer does before it adds the prompt regulariser. Returns its input
    unchanged (the same object) when it does not trigger.
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


_warned_detached_terms = False


def guard_pixel_loss(loss: torch.Tensor, loss_terms: dict[str, torch.Tensor], guard: LossSpikeGuard) -> torch.Tensor:
    """``loss - pixel + guard(pixel)``: only the pixel term of the total loss is guarded.

    ``loss_terms`` are the model's unweighted terms (``output.loss_terms``), still attached to the graph;
    ``"pixel"`` is the restoration loss, which enters ``loss`` with weight 1. A spike in any other term (the
    estimator's cross-entropy, the prompt angle regulariser) neither triggers the guard nor has its gradient
    rescaled. When the guard does not trigger, ``loss`` itself is returned (bit-identical training).
    """
    global _warned_detached_terms
    pixel = (loss_terms or {}).get("pixel")
    if pixel is None:
        raise ValueError("the loss-spike guard needs the model's output.loss_terms['pixel']")
    guarded = guard(pixel)
    if guarded is pixel:
        return loss
    if pixel.requires_grad or not loss.requires_grad:
        return loss - pixel + guarded
    # Models whose loss_terms are detached copies: the pixel gradient cannot be separated from the others, so the
    # whole loss takes the guard's factor (the pixel term dominates it). Gone once the terms carry their graph.
    if not _warned_detached_terms:
        logger.warning("loss_terms are detached: the loss-spike guard rescales the whole loss, not only the pixel term")
        _warned_detached_terms = True
    return loss * (guarded / pixel)


class LossWindow:
    """Sums of the loss and its terms over a logging window, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0

    def add(self, loss: torch.Tensor, loss_terms: Optional[dict[str, torch.Tensor]], images: int) -> None:
        for name, value in {"loss": loss, **(loss_terms or {})}.items():
            value = value.detach().float()
            # A copy, not the tensor itself: under CUDA graphs (--compile_mode reduce-overhead) the next step
            # overwrites the compiled forward's outputs in place.
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.count += 1
        self.images += images

    def state_dict(self) -> dict:
        """The window so far, as numbers (checkpointed per process: a resume mid-window logs the same means)."""
        return {"sums": {name: float(value) for name, value in self.sums.items()}, "count": self.count,
                "images": self.images}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        # float32 sums round-trip exactly through Python floats.
        self.sums = {name: torch.tensor(value, dtype=torch.float32, device=device)
                     for name, value in state["sums"].items()}
        self.count, self.images = int(state["count"]), int(state["images"])

    def reduce_means(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window's micro-batches and over the processes; resets the window."""
        if not self.count:
            return {}
        names = sorted(self.sums)
        means = torch.stack([self.sums[name] for name in names]) / self.count
        means = accelerator.reduce(means, reduction="mean") if accelerator.num_processes > 1 else means
        self.sums, self.count, self.images = {}, 0, 0
        return dict(zip(names, means.tolist()))


def check_data_layout(saved: Optional[dict], current: dict, checkpoint: Path) -> None:
    """Refuse to resume under another split of the data stream (processes, shards, workers, batch): the saved
    loader positions would then skip or repeat data. Checkpoints that predate the record are resumed as before."""
    if saved is None:
        logger.warning(f"{checkpoint} does not record its data layout; resuming assumes it matches {current}")
        return
    changed = {key: (saved.get(key), value) for key, value in current.items() if saved.get(key) != value}
    if changed:
        details = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        raise ValueError(
            f"{checkpoint} was written with another data layout ({details}): its data-loader positions would skip "
            "or repeat data. Resume with the same values, or start a new run."
        )


def model_description(model_type: str, model: torch.nn.Module) -> dict:
    """What a checkpoint's weights are: the model type and its config (recorded in every checkpoint, as JSON)."""
    return {"model_type": model_type,
            "config": json.loads(json.dumps(model_config_fields(model.config), default=str))}


def check_model_description(saved: Optional[dict], current: dict, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint into another model (type or config): its weights and optimizer state would not
    fit, and torch would say so in hundreds of lines. Checkpoints that predate the record are resumed as before."""
    if saved is None:
        return
    if saved.get("model_type") != current["model_type"]:
        raise ValueError(f"{checkpoint} holds a {saved.get('model_type')!r} model, not {current['model_type']!r}: "
                         "resume with the same model_type, or start a new run (another output_dir)")
    old, new = saved.get("config", {}), current["config"]
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if changed:
        details = "; ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in changed[:5])
        raise ValueError(
            f"{checkpoint} was written by a model with another config ({details}"
            f"{f'; {len(changed) - 5} more' if len(changed) > 5 else ''}): resume with the same model_config, or "
            "start a new run (another output_dir)"
        )


def saved_best_psnr(folder: Path) -> float:
    """The mean validation PSNR of the model saved in `folder` (``OUTPUT/best``), -inf if there is none. A run's
    last validation can save a new best after its last checkpoint: a resume must not replace it with a worse one."""
    try:
        tasks = json.loads((folder / "eval_results.json").read_text())
        return float(np.mean([scores["psnr"] for scores in tasks.values()]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return -math.inf


def saved_model_step(folder: Path) -> Optional[int]:
    """The training step at which the model in `folder` (``OUTPUT/best``) was saved (its ``training_summary.json``),
    None when the folder or its record is missing."""
    from training.model_card import TRAINING_SUMMARY_FILE

    try:
        steps = json.loads((folder / TRAINING_SUMMARY_FILE).read_text())["steps"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def best_is_from_abandoned_steps(
    best_step: Optional[int], resumed_step: int, checkpointing_steps: int, set_aside_checkpoints: bool
) -> bool:
    """Whether ``OUTPUT/best``, saved at `best_step`, comes from steps that a run resumed at `resumed_step` abandons.

    A best saved after the resumed step belongs to the resumed line only when it is that run's last validation after
    its last checkpoint (the steps are replayed exactly). It does not when the resume set aside later checkpoints (a
    rewind), nor when a checkpoint was due between the resumed step and the best's step (under
    `checkpointing_steps`): that checkpoint, the run's latest, was deleted to rewind (or the run stopped while saving
    it, and the replayed steps validate again).
    """
    if best_step is None or best_step <= resumed_step:
        return False
    due_between = checkpointing_steps > 0 and best_step // checkpointing_steps * checkpointing_steps > resumed_step
    return set_aside_checkpoints or due_between


def compiled_graph_counts() -> dict[str, int]:
    """Graphs dynamo has compiled in this process and the graph breaks it met, from its counters."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def weights_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Two float64 numbers summarising all weights (sum and position-weighted sum), for replica checks."""
    total, weighted = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for index, parameter in enumerate(model.parameters(), start=1):
        values = parameter.detach().double().cpu()
        total += values.sum()
        weighted += index * values.abs().sum()
    return torch.stack([total, weighted])[None]


def weights_are_finite(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """Whether the weights of every process are free of NaN and infinity (the same answer on every process)."""
    finite = torch.stack([torch.isfinite(parameter.detach()).all() for parameter in model.parameters()]).all()
    nonfinite = (~finite).float()
    if accelerator.num_processes > 1:
        nonfinite = accelerator.reduce(nonfinite, reduction="sum")
    return not bool(nonfinite.item())


def nonfinite_training_message(what: str, step: int, output_dir: Path) -> str:
    """Why a run stops when its loss or weights become NaN or infinite, and how to go on from its checkpoints."""
    remedy = "a lower --learning_rate, a --max_grad_norm or --mixed_precision no"
    latest = checkpointing.latest_checkpoint(output_dir)
    if latest is None:
        return f"{what} became non-finite (NaN or inf) by step {step}; nothing was saved. Start again with {remedy}"
    return (f"{what} became non-finite (NaN or inf) by step {step}; the run stops before saving anything of it, so "
            f"its last checkpoint, {latest}, holds finite weights. Resume from it (--resume_from_checkpoint latest) "
            f"with {remedy}")


def gather_replica_checksums(accelerator: Accelerator, model: torch.nn.Module, keep: list) -> torch.Tensor:
    """(num_processes, 2) weight checksums of every replica.

    The collective's work handle and tensors go into ``keep``, which the caller holds until the process group
    is destroyed: a gloo worker thread that drops the last reference to Python-visible tensors needs the GIL,
    and it does so while holding the lock that ``~ProcessGroupGloo`` takes on the main thread (which holds the
    GIL) -- a deadlock at exit when this last collective finishes just before the process group goes away.
    """
    local = weights_checksum(accelerator.unwrap_model(model)).to(accelerator.device)
    if accelerator.num_processes == 1:
        return local.cpu()
    gathered = torch.empty((accelerator.num_processes, 2), dtype=local.dtype, device=local.device)
    work = torch.distributed.all_gather_into_tensor(gathered, local, async_op=True)
    work.wait()
    keep.extend((work, local, gathered))
    return gathered.cpu()


def release_ddp_wrapper(accelerator: Accelerator, wrapper: weakref.ref) -> None:
    """Free the DDP wrapper (``wrapper`` refers to it weakly) now, while the process group is still registered.

    DDP's C++ reducer co-owns the process group. Freed last (when ``main`` returns), it runs ``~ProcessGroupGloo``
    with the GIL held, and that destructor joins gloo's worker threads -- one of which may be waiting for the GIL
    to drop the last reference to a Python-visible tensor: a deadlock at exit (seen twice in 41 repeated runs of
    the training tests, each with several two-process launches). Freed here, the reducer drops a reference that
    is not the last; ``destroy_process_group`` then drops the last one through torch's Python handle, which
    releases the GIL while it destructs. The caller drops its own references first (closures share its names).
    """
    accelerator.free_memory()  # accelerate's own references to the prepared model and optimizer
    gc.collect()
    still_alive = wrapper()
    if isinstance(still_alive, torch.nn.parallel.DistributedDataParallel):
        logger.warning(
            "the DDP wrapper is still referenced after training (by %s); the process group may hang at exit",
            [type(referrer).__name__ for referrer in gc.get_referrers(still_alive)], main_process_only=False,
        )


def schedule_overrun_warning(args: TrainingArguments) -> Optional[str]:
    """A warning when ``max_train_steps`` runs past the learning-rate schedule's end, else ``None``.

    Easy to miss: a warm-up + cosine's length is ``max_epochs`` × ``steps_per_epoch``, not ``max_train_steps``.
    """
    end = schedule_end_step(args.lr_scheduler, args.steps_per_epoch, **args.lr_scheduler_options)
    if end is None or args.max_train_steps <= end:
        return None
    return (f"the learning rate reaches its floor at step {end} (max_epochs {args.lr_scheduler_options['max_epochs']:g}"
            f" x steps_per_epoch {args.steps_per_epoch}); the last {args.max_train_steps - end} of the "
            f"{args.max_train_steps} steps run "
            + ("at the floor" if args.lr_scheduler_options.get("per_step") else
               "past the cosine's end, where the per-epoch closed form (as pl_bolts') climbs back up"))


#: accelerate gives a CPU no fp16 autocast (nor a gradient scaler): such a run trained in fp32 while its card, its
#: training summary and its validation (fp16 autocast) said fp16.
FP16_ON_CPU = ("--mixed_precision fp16 needs a GPU: on a CPU accelerate trains in fp32 without saying so; use bf16 "
               "or no (or auto)")


def runs_on_cpu(args: TrainingArguments) -> bool:
    """Whether this run trains on the CPU: asked to (``--cpu``) or no CUDA device here."""
    return bool(args.cpu) or not torch.cuda.is_available()


def refuse_fp16_on_cpu(requested: Optional[str], on_cpu: bool) -> None:
    """ValueError (`FP16_ON_CPU`) when a CPU run asks for fp16, in any case and spacing: the one place of this rule,
    for ``validate_args`` (flags and recipes) and ``resolve_mixed_precision`` (``main`` called with its own args)."""
    if on_cpu and isinstance(requested, str) and requested.strip().lower() == "fp16":
        raise ValueError(FP16_ON_CPU)


def resolve_mixed_precision(requested: Optional[str], on_cpu: bool) -> str:
    """The ``Accelerator``'s ``mixed_precision`` for train.py's ``--mixed_precision`` (see its help).

    ``accelerate launch`` always exports its setting (``ACCELERATE_MIXED_PRECISION``, "no" unless asked), so "no"
    from the launcher cannot be told from no request at all: only fp16/bf16 from it override "auto", and
    ``--mixed_precision no`` given to train.py is the way to keep fp32 where bf16 would be chosen.
    """
    from modeling.inference import is_auto, native_bf16_cpu

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    refuse_fp16_on_cpu(requested, on_cpu)
    if is_auto(requested):
        if launcher == "fp16" and on_cpu:
            # accelerate has no fp16 autocast on a CPU: the run would train in fp32 and be recorded as fp16
            logging.getLogger(__name__).warning(
                "accelerate launch asked for mixed precision 'fp16', which a CPU run cannot use; choosing as "
                "--mixed_precision auto does on a CPU")
        elif launcher not in ("", "no"):
            return launcher
        return "bf16" if on_cpu and native_bf16_cpu() else "no"
    if launcher not in ("", "no") and launcher != str(requested):
        # (before the Accelerator exists: accelerate's logger cannot log yet)
        logging.getLogger(__name__).warning(
            f"accelerate launch asked for mixed precision {launcher!r}; this run's --mixed_precision (flag or "
            f"recipe) {requested!r} wins (pass --mixed_precision auto to follow the launcher)")
    return str(requested)


def build_model(args: TrainingArguments):
    """A new model from ``model_config``, or the pretrained one with ``model_config`` as overrides of its config.

    Overrides may add modules (their weights start fresh, with a warning) but never drop trained weights: a recipe
    whose architecture differs from the checkpoint's (e.g. ``num_blocks`` of a model deepened by
    ``training.grow_model``) would otherwise train a smaller model and silently discard the rest.
    """
    config_class, model_class = MODEL_CLASSES[args.model_type]
    if args.pretrained_model_name_or_path:
        try:
            # Weights of another shape are let through to be listed below (transformers would raise pointing at its
            # logged report, naming none in the error).
            model, loading = model_class.from_pretrained(
                args.pretrained_model_name_or_path, output_loading_info=True, ignore_mismatched_sizes=True,
                **args.model_config
            )
        except StrictDataclassError as error:  # an override the config's checks refuse: now, not at the final save
            raise ValueError(
                f"model_config {args.model_config} as overrides of {args.pretrained_model_name_or_path}'s config: "
                f"{' '.join(str(error.__cause__ or error).split())}"
            ) from error
        from modeling.inference import loading_keys

        reshaped = loading_keys(loading, "mismatched_keys")
        if reshaped:
            raise ValueError(
                f"{len(reshaped)} weights of {args.pretrained_model_name_or_path} have another shape in the model that "
                f"model_config {args.model_config} builds (e.g. {', '.join(reshaped[:3])}); make model_config match "
                "the checkpoint's config.json (flag: --model_config '{...}')"
            )
        # Unexpected keys only print a report.
        dropped = sorted(loading.get("unexpected_keys", ()))
        if dropped:
            raise ValueError(
                f"{len(dropped)} weights of {args.pretrained_model_name_or_path} have no place in the model that "
                f"model_config {args.model_config} builds (e.g. {dropped[:3]}); make model_config match the "
                "checkpoint's config.json (flag: --model_config '{...}')"
            )
        if loading.get("missing_keys"):
            logger.warning("%d weights are not in %s and start fresh (e.g. %s)", len(loading["missing_keys"]),
                           args.pretrained_model_name_or_path, sorted(loading["missing_keys"])[:3])
        return model
    return model_class(config_class(**args.model_config))


def apply_resumed_optimizer_settings(args: TrainingArguments, optimizer, scheduler, ema) -> list[str]:
    """Put this launch's optimizer and EMA settings on the states a resume restored, which hold the first launch's
    (every field can be overridden by a flag, on a resume too). The learning rate becomes the schedule's new base:
    the current rate is the new base times this launch's schedule factor at the resumed step (its schedule and
    options may differ from the first launch's too). Returns what changed."""
    changes = []
    wanted = {"betas": (args.adam_beta1, args.adam_beta2), "weight_decay": args.adam_weight_decay,
              "eps": args.adam_epsilon}
    for index, group in enumerate(optimizer.param_groups):
        for key, value in wanted.items():
            saved = tuple(group[key]) if key == "betas" else group[key]
            if saved != value:
                changes.append(f"{key} {saved} -> {value}")
                group[key] = value
        base_changed = scheduler.base_lrs[index] != args.learning_rate
        if base_changed:
            changes.append(f"learning_rate {scheduler.base_lrs[index]} -> {args.learning_rate}")
            scheduler.base_lrs[index] = group["initial_lr"] = args.learning_rate
        # The rate of the resumed step from this launch's schedule: its options (or steps_per_epoch, or the schedule
        # itself) may differ from the first launch's, whose rate the restored optimizer holds.
        rate = args.learning_rate * scheduler.lr_lambdas[index](scheduler.last_epoch)
        if group["lr"] != rate and not base_changed:
            changes.append(f"lr at step {scheduler.last_epoch} {group['lr']} -> {rate} (this launch's schedule)")
        group["lr"] = rate
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if ema is not None:
        decay = {"decay": args.ema_decay, "min_decay": 0.0 if args.ema_warmup else args.ema_decay,
                 "update_after_step": args.ema_update_after_step}
        for key, value in decay.items():
            if getattr(ema, key) != value:
                changes.append(f"ema {key} {getattr(ema, key)} -> {value}")
                setattr(ema, key, value)
    return sorted(set(changes))


def keeps_unused_official_modules(args: TrainingArguments) -> bool:
    """Whether the model to train keeps official modules its forward never calls (``keep_unused_official_modules``):
    from ``model_config``, else from the pretrained checkpoint's own config, which converted official PromptIR and
    PIP weights set. DDP must know before it wraps the model, or the second step fails waiting for their gradients."""
    if "keep_unused_official_modules" in args.model_config:
        return bool(args.model_config["keep_unused_official_modules"])
    if args.pretrained_model_name_or_path:
        config_class, _ = MODEL_CLASSES[args.model_type]
        config = config_class.from_pretrained(args.pretrained_model_name_or_path)
        return bool(getattr(config, "keep_unused_official_modules", False))
    return False


def to_model_images(
    images: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """A batch from the loader (uint8, or float in [0, 1]) as float32 in [0, 1] on `device`, in `memory_format`.

    The loader sends uint8 (a quarter of float32's inter-process traffic); the conversion happens here, on the
    device, and gives bit-identical values to the stream's own float32 output (x / 255 correctly rounded).
    """
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def build_ema(parameters, args: TrainingArguments):
    """diffusers' ``EMAModel`` over `parameters` with the run's decay settings. Its first update copies the weights;
    later ones use (1 + s) / (10 + s) capped at ``ema_decay`` or, with ``ema_warmup`` off, ``ema_decay`` itself
    (``min_decay`` = ``decay``): BasicSR's constant-decay EMA."""
    from diffusers.training_utils import EMAModel

    # foreach: one fused update over all parameters instead of a Python loop (see benchmarks/bench_train_loop.py)
    return EMAModel(parameters, decay=args.ema_decay, min_decay=0.0 if args.ema_warmup else args.ema_decay,
                    update_after_step=args.ema_update_after_step, foreach=True)


def main(args: TrainingArguments) -> dict:
    """Train, checkpoint, validate, save the final EMA weights (and push them). Returns the last validation."""
    from training.data import build_dataloader, build_stream
    from training.evaluation import (
        ValidationSet,
        build_validation_set,
        degradation_label_lookup,
        evaluate_model,
        sample_grid,
        takes_degradation_labels,
    )
    from training.model_card import save_model_folder

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    output_dir = Path(args.output_dir)
    report_to = None if args.report_to in (None, "none", "") else args.report_to.split(",")
    # DDP must be told about parameters that never get a gradient: only the unused official modules.
    find_unused = keeps_unused_official_modules(args)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(args.mixed_precision, runs_on_cpu(args)),
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        cpu=runs_on_cpu(args),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )
    set_seed(args.seed)  # identical initial weights on every process
    model = build_model(args)
    if args.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.train()
    # Channels-last: on CPU the depthwise convolutions run several times faster on NHWC maps (a whole step 2.7x,
    # benchmarks/bench_train.py). Only the layout of the 4-D weights changes, before the optimizer and the EMA copy
    # them; saved files hold the same values.
    channels_last = accelerator.device.type == "cpu" if args.channels_last is None else args.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    # Declared by each model class; models that take labels get the true class of every image.
    uses_labels = takes_degradation_labels(model)
    with accelerator.main_process_first():  # a loss the config names (CPL's CPR); never part of the model
        training_loss = build_training_loss(model.config, accelerator.device)

    on_gpu = accelerator.device.type == "cuda"
    compile_blocks = (on_gpu and not args.compile_model) if args.compile_blocks is None else args.compile_blocks
    if compile_blocks:
        # One graph per block width and crop size (training, validation, eval mode): more than the default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.compile_transformer_blocks()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
        fused=True if on_gpu else None,  # one kernel for the whole update on a GPU (benchmarks/bench_train.py)
    )
    overrun = schedule_overrun_warning(args)
    if overrun:
        logger.warning(overrun)
    # Stepped once per optimizer step by us (an accelerate-prepared scheduler steps once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_lr_lambda(args.lr_scheduler, args.steps_per_epoch, **args.lr_scheduler_options)
    )
    ema = build_ema(model.parameters(), args) if args.use_ema else None
    model, optimizer = accelerator.prepare(model, optimizer)
    # --compile_model: the training forward (loss included) as one graph; its value checks step aside under
    # torch.compile and run in the eager calls. `model` itself stays eager for validation, the EMA and saving.
    # Under DDP, the wrapper's own bookkeeping cannot be traced: PyTorch's DDP + compile path breaks the graph
    # around it (fullgraph would refuse), and splits the backward at the gradient buckets.
    train_forward = model
    if args.compile_model:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        train_forward = torch.compile(model, fullgraph=accelerator.num_processes == 1, dynamic=False,
                                      mode=args.compile_mode, backend=args.compile_backend)
    compiled_before = compiled_graph_counts()  # the process's counts so far; the compiled forward adds to them
    compiled_graphs = None  # {"graphs", "graph_breaks"} of the compiled forward, read after its first step
    if ema is not None:
        ema.to(accelerator.device)
    # Saved and restored by training.checkpointing (weights_only loads), not accelerate's register_for_checkpointing.
    custom_states = [scheduler] + ([ema] if ema is not None else [])
    guard = LossSpikeGuard(args.loss_spike_history, args.loss_spike_factor) if args.loss_spike_guard else None

    # Each process streams its own shards (split_dataset_by_node inside the stream): the loader is NOT prepared.
    # Workers send uint8 crops; they become float on the device (to_model_images).
    stream = build_stream(
        args.data_preset, args.data_roots, synthesize_missing=args.synthesize_missing, patch_size=args.patch_size,
        seed=args.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
        shards_per_rank=args.shards_per_rank, output_dtype="uint8", probabilities=args.task_probabilities or None,
        synthesis_crop_size=args.synthesis_crop_size or None, crop_to_multiple=args.crop_to_multiple,
    )
    # Stream label i (batch["task"]) -> class index of the model, computed once.
    label_lookup = None
    if uses_labels:
        used_tasks = {source.task_name for source in stream.sources}
        label_lookup = degradation_label_lookup(  # rows of Hub sources may carry their own tasks: then all are used
            accelerator.unwrap_model(model), stream.label_names, None if "" in used_tasks else used_tasks
        )
    loader = build_dataloader(stream, args.train_batch_size, num_workers=args.dataloader_num_workers)
    validation_set = ValidationSet()
    if accelerator.is_main_process:
        validation_set = build_validation_set(
            args.data_preset, args.validation_roots, synthesize_missing=args.synthesize_missing, seed=args.seed,
            images_per_task=args.validation_images_per_task, crop=args.validation_crop,
        )

    step, history, validation_history, best_psnr, last_results = 0, [], [], -math.inf, {}
    # How the stream is split between processes and workers: each rank's saved loader position means something
    # only under the same split.
    data_layout = {"processes": accelerator.num_processes, "shards_per_rank": args.shards_per_rank,
                   "dataloader_num_workers": args.dataloader_num_workers, "train_batch_size": args.train_batch_size}
    resume = checkpointing.resolve_resume_path(args.resume_from_checkpoint, output_dir)
    resumed_window = None  # the logging window's sums at the checkpoint (per process)
    if resume is not None:
        state = checkpointing.load_training_state(resume)
        check_data_layout(state.get("data_layout"), data_layout, resume)
        check_model_description(state.get("model"), model_description(args.model_type, accelerator.unwrap_model(model)),
                                resume)
        with checkpointing.accelerate_state_view(resume) as readable:
            accelerator.load_state(str(readable))
        # A run trained without an EMA and resumed with --use_ema: the EMA starts from the resumed weights.
        new_ema = ema is not None and not checkpointing.has_custom_state(resume, 1)
        checkpointing.load_custom_states(resume, custom_states[:1] if new_ema else custom_states)
        if new_ema:
            logger.warning(f"{resume} holds no EMA (trained without --use_ema): the EMA starts from its weights")
            ema = custom_states[1] = build_ema(accelerator.unwrap_model(model).parameters(), args)
        if ema is not None:  # its shadow weights were read onto the CPU
            ema.to(accelerator.device)
        for change in apply_resumed_optimizer_settings(args, optimizer, scheduler, ema):
            logger.info(f"resume: {change}")
        step, history = state["step"], state.get("history", [])
        validation_history = state.get("validation_history", [])
        recorded_best_psnr = -math.inf if state.get("best_psnr") is None else state["best_psnr"]
        best_psnr = max(recorded_best_psnr, saved_best_psnr(output_dir / "best"))
        data_state = checkpointing.load_data_state(resume, accelerator.process_index)
        if data_state is not None:
            stream.set_epoch(data_state["epoch"])
            loader.load_state_dict(data_state["loader"])
            if guard is not None and data_state.get("loss_spike_guard"):
                guard.load_state_dict(data_state["loss_spike_guard"])
            resumed_window = data_state.get("loss_window")
        logger.info(f"resumed from {resume} at step {step}")
        if accelerator.is_main_process:  # (only the main process validates, so only its best_psnr counts)
            moved = checkpointing.set_aside_newer_checkpoints(output_dir, step)
            for old, new in moved:
                logger.warning(f"{old.name} is past the resumed step {step} (another run's): renamed to {new.name}")
            best_step = saved_model_step(output_dir / "best")
            if best_is_from_abandoned_steps(best_step, step, args.checkpointing_steps, bool(moved)):
                # Its score would stand against this run's validations, and a model this run never trained would
                # stay best/ unless one beat it: the best is the checkpoint's again.
                new = checkpointing.set_aside(output_dir / "best")
                best_psnr = recorded_best_psnr
                logger.warning(f"best/ was saved at step {best_step}, past the resumed step {step} (steps this run "
                               f"abandons): renamed to {new.name}; the best PSNR to beat is the checkpoint's "
                               f"({best_psnr:.2f} dB)")
        accelerator.wait_for_everyone()
    elif args.resume_from_checkpoint:
        logger.info("no checkpoint to resume from; starting a new run")

    if accelerator.is_main_process and report_to:
        hyperparameters = {k: "***" if k in SECRET_ARGUMENTS and v else str(v)
                           for k, v in dataclasses.asdict(args).items()}
        accelerator.init_trackers("prompt-restoration", config=hyperparameters)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    progress = tqdm(
        total=args.max_train_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train"
    )
    window, window_start = LossWindow(), time.perf_counter()
    if resumed_window:
        window.load_state_dict(resumed_window, accelerator.device)
    launch_start = time.perf_counter()

    def time_is_up() -> bool:
        """Whether the time budget is spent, decided by the main process and shared, so every process agrees."""
        if args.max_train_minutes is None:
            return False
        spent = float(time.perf_counter() - launch_start >= 60.0 * args.max_train_minutes)
        return bool(accelerator.reduce(torch.tensor(spent, device=accelerator.device), reduction="sum").item() > 0)

    def data_state() -> dict:
        return {
            "epoch": stream.epoch, "loader": loader.state_dict(),
            "loss_spike_guard": guard.state_dict() if guard is not None else None,
            "loss_window": window.state_dict(),
        }

    def save_folder(unwrapped, folder: Path, results: dict) -> None:
        summary = {
            # the launcher's flags as this run used them, then every flag the script was given (parse_args keeps
            # them), not only the recipe file
            "command": shlex.join([
                "accelerate", "launch", *launcher_flags(accelerator.num_processes, str(accelerator.mixed_precision)),
                "training/train.py", *redacted_command_line(
                    getattr(args, "command_line", None) or ([f"--config={args.config}"] if args.config else []))]),
            "steps": step,
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "mixed_precision": str(accelerator.mixed_precision),
            "channels_last": channels_last,
            "compile_blocks": compile_blocks,
            "compile_model": (
                {"mode": args.compile_mode or "default", "backend": args.compile_backend, **(compiled_graphs or {})}
                if args.compile_model else False
            ),
            **{k: getattr(args, k)
               for k in ("learning_rate", "train_batch_size", "patch_size", "lr_scheduler", "data_preset")},
        }
        if args.task_probabilities:
            summary["task_probabilities"] = args.task_probabilities
        if guard is not None:
            summary["loss_spike_guard_triggers"] = guard.triggered
        # Without a Hub id the card's snippets name the folder by its path (as --output_dir gave it), which loads
        # from where the run was launched; its bare name ("model") would be looked up on the Hub.
        save_model_folder(
            unwrapped, folder, model_id=args.hub_model_id or folder.as_posix(), model_type=args.model_type,
            results=results.get("tasks", {}), dataset=args.data_preset, training_summary=summary, history=history,
            validation_history=validation_history,
        )

    validated_step = None  # the step of this launch's last validation (the same on every process)

    def validate(record: bool = True) -> dict:
        """Score the EMA weights on the validation set (main process). `record`: log the scores, add them to the
        history, save the sample grid and ``best/``; off for a step whose validation a checkpoint already holds."""
        nonlocal best_psnr, validated_step
        validated_step = step
        results = {}
        # Only the main process writes here; the others learn from it whether the disk refused its writes.
        with checkpointing.stop_together_on_output_error(accelerator):
            if accelerator.is_main_process and validation_set:
                unwrapped = accelerator.unwrap_model(model)
                if ema is not None:
                    ema.store(unwrapped.parameters())
                    ema.copy_to(unwrapped.parameters())
                results = evaluate_model(unwrapped, validation_set, autocast_dtype, with_labels=True)
                if uses_labels and getattr(unwrapped, "can_estimate_degradation", False):
                    auto = evaluate_model(unwrapped, validation_set, autocast_dtype, with_labels=False)
                    for task, scores in auto["tasks"].items():
                        results["tasks"][task]["psnr_auto"] = scores["psnr"]
                        results["tasks"][task]["ssim_auto"] = scores["ssim"]
                samples = results.pop("samples")
                mean_psnr = float(np.mean([s["psnr"] for s in results["tasks"].values()]))
                if record:
                    validation_history.append(
                        {"step": step, "psnr": {t: s["psnr"] for t, s in results["tasks"].items()}})
                    logs = {f"val/{t}/{k}": v
                            for t, s in results["tasks"].items() for k, v in s.items() if k != "images"}
                    accelerator.log({**logs, "val/mean_psnr": mean_psnr}, step=step)
                    grid = sample_grid(samples)
                    (output_dir / "validation").mkdir(parents=True, exist_ok=True)
                    with checkpointing.stop_on_full_disk(f"validation/step-{step:07d}.png", output_dir):
                        grid.save(output_dir / "validation" / f"step-{step:07d}.png")
                    for tracker in accelerator.trackers:
                        if tracker.name == "tensorboard":
                            tracker.writer.add_image("val/degraded_restored_clean", np.asarray(grid), step,
                                                     dataformats="HWC")
                    if mean_psnr > best_psnr:
                        best_psnr = mean_psnr
                        with checkpointing.stop_on_full_disk("best/ (the best validated model)", output_dir):
                            save_folder(unwrapped, output_dir / "best", results)
                if ema is not None:
                    ema.restore(unwrapped.parameters())
                model.train()
        accelerator.wait_for_everyone()
        return results

    passes = 0
    while step < args.max_train_steps and not (step and time_is_up()):
        batches_this_pass = 0
        passes += 1
        for batch in loader:
            batches_this_pass += 1
            with accelerator.accumulate(model):
                degraded = to_model_images(batch["degraded"], accelerator.device, memory_format)
                clean = to_model_images(batch["clean"], accelerator.device, memory_format)
                kwargs = {}
                if label_lookup is not None:
                    kwargs["degradation_labels"] = label_lookup[batch["task"]].to(accelerator.device, non_blocking=True)
                if args.compile_model:  # a new step for CUDA graphs: the previous step's outputs may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                output = train_forward(pixel_values=degraded, labels=clean, **kwargs)
                loss, loss_terms = output.loss, output.loss_terms
                if training_loss is not None:
                    # The negatives go through the unwrapped model: one synchronised DDP forward per step.
                    loss, loss_terms = training_loss(accelerator.unwrap_model(model), output, degraded, clean, kwargs)
                window.add(loss, loss_terms, degraded.shape[0] * accelerator.num_processes)
                if guard is not None:
                    loss = guard_pixel_loss(loss, loss_terms, guard)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step_lr = scheduler.get_last_lr()[0]  # what this optimizer step used: logged, not the next step's
            scheduler.step()
            if args.compile_model and compiled_graphs is None:
                compiled_graphs = {k: v - compiled_before[k] for k, v in compiled_graph_counts().items()}
                logger.info(f"--compile_model: {compiled_graphs['graphs']} graph(s), "
                            f"{compiled_graphs['graph_breaks']} graph break(s)")
            if ema is not None:
                ema.step(model.parameters())
            step += 1
            progress.update(1)
            if step % args.logging_steps == 0 or step == args.max_train_steps:
                images = window.images
                means = window.reduce_means(accelerator)
                elapsed = time.perf_counter() - window_start
                loss_mean = means.pop("loss")
                if not math.isfinite(loss_mean):
                    # A NaN loss leaves NaN weights after AdamW's update: stop before they reach a checkpoint,
                    # whose pruning would then delete the good ones.
                    raise RuntimeError(nonfinite_training_message(f"the training loss ({loss_mean})", step, output_dir))
                lr = step_lr
                logs = {"train/loss": loss_mean, "train/lr": lr, "train/images_per_second": images / max(elapsed, 1e-9),
                        **{f"train/loss_{name}": value for name, value in means.items()}}
                if guard is not None:
                    triggered = torch.tensor(float(guard.triggered), device=accelerator.device)
                    logs["train/loss_spike_guard_triggers"] = accelerator.reduce(triggered, reduction="sum").item()
                history.append({"step": step, "loss": loss_mean, "lr": lr, "loss_terms": means,
                                "images_per_second": logs["train/images_per_second"]})
                progress.set_postfix(
                    loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", img_s=f"{logs['train/images_per_second']:.1f}"
                )
                accelerator.log(logs, step=step)
                window_start = time.perf_counter()
            saves_now = bool(args.validation_steps and step % args.validation_steps == 0) or bool(
                args.checkpointing_steps and step % args.checkpointing_steps == 0)
            if saves_now and not weights_are_finite(accelerator, model):  # (a non-finite gradient, finite loss)
                raise RuntimeError(nonfinite_training_message("the weights", step, output_dir))
            # Validation first: a checkpoint of this step then holds its result (history, best PSNR), which a
            # resume from it would otherwise never compute.
            if args.validation_steps and step % args.validation_steps == 0:
                last_results = validate() or last_results
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                checkpointing.save_checkpoint(
                    accelerator, output_dir, step,
                    {"history": history, "validation_history": validation_history,
                     "best_psnr": best_psnr if math.isfinite(best_psnr) else None, "epoch": stream.epoch,
                     "data_layout": data_layout,
                     "model": model_description(args.model_type, accelerator.unwrap_model(model))},
                    data_state(), args.checkpoints_total_limit, custom_states,
                )
            if step >= args.max_train_steps:
                break
            if time_is_up():
                logger.info(f"--max_train_minutes {args.max_train_minutes} reached at step {step}")
                break
        else:
            # A resumed loader may sit at the end of its epoch: its first pass may be empty, never a later one.
            if batches_this_pass == 0 and not (resume and passes == 1):
                raise RuntimeError(
                    "the training stream yielded no batch in a whole epoch: either each loader worker's share of "
                    f"the epoch is smaller than one batch (train_batch_size {args.train_batch_size}, "
                    f"{args.dataloader_num_workers} worker(s) per process, {accelerator.num_processes} process(es), "
                    "incomplete batches are dropped), or its files were bad (bad data per source: "
                    f"{stream.bad_data_counts()}); use a smaller batch, fewer workers or more data"
                )
            stream.set_epoch(stream.epoch + 1)
    progress.close()
    if not weights_are_finite(accelerator, model):  # before the final validation and save
        raise RuntimeError(nonfinite_training_message("the weights", step, output_dir))

    # Decided from the arguments and the step, identical on every process (only the main one holds the validation
    # set). A run resumed at its last step (relaunched after it finished, or killed before writing model/) did not
    # validate in this launch: it scores the final weights again for the folder, without recording a step that
    # its checkpoint's history already holds.
    if args.validation_roots and validated_step != step:
        recorded = any(entry.get("step") == step for entry in validation_history)
        last_results = validate(record=not recorded) or last_results
    accelerator.wait_for_everyone()
    # DDP keeps the replicas identical; check it rather than trust it (a silent divergence wastes a run).
    keep_until_teardown: list = []
    checksums = gather_replica_checksums(accelerator, model, keep_until_teardown)
    diverged = not torch.equal(checksums, checksums[:1].expand_as(checksums))
    with checkpointing.stop_together_on_output_error(accelerator):  # the main process writes, all stop on a refusal
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            with checkpointing.stop_on_full_disk("replica_checksums.json", output_dir):
                checkpointing.write_json_atomic(output_dir / "replica_checksums.json",
                                                {"checksums": checksums.tolist()})
        if accelerator.is_main_process and not diverged:
            unwrapped = accelerator.unwrap_model(model)
            if ema is not None:
                ema.copy_to(unwrapped.parameters())
            final = output_dir / "model"
            with checkpointing.stop_on_full_disk("model/ (the final model)", output_dir):
                save_folder(unwrapped, final, last_results)
            counts = stream.bad_data_counts() if hasattr(stream, "bad_data_counts") else {}
            logger.info(f"saved {final}; bad data per source: {counts}")
    if guard is not None:
        logger.info(f"loss-spike guard triggered {guard.triggered} times on this process")
    # Everyone leaves together, then the process group goes (accelerate destroys it in end_training). The
    # checksum collective's handles are released only afterwards (see gather_replica_checksums).
    accelerator.wait_for_everyone()
    ddp_wrapper = weakref.ref(model)
    train_forward = None  # the wrapper itself, or the compiled module around it
    if args.compile_model:
        torch._dynamo.reset()  # compiled code and its guards hold the wrapper too
    model = accelerator.unwrap_model(model)
    release_ddp_wrapper(accelerator, ddp_wrapper)
    accelerator.end_training()
    keep_until_teardown.clear()
    if diverged:
        raise RuntimeError(f"model replicas diverged across processes: checksums {checksums.tolist()}")
    if args.push_to_hub and accelerator.is_main_process:
        from training.model_card import HubPushError, push_folder_to_hub

        try:
            url = push_folder_to_hub(str(output_dir / "model"), args.hub_model_id, token=args.hub_token)
            logger.info(f"pushed to {url}")
        except HubPushError as error:
            raise SystemExit(str(error)) from None
    return last_results


def leave_after_output_error() -> bool:
    """After `main` stopped on an `OutputWriteError` (which every process raises alike), free what it left and leave
    the process group; returns whether this is the main process, the one that reports the error.

    `main`'s frames (held by the error's traceback) keep the DDP wrapper, whose reducer, freed last at exit, can
    deadlock in the process group's destructor (see `release_ddp_wrapper`): collected first, the group goes
    through torch's Python handle."""
    gc.collect()
    group_started = getattr(torch.distributed, "is_initialized", None)  # absent from builds without distributed
    if group_started is None or not group_started():
        return True
    rank = torch.distributed.get_rank()
    torch.distributed.destroy_process_group()
    return rank == 0


if __name__ == "__main__":
    refused = None
    try:
        main(parse_args())
    except checkpointing.OutputWriteError as error:
        refused = str(error)  # the traceback, and the frames it holds, go with `error` at the end of this block
    if refused is not None:
        # A full disk is no bug of the trainer: one line saying what to do, not the traceback of torch's writer;
        # written once, by the main process, though every process stops with it (and exit code 1).
        raise SystemExit(f"error: {refused}" if leave_after_output_error() else 1)
