"""Atomic training checkpoints: a run killed at any moment never loses a complete checkpoint.

Layout inside ``output_dir``::

    checkpoint-1000/          complete checkpoints only (renamed into place when fully written)
    .checkpoint-2000.partial/ being written; ignored by ``latest_checkpoint``, removed when its write fails and
                              on the next save

Every rank writes into the same ``.partial`` folder with ``accelerator.save_state`` (model, optimizer and each
rank's RNG state) plus its own data-loader position, and the main process adds the scheduler and EMA states
(`CUSTOM_STATE_FILES`, read back with ``weights_only=True``); the main process then renames
the folder into place (an atomic ``rename`` on POSIX) and only *afterwards* prunes old checkpoints down to
``total_limit``. diffusers' examples prune first, which can leave a crashed run with fewer checkpoints than
the limit promises. A write the storage refuses for lack of room (`stop_on_full_disk`) becomes `OutputWriteError`,
one line naming the checkpoint that failed and the one that resumes; the processes of a launch share it
(`stop_together_on_output_error`), so every one of them stops at once with it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE_FILE = "training_state.json"

#: Errors of a write the storage refused for lack of room: a full disk, a quota, a file above the size limit.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# safetensors (Rust) reports the OS error only in its message: "I/O error: File too large (os error 27)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# torch.save to a path writes through a C++ stream that drops the errno: "unexpected pos ... vs ..." raised while
# handling "basic_ios::clear: iostream error", or "PytorchStreamWriter failed writing file ...".
_TORCH_WRITE_FAILURE = ("PytorchStreamWriter failed writing", "iostream error", "unexpected pos")


class OutputWriteError(RuntimeError):
    """A training output (a checkpoint, a model folder) could not be written for lack of room; the message is one
    line that says what, why, and what is intact."""


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    # A folder without its training state is not a checkpoint this module wrote (ours appear whole, by rename):
    # `latest` must not pick it over an earlier complete one.
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name)) and (p / TRAINING_STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """``latest`` -> newest complete checkpoint (None if there is none yet); a path -> that path (must exist)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from_checkpoint)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINING_STATE_FILE})")
    return path


def data_state_file(process_index: int) -> str:
    return f"data_state_rank{process_index}.pt"


#: Files of the extra states (`save_checkpoint`'s ``custom_states``), in order: the scheduler, then the EMA.
CUSTOM_STATE_FILES = ("lr_scheduler_state.pt", "ema_state.pt")
# accelerate's names for objects registered with ``register_for_checkpointing``, which checkpoints written before
# 2026-12-05 hold. accelerate's ``load_state`` unpickles those with ``weights_only=False`` (a checkpoint folder could
# then run any code), so the states are written and read here instead, with ``weights_only=True``.
_ACCELERATE_CUSTOM_STATE = re.compile(r"^custom_checkpoint_(\d+)\.pkl$")


def load_custom_states(checkpoint: Path, objects: Sequence[Any]) -> None:
    """Restore each object's ``state_dict`` saved by `save_checkpoint` (or, in an older checkpoint, by accelerate's
    ``register_for_checkpointing``), reading tensors only (``weights_only=True``)."""
    for index, obj in enumerate(objects):
        path = checkpoint / CUSTOM_STATE_FILES[index]
        if not path.is_file():
            path = checkpoint / f"custom_checkpoint_{index}.pkl"
        if not path.is_file():
            raise FileNotFoundError(
                f"{checkpoint} has no {CUSTOM_STATE_FILES[index]} (the state of {type(obj).__name__})"
            )
        obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def has_custom_state(checkpoint: Path, index: int) -> bool:
    """Whether ``checkpoint`` holds the ``index``-th custom state (ours or, in an older checkpoint, accelerate's)."""
    return (checkpoint / CUSTOM_STATE_FILES[index]).is_file() or (checkpoint / f"custom_checkpoint_{index}.pkl").is_file()


@contextmanager
def accelerate_state_view(checkpoint: Path) -> Iterator[Path]:
    """The checkpoint as ``accelerator.load_state`` may read it: itself, or, for an older checkpoint holding
    accelerate's pickled custom states, a temporary folder of links to everything else (accelerate would unpickle
    those with ``weights_only=False``, and refuses a folder whose count differs from the registered objects)."""
    legacy = [p for p in checkpoint.iterdir() if _ACCELERATE_CUSTOM_STATE.match(p.name)]
    if not legacy:
        yield checkpoint
        return
    view = Path(tempfile.mkdtemp(prefix=f"{checkpoint.name}-view-"))  # not beside it: that may be read-only
    try:
        for entry in checkpoint.iterdir():
            if entry not in legacy:
                (view / entry.name).symlink_to(entry.resolve())
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)


def _error_chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _file_size_limit() -> int | None:
    """The soft limit on the size of a file this process writes (``ulimit -f``), or None where there is none."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _describe_errno(number: int) -> str:
    text = f"{os.strerror(number)} ({errno.errorcode.get(number, number)})"
    limit = _file_size_limit()
    if number == errno.EFBIG and limit is not None:
        text += f": files are limited to {limit} bytes (ulimit -f)"
    return text


def disk_full_reason(error: BaseException, folder: str | Path) -> str | None:
    """Why a write into ``folder`` failed, when ``error`` (or an error it was raised from) is the storage refusing it
    for lack of room (`DISK_FULL_ERRNOS`, as an ``OSError``, in safetensors' message, or torch's stream failure, whose
    errno is lost and is then told from the folder's free space and the file size limit); None for other errors."""
    for link in _error_chain(error):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return _describe_errno(link.errno)
        match = _RUST_OS_ERROR.search(str(link))
        if match and int(match.group(1)) in DISK_FULL_ERRNOS:
            return _describe_errno(int(match.group(1)))
    if not any(marker in str(link) for link in _error_chain(error) for marker in _TORCH_WRITE_FAILURE):
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 16 * 2**20:
        return f"{_describe_errno(errno.ENOSPC)}: {free} bytes free"
    if _file_size_limit() is not None:
        return _describe_errno(errno.EFBIG)
    return "the storage refused the write (torch: " + str(error).splitlines()[0].strip() + "); a disk quota?"


@contextmanager
def stop_on_full_disk(what: str, output_dir: str | Path) -> Iterator[None]:
    """Turn a write refused for lack of room (`disk_full_reason`) inside the block into `OutputWriteError`, whose one
    line names ``what`` failed, why, and the checkpoint of ``output_dir`` that ``--resume_from_checkpoint latest``
    resumes from (it was written whole before: checkpoints appear by rename). Other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        reason = disk_full_reason(error, output_dir)
        if reason is None:
            raise
        previous = latest_checkpoint(output_dir)
        if previous is None:
            intact = "there is no earlier checkpoint in it, so a relaunch starts from the beginning"
        else:
            step = CHECKPOINT_PATTERN.match(previous.name).group(1)
            intact = (f"the previous checkpoint {previous.name} (step {step}) is intact: make room and relaunch "
                      "with --resume_from_checkpoint latest to resume from it")
        raise OutputWriteError(f"{what} could not be written in {output_dir}: {reason}; {intact}") from error


@contextmanager
def stop_together_on_output_error(accelerator) -> Iterator[None]:
    """A block every process enters (some may write nothing in it): before any leaves it, the processes share
    whether a write in it was refused for lack of room (an `OutputWriteError`, from `stop_on_full_disk`), and if
    one was, every process raises that error. A process that stopped alone left the others waiting at their next
    collective until its exit broke the connection: a traceback from each of them and the launcher's SIGTERM."""
    failure: OutputWriteError | None = None
    try:
        yield
    except OutputWriteError as error:
        failure = error
    messages = [None if failure is None else str(failure)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        messages = gather_object(messages)  # also the barrier the block ends with
    if failure is not None:
        raise failure
    refused = next((message for message in messages if message is not None), None)
    if refused is not None:
        raise OutputWriteError(refused)


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    training_state: dict[str, Any],
    data_state: dict[str, Any] | None,
    total_limit: int | None,
    custom_states: Sequence[Any] = (),
) -> Path:
    """Write ``checkpoint-<step>`` atomically on every rank, then prune older ones. Returns the final path.

    ``custom_states``: objects with a ``state_dict`` that every rank holds alike (the scheduler, the EMA), saved
    once by the main process and restored with `load_custom_states` in the same order."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    # Each stage ends with every process knowing whether a write of any of them was refused (and then all stop).
    try:
        with stop_together_on_output_error(accelerator), stop_on_full_disk(final.name, output_dir):
            if accelerator.is_main_process:
                output_dir.mkdir(parents=True, exist_ok=True)
                for stale in output_dir.glob(".checkpoint-*.partial"):
                    shutil.rmtree(stale, ignore_errors=True)
                partial.mkdir()

        with stop_together_on_output_error(accelerator), stop_on_full_disk(final.name, output_dir):
            accelerator.save_state(str(partial))
            if data_state is not None:
                torch.save(data_state, partial / data_state_file(accelerator.process_index))

        with stop_together_on_output_error(accelerator), stop_on_full_disk(final.name, output_dir):
            if accelerator.is_main_process:
                for index, obj in enumerate(custom_states):
                    torch.save(obj.state_dict(), partial / CUSTOM_STATE_FILES[index])
                write_json_atomic(partial / TRAINING_STATE_FILE, {**training_state, "step": step})
                _fsync_tree(partial)
                replace_folder(partial, final)  # re-saving the same step (e.g. the final step) replaces the old copy
    except Exception:
        # `latest` never picks the half-written folder; removed, it gives back the room it took.
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``total_limit``; returns what was removed."""
    if not total_limit or total_limit < 1:
        return []
    dirs = checkpoint_dirs(output_dir)
    removed = dirs[: max(0, len(dirs) - total_limit)]
    for path in removed:
        # Rename first so a crash mid-delete leaves a hidden folder rather than a half checkpoint.
        doomed = path.with_name(f".{path.name}.deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


def set_aside_newer_checkpoints(output_dir: str | Path, step: int) -> list[tuple[Path, Path]]:
    """Rename the complete checkpoints of ``output_dir`` past ``step`` to ``abandoned-checkpoint-<N>[-k]``.

    A run resumed from an earlier checkpoint (rewound after a divergence, say) no longer continues them: left in
    place, ``latest`` would resume the abandoned run after the next kill, and pruning would count them (deleting
    the resumed run's own checkpoints first). Renamed, not deleted: nothing is lost. Returns (old, new) pairs.
    """
    moved = []
    for path in checkpoint_dirs(output_dir):
        number = int(CHECKPOINT_PATTERN.match(path.name).group(1))
        if number <= step:
            continue
        moved.append((path, set_aside(path)))
    return moved


def set_aside(path: str | Path) -> Path:
    """Rename ``path`` to ``abandoned-<name>`` beside it (``abandoned-<name>-<k>`` when taken); returns the new path."""
    path = Path(path)
    target, suffix = path.with_name(f"abandoned-{path.name}"), 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"abandoned-{path.name}-{suffix}")
    os.replace(path, target)
    return target


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINING_STATE_FILE).read_text())


def load_data_state(checkpoint: Path, process_index: int) -> dict[str, Any] | None:
    path = checkpoint / data_state_file(process_index)
    return torch.load(path, weights_only=True) if path.is_file() else None


def replace_folder(new: str | Path, final: str | Path) -> Path:
    """Rename the complete folder ``new`` to ``final``, replacing what is there, so that a crash at any moment
    leaves either the old folder or the new one at ``final`` (or the old one under a hidden ``.NAME.old``
    name for the instant between the two renames), never a half-written or half-deleted one."""
    new, final = Path(new), Path(final)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def folder_written_atomically(folder: str | Path) -> Iterator[Path]:
    """Write a whole output folder (a model, a demo, a publish folder) so that it appears only when complete.

    Yields a fresh hidden sibling ``.NAME.partial`` to write into; when the block ends without an exception, it
    replaces ``folder`` (`replace_folder`). After an exception ``folder`` is untouched and the partial copy stays
    for inspection until the next write removes it.
    """
    folder = Path(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    replace_folder(partial, folder)


def check_output_folder(
    folder: str | Path,
    sources: Sequence[str | Path] = (),
    *,
    markers: Sequence[str] = ("config.json",),
    written_by: str = "a model folder",
    may_be_a_source: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``folder`` may be replaced whole by `folder_written_atomically`.

    It must be new, empty or an earlier output (one holding every file of ``markers``; ``written_by`` names such a
    folder in the message), and never a folder above one of ``sources`` (the inputs, which would go with it), nor
    one of them unless ``may_be_a_source`` (a model grown in place is read before its folder is replaced; a
    published folder is not). A tool's ``--output`` that names ``outputs/`` itself, the folder of every run, would
    otherwise be deleted with all it holds."""
    resolved = Path(folder).resolve()
    for source in sources:
        source_path = Path(source).resolve()
        if Path(source).exists() and (resolved in source_path.parents or (resolved == source_path
                                                                           and not may_be_a_source)):
            raise ValueError(f"--output {folder} holds {source}, which would be deleted: choose another folder")
    if not resolved.exists():
        # A path below a file (or in a read-only folder) used to fail only when the result was saved, after the
        # training or evaluation, with a traceback.
        problem = unwritable_folder_reason(folder)
        if problem is not None:
            raise ValueError(problem)
        return
    if not resolved.is_dir():
        raise ValueError(f"--output {folder} is a file, not a folder: choose a new or empty folder")
    if any(resolved.iterdir()) and not all((resolved / name).is_file() for name in markers):
        raise ValueError(f"--output {folder} exists and is not {written_by} (no {' and '.join(markers)}); it would be "
                         f"replaced as a whole: choose a new or empty folder, or an earlier output")


def unwritable_folder_reason(folder: str | Path, flag: str = "--output") -> str | None:
    """Why ``folder`` cannot hold this run's files (a file, below a file, not writable), or None; creates nothing.

    For checks made before the work: a path that cannot be written used to fail only when the first result was
    saved (after hours of training, or a whole evaluation), with a traceback."""
    from modeling.cli import check_output_folder as output_folder_problem  # standard library only

    problem = output_folder_problem(Path(folder))
    return None if problem is None else f"{flag}: {problem}"


def check_output_file(path: str | Path, flag: str = "--output") -> None:
    """Raise ``ValueError`` unless a file can be written at ``path`` (its folder may be missing: it is created)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name the file to write")
    problem = unwritable_folder_reason(path.parent, f"{flag} {path}")
    if problem is not None:
        raise ValueError(problem)


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """``payload`` as indented JSON at ``path``, complete or not at all (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a hidden file beside ``path``, flush it to disk, then rename it into place: a crash
    leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_file():  # a failed write (disk full, a folder at `path`) leaves no hidden half file behind
            tmp.unlink()
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
