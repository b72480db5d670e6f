"""The real training script, launched as users launch it: DDP on 2 CPU processes, kill -9 and exact resume,
push to a fake Hub, and the pieces it is built from (arguments, schedules, loss-spike guard, labels, uint8
batches, atomic checkpoints)."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import save, textured_image
from fake_hub import FakeHub
from launch_helpers import accelerate_launch, free_port, run_to_end
from safetensors.torch import load_file

from training import checkpointing
from training.schedules import build_lr_lambda, cosine_restart_cyclic, linear_warmup_cosine, schedule_end_step
from training.train import LossSpikeGuard, guard_pixel_loss, parse_args, schedule_overrun_warning, validate_args

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
TINY_PIP = json.dumps(
    {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2],
     "prompt_dims": [12, 20, 16], "prompt_sizes": [8, 4, 4], "degradation_estimator_hidden_dim": 16}
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(8):
        save(root / "clean" / f"photo{i}.png", textured_image(i, 48, 48))
    for i in range(2):
        save(root / "heldout" / f"photo{i}.png", textured_image(100 + i, 32, 32))
    return root


def train_args(corpus: Path, output_dir: Path, **overrides) -> list[str]:
    values = {
        "model_type": "pip", "model_config": TINY_PIP, "data_preset": "5-task", "synthesize_missing": "true",
        "patch_size": "32", "train_batch_size": "2", "dataloader_num_workers": "0", "shards_per_rank": "2",
        "max_train_steps": "6", "steps_per_epoch": "3", "checkpointing_steps": "2", "checkpoints_total_limit": "2",
        "validation_steps": "0", "logging_steps": "1", "report_to": "none", "output_dir": str(output_dir),
        "lr_scheduler": "linear_warmup_cosine",
        "lr_scheduler_options": json.dumps({"warmup_epochs": 1, "max_epochs": 3, "warmup_start_factor": 0.1}),
        "loss_spike_guard": "true", "learning_rate": "1e-3",
    }
    values.update({k: str(v) for k, v in overrides.items()})
    argv = ["--data_roots", f"clean={corpus / 'clean'}"]
    for key, value in values.items():
        argv += [f"--{key}", value]
    return argv


def script_env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", **extra)
    return env


def run_train(argv: list[str], env=None, launcher=(), timeout=600, preexec_fn=None) -> subprocess.CompletedProcess:
    """Run the script (optionally under a launcher) to the end; see `launch_helpers.run_to_end`."""
    command = [*launcher, str(TRAIN), *argv] if launcher else [sys.executable, str(TRAIN), *argv]
    return run_to_end(command, env=env or script_env(), cwd=REPO, timeout=timeout, preexec_fn=preexec_fn)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model" / "model.safetensors")


def training_summary_command(output_dir: Path) -> str:
    """The training command a run's card shows (its Training section's code block)."""
    card = (output_dir / "model" / "README.md").read_text()
    return re.search(r"Command:\n\n```bash\n(.*?)\n```", card, re.DOTALL).group(1)


def launcher_arguments(command: str) -> argparse.Namespace:
    """``accelerate launch``'s own reading of a card's command (its flags, the script and the script's flags)."""
    from accelerate.commands.launch import launch_command_parser

    words = shlex.split(command)
    assert words[:2] == ["accelerate", "launch"], command
    return launch_command_parser().parse_args(words[2:])


def two_process_launch_args(corpus: Path, output_dir: Path, **overrides) -> list[str]:
    """6 steps in fp32 with checkpoints every 2 steps, EMA, and validation once at the end on held-out photos."""
    argv = train_args(corpus, output_dir, validation_images_per_task=1, mixed_precision="no", **overrides)
    return argv + ["--validation_roots", f"clean={corpus / 'heldout'}"]


@pytest.fixture(scope="module")
def two_process_launch(corpus, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One eager 2-process launch, shared by the tests that check it and compare against it."""
    output_dir = tmp_path_factory.mktemp("launch") / "ddp"
    return output_dir, run_train(two_process_launch_args(corpus, output_dir), launcher=accelerate_launch(2),
                                 timeout=300)


def test_two_process_ddp_launch(two_process_launch):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (the --cpu form silently runs one process)."""
    output_dir, result = two_process_launch
    # Validation runs on the main process only, once at the end: the other process must wait, not deadlock.
    assert result.returncode == 0, result.stderr[-4000:]
    assert set(json.loads((output_dir / "model" / "eval_results.json").read_text())) == {
        "noise", "rain", "haze", "blur", "low-light"
    }
    checksums = json.loads((output_dir / "replica_checksums.json").read_text())["checksums"]
    assert len(checksums) == 2, "two processes must have trained"
    assert checksums[0] == checksums[1], "replicas must end with identical weights"
    # Every 2 steps a checkpoint; the limit keeps the 2 newest; nothing half-written is left behind.
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in (output_dir / "checkpoint-6").glob("data_state_rank*.pt")) == [
        "data_state_rank0.pt", "data_state_rank1.pt"
    ]
    assert (output_dir / "model" / "model.safetensors").is_file()
    assert (output_dir / "model" / "preprocessor_config.json").is_file()
    assert "DDP wrapper is still referenced" not in result.stderr
    # The card's command carries the launcher's flags (it said `accelerate launch training/train.py ...`, which
    # reruns one process), and accelerate's own parser reads them as this launch's.
    launched = training_summary_command(output_dir)
    assert launched.startswith("accelerate launch --multi_gpu --num_processes 2 --mixed_precision no "
                               "training/train.py --data_roots "), launched
    launch = launcher_arguments(launched)
    assert (launch.multi_gpu, launch.num_processes, launch.mixed_precision, launch.cpu) == (True, 2, "no", False)
    # The logged learning rate is the one each step trained with (it used to be the next step's: step 3, the last
    # of the warm-up epoch, logged the full rate its update never used).
    factor = linear_warmup_cosine(3, warmup_epochs=1, max_epochs=3, warmup_start_factor=0.1)
    history = checkpointing.load_training_state(output_dir / "checkpoint-6")["history"]
    assert [row["lr"] for row in history] == pytest.approx([1e-3 * factor(row["step"] - 1) for row in history])
    assert history[2]["step"] == 3 and history[2]["lr"] == pytest.approx(1e-4)


def test_two_processes_fine_tune_weights_that_keep_unused_official_modules(corpus, tmp_path):
    """Converted official PromptIR/PIP folders keep modules their forward never calls (for strict loading). A
    2-process fine-tune of one, with the recipes' `model_config: {}`, failed at step 2 (DDP waited for their
    gradients) unless the flag was repeated in model_config: DDP now learns it from the checkpoint's config."""
    from conftest import tiny_model

    pretrained = tmp_path / "converted"
    tiny_model("promptir", keep_unused_official_modules=True).save_pretrained(pretrained)
    output_dir = tmp_path / "fine-tuned"
    argv = train_args(corpus, output_dir, model_type="promptir", model_config="{}", max_train_steps=2,
                      checkpointing_steps=0, pretrained_model_name_or_path=pretrained, mixed_precision="no")
    result = run_train(argv, launcher=accelerate_launch(2), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    checksums = json.loads((output_dir / "replica_checksums.json").read_text())["checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert json.loads((output_dir / "model" / "config.json").read_text())["keep_unused_official_modules"] is True


def test_the_card_of_a_run_without_hub_id_names_its_folder_by_a_loadable_path(corpus, tmp_path, monkeypatch):
    """The card of OUTPUT/model, trained without --hub_model_id, named the model "model" in its usage snippets:
    `AutoModel.from_pretrained("model", ...)` run where training was launched looked it up on the Hub and failed.
    The snippets now give the folder's path as --output_dir named it."""
    import re

    from transformers import AutoModel

    monkeypatch.chdir(tmp_path)
    run_main(train_args(corpus, Path("runs") / "local", max_train_steps=1, checkpointing_steps=0,
                        mixed_precision="no"))
    card = (tmp_path / "runs" / "local" / "model" / "README.md").read_text()
    named = set(re.findall(r'from_pretrained\("([^"]+)"', card)) | set(re.findall(r"--model (\S+)", card))
    assert named == {"runs/local/model"}, named
    assert AutoModel.from_pretrained("runs/local/model", trust_remote_code=True).config.model_type == "pip"


def test_a_run_resumed_at_its_last_step_scores_its_final_folder(corpus, tmp_path):
    """Relaunching a finished run with --resume_from_checkpoint latest (or resuming one killed after its last
    checkpoint, before model/ was written) wrote model/ with no evaluation: `eval_results.json` {} and a card
    without results. It now scores the final weights again, without recording the step's validation twice."""
    output_dir = tmp_path / "run"
    # Validation at step 2 comes before checkpoint-2, which therefore holds it.
    common = dict(max_train_steps=2, checkpointing_steps=2, validation_steps=2, validation_images_per_task=1,
                  mixed_precision="no")
    argv = train_args(corpus, output_dir, **common) + ["--validation_roots", f"clean={corpus / 'heldout'}"]
    run_main(argv)
    first = json.loads((output_dir / "model" / "eval_results.json").read_text())
    assert set(first) == {"noise", "rain", "haze", "blur", "low-light"}
    grid = output_dir / "validation" / "step-0000002.png"
    grid_written = grid.stat().st_mtime_ns
    shutil.rmtree(output_dir / "model")  # as if killed after checkpoint-2
    run_main(argv + ["--resume_from_checkpoint", "latest"])
    assert json.loads((output_dir / "model" / "eval_results.json").read_text()) == first
    assert "No evaluation results were recorded" not in (output_dir / "model" / "README.md").read_text()
    run_main(argv + ["--resume_from_checkpoint", "latest"])  # a finished run relaunched: the same folder
    assert json.loads((output_dir / "model" / "eval_results.json").read_text()) == first
    assert grid.stat().st_mtime_ns == grid_written  # scored again, not recorded again


def test_a_resume_trains_with_this_launchs_optimizer_and_ema_settings(corpus, tmp_path, caplog):
    """A resume restored the first launch's learning rate, betas, weight decay and EMA decay and silently ignored
    the flags (while the card reported the flag's rate). They now apply from the resumed step, each named."""
    import logging

    output_dir = tmp_path / "run"
    # Two steps per epoch: the resume falls on an epoch boundary, so its first step has another factor than the last
    # step saved (warmup 0.1, then 1.0).
    common = dict(checkpointing_steps=2, mixed_precision="no", use_ema="true", steps_per_epoch=2)
    run_main(train_args(corpus, output_dir, max_train_steps=2, **common))
    overrides = dict(learning_rate=1e-5, adam_weight_decay=0.5, adam_beta2=0.9, ema_decay=0.5)
    with caplog.at_level(logging.INFO, logger="training.train"):
        run_main(train_args(corpus, output_dir, max_train_steps=4, resume_from_checkpoint="latest",
                            **{**common, **overrides}))
    assert "learning_rate 0.001 -> 1e-05" in caplog.text and "ema decay 0.999 -> 0.5" in caplog.text
    factor = linear_warmup_cosine(2, warmup_epochs=1, max_epochs=3, warmup_start_factor=0.1)
    assert (factor(1), factor(2)) == (pytest.approx(0.1), 1.0)
    history = checkpointing.load_training_state(output_dir / "checkpoint-4")["history"]
    assert [row["lr"] for row in history] == pytest.approx([1e-3 * factor(0), 1e-3 * factor(1),
                                                             1e-5 * factor(2), 1e-5 * factor(3)])
    optimizer = torch.load(output_dir / "checkpoint-4" / "optimizer.bin", weights_only=True)
    (group,) = optimizer["param_groups"]
    assert (tuple(group["betas"]), group["weight_decay"], group["initial_lr"]) == ((0.9, 0.9), 0.5, 1e-5)
    assert torch.load(output_dir / "checkpoint-4" / "ema_state.pt", weights_only=True)["decay"] == 0.5
    assert "learning rate**: 1e-05" in (output_dir / "model" / "README.md").read_text()


def test_a_resume_trains_its_first_step_with_this_launchs_schedule(corpus, tmp_path, caplog):
    """Resumed with other schedule options (the base rate unchanged), the first resumed step used to train at the
    first launch's rate, restored with the optimizer, and this launch's schedule took over one step late."""
    import logging

    output_dir = tmp_path / "run"
    common = dict(checkpointing_steps=2, mixed_precision="no", use_ema="false", loss_spike_guard="false",
                  steps_per_epoch=4)
    options = lambda start: json.dumps({"warmup_epochs": 1, "max_epochs": 3, "warmup_start_factor": start})  # noqa: E731
    run_main(train_args(corpus, output_dir, max_train_steps=2, lr_scheduler_options=options(0.1), **common))
    with caplog.at_level(logging.INFO, logger="training.train"):
        run_main(train_args(corpus, output_dir, max_train_steps=4, lr_scheduler_options=options(0.5),
                            resume_from_checkpoint="latest", **common))
    assert "lr at step 2 0.0001 -> 0.0005 (this launch's schedule)" in caplog.text
    history = checkpointing.load_training_state(output_dir / "checkpoint-4")["history"]
    # Steps 1-2 in epoch 0 of the first schedule (factor 0.1), steps 3-4 in epoch 0 of the second (factor 0.5).
    assert [row["lr"] for row in history] == pytest.approx([1e-4, 1e-4, 5e-4, 5e-4])


def test_a_run_rewound_to_an_earlier_checkpoint_is_what_latest_resumes(corpus, tmp_path, caplog):
    """Resuming from an earlier checkpoint (after a divergence, with a lower rate) left the abandoned run's later
    checkpoints in place: after the next kill, `latest` resumed the abandoned run (its rate, its weights), and
    pruning counted its checkpoints. They are now set aside under another name (kept, not deleted)."""
    import logging

    output_dir = tmp_path / "run"
    common = dict(checkpoints_total_limit=3, mixed_precision="no", use_ema="false")
    run_main(train_args(corpus, output_dir, max_train_steps=4, checkpointing_steps=2, **common))
    with caplog.at_level(logging.WARNING, logger="training.train"):
        run_main(train_args(corpus, output_dir, max_train_steps=3, checkpointing_steps=1, learning_rate=1e-5,
                            resume_from_checkpoint=output_dir / "checkpoint-2", **common))
    assert "checkpoint-4 is past the resumed step 2" in caplog.text
    assert checkpointing.latest_checkpoint(output_dir) == output_dir / "checkpoint-3"
    assert [p.name for p in checkpointing.checkpoint_dirs(output_dir)] == ["checkpoint-2", "checkpoint-3"]
    abandoned = output_dir / "abandoned-checkpoint-4"
    assert checkpointing.load_training_state(abandoned)["step"] == 4  # kept whole
    assert checkpointing.load_training_state(output_dir / "checkpoint-3")["history"][-1]["lr"] == pytest.approx(1e-6)


def test_a_run_trained_without_ema_resumes_with_use_ema(corpus, tmp_path):
    """Every flag applies on a resume, --use_ema too: resuming a run trained without an EMA with --use_ema failed
    with FileNotFoundError (no ema_state.pt). The EMA now starts from the resumed weights."""
    output_dir = tmp_path / "run"
    common = dict(checkpointing_steps=2, mixed_precision="no")
    run_main(train_args(corpus, output_dir, max_train_steps=2, use_ema="false", **common))
    resumed = checkpointing.checkpoint_dirs(output_dir)[-1]
    # Resumed at its last step: no update runs, so the final (EMA) weights are where the EMA starts.
    run_main(train_args(corpus, output_dir, max_train_steps=2, use_ema="true", resume_from_checkpoint="latest",
                        **common))
    step2 = load_file(resumed / "model.safetensors")
    assert all(torch.equal(final_weights(output_dir)[name], step2[name]) for name in step2)
    run_main(train_args(corpus, output_dir, max_train_steps=4, use_ema="true", ema_warmup="false", ema_decay=0.5,
                        resume_from_checkpoint="latest", **common))
    ema = torch.load(output_dir / "checkpoint-4" / "ema_state.pt", weights_only=True)
    assert ema["optimization_step"] == 2  # the two steps of this launch
    # First update: a copy of step 3's weights; the second averages in step 4's with decay 0.5.
    step4 = load_file(output_dir / "checkpoint-4" / "model.safetensors")
    final = final_weights(output_dir)
    assert resumed.name == "checkpoint-2" and set(final) == set(step4)
    assert not all(torch.equal(final[name], step4[name]) for name in final)  # the EMA, not the live weights


def test_the_card_reports_the_command_the_run_was_given(corpus, tmp_path):
    """The card's command carries every flag (it used to keep only --config, dropping the overrides and
    claiming the paper's recipe for a run given by flags), with the Hub token hidden."""
    from training.train import redacted_command_line

    output_dir = tmp_path / "run"
    secret = "hf_SECRET_never_written"
    run_main(train_args(corpus, output_dir, max_train_steps=1, checkpointing_steps=0, seed=7,
                        report_to="tensorboard") + ["--hub-token", secret])
    text = (output_dir / "model" / "README.md").read_text()
    assert "--seed 7" in text and f"--output_dir {output_dir}" in text and "--hub-token '***'" in text
    assert "Trained with the flags of the command below, without a recipe file." in text
    assert "Recipe: `training/configs/pip_restormer_5task.yaml`" not in text
    # Nowhere in the run's files: the card, the tracker's hyperparameters (hparams.yml, event files), checkpoints.
    written = [path for path in output_dir.rglob("*") if path.is_file()]
    assert any("hparams" in path.name for path in written)
    assert not [path for path in written if secret.encode() in path.read_bytes()]
    # launched without accelerate launch: one process, in the precision --mixed_precision auto chose here
    precision = re.search(r"- \*\*mixed precision\*\*: (\w+)\n", text).group(1)
    command = training_summary_command(output_dir)
    assert command.startswith(f"accelerate launch --num_processes 1 --mixed_precision {precision} training/train.py "
                              "--data_roots "), command
    assert (launcher_arguments(command).num_processes, launcher_arguments(command).multi_gpu) == (1, False)
    assert redacted_command_line(["--hub_token", "hf_x", "--seed", "1", "--hub_token=hf_y", "--hub-token", "hf_z",
                                  "--hub-token=hf_w"]) == [
        "--hub_token", "***", "--seed", "1", "--hub_token=***", "--hub-token", "***", "--hub-token=***"]


def test_launcher_flags_reconstruct_the_launch_from_what_accelerate_exports():
    """`accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 training/train.py ...` gave a card
    saying `accelerate launch training/train.py ...`: one process, and fp32 wherever auto does not pick bf16. The
    flags are rebuilt from the run's process count and precision and from the environment accelerate launch sets."""
    from training.train import launcher_flags

    two_ranks = {"ACCELERATE_MIXED_PRECISION": "bf16", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2",
                 "ACCELERATE_DYNAMO_BACKEND": "NO"}
    assert launcher_flags(2, "bf16", two_ranks) == [
        "--multi_gpu", "--num_processes", "2", "--mixed_precision", "bf16"]
    # two machines of four processes each; a dynamo backend asked of the launcher
    assert launcher_flags(8, "fp16", {"LOCAL_WORLD_SIZE": "4", "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}) == [
        "--multi_gpu", "--num_processes", "8", "--num_machines", "2", "--mixed_precision", "fp16",
        "--dynamo_backend", "inductor"]
    # `accelerate launch --cpu` (one process) and a plain `python training/train.py` run
    assert launcher_flags(1, "no", {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"}) == [
        "--cpu", "--num_processes", "1", "--mixed_precision", "no"]
    assert launcher_flags(1, "bf16", {}) == ["--num_processes", "1", "--mixed_precision", "bf16"]
    launch = launcher_arguments(shlex.join(["accelerate", "launch", *launcher_flags(8, "fp16", {
        "LOCAL_WORLD_SIZE": "4", "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}), "training/train.py", "--seed", "1"]))
    assert (launch.multi_gpu, launch.num_processes, launch.num_machines, launch.mixed_precision,
            launch.dynamo_backend, launch.training_script, launch.training_script_args) == (
        True, 8, 2, "fp16", "inductor", "training/train.py", ["--seed", "1"])


def test_yaml_words_for_no_and_schedule_options_that_would_be_ignored(tmp_path):
    """YAML 1.1 reads `no` as false: `mixed_precision: no` and `report_to: no` mean the words (they crashed the
    run in Accelerator). The constant schedule refuses options (a warm-up there was silently ignored)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mixed_precision: no\nreport_to: no\nmax_train_steps: 2\n")
    args = parse_args(["--config", str(recipe)])
    assert (args.mixed_precision, args.report_to) == ("no", "none")
    assert parse_args(["--max_train_steps", "2", "--mixed_precision", " AUTO"]).mixed_precision == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--max_train_steps", "2", "--mixed_precision", "bf17"])
    with pytest.raises(SystemExit):
        parse_args(["--max_train_steps", "2", "--lr_scheduler_options", '{"warmup_epochs": 5}'])
    with pytest.raises(ValueError, match="constant schedule takes no options"):
        build_lr_lambda("constant", 10, warmup_epochs=5)


def test_two_processes_stop_together_when_the_time_budget_is_spent(corpus, tmp_path):
    """--max_train_minutes under a 2-process launch: the budget is shared (a collective), so both ranks stop at
    the same step and end with identical weights instead of one waiting forever in the next all-reduce."""
    output_dir = tmp_path / "timed"
    argv = train_args(corpus, output_dir, max_train_steps=40, max_train_minutes=1e-6, checkpointing_steps=0)
    result = run_train(argv, launcher=accelerate_launch(2), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    checksums = json.loads((output_dir / "replica_checksums.json").read_text())["checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert "- **steps**: 1" in (output_dir / "model" / "README.md").read_text()


RELEASE_DDP_SCRIPT = """
import logging, sys, weakref
import torch
from accelerate import Accelerator
from training.train import release_ddp_wrapper

logging.basicConfig(level=logging.INFO)
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
accelerator = Accelerator(cpu=True)
inner = torch.nn.Linear(3, 2)
model = torch.nn.parallel.DistributedDataParallel(inner)
held = [model] if sys.argv[1] == "held" else []
wrapper = weakref.ref(model)
model = accelerator.unwrap_model(model)
release_ddp_wrapper(accelerator, wrapper)
print("bare", model is inner, "wrapper_alive", wrapper() is not None, flush=True)
torch.distributed.destroy_process_group()
print("destroyed", flush=True)
"""


@pytest.mark.parametrize("holder", ["free", "held"])
def test_release_ddp_wrapper_frees_the_reducer_before_the_process_group(holder, tmp_path):
    """A real gloo group and DDP wrapper in a fresh process: the wrapper dies before the group (so the group's
    last owner is torch's Python handle, see release_ddp_wrapper), and a leftover reference is reported."""
    env = {**script_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = run_to_end([sys.executable, "-c", RELEASE_DDP_SCRIPT, holder], env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    if holder == "free":
        assert "bare True wrapper_alive False" in result.stdout
        assert "still referenced" not in result.stderr
    else:
        assert "bare True wrapper_alive True" in result.stdout
        assert "DDP wrapper is still referenced after training (by ['list'])" in result.stderr
    assert "destroyed" in result.stdout


def test_sigkill_and_resume_gives_identical_weights(corpus, tmp_path):
    # Logging windows of 2 steps cross the checkpoint at step 3: the window's sums are checkpointed too.
    straight = tmp_path / "straight"
    result = run_train(train_args(corpus, straight, max_train_steps=6, checkpointing_steps=3, logging_steps=2))
    assert result.returncode == 0, result.stderr[-4000:]

    killed = tmp_path / "killed"
    command = [sys.executable, str(TRAIN), *train_args(corpus, killed, max_train_steps=6, checkpointing_steps=3,
                                                       logging_steps=2)]
    log = tmp_path / "killed.log"
    with open(log, "wb") as stderr:  # a file, not a pipe: a full pipe would block the child
        process = subprocess.Popen(command, env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        try:
            while not (killed / "checkpoint-3").is_dir():
                assert process.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run must die by SIGKILL before it finishes"
    assert not (killed / "model").exists()

    resumed = run_train(train_args(corpus, killed, max_train_steps=6, checkpointing_steps=3, logging_steps=2,
                                   resume_from_checkpoint="latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    expected, got = final_weights(straight), final_weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    straight_state = checkpointing.load_training_state(straight / "checkpoint-6")
    resumed_state = checkpointing.load_training_state(killed / "checkpoint-6")
    assert [h["loss"] for h in straight_state["history"]] == [h["loss"] for h in resumed_state["history"]]
    assert [h["step"] for h in resumed_state["history"]] == [2, 4, 6]


def file_size_limit(limit: int):
    """A ``preexec_fn`` that limits every file the child writes to ``limit`` bytes: its larger writes then fail with
    EFBIG, as they fail with ENOSPC on a full disk (SIGXFSZ ignored, or the kernel would kill the writer)."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size


def test_a_checkpoint_the_disk_refuses_stops_the_run_with_one_line_and_keeps_the_previous_one(corpus, tmp_path):
    """A checkpoint write that the storage refuses ended in safetensors' or torch's traceback and left the
    half-written folder behind: the run now stops with one line (which checkpoint, why, what resumes), exit code 1,
    the previous checkpoint untouched and nothing half-written left."""
    output_dir = tmp_path / "run"
    first = run_train(train_args(corpus, output_dir, max_train_steps=2, checkpointing_steps=2))
    assert first.returncode == 0, first.stderr[-4000:]
    previous = output_dir / "checkpoint-2"
    saved = {path.name: path.read_bytes() for path in previous.iterdir()}
    limit = len(saved["model.safetensors"]) // 2  # the first file of a checkpoint fails: nothing of it may stay
    result = run_train(train_args(corpus, output_dir, max_train_steps=4, checkpointing_steps=2,
                                  resume_from_checkpoint="latest"), preexec_fn=file_size_limit(limit))
    message = (f"error: checkpoint-4 could not be written in {output_dir}: File too large (EFBIG): files are "
               f"limited to {limit} bytes (ulimit -f); the previous checkpoint checkpoint-2 (step 2) is intact: "
               "make room and relaunch with --resume_from_checkpoint latest to resume from it")
    assert result.returncode == 1, result.stderr[-4000:]
    assert result.stderr.count(message) == 1 and "Traceback" not in result.stderr, result.stderr[-4000:]
    assert sorted(path.name for path in output_dir.iterdir()) == ["checkpoint-2", "model", "replica_checksums.json"]
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == saved
    assert checkpointing.resolve_resume_path("latest", output_dir) == previous


def test_a_checkpoint_the_disk_refuses_stops_every_process_of_a_launch_with_one_line(corpus, two_process_launch,
                                                                                   tmp_path):
    """Under `accelerate launch` with 2 processes, the main process stopped alone on a refused checkpoint write and
    the other one died at its next barrier with gloo's traceback ("Connection closed by peer"). The processes now
    share the failure: each stops at once, the line is written once, the launch exits 1, the previous checkpoint is
    untouched and nothing half-written is left."""
    launched_dir, launched = two_process_launch
    assert launched.returncode == 0, launched.stderr[-4000:]
    output_dir = tmp_path / "ddp"
    shutil.copytree(launched_dir, output_dir)  # the fixture's folder is shared with other tests
    previous = output_dir / "checkpoint-6"
    saved = {path.name: path.read_bytes() for path in previous.iterdir()}
    before = sorted(path.name for path in output_dir.iterdir())
    limit = len(saved["model.safetensors"]) // 2
    argv = two_process_launch_args(corpus, output_dir, max_train_steps=8, resume_from_checkpoint="latest")
    started = time.monotonic()
    result = run_train(argv, launcher=accelerate_launch(2), timeout=300, preexec_fn=file_size_limit(limit))
    message = (f"error: checkpoint-8 could not be written in {output_dir}: File too large (EFBIG): files are "
               f"limited to {limit} bytes (ulimit -f); the previous checkpoint checkpoint-6 (step 6) is intact: "
               "make room and relaunch with --resume_from_checkpoint latest to resume from it")
    assert result.returncode == 1, result.stderr[-4000:]
    assert result.stderr.count(message) == 1, result.stderr[-4000:]
    assert "Connection closed by peer" not in result.stderr, result.stderr[-4000:]
    # The one traceback left is the launcher's own report of a failed process (torch's ChildFailedError).
    tracebacks = result.stderr.split("Traceback (most recent call last):")[1:]
    assert all("ChildFailedError" in part and "training/train.py\", line" not in part for part in tracebacks), \
        result.stderr[-4000:]
    assert time.monotonic() - started < 120  # no wait for a collective's timeout (30 minutes)
    assert sorted(path.name for path in output_dir.iterdir()) == before
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == saved
    assert checkpointing.resolve_resume_path("latest", output_dir) == previous


def test_every_writer_of_a_checkpoint_refused_for_room_is_recognised(tmp_path):
    """safetensors names the OS error only in its message, and torch.save to a path loses the errno in its C++
    stream: under a real file size limit (a child process), each of them, and a plain write, gives the one line."""
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from safetensors.torch import save_file
        from training import checkpointing
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        tensors = {{"weight": torch.zeros(4096)}}
        writers = {{"safetensors": lambda: save_file(tensors, {str(tmp_path / 'a.safetensors')!r}),
                   "torch": lambda: torch.save(tensors, {str(tmp_path / 'b.pt')!r}),
                   "text": lambda: checkpointing.write_json_atomic({str(tmp_path / 'c.json')!r}, {{"x": "y" * 8192}})}}
        for name, write in writers.items():
            try:
                with checkpointing.stop_on_full_disk("checkpoint-4", {str(tmp_path)!r}):
                    write()
            except checkpointing.OutputWriteError as error:
                print(name, "|", error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=script_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    line = (f"checkpoint-4 could not be written in {tmp_path}: File too large (EFBIG): files are limited to 4096 bytes "
            "(ulimit -f); there is no earlier checkpoint in it, so a relaunch starts from the beginning")
    assert result.stdout.splitlines() == [f"{name} | {line}" for name in ("safetensors", "torch", "text")], \
        result.stdout + result.stderr[-3000:]


def test_only_writes_refused_for_lack_of_room_become_the_one_line_error(tmp_path):
    for number, reason in ((errno.ENOSPC, "No space left on device (ENOSPC)"),
                           (errno.EDQUOT, "Disk quota exceeded (EDQUOT)")):
        with pytest.raises(checkpointing.OutputWriteError) as error:
            with checkpointing.stop_on_full_disk("model/ (the final model)", tmp_path):
                raise OSError(number, os.strerror(number))
        assert str(error.value) == (f"model/ (the final model) could not be written in {tmp_path}: {reason}; there is "
                                    "no earlier checkpoint in it, so a relaunch starts from the beginning")
    # Any other failure (a bug, a folder that is not writable) keeps its own error and traceback.
    for other in (OSError(errno.EACCES, "Permission denied"), RuntimeError("size mismatch")):
        with pytest.raises(type(other)):
            with checkpointing.stop_on_full_disk("checkpoint-4", tmp_path):
                raise other


class _RunsCodeWhenUnpickled:
    """A pickle payload that creates a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_reads_every_checkpoint_file_with_weights_only(corpus, tmp_path, monkeypatch):
    """The scheduler and EMA states (lr_scheduler_state.pt, ema_state.pt) are written and restored by
    training.checkpointing with weights_only=True: a checkpoint folder carrying a pickle that runs code is refused
    before the code runs; an honest one resumes, with every torch.load of the resume in weights_only mode."""
    import pickle

    output_dir = tmp_path / "run"
    common = {"checkpointing_steps": 2, "use_ema": "true", "mixed_precision": "no"}
    run_main(train_args(corpus, output_dir, max_train_steps=2, **common))
    checkpoint = output_dir / "checkpoint-2"
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # nothing accelerate would unpickle unsafely
    ema_state = torch.load(checkpoint / "ema_state.pt", weights_only=True)
    assert len(ema_state["shadow_params"]) == len(final_weights(output_dir))

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    run_main(train_args(corpus, output_dir, max_train_steps=4, resume_from_checkpoint="latest", **common))
    assert loads and all(value is True for value in loads), loads
    assert checkpointing.load_training_state(output_dir / "checkpoint-4")["step"] == 4

    poisoned = tmp_path / "poisoned"
    shutil.copytree(checkpoint, poisoned)
    marker = tmp_path / "code-ran"
    for name in ("lr_scheduler_state.pt", "custom_checkpoint_0.pkl"):  # ours, and accelerate's older name
        (poisoned / "lr_scheduler_state.pt").unlink(missing_ok=True)
        (poisoned / name).write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
        with pytest.raises(pickle.UnpicklingError):
            run_main(train_args(corpus, tmp_path / "other", max_train_steps=4, resume_from_checkpoint=str(poisoned),
                                **common))
        assert not marker.exists()


def test_checkpoints_with_accelerates_pickled_states_still_resume(corpus, tmp_path, monkeypatch):
    """A checkpoint written before the states moved out of accelerate's register_for_checkpointing (scheduler
    and EMA as custom_checkpoint_0/1.pkl) resumes to the same weights as one written now."""
    common = {"checkpointing_steps": 2, "use_ema": "true", "mixed_precision": "no"}
    for name in ("now", "legacy"):
        run_main(train_args(corpus, tmp_path / name, max_train_steps=2, **common))
    legacy = tmp_path / "legacy" / "checkpoint-2"
    for index, new_name in enumerate(("lr_scheduler_state.pt", "ema_state.pt")):
        (legacy / new_name).rename(legacy / f"custom_checkpoint_{index}.pkl")
    views = tmp_path / "tmp"  # where the temporary view of the legacy checkpoint goes
    views.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(views))
    for name in ("now", "legacy"):
        run_main(train_args(corpus, tmp_path / name, max_train_steps=4, resume_from_checkpoint="latest", **common))
    now, old = final_weights(tmp_path / "now"), final_weights(tmp_path / "legacy")
    assert all(torch.equal(now[key], old[key]) for key in now)
    assert not list(views.iterdir())  # the temporary view is gone


def test_a_checkpoint_at_a_validation_step_holds_that_validation(corpus, tmp_path):
    """Validation runs before the checkpoint of the same step, so the checkpoint records its result (a resume
    from it does not validate that step again)."""
    output_dir = tmp_path / "run"
    argv = train_args(corpus, output_dir, max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                      validation_images_per_task=1, use_ema="false", mixed_precision="no")
    run_main(argv + ["--validation_roots", f"clean={corpus / 'heldout'}"])
    state = checkpointing.load_training_state(output_dir / "checkpoint-2")
    assert [entry["step"] for entry in state["validation_history"]] == [2]
    assert state["best_psnr"] == pytest.approx(
        sum(state["validation_history"][0]["psnr"].values()) / len(state["validation_history"][0]["psnr"]))


def test_validating_the_ema_weights_leaves_the_training_weights_as_they_were(corpus, tmp_path):
    """Validation scores the EMA weights by swapping them in; they must be swapped out again: a run validated
    after every step trains and saves exactly what a run validated only at its end does."""
    final = {}
    for every in (1, 0):
        output_dir = tmp_path / f"every-{every}"
        argv = train_args(corpus, output_dir, max_train_steps=3, checkpointing_steps=0, validation_steps=every,
                          validation_images_per_task=1, use_ema="true", ema_warmup="false", ema_decay=0.5,
                          mixed_precision="no")
        run_main(argv + ["--validation_roots", f"clean={corpus / 'heldout'}"])
        final[every] = final_weights(output_dir)
    assert all(torch.equal(final[1][key], final[0][key]) for key in final[0])


def test_push_to_fake_hub_with_measured_card(corpus, tmp_path):
    output_dir = tmp_path / "push"
    argv = train_args(corpus, output_dir, max_train_steps=2, checkpointing_steps=0, push_to_hub="true",
                      hub_model_id="me/tiny-pip", validation_images_per_task=1)
    argv += ["--validation_roots", f"clean={corpus / 'heldout'}"]
    with FakeHub() as hub:
        env = hub.client_env(script_env())
        result = run_train(argv, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        files = hub.files("me/tiny-pip")
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "training_curves.png"} <= set(files)
    measured = json.loads((output_dir / "model" / "eval_results.json").read_text())
    assert set(measured) == {"noise", "rain", "haze", "blur", "low-light"}
    card = files["README.md"].decode()
    assert "model-index" in card
    for task, scores in measured.items():
        assert f"{scores['psnr']:.2f}" in card, (task, scores["psnr"])
    assert files["model.safetensors"] == (output_dir / "model" / "model.safetensors").read_bytes()


def test_push_offline_fails_with_one_line_after_saving(corpus, tmp_path):
    output_dir = tmp_path / "offline"
    argv = train_args(corpus, output_dir, max_train_steps=2, checkpointing_steps=2, push_to_hub="true",
                      hub_model_id="me/tiny-pip", gradient_accumulation_steps=3)
    result = run_train(argv, env=script_env(HF_HUB_OFFLINE="1"))
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("push to the Hub failed"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (output_dir / "model" / "model.safetensors").is_file()
    # With 3 micro-batches per optimizer step, 2 steps consumed 6 batches of the stream.
    state = checkpointing.load_training_state(output_dir / "checkpoint-2")
    assert [h["step"] for h in state["history"]] == [1, 2]
    data_state = checkpointing.load_data_state(output_dir / "checkpoint-2", 0)
    assert data_state["loader"]["_num_yielded"] == 6


# ---- the parts, in-process -------------------------------------------------------------------------------------


def test_recipe_then_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_type: promptir\nlearning_rate: 3.0e-4\nnum_train_epochs: 2\nsteps_per_epoch: 10\n"
                      "data_roots: {clean: /data/clean}\nadam_epsilon: 1e-6\nuse_ema: false\n"
                      "model_config: {dim: 16}\n")
    args = parse_args(["--config", str(recipe), "--learning_rate", "1e-4", "--data_roots", "rain=/data/rain"])
    assert args.model_type == "promptir" and args.learning_rate == 1e-4
    assert args.max_train_steps == 20 and args.data_roots == {"rain": "/data/rain"}
    assert args.adam_epsilon == 1e-6 and isinstance(args.adam_epsilon, float)  # YAML reads 1e-6 as a string
    assert args.use_ema is False and args.model_config == {"dim": 16}
    assert args.config == str(recipe)
    # Defaults of the fields the recipe leaves out; JSON for the dict fields on the command line.
    args = parse_args(["--config", str(recipe), "--use_ema", "--lr_scheduler", "linear_warmup_cosine",
                       "--lr_scheduler_options", '{"warmup_epochs": 1, "max_epochs": 2}', "--model_config", "{}"])
    assert args.use_ema is True and args.train_batch_size == 8 and args.patch_size == 128
    assert args.lr_scheduler_options == {"warmup_epochs": 1, "max_epochs": 2} and args.model_config == {}


def test_a_recipe_root_may_list_several_folders(tmp_path, capsys):
    """BSD400 and WED as two folders: a recipe's list of roots reaches the stream as a list (it used to become the
    string "['.../BSD400', '.../WED']", which no folder is), and a root with no folder is named at parse time."""
    from training.data import build_stream

    for folder in ("BSD400", "WED"):
        for i in range(2):
            save(tmp_path / folder / f"{folder}{i}.png", textured_image(i, 24, 24))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data_preset: 3-task\ndata_roots: {{clean: [{tmp_path / 'BSD400'}, {tmp_path / 'WED'}]}}\n"
                      f"validation_roots: {{clean: {tmp_path / 'WED'}}}\n")
    args = parse_args(["--config", str(recipe), "--max_train_steps", "1"])
    assert args.data_roots == {"clean": [str(tmp_path / "BSD400"), str(tmp_path / "WED")]}
    assert args.validation_roots == {"clean": str(tmp_path / "WED")}
    stream = build_stream(args.data_preset, args.data_roots, synthesize_missing=True, patch_size=16)
    assert sorted(Path(clean).name for _, clean in stream.sources[0].pairs) == [
        "BSD4000.png", "BSD4001.png", "WED0.png", "WED1.png"]
    recipe.write_text("data_roots: {clean: []}\n")
    assert "data_roots['clean'] must be a folder or a non-empty list of folders, got []" in _parse_error(
        capsys, ["--config", str(recipe), "--max_train_steps", "1"])


def test_help_of_the_no_flags_says_what_they_do():
    """`--no_use_ema` was listed in --help as "keep an EMA of the weights" (the help of --use_ema)."""
    from training.train import RecipeArgumentParser

    actions = {action.option_strings[0]: action for action in RecipeArgumentParser()._actions if action.option_strings}
    assert actions["--no_use_ema"].help == "turn --use_ema off"
    assert actions["--no_ema_warmup"].help == "turn --ema_warmup off"
    assert parse_args(["--max_train_steps", "1", "--no_use_ema"]).use_ema is False
    assert actions["--use_ema"].help.startswith("keep an EMA")


def _parse_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_unknown_recipe_key_names_it_and_the_closest(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_train_steps: 5\nlearning_rat: 1.0e-3\n")
    message = _parse_error(capsys, ["--config", str(recipe)])
    assert "unknown key 'learning_rat'" in message and "did you mean 'learning_rate'" in message


@pytest.mark.parametrize("flag", ["--learning_rat", "--learning-rat", "--learnin_rate"])
def test_misspelled_flag_names_it_and_the_closest(capsys, flag):
    # No argparse abbreviation either: a prefix of a real flag must not be taken for it.
    message = _parse_error(capsys, ["--max_train_steps", "5", flag, "1e-3"])
    assert f"unknown argument {flag!r}" in message and "did you mean '--learning_rate'" in message


def test_misspelled_model_config_key_fails_at_parse_time(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_train_steps: 5\nmodel_type: pip\nmodel_config: {dim: 16, prompt_dim: [8, 8, 8]}\n")
    message = _parse_error(capsys, ["--config", str(recipe)])
    assert "unknown key 'prompt_dim' for PIPConfig" in message and "did you mean 'prompt_dims'" in message
    message = _parse_error(capsys, ["--max_train_steps", "5", "--model_type", "restormer",
                                    "--model_config", '{"num_block": [1, 1, 1, 1]}'])
    assert "unknown key 'num_block' for RestormerConfig" in message and "'num_blocks'" in message
    # Values are validated by the config class itself, before anything is built.
    message = _parse_error(capsys, ["--max_train_steps", "5", "--model_config", '{"dim": 7}'])
    assert "not a valid PIPConfig" in message and "dim" in message
    # transformers' own config keywords are not typos.
    assert parse_args(["--max_train_steps", "5", "--model_config", '{"dim": 16, "torch_dtype": "float32"}'])


RECIPES = sorted(p.name for p in (REPO / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_parses(name):
    args = parse_args(["--config", str(REPO / "training" / "configs" / name)])
    assert args.max_train_steps == args.num_train_epochs * args.steps_per_epoch
    assert isinstance(args.learning_rate, float) and args.data_roots and args.output_dir.startswith("outputs/")


@pytest.mark.parametrize("name", ["promptir_3task", "promptir_5task", "pip_restormer_5task"])
def test_official_recipes_parse(name):
    args = parse_args(["--config", str(REPO / "training" / "configs" / f"{name}.yaml")])
    assert args.max_train_steps == 120 * args.steps_per_epoch
    assert args.crop_to_multiple == 16  # PromptIR's and pip_universal's crop_img(base=16) before the random crop
    if name.startswith("pip"):
        assert (args.learning_rate, args.train_batch_size, args.loss_spike_guard) == (3.6e-4, 6, True)
        assert args.lr_scheduler_options == {"warmup_epochs": 10, "max_epochs": 120, "warmup_start_factor": 0.1,
                                             "eta_min_factor": 0.0}
    else:
        assert (args.learning_rate, args.train_batch_size) == (2e-4, 8)


def test_linear_warmup_cosine_matches_pl_bolts_closed_form():
    # PIP: warmup 10 epochs from lr/10, cosine to 0 at epoch 120, stepped per epoch of 5 steps.
    factor = linear_warmup_cosine(5, warmup_epochs=10, max_epochs=120, warmup_start_factor=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(4) == pytest.approx(0.1)  # constant within an epoch
    assert factor(5) == pytest.approx(0.1 + 0.9 / 9)
    assert factor(45) == pytest.approx(1.0)  # epoch 9 reaches the base lr
    assert factor(50) == pytest.approx(1.0)  # epoch 10: start of the cosine
    assert factor(5 * 65) == pytest.approx(0.5)
    # PromptIR stops at epoch 120 of a 150-epoch schedule: lr ~ 2e-4 * 0.5 * (1 + cos(pi * 105 / 135)).
    promptir = linear_warmup_cosine(1, warmup_epochs=15, max_epochs=150)
    assert 2e-4 * promptir(120) == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 105 / 135)))


def test_promptir_recipes_step_the_schedule_one_epoch_late_as_lightning_does():
    """PromptIR's LightningModule calls scheduler.step(self.current_epoch) at the end of each epoch, before Lightning
    counts it completed: pl_bolts then gives epoch e the closed form of e - 1 (epochs 0 and 1 at lr 0, 2e-4 first at
    epoch 15). The official recipes that use PromptIR's schedule say so with epoch_lag: 1."""
    import yaml

    from training.schedules import build_lr_lambda

    def pl_bolts(epoch: int) -> float:  # LinearWarmupCosineAnnealingLR._get_closed_form_lr, warmup 15 of 150
        if epoch < 15:
            return epoch * 2e-4 / 14
        return 0.5 * 2e-4 * (1 + math.cos(math.pi * (epoch - 15) / 135))

    lightning = [pl_bolts(0)] + [pl_bolts(completed) for completed in range(119)]  # lr in epochs 0..119
    for name in ("promptir_3task", "promptir_5task", "promptir_cpl_3task", "promptir_cpl_5task", "dppd_3task",
                 "dppd_5task"):
        recipe = yaml.safe_load((REPO / "training" / "configs" / f"{name}.yaml").read_text())
        assert recipe["lr_scheduler_options"]["epoch_lag"] == 1, name
        assert recipe["crop_to_multiple"] == 16, name  # PromptIR's crop_img before the random crop
        factor = build_lr_lambda(recipe["lr_scheduler"], 3, **recipe["lr_scheduler_options"])
        ours = [2e-4 * factor(3 * epoch + 2) for epoch in range(120)]  # the last step of each epoch of 3 steps
        assert ours == pytest.approx(lightning, abs=1e-12), name
    assert ours[1] == 0 and ours[14] < 2e-4 and ours[15] == pytest.approx(2e-4)
    assert parse_args(["--config", str(REPO / "training" / "configs" / "promptir_3task.yaml")]).crop_to_multiple == 16
    with pytest.raises(ValueError, match="epoch_lag"):
        linear_warmup_cosine(1, warmup_epochs=1, max_epochs=2, per_step=True, epoch_lag=1)


def test_ema_warmup_off_keeps_the_decay_from_the_second_update():
    """CPL's released recipe uses BasicSR's EMA (a constant 0.999); diffusers' EMAModel ramps its decay up as
    (1 + s) / (10 + s) unless `ema_warmup` is off. The CPL recipes turn it off."""
    import yaml

    from training.train import TrainingArguments, build_ema

    def ema_after(ema_warmup: bool, values=(1.0, 0.0, 0.0)) -> float:
        weight = torch.nn.Parameter(torch.zeros(1))
        ema = build_ema([weight], TrainingArguments(ema_decay=0.9, ema_warmup=ema_warmup))
        for value in values:  # the weight after each optimizer step, then the EMA update
            weight.data.fill_(value)
            ema.step([weight])
        return ema.shadow_params[0].item()

    # First update: a copy (1). Then decay 0.9 twice: 0.81; with the ramp, 2/11 then 3/12: 1 x 2/11 x 3/12.
    assert ema_after(False) == pytest.approx(0.81)
    assert ema_after(True) == pytest.approx(2 / 11 * 3 / 12)
    for name in ("promptir_cpl_3task", "promptir_cpl_5task"):
        recipe = yaml.safe_load((REPO / "training" / "configs" / f"{name}.yaml").read_text())
        assert (recipe["ema_decay"], recipe["ema_warmup"]) == (0.999, False), name
    assert TrainingArguments().ema_warmup  # diffusers' ramp stays the default elsewhere


def test_linear_warmup_cosine_per_step_follows_the_same_curve_without_the_staircase():
    smooth = linear_warmup_cosine(100, warmup_epochs=1, max_epochs=10, warmup_start_factor=0.1,
                                  eta_min_factor=0.01, per_step=True)
    assert smooth(0) == pytest.approx(0.1) and smooth(50) == pytest.approx(0.55) and smooth(100) == pytest.approx(1.0)
    assert smooth(101) < smooth(100)  # moves every step, no constant epoch
    assert smooth(550) == pytest.approx(0.01 + 0.99 * 0.5)  # half way through the cosine
    assert smooth(1000) == pytest.approx(0.01) and smooth(5000) == pytest.approx(0.01)  # held at the floor
    values = [smooth(step) for step in range(100, 1001)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_schedule_end_step_is_where_the_cosine_reaches_its_floor():
    """train.py warns when max_train_steps runs past this step (step 2r of the README ran 750 steps at the floor)."""
    options = dict(warmup_epochs=0.04, max_epochs=15, warmup_start_factor=0.5, eta_min_factor=0.02, per_step=True)
    end = schedule_end_step("linear_warmup_cosine", 250, **options)
    assert end == 3750
    smooth = linear_warmup_cosine(250, **options)
    assert smooth(end - 1) > smooth(end) == pytest.approx(0.02) == smooth(4500)
    assert schedule_end_step("constant", 250) is None
    assert schedule_end_step("cosine_restart", 250, periods=[10], restart_weights=[1], eta_min=0.0) is None


def test_train_warns_when_the_steps_run_past_the_schedule(corpus, tmp_path):
    """Step 2r's case: 15 epochs of 250 steps in the schedule, 4,500 steps asked for."""
    schedule = json.dumps({"warmup_epochs": 0.04, "max_epochs": 15, "eta_min_factor": 0.02, "per_step": True})
    args = parse_args(train_args(corpus, tmp_path, max_train_steps=4500, steps_per_epoch=250,
                                 lr_scheduler_options=schedule))
    assert schedule_overrun_warning(args) == ("the learning rate reaches its floor at step 3750 (max_epochs 15 x "
                                              "steps_per_epoch 250); the last 750 of the 4500 steps run at the floor")
    args = parse_args(train_args(corpus, tmp_path, max_train_steps=3750, steps_per_epoch=250,
                                 lr_scheduler_options=schedule))
    assert schedule_overrun_warning(args) is None
    args = parse_args(train_args(corpus, tmp_path, max_train_steps=4500, lr_scheduler="constant",
                                 lr_scheduler_options="{}"))
    assert schedule_overrun_warning(args) is None


def test_restormer_cyclic_schedule():
    factor = cosine_restart_cyclic([92000, 208000], [1.0, 1e-6 / 3e-4])
    assert factor(0) == factor(91999) == pytest.approx(1.0)
    assert 3e-4 * factor(92000 + 104000) == pytest.approx(1e-6 + 0.5 * (3e-4 - 1e-6))
    assert 3e-4 * factor(299999) == pytest.approx(1e-6, abs=1e-9)


def test_restart_schedules_count_each_periods_last_step_in_it_as_basicsr_does():
    """BasicSR puts the step that ends a period in that period (its cosine at the floor) and restarts one step later
    at offset 1; ours restarted at the boundary step itself, one step early at every restart (checked against
    BasicSR's schedulers in a scratch run: equal at every step of these periods)."""
    from training.schedules import cosine_restart

    def cosine(weight: float, eta: float, offset: int, period: int) -> float:
        return eta + weight * (1 - eta) * 0.5 * (1 + math.cos(math.pi * offset / period))

    restart = cosine_restart([3, 4, 5], [1.0, 0.5, 0.25], 0.1)
    expected = ([cosine(1.0, 0.1, s, 3) for s in range(4)] + [cosine(0.5, 0.1, s - 3, 4) for s in range(4, 8)]
                + [cosine(0.25, 0.1, s - 7, 5) for s in range(8, 13)])
    assert [restart(step) for step in range(13)] == pytest.approx(expected)
    assert restart(3) == pytest.approx(0.1) and restart(7) == pytest.approx(0.1)  # each period ends at its floor
    assert restart(12) == restart(40) == pytest.approx(0.1)  # past the last period: its end
    cyclic = cosine_restart_cyclic([3, 4], [0.1, 0.5])
    assert [cyclic(step) for step in range(8)] == pytest.approx(
        [cosine(1.0, 0.1, s, 3) for s in range(4)] + [cosine(1.0, 0.5, s - 3, 4) for s in range(4, 8)])


def test_loss_spike_guard_rescales_like_the_official_scaler():
    guard = LossSpikeGuard(history=3, factor=5.0)
    assert guard(torch.tensor(1.0)).item() == 1.0
    assert guard(torch.tensor(0.5)).item() == 0.5
    spike = torch.tensor(4.0, requires_grad=True)
    scaled = guard(spike)
    assert scaled.item() == pytest.approx(1.25)  # 5/2 x min(1.0, 0.5, 4.0)
    scaled.backward()
    assert spike.grad.item() == pytest.approx(1.25 / 4.0)
    state = guard.state_dict()
    restored = LossSpikeGuard(history=3, factor=5.0)
    restored.load_state_dict(state)
    assert list(restored.history) == [1.0, 0.5, 4.0] and restored.triggered == 1


def _synthetic_loss(pixel_scale: float = 1.0, estimator_scale: float = 1.0, angle_scale: float = 1.0):
    """A PIP-shaped loss from three independent parameter groups: the pixel path, the estimator head and the
    prompts. Terms are unweighted and keep their graph (the model contract); the total weights them as PIP."""
    torch.manual_seed(0)
    pixel_weight = torch.randn(4, requires_grad=True)
    estimator_weight = torch.randn(3, 5, requires_grad=True)
    prompts = torch.randn(5, 8, requires_grad=True)
    restored = pixel_weight[None] * torch.linspace(0, 1, 16).reshape(4, 4)
    pixel = pixel_scale * F.smooth_l1_loss(restored, torch.zeros(4, 4))
    estimator = estimator_scale * F.cross_entropy(torch.ones(2, 3) @ estimator_weight, torch.tensor([0, 3]))
    normed = F.normalize(prompts, dim=1)
    angle = angle_scale * torch.relu(normed @ normed.T).triu(1).sum()
    loss = pixel + 0.1 * estimator + 0.002 * angle
    terms = {"pixel": pixel, "degradation_estimator": estimator, "prompt_angle": angle}
    return loss, terms, {"pixel": pixel_weight, "degradation_estimator": estimator_weight, "prompt_angle": prompts}


def _gradients(loss, parameters) -> dict[str, torch.Tensor]:
    loss.backward()
    return {name: p.grad.clone() for name, p in parameters.items()}


def _warm_guard() -> LossSpikeGuard:
    guard = LossSpikeGuard(history=10, factor=5.0)
    for _ in range(3):  # recent pixel losses of a normal run
        guard(_synthetic_loss()[1]["pixel"])
    return guard


def test_guard_rescales_a_pixel_spike_and_only_the_pixel_gradient():
    guard = _warm_guard()
    loss, terms, parameters = _synthetic_loss(pixel_scale=40.0)
    reference = _gradients(*_synthetic_loss(pixel_scale=40.0)[::2])
    pixel = terms["pixel"].item()
    guarded = guard_pixel_loss(loss, terms, guard)
    assert guard.triggered == 1
    factor = (pixel / 40.0) * 2.5 / pixel  # official: min(history) x factor / 2, over the spike
    assert guarded.item() == pytest.approx(loss.item() - pixel + pixel * factor, rel=1e-6)
    got = _gradients(guarded, parameters)
    torch.testing.assert_close(got["pixel"], reference["pixel"] * factor)
    # The estimator's cross-entropy and the prompt regulariser keep their gradients exactly.
    assert torch.equal(got["degradation_estimator"], reference["degradation_estimator"])
    torch.testing.assert_close(got["prompt_angle"], reference["prompt_angle"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("term", ["degradation_estimator", "prompt_angle"])
def test_guard_ignores_a_spike_in_other_terms(term):
    guard = _warm_guard()
    spiked = {"estimator_scale": 1000.0} if term == "degradation_estimator" else {"angle_scale": 1000.0}
    loss, terms, parameters = _synthetic_loss(**spiked)
    reference = _gradients(*_synthetic_loss(**spiked)[::2])
    guarded = guard_pixel_loss(loss, terms, guard)
    assert guard.triggered == 0 and guarded is loss  # untouched: the very same tensor
    got = _gradients(guarded, parameters)
    for name in parameters:
        assert torch.equal(got[name], reference[name]), name


def test_guard_needs_the_pixel_term():
    with pytest.raises(ValueError, match="pixel"):
        guard_pixel_loss(torch.tensor(1.0), {"prompt_angle": torch.tensor(0.1)}, LossSpikeGuard())


def test_partial_checkpoints_are_ignored_and_pruning_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpointing.TRAINING_STATE_FILE).write_text(json.dumps({"step": step}))
    (tmp_path / ".checkpoint-8.partial").mkdir()  # a save that was killed half-way
    assert checkpointing.latest_checkpoint(tmp_path).name == "checkpoint-6"
    assert checkpointing.resolve_resume_path("latest", tmp_path).name == "checkpoint-6"
    removed = checkpointing.prune_checkpoints(tmp_path, total_limit=2)
    assert [p.name for p in removed] == ["checkpoint-2"]
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpointing.resolve_resume_path(str(tmp_path / ".checkpoint-8.partial"), tmp_path)


class _OneProcess:
    """The part of an `Accelerator` that `save_checkpoint` uses, for one process."""

    is_main_process, process_index, num_processes = True, 0, 1

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


def test_save_checkpoint_keeps_total_limit_checkpoints_even_when_a_save_dies(tmp_path, monkeypatch):
    """A save renames the new checkpoint into place and only then prunes: the run keeps exactly `total_limit`
    complete checkpoints, and a save that dies before its rename leaves all of them (pruning first, as diffusers'
    examples do, keeps one too many after every save and one too few after a killed one)."""
    accelerator = _OneProcess()
    for step in (2, 4, 6):
        checkpointing.save_checkpoint(accelerator, tmp_path, step, {"epoch": 0}, {"position": step}, total_limit=2)
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert checkpointing.load_training_state(tmp_path / "checkpoint-6") == {"epoch": 0, "step": 6}
    assert checkpointing.load_data_state(tmp_path / "checkpoint-6", 0) == {"position": 6}

    def killed(new, final):
        raise KeyboardInterrupt("killed while renaming")

    monkeypatch.setattr(checkpointing, "replace_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.save_checkpoint(accelerator, tmp_path, 8, {"epoch": 0}, None, total_limit=2)
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert checkpointing.resolve_resume_path("latest", tmp_path).name == "checkpoint-6"
    # The resumed run saves step 8 again: the dead save's .partial folder is removed first, not in the way.
    monkeypatch.undo()
    checkpointing.save_checkpoint(accelerator, tmp_path, 8, {"epoch": 0}, None, total_limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]


def test_checkpoints_set_aside_again_and_again_keep_every_copy(tmp_path):
    """Rewinding to step 4 a third time sets aside a third checkpoint-6: each gets its own name (-2, -3, ...)."""
    for attempt in range(3):
        (tmp_path / "checkpoint-6").mkdir()
        (tmp_path / "checkpoint-6" / checkpointing.TRAINING_STATE_FILE).write_text(json.dumps({"attempt": attempt}))
        checkpointing.set_aside_newer_checkpoints(tmp_path, 4)
    names = ["abandoned-checkpoint-6", "abandoned-checkpoint-6-2", "abandoned-checkpoint-6-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert [json.loads((tmp_path / n / checkpointing.TRAINING_STATE_FILE).read_text())["attempt"] for n in names] == [
        0, 1, 2]


def test_an_output_folder_may_be_new_empty_or_an_earlier_output_only(tmp_path):
    """check_output_folder: a new folder, an existing empty one (made beforehand, e.g. a mounted volume) or an
    earlier output (holding every marker) may be replaced; a folder holding anything else may not."""
    checkpointing.check_output_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    checkpointing.check_output_folder(tmp_path / "empty")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "config.json").write_text("{}")
    checkpointing.check_output_folder(tmp_path / "earlier")
    (tmp_path / "earlier" / "notes.txt").write_text("kept with the model")
    checkpointing.check_output_folder(tmp_path / "earlier")
    with pytest.raises(ValueError, match="is not a model folder"):
        checkpointing.check_output_folder(tmp_path / "earlier", markers=("config.json", "model.safetensors"))


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    """checkpoint-10 is newer than checkpoint-9 (sorted by name it would come first): `latest` resumes from it and
    pruning removes the older one."""
    for step in (9, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpointing.TRAINING_STATE_FILE).write_text(json.dumps({"step": step}))
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert checkpointing.resolve_resume_path("latest", tmp_path).name == "checkpoint-10"
    assert [p.name for p in checkpointing.prune_checkpoints(tmp_path, total_limit=1)] == ["checkpoint-9"]


def test_output_folders_appear_only_when_complete(tmp_path):
    """`folder_written_atomically` (model folders, the demo, publish folders): the old folder stays whole until
    the new one is complete, an exception leaves it untouched, and no hidden leftovers remain after a success."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.txt").write_text("old")
    (tmp_path / ".model.old").mkdir()  # left by a crash between the two renames of an earlier write: full
    (tmp_path / ".model.old" / "weights.txt").write_text("older")
    with pytest.raises(RuntimeError, match="half-way"):
        with checkpointing.folder_written_atomically(folder) as partial:
            (partial / "weights.txt").write_text("new")
            assert (folder / "weights.txt").read_text() == "old"
            raise RuntimeError("killed half-way")
    assert (folder / "weights.txt").read_text() == "old"
    assert (tmp_path / ".model.partial" / "weights.txt").read_text() == "new"  # kept for inspection
    with checkpointing.folder_written_atomically(folder) as partial:
        assert partial == tmp_path / ".model.partial" and list(partial.iterdir()) == []  # a fresh start
        (partial / "weights.txt").write_text("new")
        (partial / "card.md").write_text("card")
    assert sorted(p.name for p in folder.iterdir()) == ["card.md", "weights.txt"]
    assert (folder / "weights.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with checkpointing.folder_written_atomically(tmp_path / "nested" / "fresh") as partial:  # no folder yet
        (partial / "a").write_text("a")
    assert (tmp_path / "nested" / "fresh" / "a").read_text() == "a"


def test_validation_set_is_deterministic_and_cropped(corpus):
    from training.evaluation import build_validation_set

    def build(crop: int):
        return build_validation_set("3-task", {"clean": str(corpus / "heldout")}, synthesize_missing=True,
                                    images_per_task=2, crop=crop)

    full, cropped = build(0), build(16)
    # 3 noise levels + rain + haze, 2 images each; identical synthesis both times, same centre window.
    assert len(full) == len(cropped) == 10
    assert sorted({p["task_name"] for p in full}) == ["haze", "noise", "rain"]
    for whole, crop in zip(full, cropped):
        assert whole["clean"].shape == (32, 32, 3) and crop["clean"].shape == (16, 16, 3)
        assert (crop["degraded"] == whole["degraded"][8:24, 8:24]).all()
        assert (crop["clean"] == whole["clean"][8:24, 8:24]).all()


# ---- integer labels and uint8 batches --------------------------------------------------------------------------


def test_loader_sends_uint8_that_converts_exactly_to_the_float_stream(corpus):
    from training.data import build_dataloader, build_stream
    from training.train import to_model_images

    def first_batch(output_dtype: str) -> dict:
        stream = build_stream("5-task", {"clean": str(corpus / "clean")}, synthesize_missing=True, patch_size=32,
                              seed=3, shards_per_rank=2, output_dtype=output_dtype)
        return next(iter(build_dataloader(stream, 4, num_workers=0)))

    as_uint8, as_float = first_batch("uint8"), first_batch("float32")
    assert as_uint8["degraded"].dtype == as_uint8["clean"].dtype == torch.uint8
    assert as_uint8["task"].dtype == torch.long and as_uint8["task"].shape == (4,)
    for key in ("degraded", "clean"):
        converted = to_model_images(as_uint8[key], torch.device("cpu"))
        assert converted.dtype == torch.float32
        assert torch.equal(converted, as_float[key]), key  # bit-identical to the stream's own float32 output


def test_degradation_label_lookup_follows_the_model_class_order():
    from conftest import tiny_model

    from training.evaluation import degradation_label_lookup

    tasks = ("noise", "rain", "haze", "blur", "low-light")
    model = tiny_model("pip")
    lookup = degradation_label_lookup(model, tasks)
    assert lookup.dtype == torch.long and lookup.tolist() == [0, 1, 2, 3, 4]
    reordered = tiny_model("pip", degradation_names=["rain", "noise", "low-light", "haze", "blur"])
    assert degradation_label_lookup(reordered, tasks).tolist() == [1, 0, 3, 4, 2]
    assert degradation_label_lookup(model, ("derain",)).tolist() == [1]  # the model's own aliases
    with pytest.raises(ValueError, match="'snow' of the data is not one of the model's degradation_names"):
        degradation_label_lookup(model, ("rain", "snow"))
    # A task of the label space the data never uses (blur in the 3-task preset) maps to an index the model refuses.
    three = tiny_model("pip", num_degradations=3, degradation_names=["noise", "rain", "haze"])
    lookup = degradation_label_lookup(three, tasks, used_tasks=("noise", "rain", "haze"))
    assert lookup.tolist() == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="out of range|must lie in"):
        three(torch.rand(1, 3, 8, 8), degradation_labels=lookup[torch.tensor([3])])
    # A training step indexes the lookup with the batch's stream label ids (low-light, noise, haze).
    assert degradation_label_lookup(reordered, tasks)[torch.tensor([4, 0, 2])].tolist() == [2, 1, 3]


#: The recording model's degradation classes: the 5-task names in another order than the stream's.
MODEL_NAMES = ("rain", "noise", "low-light", "haze", "blur")


def run_recording_main(corpus, output_dir, monkeypatch, **overrides) -> list[dict]:
    """In-process run of main() with a tiny PIP that records what each training forward receives."""
    from accelerate.state import AcceleratorState

    import training.data
    import training.train as train_module
    from modeling import PIPForImageRestoration

    seen = []
    stream_batches = []  # (stream label names, task ids) of each batch the real loader hands to the training loop
    build_dataloader = training.data.build_dataloader

    class RecordingLoader:
        """The real loader (state_dict and all), noting each batch's stream task ids on its way to the step."""

        def __init__(self, stream, *args, **kwargs):
            self.loader, self.label_names = build_dataloader(stream, *args, **kwargs), stream.label_names

        def __iter__(self):
            for batch in self.loader:
                stream_batches.append((self.label_names, batch["task"].tolist()))
                yield batch

        def __getattr__(self, name):
            return getattr(self.loader, name)

    class RecordingPIP(PIPForImageRestoration):
        accepts_degradation_labels = True

        def forward(self, pixel_values, degradation_labels=None, labels=None, **kwargs):
            if self.training:
                weight = self.unet.patch_embed.proj.weight  # a 3x3 convolution
                seen.append({
                    "dtype": pixel_values.dtype, "min": float(pixel_values.min()), "max": float(pixel_values.max()),
                    "label_dtype": labels.dtype, "degradation_labels": degradation_labels,
                    "stream_batch": stream_batches[-1] if stream_batches else None,
                    "channels_last": [t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                                      for t in (pixel_values, labels, weight)],
                    "autocast": torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                })
            return super().forward(pixel_values, degradation_labels=degradation_labels, labels=labels, **kwargs)

        def compile_transformer_blocks(self, **compile_kwargs):
            # The eager backend: dynamo traces the blocks as on a GPU, without minutes of C++ compilation here.
            from modeling.restormer_blocks import TransformerBlock

            count = super().compile_transformer_blocks(backend="eager", **compile_kwargs)
            blocks = [module for module in self.modules() if isinstance(module, TransformerBlock)]
            seen.append({"compiled_blocks": count, "blocks": len(blocks),
                         "compiled": sum(module._compiled_call_impl is not None for module in blocks)})
            return count

    def build_model(args):
        config_class, _ = train_module.MODEL_CLASSES["pip"]
        return RecordingPIP(config_class(**args.model_config, degradation_names=list(MODEL_NAMES)))

    monkeypatch.setattr(train_module, "build_model", build_model)
    monkeypatch.setattr(training.data, "build_dataloader", RecordingLoader)  # main imports it when it runs
    argv = train_args(corpus, output_dir, **{"max_train_steps": 2, "checkpointing_steps": 0, "use_ema": "false",
                                             "validation_steps": 0, **overrides})
    try:
        train_module.main(parse_args(argv))
    finally:
        AcceleratorState._reset_state(True)
    return seen


def test_training_step_passes_uint8_images_as_float_and_labels_as_class_indices(corpus, tmp_path, monkeypatch):
    seen = run_recording_main(corpus, tmp_path / "run", monkeypatch)
    assert len(seen) == 2
    for step in seen:
        assert step["dtype"] == step["label_dtype"] == torch.float32 and 0.0 <= step["min"] <= step["max"] <= 1.0
        labels = step["degradation_labels"]
        assert isinstance(labels, torch.Tensor) and labels.dtype == torch.long and labels.shape == (2,)
        # Each label is the model's class of the batch's task: the stream numbers tasks in its own order (noise,
        # rain, haze, blur, low-light) and RecordingPIP orders its classes differently, with no task at the same
        # index in both, so passing the stream's ids on unmapped would give other labels.
        label_names, tasks = step["stream_batch"]
        assert labels.tolist() == [MODEL_NAMES.index(label_names[task]) for task in tasks]
        assert labels.tolist() != tasks
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_task_probabilities_choose_what_the_stream_trains_on(corpus, tmp_path, monkeypatch):
    """`--task_probabilities blur=1`: every training batch is blur (class 4 of the recording model), and the card
    records the mixture; a bad mixture is refused before anything runs."""
    seen = run_recording_main(corpus, tmp_path / "blur", monkeypatch, task_probabilities="blur=1")
    assert len(seen) == 2 and all(step["degradation_labels"].tolist() == [4, 4] for step in seen)
    assert '- **task probabilities**: `{"blur": 1.0}`' in (tmp_path / "blur" / "model" / "README.md").read_text()
    for bad, message in (("blur=-1", "non-negative"), ("blur=x", "numbers"), ("blur=0", "positive sum")):
        with pytest.raises(SystemExit):
            parse_args(train_args(corpus, tmp_path / "bad", task_probabilities=bad))
        with pytest.raises(ValueError, match=message):
            args = parse_args(train_args(corpus, tmp_path / "ok"))
            args.task_probabilities = dict([bad.split("=")])
            validate_args(args)


def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_training(corpus, tmp_path, capsys):
    """An output_dir that is a file, or lies below one, used to train up to the first checkpoint (or, without
    checkpoints, the whole run) and then end in mkdir's traceback, losing the work: refused on one line instead."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    (tmp_path / "link").symlink_to(tmp_path / "unmounted" / "run")  # mkdir fails through a link to nowhere
    for output_dir, message in ((a_file, "exists and is not a folder"), (a_file / "run", "is not a folder"),
                                (tmp_path / "link", "which does not exist")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(train_args(corpus, output_dir))
        assert exit_.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert ": error: output_dir:" in error and message in error and str(output_dir.parent) in error
    assert parse_args(train_args(corpus, tmp_path / "new" / "run")).output_dir == str(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # the check creates nothing


def run_with_a_nan_loss_at_step(corpus, output_dir, monkeypatch, nan_step: int, nan_gradient: bool = False,
                                extra_argv: tuple[str, ...] = (), **overrides) -> None:
    """In-process run of main() with a tiny PIP whose training loss is NaN at optimizer step `nan_step` only (with
    `nan_gradient`, the loss stays finite and its gradient is NaN instead)."""
    import training.train as train_module
    from modeling import PIPForImageRestoration

    forwards = []

    class NaNOncePIP(PIPForImageRestoration):
        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            if self.training and output.loss is not None:
                forwards.append(1)
                if len(forwards) == nan_step and nan_gradient:
                    output.loss.register_hook(lambda grad: grad * float("nan"))
                elif len(forwards) == nan_step:
                    output.loss = output.loss * float("nan")
            return output

    def build_model(args):
        config_class, _ = train_module.MODEL_CLASSES["pip"]
        return NaNOncePIP(config_class(**args.model_config))

    monkeypatch.setattr(train_module, "build_model", build_model)
    run_main(train_args(corpus, output_dir, mixed_precision="no", **overrides) + list(extra_argv))


@pytest.mark.parametrize("logging_steps, caught_at", [(1, "the training loss (nan)"), (100, "the weights")])
def test_a_nan_loss_stops_the_run_before_it_reaches_a_checkpoint(corpus, tmp_path, monkeypatch, logging_steps,
                                                                  caught_at):
    """One NaN loss makes every weight NaN (AdamW). The run used to go on, checkpoint the NaN weights at steps 4 and
    6 (pruning, limit 2, deleted the good checkpoint-2), save a NaN model and end saying 'replicas diverged'. It now
    stops at the log of that step (or, with a long logging window, at the next checkpoint) and keeps checkpoint-2."""
    output_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="non-finite") as raised:
        run_with_a_nan_loss_at_step(corpus, output_dir, monkeypatch, nan_step=3, logging_steps=logging_steps)
    message = str(raised.value)
    assert message.startswith(f"{caught_at} became non-finite") and "--resume_from_checkpoint latest" in message
    assert f"its last checkpoint, {output_dir / 'checkpoint-2'}, holds finite weights" in message
    assert ("by step 3" if logging_steps == 1 else "by step 4") in message
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (output_dir / "model").exists()
    weights = load_file(output_dir / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values())


@pytest.mark.parametrize("checkpointing_steps, kept", [(4, ["checkpoint-4"]), (0, [])], ids=["after-checkpoint", "none"])
def test_a_nan_after_the_last_checkpoint_stops_the_run_before_the_final_save(corpus, tmp_path, monkeypatch,
                                                                           checkpointing_steps, kept):
    """A NaN gradient at the last step (its loss finite, so the logged loss does not catch it) after the last checkpoint, or in a run
    without checkpoints: the last check, before the final validation and save, stops the run; no NaN model is
    written, and the message points at the last checkpoint, or says that nothing was saved."""
    output_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="non-finite") as raised:
        run_with_a_nan_loss_at_step(corpus, output_dir, monkeypatch, nan_step=6, nan_gradient=True,
                                    checkpointing_steps=checkpointing_steps)
    message = str(raised.value)
    assert message.startswith("the weights became non-finite (NaN or inf) by step 6"), message
    if kept:
        assert f"its last checkpoint, {output_dir / kept[0]}, holds finite weights" in message
    else:
        assert "nothing was saved. Start again with a lower --learning_rate" in message
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == kept
    assert not (output_dir / "model").exists()


def test_nan_weights_are_not_validated(corpus, tmp_path, monkeypatch):
    """A NaN gradient (finite loss) at a validation step that is no checkpoint step: the run stops there, before the
    validation scores the NaN weights (a NaN row in the history, a NaN sample grid written to validation/)."""
    output_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="non-finite") as raised:
        run_with_a_nan_loss_at_step(corpus, output_dir, monkeypatch, nan_step=2, nan_gradient=True,
                                    checkpointing_steps=4, validation_steps=2, validation_images_per_task=1,
                                    extra_argv=("--validation_roots", f"clean={corpus / 'heldout'}"))
    assert str(raised.value).startswith("the weights became non-finite (NaN or inf) by step 2; nothing was saved")
    assert not (output_dir / "validation").exists() and not (output_dir / "best").exists()


def test_max_train_minutes_stops_a_run_early_and_still_saves_it(corpus, tmp_path, monkeypatch):
    """A timed run (the recipe sweep): a budget spent after the first step stops at step 1, with the final
    model and its card written as for a finished run; a non-positive budget is refused."""
    seen = run_recording_main(corpus, tmp_path / "timed", monkeypatch, max_train_steps=50, max_train_minutes=1e-6)
    assert len(seen) == 1
    assert "- **steps**: 1" in (tmp_path / "timed" / "model" / "README.md").read_text()
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            parse_args(train_args(corpus, tmp_path / "bad", max_train_minutes=bad))


def test_cpu_training_is_channels_last_by_default_and_can_turn_it_off(corpus, tmp_path, monkeypatch):
    """The CPU fast path: batches and 4-D weights channels-last unless `--channels_last false`; the saved weights
    are ordinary safetensors that load anywhere, and agree with the NCHW run up to float rounding."""
    # fp32 both (on a CPU with native bf16 the default autocast would round far more than the layout does)
    fast = run_recording_main(corpus, tmp_path / "fast", monkeypatch, mixed_precision="no")
    plain = run_recording_main(corpus, tmp_path / "plain", monkeypatch, channels_last="false", mixed_precision="no")
    assert [step["channels_last"] for step in fast] == [[True, True, True]] * 2
    assert [step["channels_last"] for step in plain] == [[False, False, False]] * 2
    fast_weights, plain_weights = final_weights(tmp_path / "fast"), final_weights(tmp_path / "plain")
    assert fast_weights.keys() == plain_weights.keys()
    moved = 0
    for name, value in fast_weights.items():
        torch.testing.assert_close(value, plain_weights[name], atol=2e-5, rtol=1e-4, msg=name)
        moved += int(value.dim() == 4 and value.shape[-1] > 1)
    assert moved > 0  # the comparison covered real 3x3 convolution kernels
    card = (tmp_path / "fast" / "model" / "README.md").read_text()
    assert "- **channels last**: True" in card
    assert "- **channels last**: False" in (tmp_path / "plain" / "model" / "README.md").read_text()


def test_mixed_precision_auto_is_bf16_only_on_a_cpu_with_native_bf16(corpus, tmp_path, monkeypatch, caplog):
    """`--mixed_precision auto` (the default): bf16 autocast on a CPU that computes bf16 natively, fp32 on other
    CPUs and on GPUs; fp16/bf16 asked of `accelerate launch` win, its default "no" does not; an explicit value is
    kept. The training forwards run under the chosen autocast, and the card records it."""
    import logging

    import modeling.inference
    from training.train import resolve_mixed_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for native in (True, False):
        monkeypatch.setattr(modeling.inference, "native_bf16_cpu", lambda native=native: native)
        assert resolve_mixed_precision("auto", on_cpu=True) == resolve_mixed_precision(None, on_cpu=True) == (
            "bf16" if native else "no")
        assert resolve_mixed_precision("auto", on_cpu=False) == "no"
        assert resolve_mixed_precision("no", on_cpu=True) == "no"
        assert resolve_mixed_precision("fp16", on_cpu=False) == "fp16"
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` exports unless asked
        assert resolve_mixed_precision("auto", on_cpu=True) == ("bf16" if native else "no")
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
        assert resolve_mixed_precision("auto", on_cpu=False) == "fp16"
        with caplog.at_level(logging.WARNING, logger="training.train"):
            caplog.clear()
            # accelerate has no fp16 autocast on a CPU: the launcher's fp16 gives way to the CPU's own choice
            assert resolve_mixed_precision("auto", on_cpu=True) == ("bf16" if native else "no")
            assert "which a CPU run cannot use" in caplog.text
            caplog.clear()
            assert resolve_mixed_precision("no", on_cpu=True) == "no"  # a recipe's value wins, and says so
            assert "accelerate launch asked for mixed precision 'fp16'" in caplog.text
            caplog.clear()
            assert resolve_mixed_precision("fp16", on_cpu=False) == "fp16" and not caplog.text
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")

    monkeypatch.setattr(modeling.inference, "native_bf16_cpu", lambda: True)
    fast = run_recording_main(corpus, tmp_path / "auto", monkeypatch)
    plain = run_recording_main(corpus, tmp_path / "fp32", monkeypatch, mixed_precision="no")
    assert [step["autocast"] for step in fast] == [torch.bfloat16] * 2
    assert [step["autocast"] for step in plain] == [None] * 2
    assert "- **mixed precision**: bf16" in (tmp_path / "auto" / "model" / "README.md").read_text()
    assert "- **mixed precision**: no" in (tmp_path / "fp32" / "model" / "README.md").read_text()
    monkeypatch.setattr(modeling.inference, "native_bf16_cpu", lambda: False)
    assert [step["autocast"] for step in run_recording_main(corpus, tmp_path / "emulated", monkeypatch)] == [None] * 2


def test_fp16_on_a_cpu_is_refused_rather_than_trained_in_fp32(corpus, tmp_path, monkeypatch, capsys):
    """accelerate has no fp16 autocast on a CPU: `--mixed_precision fp16` there trained every step in fp32 while
    the card and training_summary.json said fp16 (and validation alone ran under fp16 autocast). Now refused."""
    from training.train import resolve_mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = _parse_error(capsys, train_args(corpus, tmp_path / "run", mixed_precision="fp16"))
    assert "--mixed_precision fp16 needs a GPU" in message and "bf16" in message
    with pytest.raises(ValueError, match="needs a GPU"):  # main() called without parse_args
        resolve_mixed_precision("fp16", on_cpu=True)


@pytest.mark.parametrize("spelling", ["fp16", "FP16", " Fp16 "])
def test_fp16_on_a_cpu_is_refused_alike_by_flag_recipe_and_main(corpus, tmp_path, monkeypatch, capsys, spelling):
    """The rule had two copies: validate_args (flags, recipes) refused every spelling, while the one in
    resolve_mixed_precision (main() called with its own TrainingArguments) let "FP16" through to accelerate's
    "Unknown mixed_precision mode". Both now call refuse_fp16_on_cpu: one outcome, one message."""
    from training.train import FP16_ON_CPU, TrainingArguments, main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _parse_error(capsys, train_args(corpus, tmp_path / "flag", mixed_precision=spelling)).endswith(FP16_ON_CPU)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"mixed_precision: '{spelling}'\nmax_train_steps: 1\n")
    assert _parse_error(capsys, ["--config", str(recipe)]).endswith(FP16_ON_CPU)
    with pytest.raises(ValueError) as refused:
        main(TrainingArguments(output_dir=str(tmp_path / "main"), mixed_precision=spelling, max_train_steps=1))
    assert str(refused.value) == FP16_ON_CPU


def test_block_compilation_is_off_on_cpu_by_default_and_compiles_every_block_when_asked(corpus, tmp_path,
                                                                                        monkeypatch):
    """`--compile_blocks` (default: GPU only) compiles every Transformer block before training; the run then trains
    through the compiled blocks and saves the usual weights."""
    from safetensors.torch import load_file

    default = run_recording_main(corpus, tmp_path / "default", monkeypatch)
    assert not any("compiled_blocks" in record for record in default)
    torch._dynamo.reset()
    compiled = run_recording_main(corpus, tmp_path / "compiled", monkeypatch, compile_blocks="true")
    record = compiled[0]
    assert record["compiled_blocks"] == record["blocks"] == record["compiled"] > 1
    assert len(compiled) == 3 and all("dtype" in step for step in compiled[1:])  # then the two training steps
    weights = load_file(tmp_path / "compiled" / "model" / "model.safetensors")
    assert weights.keys() == load_file(tmp_path / "default" / "model" / "model.safetensors").keys()


def run_main(argv: list[str]) -> dict:
    """In-process run of main(); the accelerate state is reset afterwards for the next run."""
    from accelerate.state import AcceleratorState

    import training.train as train_module

    try:
        return train_module.main(parse_args(argv))
    finally:
        AcceleratorState._reset_state(True)


def test_compile_model_trains_through_one_graph_and_matches_eager_training(corpus, tmp_path):
    """`--compile_model`: the training forward (loss included) goes through torch.compile as one graph with no
    break (fullgraph: a host sync would fail the run), the card records the counts, and the weights after four steps
    are the eager run's up to rounding. Traced with aot_eager (forward and backward graphs as inductor gets them,
    without minutes of C++ compilation). Validation at the end runs the eager model: no graph is added for it."""
    from torch._dynamo.utils import counters

    common = {"max_train_steps": 4, "checkpointing_steps": 0, "use_ema": "false", "mixed_precision": "no",
              "validation_images_per_task": 1}
    validation = ["--validation_roots", f"clean={corpus / 'heldout'}"]
    run_main(train_args(corpus, tmp_path / "eager", **common) + validation)
    torch._dynamo.reset()
    counters.clear()
    run_main(train_args(corpus, tmp_path / "compiled", compile_model="true", compile_backend="aot_eager", **common)
             + validation)
    card = (tmp_path / "compiled" / "model" / "README.md").read_text()
    assert '- **compile model**: `{"mode": "default", "backend": "aot_eager", "graphs": 1, "graph_breaks": 0}`' in card
    assert counters["stats"]["unique_graphs"] == 1  # training only: validation and saving stayed eager
    assert "- **compile model**: False" in (tmp_path / "eager" / "model" / "README.md").read_text()
    eager, compiled = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()
    for name, value in compiled.items():
        torch.testing.assert_close(value, eager[name], atol=2e-5, rtol=1e-4, msg=name)
    assert json.loads((tmp_path / "compiled" / "model" / "eval_results.json").read_text()).keys() == json.loads(
        (tmp_path / "eager" / "model" / "eval_results.json").read_text()).keys()


def test_compile_model_flags_are_checked_before_anything_runs(corpus, tmp_path, capsys):
    for overrides, message in (
        ({"compile_model": "true", "compile_blocks": "true"}, "leave --compile_blocks off"),
        ({"compile_mode": "reduce-overhead"}, "applies to --compile_model"),
        ({"compile_model": "true", "compile_mode": "fast"}, "compile_mode must be one of"),
        ({"compile_model": "true", "compile_mode": "reduce-overhead", "gradient_accumulation_steps": 2},
         "cannot accumulate gradients over micro-batches"),
    ):
        with pytest.raises(SystemExit):
            parse_args(train_args(corpus, tmp_path / "bad", **overrides))
        assert message in capsys.readouterr().err
    args = parse_args(train_args(corpus, tmp_path / "ok", compile_model="true", compile_mode="reduce-overhead"))
    assert args.compile_model and args.compile_mode == "reduce-overhead" and args.compile_blocks is None


def test_two_process_launch_trains_the_compiled_model(corpus, tmp_path, two_process_launch):
    """`--compile_model` under a 2-process launch: PyTorch's DDP + torch.compile path (DDP's own bookkeeping is
    left out of the graph), identical replicas, checkpoints and an EMA saved without the compiled wrapper's key
    prefix, validation, and the weights of the same launch without compilation."""
    eager_dir, eager = two_process_launch
    assert eager.returncode == 0, eager.stderr[-4000:]
    output_dir = tmp_path / "compiled"
    argv = two_process_launch_args(corpus, output_dir, compile_model="true", compile_backend="aot_eager")
    result = run_train(argv, launcher=accelerate_launch(2), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    checksums = json.loads((output_dir / "replica_checksums.json").read_text())["checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert "--compile_model: 1 graph(s)" in result.stderr
    assert "DDP wrapper is still referenced" not in result.stderr
    assert json.loads((output_dir / "model" / "eval_results.json").read_text()).keys() == json.loads(
        (eager_dir / "model" / "eval_results.json").read_text()).keys()
    for checkpoint in ("checkpoint-6", "model"):
        compiled, reference = load_file_tree(output_dir / checkpoint), load_file_tree(eager_dir / checkpoint)
        assert compiled.keys() == reference.keys(), checkpoint
        for key, value in compiled.items():
            torch.testing.assert_close(value, reference[key], atol=2e-5, rtol=1e-4, msg=f"{checkpoint}: {key}")


def load_file_tree(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder`` and the EMA's shadow weights where saved, keyed by
    relative file path and tensor name (or position)."""
    tensors = {f"{path.relative_to(folder)}:{key}": value for path in sorted(folder.rglob("*.safetensors"))
               for key, value in load_file(path).items()}
    if (folder / "ema_state.pt").is_file():
        shadow = torch.load(folder / "ema_state.pt", weights_only=True)["shadow_params"]
        tensors.update({f"ema_state.pt:{i}": value for i, value in enumerate(shadow)})
    return tensors


def test_bench_train_compares_the_fast_path_with_the_reference(tmp_path):
    """benchmarks/bench_train.py on a tiny PIP: one row per path, ratios against the reference row, peak memory
    from a child process per path, and toy loss curves that agree (timings are not asserted)."""
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--model-config", TINY_PIP, "--batch", "2",
         "--size", "32", "--steps", "1", "--repeats", "1", "--threads", "1", "--curve-steps", "60",
         "--curve-size", "16", "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=script_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert (report["model"], report["batch"], report["size"], report["curve_steps"]) == ("pip", 2, 32, 60)
    rows = {row["path"]: row for row in report["rows"]}
    assert list(rows) == ["reference", "channels-last"]
    assert rows["reference"]["ratio"] == 1.0 and rows["reference"]["toy_loss_vs_reference"] == 0.0
    for row in rows.values():
        assert row["ms"] > 0 and row["images_per_s"] == pytest.approx(2000 / row["ms"])
        assert row["ratio"] == pytest.approx(rows["reference"]["ms"] / row["ms"])
        assert 50 < row["peak_mib"] < 4096
        assert 0 < row["toy_loss"] < 0.9 * row["toy_loss_first_steps"]  # the toy denoising task is being learned
    assert abs(rows["channels-last"]["toy_loss_vs_reference"]) < 0.01
    assert "channels-last" in result.stdout and "toy loss" in result.stdout


def test_bench_train_curve_only_and_a_run_where_every_path_runs_out_of_memory(tmp_path, monkeypatch):
    """`--curve-only` trains the toy curves without timing (rows without ms); a run in which every path runs out of
    GPU memory writes its JSON with every path under "failed" and exits 1 (it used to write nothing and exit 0)."""
    import importlib.util

    import torch

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script adds the repository and benchmarks/ to it
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report_path = tmp_path / "curves.json"
    common = ["bench_train.py", "--model-config", TINY_PIP, "--threads", "1", "--no-memory", "--json", str(report_path)]
    monkeypatch.setattr(sys, "argv", [*common, "--curve-only", "--curve-steps", "10", "--curve-size", "16",
                                      "--curve-batch", "2"])
    bench.main()
    report = json.loads(report_path.read_text())
    assert report["curve_steps"] == 10 and report["parameters"] > 0
    assert (report["batch"], report["size"]) == (2, 16) and "repeats" not in report  # what the curves ran
    rows = {row["path"]: row for row in report["rows"]}
    assert list(rows) == ["reference", "channels-last"] and all("ms" not in row for row in rows.values())
    assert rows["reference"]["toy_loss_vs_reference"] == 0
    assert abs(rows["channels-last"]["toy_loss_vs_reference"]) < 0.01

    def out_of_memory(self, degraded, clean):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(bench.TrainingPath, "step", out_of_memory)
    monkeypatch.setattr(sys, "argv", [*common, "--batch", "2", "--size", "16", "--steps", "1", "--repeats", "1"])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 1
    report = json.loads(report_path.read_text())
    assert report["rows"] == [] and set(report["failed"]) == {"reference", "channels-last"}
    assert report["failed"]["reference"].startswith("out of memory: CUDA out of memory")


def test_bench_train_checkpointing_path_recomputes_blocks_and_gives_the_same_step(monkeypatch):
    """The `bf16+checkpointing` path of benchmarks/bench_train.py (train.py --gradient_checkpointing): each
    Transformer block's attention runs twice per step (forward, then again in backward), and the step's loss and
    updated weights equal the `bf16` path's from the same initial weights. (The count hooks the attention inside
    the block: replacing the block's own forward would bypass the checkpointing wrapper.)"""
    import importlib.util

    from modeling.restormer_blocks import MultiDconvHeadTransposedAttention, TransformerBlock

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_train_probe", REPO / "benchmarks" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    calls = []
    original = MultiDconvHeadTransposedAttention.forward
    monkeypatch.setattr(MultiDconvHeadTransposedAttention, "forward",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    batch = bench_train.fixed_batch(2, 16, seed=0)
    losses, weights, per_step = {}, {}, {}
    for name in ("bf16", "bf16+checkpointing"):
        path = bench_train.TrainingPath(name, "pip", json.loads(TINY_PIP), "cpu")
        calls.clear()
        losses[name] = float(path.step(*batch))
        per_step[name] = len(calls)
        weights[name] = torch.cat([p.detach().flatten() for p in path.model.parameters()])
    blocks = sum(isinstance(m, TransformerBlock) for m in path.model.modules())
    assert per_step == {"bf16": blocks, "bf16+checkpointing": 2 * blocks}
    assert losses["bf16+checkpointing"] == pytest.approx(losses["bf16"], rel=1e-6)
    torch.testing.assert_close(weights["bf16+checkpointing"], weights["bf16"], atol=1e-6, rtol=0)


def test_bench_train_keeps_the_rows_it_measured_when_a_path_runs_out_of_memory_or_the_run_is_cut(
    monkeypatch, tmp_path
):
    """On a GPU the fp32 reference does not fit at batch 32 and a whole-model compilation can outlast a time limit:
    a path out of memory is recorded (no row, the others go on, ratios then absent), and the eager rows are written
    before any compiled path warms up, so a run killed during compilation still leaves them on disk."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_train_probe", REPO / "benchmarks" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    original_step = bench_train.TrainingPath.step

    class Killed(BaseException):  # what a time limit's signal does to the run: nothing after it runs
        pass

    def step(self, *batch):
        if self.name == "reference":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if "compile-model" in self.name:
            raise Killed
        return original_step(self, *batch)

    monkeypatch.setattr(bench_train.TrainingPath, "step", step)
    report = tmp_path / "train.json"
    monkeypatch.setattr(sys, "argv", [
        "bench_train.py", "--model-config", TINY_PIP, "--batch", "2", "--size", "16", "--steps", "1", "--repeats", "1",
        "--threads", "1", "--no-memory", "--curve-steps", "0", "--compile-backend", "eager",
        "--paths", "channels-last+bf16", "channels-last+bf16+checkpointing", "channels-last+bf16+compile-model",
        "--json", str(report)])
    with pytest.raises(Killed):
        bench_train.main()
    written = json.loads(report.read_text())
    assert [row["path"] for row in written["rows"]] == ["channels-last+bf16", "channels-last+bf16+checkpointing"]
    assert all(row["ratio"] is None and row["ms"] > 0 for row in written["rows"])
    assert list(written["failed"]) == ["reference"] and "out of memory" in written["failed"]["reference"]


def test_bench_train_compile_model_path_traces_one_graph_and_gives_the_same_step(monkeypatch):
    """The `channels-last+bf16+compile-model` path of benchmarks/bench_train.py: the whole model goes through
    torch.compile as one graph (fullgraph: a host sync or data-dependent branch would fail it), and one step, traced
    with the eager backend (inductor's compile takes minutes here), gives the loss and weights of the eager path."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_train_probe", REPO / "benchmarks" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    batch = bench_train.fixed_batch(2, 16, seed=0)
    losses, weights = {}, {}
    torch._dynamo.reset()
    for name in ("channels-last+bf16", "channels-last+bf16+compile-model"):
        path = bench_train.TrainingPath(name, "pip", json.loads(TINY_PIP), "cpu", compile_backend="eager")
        losses[name] = float(path.step(*batch))
        weights[name] = torch.cat([p.detach().flatten() for p in path.model.parameters()])
    assert isinstance(path.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert losses["channels-last+bf16+compile-model"] == pytest.approx(losses["channels-last+bf16"], rel=1e-5)
    torch.testing.assert_close(weights["channels-last+bf16+compile-model"], weights["channels-last+bf16"],
                               atol=1e-5, rtol=0)


def test_recipe_sweep_trains_each_candidate_for_the_budget_and_tabulates_held_out_gains(corpus, tmp_path):
    """benchmarks/sweep_cpu_recipe.py on a tiny model: one row per candidate, steps bounded by the time budget,
    a PSNR gain per task from each run's final validation (numbers not asserted: two steps of a tiny model)."""
    report = tmp_path / "sweep.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sweep_cpu_recipe.py"), "--minutes", "0.001", "--max_steps", "3",
         "--candidates", "lr-2e-3", "dim-24", "--model_config", TINY_PIP, "--threads", "1",
         "--train_dir", str(corpus / "clean"), "--heldout_dir", str(corpus / "heldout"),
         "--output", str(tmp_path / "runs"), "--json", str(report), "--",
         "--patch_size", "32", "--train_batch_size", "2", "--dataloader_num_workers", "0", "--shards_per_rank", "2",
         "--validation_images_per_task", "1", "--validation_crop", "0"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=script_env(HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(report.read_text())["rows"]
    assert [row["candidate"] for row in rows] == ["lr-2e-3", "dim-24"]
    for row in rows:
        assert 1 <= row["steps"] <= 3 and row["images"] == 2 * row["steps"]
        assert set(row["gains"]) == {"noise", "rain", "haze", "blur", "low-light"}
        assert row["mean_gain"] == pytest.approx(sum(row["gains"].values()) / 5)
    # dim-24 changes the width of the sweep's model and nothing else (train.py alone would replace the whole config)
    from modeling import PIPConfig, PIPForImageRestoration

    def parameters(**overrides) -> int:
        with torch.device("meta"):
            model = PIPForImageRestoration(PIPConfig(**{**json.loads(TINY_PIP), **overrides}))
        return sum(p.numel() for p in model.parameters())

    counts = {row["candidate"]: row["parameters"] for row in rows}
    assert counts["lr-2e-3"] == parameters()  # a learning rate changes no weight
    assert counts["dim-24"] == parameters(dim=24, prompt_dims=[24, 48, 96])
    runs = {row["candidate"]: tmp_path / "runs" / row["candidate"] / "model" / "README.md" for row in rows}
    assert "- **learning rate**: 0.002" in runs["lr-2e-3"].read_text()
    assert "| lr-2e-3 |" in result.stdout and "mean gain" in result.stdout


def test_bench_activation_memory_measures_what_each_path_keeps_for_the_backward(tmp_path):
    """benchmarks/bench_activation_memory.py on a tiny PIP at 64²: bf16 keeps about half of fp32's activations,
    recomputing the blocks far less, and the floor column is the per-image memory times the batch, plus the fixed
    part, plus 16 bytes per parameter."""
    report = tmp_path / "memory.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_activation_memory.py"), "--model-config", TINY_PIP,
         "--size", "64", "--batch", "8", "--threads", "1", "--json", str(report),
         "--paths", "reference", "channels-last+bf16", "channels-last+bf16+checkpointing"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=script_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = json.loads(report.read_text())["paths"]
    per_image = {name: row["mib_per_image"] for name, row in paths.items()}
    assert per_image["reference"] > 10  # a 64² image through the tiny PIP keeps tens of MiB in fp32
    assert 0.35 < per_image["channels-last+bf16"] / per_image["reference"] < 0.65
    assert per_image["channels-last+bf16+checkpointing"] < 0.6 * per_image["channels-last+bf16"]
    for row in paths.values():
        assert row["floor_mib"] == pytest.approx(8 * row["mib_per_image"] + row["fixed_mib"]
                                                 + 16 * row["parameters"] / 2**20)
    assert "channels-last+bf16+checkpointing" in result.stdout and "floor at batch 8" in result.stdout


def test_validation_leaves_out_pairs_the_degradation_left_unchanged(tmp_path, caplog):
    """A validation pair whose degraded image equals the clean one has an infinite input PSNR, which no card can
    hold (one such pair used to stop a training run at its first validation): it is left out, with a warning.
    An all-white photo makes such pairs through the real synthesis: rain only brightens (its streaks clip at white)
    and a flat image blurs to itself, while noise, haze and low-light change it."""
    from training.evaluation import build_validation_set

    save(tmp_path / "clean" / "white.png", np.full((32, 32, 3), 255, np.uint8))
    validation = build_validation_set("5-task", {"clean": str(tmp_path / "clean")}, synthesize_missing=True)
    # One image gives 9 pairs (noise at 3 sigmas, blur of 3 kernel families, rain, haze, low-light); the 3 blurred
    # and the rainy one are left out.
    assert "left out 4 pair(s) whose degraded image equals the clean one (blur, rain)" in caplog.text
    assert validation.tasks() == ["noise", "haze", "low-light"]
    assert [pair["task_name"] for pair in validation] == ["noise"] * 3 + ["haze", "low-light"]
    assert not any(np.array_equal(pair["degraded"], pair["clean"]) for pair in validation)
    assert all(math.isfinite(value) for scores in validation.input_scores().values() for value in scores.values())


def test_resume_refuses_another_data_layout_and_a_zero_logging_interval(corpus, tmp_path, capsys):
    """Each rank's saved loader position belongs to one split of the stream: a resume with another batch size,
    worker count or shard count stops with the changes named, before anything is loaded; logging_steps 0 (a
    division by zero after the first step) is refused when the arguments are parsed."""
    output_dir = tmp_path / "run"
    common = {"checkpointing_steps": 2, "use_ema": "false", "mixed_precision": "no"}
    run_main(train_args(corpus, output_dir, max_train_steps=2, **common))
    assert checkpointing.load_training_state(output_dir / "checkpoint-2")["data_layout"] == {
        "processes": 1, "shards_per_rank": 2, "dataloader_num_workers": 0, "train_batch_size": 2}
    with pytest.raises(ValueError, match=r"another data layout \(shards_per_rank 2 -> 4, train_batch_size 2 -> 4\)"):
        run_main(train_args(corpus, output_dir, max_train_steps=4, resume_from_checkpoint="latest",
                            shards_per_rank=4, train_batch_size=4, **common))
    with pytest.raises(SystemExit):
        parse_args(train_args(corpus, output_dir, logging_steps=0))
    assert "logging_steps must be a positive number of steps" in capsys.readouterr().err


def test_a_resumed_run_whose_data_became_unreadable_stops_instead_of_spinning(corpus, tmp_path):
    """After a resume the first pass over the stream may be empty (the loader resumed at its epoch's end), but
    a later empty pass means there is no data left: the run stops with the bad-data counts instead of looping."""
    import shutil as shell

    data = tmp_path / "clean"
    shell.copytree(corpus / "clean", data)
    output_dir = tmp_path / "run"

    def argv(**overrides):
        values = train_args(corpus, output_dir, checkpointing_steps=2, use_ema="false", **overrides)
        return [f"clean={data}" if value == f"clean={corpus / 'clean'}" else value for value in values]

    assert run_train(argv(max_train_steps=2)).returncode == 0
    for photo in data.iterdir():
        photo.write_bytes(b"not an image any more")
    result = run_train(argv(max_train_steps=6, resume_from_checkpoint="latest"), timeout=180)
    assert result.returncode != 0 and "the training stream yielded no batch" in result.stderr


def test_resume_keeps_a_better_best_model_saved_after_the_last_checkpoint(corpus, tmp_path):
    """A run's last validation can save OUTPUT/best after its last checkpoint, which then does not know that score:
    a resumed run compares its validations with the score of the saved best folder too, so a worse one never
    replaces it."""
    output_dir = tmp_path / "run"
    common = dict(checkpointing_steps=2, use_ema="false", mixed_precision="no", validation_images_per_task=1)
    argv = train_args(corpus, output_dir, max_train_steps=3, **common) + [
        "--validation_roots", f"clean={corpus / 'heldout'}"]
    run_main(argv)  # checkpoint at 2, validation (and best/) at 3
    scores = json.loads((output_dir / "best" / "eval_results.json").read_text())
    assert checkpointing.load_training_state(output_dir / "checkpoint-2")["best_psnr"] is None
    better = {task: {**values, "psnr": 99.0} for task, values in scores.items()}  # a best no run here reaches
    (output_dir / "best" / "eval_results.json").write_text(json.dumps(better))
    run_main(train_args(corpus, output_dir, max_train_steps=4, resume_from_checkpoint="latest", **common)
             + ["--validation_roots", f"clean={corpus / 'heldout'}"])
    assert json.loads((output_dir / "best" / "eval_results.json").read_text()) == better
    assert checkpointing.load_training_state(output_dir / "checkpoint-4")["best_psnr"] == 99.0


def test_a_rewound_resume_sets_aside_a_best_model_of_the_steps_it_abandons(corpus, tmp_path):
    """Resumed from an earlier checkpoint than the last (named, or the latest after deleting the last), a run
    abandons the later steps: OUTPUT/best saved there is renamed to abandoned-best (kept), and the resumed run's best
    tracking starts from its checkpoint's best PSNR. It used to stay best/, its score standing against the resumed
    validations (a model the resumed run never trained, kept unless beaten)."""
    output_dir = tmp_path / "run"
    common = dict(max_train_steps=4, checkpointing_steps=2, checkpoints_total_limit=3, validation_steps=2,
                  use_ema="false", mixed_precision="no", validation_images_per_task=1)
    validation = ["--validation_roots", f"clean={corpus / 'heldout'}"]

    def mean_psnr(folder: Path) -> float:
        return float(np.mean([s["psnr"] for s in json.loads((folder / "eval_results.json").read_text()).values()]))

    def abandon_a_better_best() -> dict:
        """best/ as the later steps left it: saved at step 4, with a score no resumed validation reaches."""
        assert json.loads((output_dir / "best" / "training_summary.json").read_text())["steps"] == 4
        scores = json.loads((output_dir / "best" / "eval_results.json").read_text())
        better = {task: {**values, "psnr": 99.0} for task, values in scores.items()}
        (output_dir / "best" / "eval_results.json").write_text(json.dumps(better))
        return better

    def check_resumed_best(set_aside: str, abandoned: dict) -> None:
        assert json.loads((output_dir / set_aside / "eval_results.json").read_text()) == abandoned
        state = checkpointing.load_training_state(output_dir / "checkpoint-4")
        resumed = [float(np.mean(list(entry["psnr"].values()))) for entry in state["validation_history"]]
        assert [entry["step"] for entry in state["validation_history"]] == [2, 4]
        assert state["best_psnr"] == pytest.approx(max(resumed)) and mean_psnr(output_dir / "best") == pytest.approx(
            max(resumed))

    run_main(train_args(corpus, output_dir, **common) + validation)  # checkpoints 2 and 4, validations at 2 and 4
    abandoned = abandon_a_better_best()
    run_main(train_args(corpus, output_dir, resume_from_checkpoint=str(output_dir / "checkpoint-2"), **common)
             + validation)
    assert (output_dir / "abandoned-checkpoint-4").is_dir()
    check_resumed_best("abandoned-best", abandoned)

    abandoned = abandon_a_better_best()
    shutil.rmtree(output_dir / "checkpoint-4")  # the latest deleted: resuming "latest" rewinds to checkpoint-2
    run_main(train_args(corpus, output_dir, resume_from_checkpoint="latest", **common) + validation)
    check_resumed_best("abandoned-best-2", abandoned)


def test_latest_skips_a_checkpoint_folder_without_its_training_state(tmp_path):
    """Checkpoints appear whole (renamed from a hidden .partial folder); a checkpoint-N folder without
    training_state.json (copied by hand, cut short by something else) is not one: `latest` takes the complete one."""
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / checkpointing.TRAINING_STATE_FILE).write_text("{}")
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "model.safetensors").write_bytes(b"")
    assert checkpointing.resolve_resume_path("latest", tmp_path) == tmp_path / "checkpoint-4"
    assert checkpointing.checkpoint_dirs(tmp_path) == [tmp_path / "checkpoint-4"]


def test_resume_into_another_model_is_refused_naming_the_change(corpus, tmp_path):
    """The checkpoint records its model type and config: resuming it with another model_config (or model_type)
    stops with the differences, not with torch's hundreds of lines of load_state_dict errors."""
    output_dir = tmp_path / "run"
    common = dict(checkpointing_steps=2, use_ema="false", mixed_precision="no")
    run_main(train_args(corpus, output_dir, max_train_steps=2, **common))
    recorded = checkpointing.load_training_state(output_dir / "checkpoint-2")["model"]
    assert recorded["model_type"] == "pip" and recorded["config"]["dim"] == 8
    wider = json.dumps({**json.loads(TINY_PIP), "dim": 16})
    with pytest.raises(ValueError, match=r"another config \(dim 8 -> 16\)"):
        run_main(train_args(corpus, output_dir, max_train_steps=4, resume_from_checkpoint="latest",
                            model_config=wider, **common))
    with pytest.raises(ValueError, match=r"holds a 'pip' model, not 'restormer'"):
        run_main(train_args(corpus, output_dir, max_train_steps=4, resume_from_checkpoint="latest",
                            model_type="restormer", model_config=json.dumps({"dim": 8, "num_blocks": [1, 1, 1, 1],
                            "num_refinement_blocks": 1, "heads": [1, 1, 1, 1]}), **common))


@pytest.mark.parametrize("flag, value, message", [
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be an integer of at least 1, got 0"),
    ("train_batch_size", 0, "train_batch_size must be an integer of at least 1, got 0"),
    ("shards_per_rank", 0, "shards_per_rank must be an integer of at least 1"),
    ("steps_per_epoch", 0, "steps_per_epoch must be an integer of at least 1"),
    ("dataloader_num_workers", -1, "dataloader_num_workers must be an integer of at least 0"),
    ("patch_size", -4, "patch_size must be an integer of at least 8"),
    ("max_train_steps", -1, "max_train_steps must be an integer of at least 1, got -1"),
    ("checkpointing_steps", -1, "checkpointing_steps must be an integer of at least 0"),
    ("loss_spike_history", 0, "loss_spike_history must be an integer of at least 1"),
    ("ema_decay", 2, "ema_decay must be a number in [0, 1], got 2.0"),
    ("learning_rate", 0, "learning_rate must be a number in (0, inf), got 0.0"),
    ("adam_beta2", 1.5, "adam_beta2 must be a number in [0, 1), got 1.5"),
    ("adam_beta1", 1, "adam_beta1 must be a number in [0, 1), got 1.0"),
    ("lr_scheduler_options", json.dumps({"periods": [0], "eta_min_factors": [0.0]}), "periods must be a non-empty"),
])
def test_values_no_run_can_use_are_refused_when_the_arguments_are_parsed(corpus, tmp_path, capsys, flag, value,
                                                                          message):
    """Zero batches, negative step counts or an EMA decay above 1 used to fail deep inside torch (a division by
    zero, an empty min()) or, worse, run (a negative step count saved an untrained model)."""
    overrides = {flag: value}
    if flag == "lr_scheduler_options":
        overrides["lr_scheduler"] = "cosine_restart_cyclic"
    with pytest.raises(SystemExit):
        parse_args(train_args(corpus, tmp_path / "run", **overrides))
    assert message in capsys.readouterr().err


def test_which_best_models_a_resume_abandons():
    """best/ saved at or before the resumed step is the resumed line's; one saved later is abandoned by a rewind, or
    when a checkpoint was due between (it was the run's latest, deleted to rewind); otherwise (the last validation
    after the last checkpoint, e.g. best at step 3 and checkpoints every 2) the replayed steps are the same."""
    from training.train import best_is_from_abandoned_steps

    assert not best_is_from_abandoned_steps(None, 2, 2, True)
    assert not best_is_from_abandoned_steps(2, 2, 2, True)  # saved at the checkpoint resumed from: kept
    assert not best_is_from_abandoned_steps(1, 2, 2, True)
    assert not best_is_from_abandoned_steps(3, 2, 2, False)  # after the last checkpoint: replayed exactly
    assert best_is_from_abandoned_steps(3, 2, 2, True)  # later checkpoints set aside: a rewind
    assert best_is_from_abandoned_steps(5, 2, 2, False)  # checkpoint-4 was due between, and is gone
    assert best_is_from_abandoned_steps(4, 2, 2, False)
    assert not best_is_from_abandoned_steps(7, 2, 0, False)  # no periodic checkpoints: nothing was due between


def test_a_write_refused_for_another_reason_keeps_its_error_and_a_full_disk_names_no_file_size_limit(tmp_path):
    """safetensors names every OS error in its message: one that is not about room (a path through a file: os error
    20) keeps its own error. A refusal found only in the error being handled (a writer that fails again while
    cleaning up) still gives the one line, and a full disk under a file size limit does not blame the limit."""
    from safetensors.torch import save_file

    (tmp_path / "a_file").write_text("")
    with pytest.raises(Exception, match=r"os error 20") as error:
        with checkpointing.stop_on_full_disk("checkpoint-4", tmp_path):
            save_file({"weight": torch.zeros(4)}, str(tmp_path / "a_file" / "model.safetensors"))
    assert not isinstance(error.value, checkpointing.OutputWriteError)
    with pytest.raises(checkpointing.OutputWriteError, match=r"checkpoint-4 could not be written in .*: No space left"):
        with checkpointing.stop_on_full_disk("checkpoint-4", tmp_path):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("could not remove the temporary file")  # raised while handling the refusal
    script = textwrap.dedent(
        f"""
        import errno, os, resource
        from training import checkpointing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
        try:
            with checkpointing.stop_on_full_disk("checkpoint-4", {str(tmp_path)!r}):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except checkpointing.OutputWriteError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=script_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.splitlines() == [
        f"checkpoint-4 could not be written in {tmp_path}: No space left on device (ENOSPC); there is no earlier "
        "checkpoint in it, so a relaunch starts from the beginning"], result.stdout + result.stderr[-3000:]
